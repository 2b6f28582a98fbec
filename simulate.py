"""``fleetwave simulate``: what a strategy does to a fleet, over many simulated releases.

Each run is one release under the strategy over ``nodes`` nodes, in virtual time. Each
node's agent applies for a time drawn uniformly from MIN..MAX and fails its task with
probability ``fail_rate`` (drawn per node and run from the seed: ``run_draws``). The fleet
starts on config version 1, recorded as applied on every node; the simulated release
applies version 2. Two engines compute a run from those draws:

- ``model`` (the default): the schedule model (simmodel.py), built once per process from the
  store's placement of the release, microseconds a node;
- ``daemon``: the real daemon (Supervisor, ReleaseActor, NodeActors) on a MemoryStore of its
  own, against an in-process simulated fleet of ``nodes`` agents, on trio's autojumping
  MockClock (a run takes as long as the daemon needs to compute it, not as long as the
  release would take).

Per run it records how the release ended (success, failed, rolled back, paused), the virtual
seconds from its creation to that end, the nodes whose agents it reached (touched), and the
nodes left on version 1. Over the runs it prints the distribution of each.

What a simulation cannot do, it says at once: a gate (``{"pause": null}``) waits for a
promote nobody gives, so a strategy with one is refused unless ``gate_wait`` says after how
many seconds at a gate the simulation promotes it. Health checks (HTTP, Prometheus) reach no
server here: they are ignored with a warning, and times then exclude their waits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import attrs
import structlog
import trio
import trio.testing

from fleetwave.actors.timing import NodeTiming
from fleetwave.actors.topology import LabelCaps
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from fleetwave.bench import machine, percentile
from fleetwave.config import Settings
from fleetwave.config.logging import configure_logging
from fleetwave.inprocess import in_process_agents
from fleetwave.simmodel import Member, ScheduleModel
from fleetwave.store import models
from fleetwave.store.errors import Conflict, InvalidInput
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import Actor, ReleaseSpec, ReleaseStatus, Role, task_id_for
from fleetwave.store.plan import split
from fleetwave.store.selection import MAX_LABELS, check_label_key, check_label_value
from fleetwave.store.strategy import MAX_PAUSE_SEC, Strategy, current_step, strategy_from_json
from fleetwave.supervisor import Supervisor

MAX_NODES = 100_000
MAX_RUNS = 10_000
MAX_APPLY_SEC = 86_400.0
MAX_JOBS = 64
MAX_STRATEGY_BYTES = 1 << 20
FAILURE = "simulated failure"
"""The lastError of a task a simulated agent fails."""
WATCH_POLL = 0.5
"""Virtual seconds between two looks at whether an ended release's actor has left the daemon."""
DAEMON = "simulate"
SIMULATION = Actor("simulate", Role.OPERATOR)
OUTCOMES = ("success", "failed", "rolled back", "paused")
FIGURES = ("min", "p50", "p90", "p99", "max")
LABEL = 52
"""Width of the table's first column."""
ENGINES = ("model", "daemon")
"""How runs are computed: the schedule model (simmodel.py), or the real daemon's actors."""


class SimulateError(ValueError):
    """A strategy file or an option that cannot be simulated; the message names it."""


class RunStuck(Exception):
    """A run went on past its virtual time limit: the release never left the daemon."""


@attrs.frozen
class Options:
    """One simulation: the strategy, the fleet, how many runs, from which seed."""

    strategy: Strategy
    """As validated, health checks removed (see ``ignored_checks``)."""
    source: str
    """Where the strategy came from (the file), for the output."""
    nodes: int
    apply_time: tuple[float, float]
    fail_rate: float
    runs: int
    seed: int
    gate_wait: float | None = None
    """Seconds a gate waits before the simulation promotes it; None: a gate is refused."""
    jobs: int = 1
    """Processes the runs are shared among."""
    ignored_checks: tuple[str, ...] = ()
    engine: str = "model"
    """``model``: each run computed by the schedule model (simmodel.py); ``daemon``: run by
    the real Supervisor, ReleaseActor and NodeActors on a virtual clock."""
    verify: int = 0
    """The first this many runs are run by the daemon too, and compared with the model's."""
    labels: tuple[tuple[str, int], ...] = ()
    """(label key, how many values): the nodes' labels, each value on a block of
    consecutive nodes (``node_labels``)."""


@attrs.frozen
class RunResult:
    index: int
    outcome: str
    seconds: float
    """Virtual seconds from the release's creation to its end (or its pause)."""
    touched: int
    """Nodes whose agent received the release's task."""
    left_old: int
    """Nodes still on the old config version when the release ended."""
    failed_nodes: int
    error: str | None

    @property
    def caught_failure(self) -> bool:
        """The release stopped on a failure (a budget exceeded) rather than finishing."""
        return self.outcome != "success"

    def to_json(self) -> dict[str, object]:
        return {
            "run": self.index,
            "outcome": self.outcome,
            "seconds": self.seconds,
            "touched": self.touched,
            "leftOnOldVersion": self.left_old,
            "failedNodes": self.failed_nodes,
            "error": self.error,
        }


# --- input -------------------------------------------------------------------------------


def _number(option: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SimulateError(f"{option} {text!r}: not a number") from None
    if not math.isfinite(value):
        raise SimulateError(f"{option} {text!r}: must be a finite number")
    return value


def _whole(option: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SimulateError(f"{option} {text!r}: not a whole number") from None
    if not low <= value <= high:
        raise SimulateError(f"{option} {value}: must be from {low} to {high}")
    return value


def parse_apply_time(text: str) -> tuple[float, float]:
    """``MIN..MAX`` seconds (or one number: always that long)."""
    low_text, sep, high_text = text.partition("..")
    if not low_text or (sep and not high_text):
        raise SimulateError(f"--apply-time {text!r}: expected MIN..MAX seconds, e.g. 5..15")
    low = _number("--apply-time", low_text)
    high = _number("--apply-time", high_text) if sep else low
    if not 0 <= low <= high <= MAX_APPLY_SEC:
        raise SimulateError(
            f"--apply-time {text!r}: expected 0 <= MIN <= MAX <= {MAX_APPLY_SEC:g} seconds"
        )
    return low, high


def parse_fail_rate(text: str) -> float:
    value = _number("--fail-rate", text)
    if not 0 <= value <= 1:
        raise SimulateError(
            f"--fail-rate {text!r}: a probability per node, from 0 (none fails) to 1 (all do)"
        )
    return value


def parse_gate_wait(text: str | None) -> float | None:
    if text is None:
        return None
    value = _number("--gate-wait", text)
    if not 0 <= value <= MAX_PAUSE_SEC:
        raise SimulateError(f"--gate-wait {text!r}: seconds from 0 to {MAX_PAUSE_SEC}")
    return value


def parse_label(text: str, nodes: int) -> tuple[str, int]:
    """``KEY=COUNT``: label ``KEY`` with COUNT values over the fleet (1 to ``nodes``)."""
    key, sep, count = text.partition("=")
    if not sep:
        raise SimulateError(f"--label {text!r}: expected KEY=COUNT, e.g. pop=20")
    try:
        checked = check_label_key(key)
    except InvalidInput as error:
        raise SimulateError(f"--label {text!r}: {error}") from None
    if not (count.isascii() and count.isdigit()):
        raise SimulateError(f"--label {text!r}: COUNT is not a whole number")
    values = int(count)
    if not 1 <= values <= nodes:
        raise SimulateError(f"--label {text!r}: COUNT must be from 1 to {nodes} (the nodes)")
    try:  # the values it gives (all of one width) must be values the store takes
        check_label_value(checked, node_labels([(checked, values)], nodes, nodes)[checked])
    except InvalidInput as error:
        raise SimulateError(f"--label {text!r}: {error}") from None
    return checked, values


def node_labels(labels: Sequence[tuple[str, int]], nodes: int, k: int) -> dict[str, str]:
    """Node ``k``'s (from 1) labels: for each key of COUNT values, value i (``pop-07``) on
    the i-th of COUNT blocks of consecutive nodes, as a PoP's nodes are named together. Keys
    whose counts divide one another nest (pop=12 in region=3: four PoPs a region)."""
    return {
        key: f"{_value_prefix(key)}-{(k - 1) * count // nodes + 1:0{len(str(count))}d}"
        for key, count in labels
    }


def _value_prefix(key: str) -> str:
    """What a key's values start with: the key after its last '/' (a value has no '/')."""
    return key.rpartition("/")[2]


def load_strategy(path: Path) -> Strategy:
    """The strategy in ``path`` (the fields a release takes), checked by the one validator."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_STRATEGY_BYTES + 1)
    except OSError as error:
        raise SimulateError(f"--strategy {path}: cannot read it: {error.strerror}") from None
    if len(raw) > MAX_STRATEGY_BYTES:
        raise SimulateError(f"--strategy {path}: larger than {MAX_STRATEGY_BYTES} bytes")
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SimulateError(f"--strategy {path}: not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise SimulateError(
            f"--strategy {path}: not JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        ) from None
    except ValueError:
        # The one other refusal of the parser: an integer literal past the digit limit.
        raise SimulateError(
            f"--strategy {path}: not JSON: a number of more than "
            f"{sys.get_int_max_str_digits()} digits"
        ) from None
    except RecursionError:
        raise SimulateError(f"--strategy {path}: not JSON: nested too deeply") from None
    try:
        return strategy_from_json(value)
    except InvalidInput as error:
        raise SimulateError(f"--strategy {path}: {error}") from None


def build_options(
    *,
    strategy: Path,
    nodes: str,
    apply_time: str,
    fail_rate: str,
    runs: str,
    seed: str | None = None,
    gate_wait: str | None = None,
    jobs: str | None = None,
    engine: str = "model",
    verify: str | None = None,
    labels: Sequence[str] = (),
) -> Options:
    """Options from the command line's words; SimulateError names the first one wrong."""
    if engine not in ENGINES:
        raise SimulateError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    count = _whole("--nodes", nodes, 1, MAX_NODES)
    if len(labels) > MAX_LABELS:
        raise SimulateError(
            f"--label: given {len(labels)} times, but a node carries at most {MAX_LABELS} labels"
        )
    label_counts = tuple(parse_label(text, count) for text in labels)
    repeated = {key for key, _ in label_counts if [k for k, _ in label_counts].count(key) > 1}
    if repeated:
        raise SimulateError(f"--label {sorted(repeated)[0]}: given more than once")
    bounds = parse_apply_time(apply_time)
    rate = parse_fail_rate(fail_rate)
    run_count = _whole("--runs", runs, 1, MAX_RUNS)
    chosen_seed = (
        random.SystemRandom().randrange(2**32) if seed is None else _whole("--seed", seed, 0, 2**63)
    )
    wait = parse_gate_wait(gate_wait)
    checked = 0 if verify is None else _whole("--verify", verify, 0, run_count)
    if checked and engine != "model":
        raise SimulateError(
            "--verify runs the daemon to check the model's runs: it goes with --engine model"
        )
    workers = (
        min(os.cpu_count() or 1, run_count) if jobs is None else _whole("--jobs", jobs, 1, MAX_JOBS)
    )
    loaded = load_strategy(strategy)
    if wait is None:
        for step in loaded.schedule(count):
            if step.kind == "gate":
                raise SimulateError(
                    f"--strategy {strategy}: plan[{step.plan_index}] is a gate "
                    '({"pause": null}), which waits for a promote: give --gate-wait SECONDS '
                    "to promote each gate that long after the release reaches it"
                )
    ignored = tuple(check.name for check in loaded.health_checks)
    return Options(
        strategy=attrs.evolve(loaded, health_checks=()),
        source=str(strategy),
        nodes=count,
        apply_time=bounds,
        fail_rate=rate,
        runs=run_count,
        seed=chosen_seed,
        gate_wait=wait,
        jobs=workers,
        ignored_checks=ignored,
        engine=engine,
        verify=checked,
        labels=label_counts,
    )


# --- one run -----------------------------------------------------------------------------


def run_seed(seed: int, index: int) -> random.Random:
    """The random source of run ``index``: the same for the same seed, in any process."""
    return random.Random(f"fleetwave-simulate:{seed}:{index}")


@attrs.frozen
class RunDraws:
    """What run ``index`` draws for its fleet, the same for either engine: per node (the
    fleet's k-th agent at index k - 1) its apply time and whether its apply fails."""

    apply_times: list[float]
    failing: list[bool]


def run_draws(options: Options, index: int) -> RunDraws:
    """Run ``index``'s draws: apply times uniform in MIN..MAX, failures at the fail rate."""
    rng = run_seed(options.seed, index)
    low, high = options.apply_time
    count = options.nodes
    return RunDraws(
        apply_times=[rng.uniform(low, high) for _ in range(count)],
        failing=[rng.random() < options.fail_rate for _ in range(count)],
    )


def build_fleet(options: Options, index: int) -> SimulatedFleet:
    """Run ``index``'s agents, each applying for its drawn time and failing where drawn."""
    draws = run_draws(options, index)
    fleet = SimulatedFleet(options.nodes, behaviour=Behaviour(apply_time=options.apply_time))
    for k, (seconds, fails) in enumerate(zip(draws.apply_times, draws.failing, strict=True), 1):
        fleet.set_behaviour(
            k, Behaviour(apply_time=(seconds, seconds), fail=FAILURE if fails else None)
        )
    return fleet


async def _seed_old_version(store: MemoryStore) -> None:
    """Record config version 1 as applied on every node: a release recorded as done."""
    created = await store.create_release(ReleaseSpec(reason="the fleet before the simulation"))
    [claim] = await store.claim(DAEMON, 1, 60)
    nodes = await store.release_nodes(created.release.id)
    success = models.NodeStatus.SUCCESS
    changes = [models.NodeChange(node.id, success, started=True, finished=True) for node in nodes]
    done = models.Outcome(ReleaseStatus.SUCCESS)
    await store.record(claim.lease, changes, done, daemon_id=DAEMON)


async def _follow(
    store: MemoryStore, release_id: int, look: Callable[[models.Release], Awaitable[bool]]
) -> None:
    """``look`` at the release now and again after each event of the store's feed (which
    says at once when the release changes), until it returns True."""
    changed = trio.Event()

    def wake() -> None:
        changed.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(store.listen_events, wake)
        while True:
            changed = trio.Event()
            release = await store.get_release(release_id)
            assert release is not None
            if await look(release):
                break
            await changed.wait()
        nursery.cancel_scope.cancel()


async def _promote_gates(store: MemoryStore, release_id: int, wait: float) -> None:
    """Promote each gate the release reaches, ``wait`` virtual seconds after it got there.

    The store's event feed says at once when the release reaches a step (the API's live
    views are woken by the same feed), so each gate is promoted exactly ``wait`` after it was
    reached, never a look later."""
    promoted: set[int] = set()

    async def look(release: models.Release) -> bool:
        step = current_step(release)
        gate = None if step is None or step.kind != "gate" else step.position
        if release.status is ReleaseStatus.RUNNING and gate not in (None, *promoted):
            assert gate is not None
            promoted.add(gate)
            await trio.sleep(wait)
            with contextlib.suppress(Conflict):  # no longer at the gate
                await store.promote(
                    release_id, by=SIMULATION, reason=f"simulated gate wait of {wait:g}s"
                )
        return False  # until the run ends

    await _follow(store, release_id, look)


async def prepare_run(options: Options, index: int) -> tuple[SimulatedFleet, MemoryStore, int]:
    """Run ``index``'s fleet, its store with the fleet on the old version, and the release
    created under the strategy (its id). SimulateError when the store refuses it."""
    fleet = build_fleet(options, index)
    store = MemoryStore()
    for k, host in enumerate(fleet.hosts, start=1):
        node = await store.upsert_node(f"edge-{k:05d}", host, fleet.port)
        if options.labels:
            labels = node_labels(options.labels, options.nodes, k)
            await store.update_node(node.id, labels=labels)
    await _seed_old_version(store)
    strategy = options.strategy
    spec = ReleaseSpec(
        reason=f"simulation run {index}",
        plan=strategy.plan,
        max_failures=strategy.max_failures or 0,
        strategy=strategy.to_json(),
    )
    try:
        created = await store.create_release(spec)
    except (InvalidInput, Conflict) as refused:
        # What the store refuses for this fleet (its nodes have no labels, for one).
        raise SimulateError(f"--strategy {options.source}: {refused}") from None
    return fleet, store, created.release.id


async def _left_daemon(store: MemoryStore, supervisor: Supervisor, release_id: int) -> None:
    """Until the release has ended (or paused) and its actor is gone (what onFailure does
    after the outcome is done then), however soon after its start that happened.

    While the release runs, each change of it comes through the store's event feed, so a
    bake of days costs no look every ``WATCH_POLL`` (half a million of them in 30 days);
    the actor, once the release has ended, is looked for every ``WATCH_POLL``."""

    async def ended(release: models.Release) -> bool:
        return release.status not in (ReleaseStatus.PENDING, ReleaseStatus.RUNNING)

    await _follow(store, release_id, ended)
    while True:
        if release_id not in supervisor.owned:
            return
        await trio.sleep(WATCH_POLL)


async def simulate_run(options: Options, settings: Settings, index: int) -> RunResult:
    """Run ``index``: one release under the strategy, the real daemon, virtual time."""
    fleet, store, release_id = await prepare_run(options, index)
    # The simulation's own daemon: it claims whatever the settings say of serve's.
    settings = attrs.evolve(settings, executor_enabled=True, max_releases=1)
    async with in_process_agents(fleet, settings) as agents:
        supervisor = Supervisor(store, agents, settings)
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            if options.gate_wait is not None:
                nursery.start_soon(_promote_gates, store, release_id, options.gate_wait)
            limit = run_limit(options, settings)
            with trio.move_on_after(limit) as timer:
                await _left_daemon(store, supervisor, release_id)
            if timer.cancelled_caught:
                raise RunStuck(
                    f"run {index}: release still with the daemon after {limit:g} virtual "
                    "seconds (its schedule cannot take that long)"
                )
            supervisor.stop()
            nursery.cancel_scope.cancel()
    release = await store.get_release(release_id)
    assert release is not None
    ended = release.finished_at or release.updated_at
    nodes = await store.release_nodes(release_id)
    touched = sum(
        fleet.dispatch_count(node.main_ip, task_id_for(node.main_ip, release.version)) > 0
        for node in nodes
    )
    # The release's own rows say which nodes it moved to version 2 (success): the others are
    # on version 1 as it ended. (Not the nodes' applied version now: the rollback release
    # onFailure creates may already have begun restoring some.)
    left_old = sum(node.status is not models.NodeStatus.SUCCESS for node in nodes)
    outcome = str(release.status)
    error = release.error
    if release.status is ReleaseStatus.PAUSED and error is None:
        # onFailure pause records its cause as the pause's reason, not as the release's error.
        error = release.verb_reason
    if release.status is ReleaseStatus.FAILED:
        later, _ = await store.list_releases(limit=10)
        if any(other.rollback_of == release_id for other in later):
            outcome = "rolled back"
    return RunResult(
        index=index,
        outcome=outcome,
        seconds=(ended - release.created_at).total_seconds(),
        touched=touched,
        left_old=left_old,
        failed_nodes=release.failed_nodes,
        error=error,
    )


def _seed_scheduler(seed: int) -> bool:
    """Make trio's order of running ready tasks follow ``seed``; False when this trio keeps
    that choice elsewhere.

    trio runs each batch of ready tasks in their order or its reverse, at random, so that no
    code comes to depend on one order. The daemon hands out a batch's places in its row
    order whatever that order, so which nodes go first does not depend on it; tasks ready at
    the same virtual moment still interleave by it (which of two messages that arrive
    together is handled first). Seeded (as Hypothesis seeds it for tests), the same run
    interleaves its tasks the same way every time.
    """
    scheduler = _scheduler()
    if scheduler is None:
        return False
    scheduler.seed(seed)
    return True


def _scheduler() -> random.Random | None:
    """trio's random source for the order of ready tasks, where this trio keeps it."""
    from trio._core import _run

    scheduler = getattr(_run, "_r", None)
    return scheduler if isinstance(scheduler, random.Random) else None


def run_limit(options: Options, settings: Settings) -> float:
    """Virtual seconds past which a run cannot still be going: each batch in waves of
    ``max_parallel``, each wave within the node deadline (and the end's reconciliation),
    every pause held in full, and a day to spare."""
    nodes = options.nodes
    schedule = options.strategy.schedule(nodes)
    waves = sum(
        math.ceil(size / settings.max_parallel) for size in split(options.strategy.plan, nodes)
    )
    per_wave = settings.node_deadline_sec + settings.reconcile_timeout_sec
    pauses = sum(
        (options.gate_wait or 0.0) if step.pause.seconds is None else step.pause.seconds
        for step in schedule
        if step.pause is not None
    )
    return waves * per_wave + pauses + 86_400.0


def run_one(options: Options, settings: Settings, index: int) -> RunResult:
    """Run ``index`` by the real daemon, in a trio run of its own on a virtual clock."""
    _seed_scheduler(run_seed(options.seed, index).getrandbits(64))
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(simulate_run, options, settings, index, clock=clock)


async def _placement(options: Options) -> tuple[tuple[Member, ...], ...]:
    """The release's batches as the store places them for the simulated fleet (the same in
    every run): each node's row, and the index of its agent's draws."""
    fleet, store, release_id = await prepare_run(options, 0)
    agent_of = {host: k for k, host in enumerate(fleet.hosts)}
    batches: dict[int, list[Member]] = {}
    for node in await store.release_nodes(release_id):
        member = Member(node.id, agent_of[node.main_ip], node.node_name, node.labels)
        batches.setdefault(node.batch, []).append(member)
    return tuple(tuple(batches[number]) for number in sorted(batches))


def schedule_model(options: Options, settings: Settings) -> ScheduleModel:
    """The model of the simulated release, under the daemon settings ``serve`` would use."""
    placement = trio.run(_placement, options, clock=trio.testing.MockClock(autojump_threshold=0))
    return ScheduleModel(
        strategy=options.strategy,
        batches=placement,
        timing=NodeTiming.from_settings(settings),
        poll_rate=settings.poll_rate,
        max_parallel=settings.max_parallel,
        reconcile_timeout=settings.reconcile_timeout_sec,
        gate_wait=options.gate_wait,
        failure=FAILURE,
    )


def model_result(model: ScheduleModel, options: Options, index: int) -> RunResult:
    """Run ``index`` computed by the schedule model, on the run's draws."""
    draws = run_draws(options, index)
    ended = model.run(draws.apply_times, draws.failing)
    return RunResult(
        index=index,
        outcome="rolled back" if ended.rolled_back else ended.status,
        seconds=round(ended.seconds, 6),  # as the records keep times: to the microsecond
        touched=ended.touched,
        left_old=ended.left_old,
        failed_nodes=ended.failed_nodes,
        error=ended.error,
    )


def model_runs(options: Options, settings: Settings, indices: Sequence[int]) -> list[RunResult]:
    """Runs ``indices`` by the schedule model, built once for all of them."""
    model = schedule_model(options, settings)
    return [model_result(model, options, index) for index in indices]


def _quiet(settings: Settings) -> None:
    """Only errors are logged (JSON, to stderr): a run logs every transition of every node."""
    configure_logging(
        attrs.evolve(settings, log_level="error", log_format="json"), stream=sys.stderr
    )


@contextlib.contextmanager
def _quiet_logging(settings: Settings) -> Iterator[None]:
    """``_quiet`` for the block, then the logging set-up as it was."""
    previous = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    _quiet(settings)
    try:
        yield
    finally:
        structlog.configure(**previous)
        root.handlers[:] = handlers
        root.setLevel(level)


def run_all(options: Options, settings: Settings) -> list[RunResult]:
    """Every run, in run order, shared among ``options.jobs`` processes."""
    indices = range(options.runs)
    with _quiet_logging(settings):
        if options.engine == "model":
            if options.jobs <= 1:
                return model_runs(options, settings, indices)
            # One share a process (each builds the model once), none empty.
            workers = min(options.jobs, options.runs)
            shares = [indices[job::workers] for job in range(workers)]
            count = len(shares)
            with ProcessPoolExecutor(max_workers=workers) as pool:
                done = pool.map(model_runs, [options] * count, [settings] * count, shares)
                return sorted((r for share in done for r in share), key=lambda r: r.index)
        if options.jobs <= 1:
            return [run_one(options, settings, index) for index in indices]
        with ProcessPoolExecutor(
            max_workers=min(options.jobs, options.runs), initializer=_quiet, initargs=(settings,)
        ) as pool:
            count = options.runs
            return list(pool.map(run_one, [options] * count, [settings] * count, indices))


def _shown(result: RunResult) -> str:
    return (
        f"{result.outcome}, {result.touched} touched, {result.left_old} left on the old "
        f"version, {result.failed_nodes} failed, {result.seconds:.3f} s"
    )


def differences(
    model: Sequence[RunResult], daemon: Sequence[RunResult], tolerance: float
) -> list[str]:
    """Where the daemon's runs differ from the model's: the outcome, the nodes touched, left
    on the old version or failed, or the time to finish by more than ``tolerance``."""
    found = []
    for computed, ran in zip(model, daemon, strict=True):
        same = (computed.outcome, computed.touched, computed.left_old, computed.failed_nodes) == (
            ran.outcome,
            ran.touched,
            ran.left_old,
            ran.failed_nodes,
        )
        if not same or abs(computed.seconds - ran.seconds) > tolerance:
            found.append(f"run {ran.index}: model {_shown(computed)}; daemon {_shown(ran)}")
    return found


def verify(options: Options, settings: Settings, results: Sequence[RunResult]) -> dict[str, Any]:
    """Run the first ``options.verify`` runs by the daemon and compare them with ``results``
    (the model's). Times may differ by a poll interval where the model cannot know trio's
    order (docs/simulate.md)."""
    started = time.perf_counter()
    count = options.verify
    racing = places_race(options, settings)
    daemon = attrs.evolve(options, engine="daemon", runs=count, jobs=min(options.jobs, count))
    ran = run_all(daemon, settings)
    tolerance = settings.poll_max_sec
    gaps = [abs(a.seconds - b.seconds) for a, b in zip(results, ran, strict=False)]
    return {
        "runs": count,
        "timeTolerance": tolerance,
        "largestTimeDifference": max(gaps, default=0.0),
        "differing": differences(results[:count], ran, tolerance),
        "note": racing,
        "wallSeconds": time.perf_counter() - started,
    }


def places_race(options: Options, settings: Settings) -> str | None:
    """Why runs may differ run by run between the engines (docs/simulate.md, "Where they
    differ"): a batch whose label caps let more of its nodes in flight than ``max_parallel``,
    whose nodes, admitted by their lanes together, take the pool's places in trio's order in
    the daemon and in row order in the model. None: no such batch."""
    caps = options.strategy.max_in_flight_per
    if not caps:
        return None
    model = schedule_model(options, settings)
    for number, batch in enumerate(model.batches, 1):
        bound = LabelCaps(caps).most_in_flight(member.labels for member in batch)
        if bound > settings.max_parallel:
            return (
                f"batch {number}: maxInFlightPer lets {bound} of its nodes in flight, above "
                f"max_parallel {settings.max_parallel}: the nodes its lanes admit together take "
                "the daemon's places in trio's order, the model's in row order, so runs may "
                "differ in the nodes touched and in time (docs/simulate.md)"
            )
    return None


# --- figures -----------------------------------------------------------------------------


def distribution(values: Sequence[float]) -> dict[str, float] | None:
    """min, p50, p90, p99, max of ``values``; None when there are none."""
    if not values:
        return None
    return {
        "min": min(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def summarise(options: Options, results: Sequence[RunResult]) -> dict[str, Any]:
    """The figures of a simulation (the ``--json`` output, less wall time and machine)."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for result in results:
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
    caught = [r for r in results if r.caught_failure]
    return {
        "strategy": options.strategy.to_json(),
        "source": options.source,
        "nodes": options.nodes,
        "applyTime": list(options.apply_time),
        "failRate": options.fail_rate,
        "runs": options.runs,
        "seed": options.seed,
        "engine": options.engine,
        "labels": dict(options.labels),
        "gateWait": options.gate_wait,
        "ignoredHealthChecks": list(options.ignored_checks),
        "outcomes": {
            ("rolledBack" if name == "rolled back" else name): count
            for name, count in counts.items()
        },
        "timeToFinish": distribution([r.seconds for r in results]),
        "nodesTouchedBeforeFailureCaught": distribution([float(r.touched) for r in caught]),
        "runsWithFailureCaught": len(caught),
        "nodesLeftOnOldVersion": distribution([float(r.left_old) for r in results]),
        "perRun": [r.to_json() for r in results],
    }


def _row(label: str, figures: Mapping[str, float] | None, fmt: str) -> str:
    if figures is None:
        return f"{label:<{LABEL}}" + "".join(f"{'n/a':>10}" for _ in FIGURES)
    return f"{label:<{LABEL}}" + "".join(f"{fmt.format(figures[name]):>10}" for name in FIGURES)


def render(summary: Mapping[str, Any]) -> str:
    low, high = summary["applyTime"]
    outcomes = summary["outcomes"]
    lines = [
        f"simulated {summary['runs']} release(s) of plan "
        f"{json.dumps(summary['strategy']['plan'])} over {summary['nodes']} nodes: "
        f"apply {low:g}..{high:g} s, fail rate {summary['failRate']:g}, seed {summary['seed']}, "
        f"engine {summary['engine']}",
        "outcomes: "
        + ", ".join(
            f"{name} {outcomes['rolledBack' if name == 'rolled back' else name]}"
            for name in OUTCOMES
        ),
        f"{'':<{LABEL}}" + "".join(f"{name:>10}" for name in FIGURES),
        _row("time to finish (virtual s)", summary["timeToFinish"], "{:.1f}"),
        _row(
            f"nodes touched before a failure is caught ({summary['runsWithFailureCaught']} runs)",
            summary["nodesTouchedBeforeFailureCaught"],
            "{:.0f}",
        ),
        _row("nodes left on the old version", summary["nodesLeftOnOldVersion"], "{:.0f}"),
    ]
    if "wallSeconds" in summary:
        wall = summary["wallSeconds"]
        lines.append(
            f"wall time {wall:.2f} s ({summary['runs'] / wall:.2f} runs/s, "
            f"{summary['jobs']} process(es))"
        )
    checked = summary.get("verified")
    if checked:
        differing = checked["differing"]
        lines.append(
            f"verified by the daemon: {checked['runs'] - len(differing)} of {checked['runs']} "
            f"run(s) agree (outcome and nodes exactly; times differ by at most "
            f"{checked['largestTimeDifference']:.6f} s, allowed {checked['timeTolerance']:g} s), "
            f"in {checked['wallSeconds']:.2f} s"
        )
        lines.extend(f"  differs: {line}" for line in differing)
        if checked.get("note"):
            lines.append(f"  note: {checked['note']}")
    return "\n".join(lines)


def simulate(
    options: Options,
    settings: Settings,
    *,
    as_json: bool = False,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> dict[str, Any]:
    """Run the simulation, print its figures (a table, or JSON), return them."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if options.ignored_checks:
        print(
            f"simulate: warning: health check(s) {', '.join(options.ignored_checks)} ignored: "
            "a simulation reaches no HTTP or Prometheus server, so times exclude their waits",
            file=stderr,
        )
    if options.engine == "daemon" and _scheduler() is None:
        print(
            "simulate: warning: this trio keeps its choice of task order where simulate cannot "
            "seed it: runs of one --seed may differ where tasks are ready at the same moment",
            file=stderr,
        )
    started = time.perf_counter()
    trio.run(prepare_run, options, 0)  # what the store refuses is said before any run starts
    results = run_all(options, settings)
    summary = summarise(options, results)
    summary["wallSeconds"] = time.perf_counter() - started
    summary["jobs"] = min(options.jobs, options.runs)  # processes used
    summary["machine"] = machine()
    if options.verify:
        summary["verified"] = verify(options, settings, results)
    if as_json:
        print(json.dumps(summary, indent=2), file=stdout)
    else:
        print(render(summary), file=stdout)
    return summary
