"""The kill -9 soak: daemons on one database, killed with SIGKILL at random moments.

Several ``fleetwave serve`` processes share one PostgreSQL database and drive releases over an
in-process simulated fleet served over mutual TLS on loopback. While the releases run, a
daemon that holds releases is killed with SIGKILL at a random moment and restarted at once
under a new daemon id, ``kills`` times. At random moments too, operator verbs are issued the
way the API issues them (api.verbs.steer): a release is paused and later resumed, or (the
newest release of a lane) cancelled and later retried. Then the report counts what must
never happen (lost releases, releases or nodes finished twice, nodes dispatched under two
taskIds or dispatched again after their dispatch was recorded, counters disagreeing with
node rows, verbs not in effect, dispatches while a release was paused or cancelled) and
measures takeover: from the kill to the next claim of each release the killed daemon held, both by
the database's clock.

Not every release is meant to succeed. The first three lanes carry failures the agents
inject: lane 0's canary agent fails (a failing canary: the release fails, the rest is
skipped), lane 1's last agent fails under ``max_failures = 1`` (a tolerated failure: the
release succeeds), lane 2's last agent fails under ``max_failures = 0`` (batch 2 stops and its
dispatched nodes are reconciled). Every other kill waits for a daemon to start reconciling a
stopped batch and kills it then. Besides the outcome each release was meant to have, the
report checks that no node whose agent received its task is recorded ``skipped``.

The pytest test (tests/faults/test_kill_soak.py) runs it at the sizes of the environment
(CI's by default); ``python -m tests.faults.soak [--big] [--json PATH]`` runs it outside
pytest on an embedded PostgreSQL of its own and prints the same report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import secrets
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fleetwave.agent.certs import CertPaths, init_certs
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from fleetwave.api.server import serve_api
from fleetwave.api.verbs import steer
from fleetwave.store.base import Store
from fleetwave.store.embedded import EmbeddedPostgres
from fleetwave.store.errors import Conflict
from fleetwave.store.models import (
    Actor,
    NodeStatus,
    ReleaseSpec,
    ReleaseStatus,
    Role,
    task_id_for,
)
from fleetwave.store.postgres import open_loop_and_store
from fleetwave.store.verbs import Verb
from fleetwave.store.webhooks import (
    WEBHOOK_KINDS,
    DeliveryStatus,
    WebhookSpec,
    event_kinds,
    idempotency_key,
)
from fleetwave.webhooks.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.e2e.harness import FAST
from tests.faults.daemons import Daemon, DaemonGroup, daemon_env, open_daemons
from tests.integration.conftest import TEST_SERVER_SETTINGS, run_sql, server_directory
from tests.invariants import assert_release_invariants
from tests.world import lanes, open_world

TERMINAL_NODE = frozenset(status.value for status in NodeStatus if status.terminal)
TERMINAL_RELEASE = frozenset(status.value for status in ReleaseStatus if status.terminal)
CLAIM_MESSAGE = "claimed by "
RETRY_MESSAGE = "retry by "
NODE_RETRY_MESSAGE = "retry: attempt "
SOAK_OPERATOR = Actor("soak", Role.OPERATOR)
RECONCILE_WAIT_FACTOR = 3
"""How much longer an every-other kill waits for a reconciliation until one kill has hit one."""


@attrs.frozen(kw_only=True)
class SoakSizes:
    """How big the soak is. Defaults are CI's; ``BIG`` is the long run."""

    releases: int = 36
    agents: int = 20
    kills: int = 10
    daemons: int = 3
    scopes: int = 6
    """Lanes: the agents are dealt out into this many disjoint node sets. Releases of one
    lane share nodes and run one after another; lanes run side by side."""
    max_releases: int = 3
    """Per daemon. Survivors of a kill must have room for the dead daemon's releases:
    (daemons - 1) * max_releases >= scopes, else a takeover waits for a free slot."""
    lease_ttl_sec: float = 3.0
    interval_sec: float = 0.5
    apply_time: tuple[float, float] = (1.0, 4.0)
    poll_rate: float = 2000.0
    """Status queries per second per daemon (FLEETWAVE_POLL_RATE): the in-process fleet is
    one Python process, so a big fleet is polled at a pace it can answer."""
    agent_timeout_sec: float = 2.0
    node_deadline_sec: float = 20.0
    kill_gap_sec: tuple[float, float] = (1.0, 3.0)
    """Seconds between one restart and the next kill, uniform."""
    verbs: int = 8
    """Operator verbs issued at random moments (a pause and its resume count once)."""
    verb_gap_sec: tuple[float, float] = (0.5, 2.5)
    """Seconds between one verb and the next, and between a stop and its resume or retry."""
    deadline_sec: float = 180.0
    """From the creation of the releases; a release not terminal by then is lost."""
    seed: int = attrs.field(factory=lambda: random.SystemRandom().randrange(1 << 32))

    @property
    def takeover_bound_sec(self) -> float:
        """The promise: a dead daemon's releases are claimed again within this."""
        return self.lease_ttl_sec + self.interval_sec + 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, big: bool = False) -> SoakSizes:
        """``BIG`` or the CI sizes, each overridden by ``FLEETWAVE_SOAK_<NAME>``."""
        base = BIG if big else cls()
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            text = environ.get(f"FLEETWAVE_SOAK_{field.name.upper()}")
            if text is None:
                continue
            if isinstance(getattr(base, field.name), tuple):
                low, _, high = text.partition("..")
                values[field.name] = (float(low), float(high or low))
            else:
                values[field.name] = type(getattr(base, field.name))(text)
        return attrs.evolve(base, **values)


BIG = SoakSizes(
    releases=200,
    agents=200,
    kills=30,
    scopes=4,
    max_releases=2,
    poll_rate=150.0,
    agent_timeout_sec=10.0,
    node_deadline_sec=120.0,
    kill_gap_sec=(3.0, 10.0),
    deadline_sec=1200.0,
)


@attrs.frozen
class Kill:
    daemon_id: str
    at: float
    """Database clock (epoch seconds), read just before the signal."""
    held: tuple[int, ...]
    """Releases the killed daemon held when it died."""
    reconciling: bool = False
    """Killed while it reconciled a stopped batch of a release it still held."""


FAILING_CANARY_LANE = 0
TOLERATED_FAILURE_LANE = 1
STOPPED_BATCH_LANE = 2
INJECTED_FAILURE = "soak: injected apply failure"


def failing_agents(sizes: SoakSizes) -> dict[int, str]:
    """Agent index (1-based) -> the lane whose failure it carries. Lane k holds agents
    k + 1, k + 1 + scopes, ... (tests.world.lanes); its canary is the first."""
    lane_size = {k: len(range(k, sizes.agents, sizes.scopes)) for k in range(sizes.scopes)}
    last = {k: k + 1 + sizes.scopes * (lane_size[k] - 1) for k in lane_size}
    chosen = {FAILING_CANARY_LANE + 1: "failing canary"}
    if sizes.scopes > TOLERATED_FAILURE_LANE and lane_size[TOLERATED_FAILURE_LANE] > 1:
        chosen[last[TOLERATED_FAILURE_LANE]] = "tolerated failure"
    if sizes.scopes > STOPPED_BATCH_LANE and lane_size[STOPPED_BATCH_LANE] > 2:
        chosen[last[STOPPED_BATCH_LANE]] = "stopped batch"
    return chosen


def expected_status(sizes: SoakSizes, lane: int) -> ReleaseStatus:
    kinds = set(failing_agents(sizes).values())
    if lane == FAILING_CANARY_LANE or (lane == STOPPED_BATCH_LANE and "stopped batch" in kinds):
        return ReleaseStatus.FAILED
    return ReleaseStatus.SUCCESS


@attrs.frozen(kw_only=True)
class SoakReport:
    sizes: SoakSizes
    seconds: float
    kills: int
    succeeded: int
    failed: int
    lost: int
    """Not terminal by the deadline."""
    releases_finished_twice: int
    nodes_finished_twice: int
    nodes_with_two_task_ids: int
    nodes_redispatched_after_recorded: int
    """Dispatched again although a dispatch of theirs was already recorded (the agent never
    forgets a task here, so a resumed running node must be queried, not dispatched)."""
    redispatches: int
    """Repeated dispatches in all: a daemon killed between sending a dispatch and recording
    it leaves a pending node, which the next owner dispatches again (the same taskId)."""
    counter_mismatches: int
    unexpected_outcomes: tuple[str, ...]
    """Releases that did not end as their lane's injected failures say they must."""
    skipped_but_received: int
    """Nodes recorded skipped although their agent received the task."""
    kills_reconciling: int
    """Kills of a daemon while it reconciled a stopped batch."""
    invariant_failures: tuple[str, ...]
    """What tests/invariants.py found wrong, one line per release."""
    takeovers: tuple[float, ...]
    """Seconds from each kill to the next claim of each release the killed daemon held."""
    error_lines: int
    """Log lines of level error or above from every daemon incarnation."""
    verbs_issued: int = 0
    verbs_refused: int = 0
    """Refused for the state they found (409): the release ended meanwhile."""
    verbs_not_in_effect: int = 0
    """Answered without being in effect (the answer's patience ran out)."""
    dispatched_while_stopped: int = 0
    """Dispatches that reached an agent between a pause or cancel in effect and its resume
    or retry."""
    webhook_expected: int = 0
    """Deliveries the releases' events call for (release started, finished, failed; node
    failed), to a hook registered for every kind."""
    webhook_missing: int = 0
    """Of those, never received by the hook's receiver."""
    webhook_undelivered: int = 0
    """Outbox rows (batch.finished included) not delivered when the soak ended."""
    webhook_bad_signatures: int = 0
    webhook_duplicates: int = 0
    """Deliveries received more than once (at least once: a killed sender's lock expired)."""

    @property
    def takeover_p50(self) -> float:
        return percentile(self.takeovers, 0.50)

    @property
    def takeover_p99(self) -> float:
        return percentile(self.takeovers, 0.99)

    @property
    def violations(self) -> int:
        return (
            self.lost
            + self.releases_finished_twice
            + self.nodes_finished_twice
            + self.nodes_with_two_task_ids
            + self.nodes_redispatched_after_recorded
            + self.counter_mismatches
            + len(self.unexpected_outcomes)
            + self.skipped_but_received
            + len(self.invariant_failures)
            + self.verbs_not_in_effect
            + self.dispatched_while_stopped
            + self.webhook_missing
            + self.webhook_undelivered
            + self.webhook_bad_signatures
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "sizes": attrs.asdict(self.sizes),
            "seconds": round(self.seconds, 1),
            "kills": self.kills,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "lost": self.lost,
            "releases_finished_twice": self.releases_finished_twice,
            "nodes_finished_twice": self.nodes_finished_twice,
            "nodes_with_two_task_ids": self.nodes_with_two_task_ids,
            "nodes_redispatched_after_recorded": self.nodes_redispatched_after_recorded,
            "redispatches": self.redispatches,
            "counter_mismatches": self.counter_mismatches,
            "unexpected_outcomes": list(self.unexpected_outcomes),
            "skipped_but_received": self.skipped_but_received,
            "kills_reconciling": self.kills_reconciling,
            "invariant_failures": list(self.invariant_failures),
            "takeovers": len(self.takeovers),
            "takeover_p50_sec": round(self.takeover_p50, 3),
            "takeover_p99_sec": round(self.takeover_p99, 3),
            "takeover_max_sec": round(max(self.takeovers, default=math.nan), 3),
            "takeover_bound_sec": self.sizes.takeover_bound_sec,
            "error_lines": self.error_lines,
            "verbs_issued": self.verbs_issued,
            "verbs_refused": self.verbs_refused,
            "verbs_not_in_effect": self.verbs_not_in_effect,
            "dispatched_while_stopped": self.dispatched_while_stopped,
            "webhook_expected": self.webhook_expected,
            "webhook_missing": self.webhook_missing,
            "webhook_undelivered": self.webhook_undelivered,
            "webhook_bad_signatures": self.webhook_bad_signatures,
            "webhook_duplicates": self.webhook_duplicates,
        }

    def table(self) -> str:
        s = self.sizes
        rows = [
            ("releases / agents / daemons", f"{s.releases} / {s.agents} / {s.daemons}"),
            ("kills (SIGKILL, restarted)", f"{self.kills} of {s.kills}"),
            ("  of which while reconciling", str(self.kills_reconciling)),
            ("lease TTL / claim interval", f"{s.lease_ttl_sec:g} s / {s.interval_sec:g} s"),
            ("seed", str(s.seed)),
            ("wall time", f"{self.seconds:.1f} s"),
            ("succeeded / failed", f"{self.succeeded} / {self.failed}"),
            ("lost (not terminal by the deadline)", str(self.lost)),
            ("releases finished twice", str(self.releases_finished_twice)),
            ("nodes finished twice", str(self.nodes_finished_twice)),
            ("nodes dispatched under two taskIds", str(self.nodes_with_two_task_ids)),
            ("nodes re-dispatched after recorded", str(self.nodes_redispatched_after_recorded)),
            ("counters disagreeing with node rows", str(self.counter_mismatches)),
            ("outcomes other than injected", str(len(self.unexpected_outcomes))),
            ("skipped although the agent had the task", str(self.skipped_but_received)),
            ("releases failing tests/invariants.py", str(len(self.invariant_failures))),
            ("repeated dispatches (same taskId)", str(self.redispatches)),
            ("takeovers measured", str(len(self.takeovers))),
            ("takeover p50 / p99 / max", _takeover_text(self.takeovers)),
            ("takeover bound (TTL + interval + 1 s)", f"{s.takeover_bound_sec:g} s"),
            ("daemon log lines at error level", str(self.error_lines)),
            ("verbs issued / refused (ended)", f"{self.verbs_issued} / {self.verbs_refused}"),
            ("verbs answered not in effect", str(self.verbs_not_in_effect)),
            ("dispatched while paused or cancelled", str(self.dispatched_while_stopped)),
            (
                "webhook deliveries expected / missing",
                f"{self.webhook_expected} / {self.webhook_missing}",
            ),
            ("webhook outbox rows not delivered", str(self.webhook_undelivered)),
            (
                "webhook bad signatures / duplicates",
                f"{self.webhook_bad_signatures} / {self.webhook_duplicates}",
            ),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _takeover_text(takeovers: Sequence[float]) -> str:
    if not takeovers:
        return "-"
    p50, p99 = percentile(takeovers, 0.5), percentile(takeovers, 0.99)
    return f"{p50:.2f} s / {p99:.2f} s / {max(takeovers):.2f} s"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank; NaN when there are no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def database_clock(database_url: str) -> float:
    """The database's clock now, in epoch seconds (the clock of every lease and event)."""
    return float(await run_sql(database_url, "SELECT extract(epoch FROM clock_timestamp())"))


async def releases_held_by(database_url: str, daemon_id: str) -> tuple[int, ...]:
    output = await run_sql(
        database_url,
        "SELECT id FROM release_tasks WHERE status = 'running' AND lease_owner = "
        f"'{daemon_id}' ORDER BY id",
    )
    return tuple(int(line) for line in output.split())


async def lease_owners(database_url: str) -> set[str]:
    output = await run_sql(
        database_url,
        "SELECT DISTINCT lease_owner FROM release_tasks"
        " WHERE status = 'running' AND lease_owner IS NOT NULL",
    )
    return set(output.split())


def soak_env(sizes: SoakSizes, certs: CertPaths, database_url: str) -> dict[str, str]:
    settings: dict[str, object] = {
        **FAST,
        "FLEETWAVE_LEASE_TTL_SEC": sizes.lease_ttl_sec,
        "RELEASE_EXECUTOR_INTERVAL_SEC": sizes.interval_sec,
        "FLEETWAVE_MAX_RELEASES": sizes.max_releases,
        "FLEETWAVE_POLL_RATE": sizes.poll_rate,
        "FLEETWAVE_AGENT_CONNECT_TIMEOUT_SEC": sizes.agent_timeout_sec,
        "FLEETWAVE_AGENT_REQUEST_TIMEOUT_SEC": sizes.agent_timeout_sec,
        "FLEETWAVE_NODE_DEADLINE_SEC": sizes.node_deadline_sec,
        # A killed sender's deliveries are sent again once its lock (2 x timeout + 5 s) ends.
        "FLEETWAVE_WEBHOOK_POLL_SEC": 0.2,
        "FLEETWAVE_WEBHOOK_TIMEOUT_SEC": 2,
    }
    return daemon_env(certs, database_url, **settings)


@attrs.frozen
class Stop:
    """A pause or cancel in effect from ``at`` until ``until`` (its resume or retry asked),
    both trio time of the soak's process, the clock of the in-process fleet's dispatch log."""

    release_id: int
    at: float
    until: float


@attrs.define
class _Verbs:
    """Operator verbs at random moments, applied to the soak's store as the API applies them."""

    sizes: SoakSizes
    store: Store
    rng: random.Random
    release_ids: list[int]
    newest_of_lane: set[int]
    done: trio.Event
    issued: int = 0
    refused: int = 0
    not_in_effect: int = 0
    stops: list[Stop] = attrs.field(factory=list)
    _busy: bool = False
    _rested: trio.Event = attrs.field(factory=trio.Event)

    async def idle(self) -> None:
        """Return once no stop is waiting for its resume or retry."""
        while self._busy:
            self._rested = trio.Event()
            await self._rested.wait()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self._busy = False
            self._rested.set()

    async def _run(self) -> None:
        patience = 3 * self.sizes.lease_ttl_sec
        for _ in range(self.sizes.verbs):
            with trio.move_on_after(self.rng.uniform(*self.sizes.verb_gap_sec)):
                await self.done.wait()
            if self.done.is_set():
                return
            active = []
            for release_id in self.release_ids:
                release = await self.store.get_release(release_id)
                if release is not None and release.status is ReleaseStatus.RUNNING:
                    active.append(release_id)
            if not active:
                continue
            target = self.rng.choice(active)
            stop, go = Verb.PAUSE, Verb.RESUME
            if target in self.newest_of_lane and self.rng.random() < 0.5:
                stop, go = Verb.CANCEL, Verb.RETRY
            self._busy = True
            at = await self._apply(target, stop, patience)
            if at is None:
                self._busy = False
                self._rested.set()
                continue
            if stop is Verb.CANCEL:
                with trio.move_on_after(patience * 4):
                    await _wait_all_terminal(self.store, [target])
            await trio.sleep(self.rng.uniform(*self.sizes.verb_gap_sec))
            until = trio.current_time()
            self.stops.append(Stop(target, at, until))
            await self._apply(target, go, patience)
            self._busy = False
            self._rested.set()

    async def _apply(self, release_id: int, verb: Verb, patience: float) -> float | None:
        """The verb's answer time when it is in effect; None when it was refused."""
        self.issued += 1
        try:
            answer = await steer(
                self.store,
                release_id,
                verb,
                by=SOAK_OPERATOR,
                reason="soak",
                patience=patience,
            )
        except Conflict as refused:
            self.refused += 1
            print(f"soak: {verb} of release {release_id} refused: {refused}", file=sys.stderr)
            return None
        if not answer.effect.in_effect:
            self.not_in_effect += 1
        return trio.current_time()


def _dispatched_while_stopped(
    fleet: SimulatedFleet, versions: Mapping[int, int], stops: Sequence[Stop]
) -> int:
    late = 0
    log = fleet.dispatch_log()
    for stop in stops:
        version = versions[stop.release_id]
        late += sum(
            1
            for at, _, task_id in log
            if stop.at <= at < stop.until and _task_version(task_id) == version
        )
    return late


def _task_version(task_id: str) -> int:
    base = task_id.rsplit("_a", 1)[0] if "_a" in task_id.rsplit("_", 1)[-1] else task_id
    return int(base.rsplit("_", 1)[1])


@attrs.define
class _Soak:
    sizes: SoakSizes
    database_url: str
    group: DaemonGroup
    rng: random.Random
    slots: list[Daemon] = attrs.field(factory=list)
    incarnations: Counter[int] = attrs.field(factory=Counter)
    kills: list[Kill] = attrs.field(factory=list)
    done: trio.Event = attrs.field(factory=trio.Event)

    async def start(self, slot: int) -> Daemon:
        self.incarnations[slot] += 1
        return await self.group.start(f"soak-{slot}.{self.incarnations[slot]}")

    async def kill_at_random(self) -> None:
        for number in range(self.sizes.kills):
            found = None
            if number % 2:
                # Every other kill: the first daemon to start reconciling a stopped batch
                # within the gap, else a random one at its end. Until one such kill has
                # landed the wait is longer: reconciliations are short and come when a
                # stopped batch's sibling still applies, which a short gap can miss each time.
                gap = self.rng.uniform(*self.sizes.kill_gap_sec)
                if not any(kill.reconciling for kill in self.kills):
                    gap *= RECONCILE_WAIT_FACTOR
                found = await self._wait_reconciling(gap)
            else:
                with trio.move_on_after(self.rng.uniform(*self.sizes.kill_gap_sec)):
                    await self.done.wait()
            if self.done.is_set():
                return
            if found is None:
                owners = await lease_owners(self.database_url)
                holding = [k for k, d in enumerate(self.slots) if d.daemon_id in owners]
                slot, release_id = self.rng.choice(holding or range(len(self.slots))), None
            else:
                slot, release_id = found
            victim = self.slots[slot]
            at = await database_clock(self.database_url)
            await victim.kill()
            held = await releases_held_by(self.database_url, victim.daemon_id)
            self.kills.append(Kill(victim.daemon_id, at, held, reconciling=release_id in held))
            self.slots[slot] = await self.start(slot)

    async def _wait_reconciling(self, seconds: float) -> tuple[int, int] | None:
        """(slot, release) of the next daemon to start reconciling a stopped batch, seen in
        its log as it happens; None if none does within ``seconds``."""
        seen = [len(d.events("batch.reconciling")) for d in self.slots]
        with trio.move_on_after(seconds):
            while not self.done.is_set():
                for slot, daemon in enumerate(self.slots):
                    started = daemon.events("batch.reconciling")[seen[slot] :]
                    if started:
                        return slot, int(started[-1]["release_id"])
                await trio.sleep(0.01)  # the daemons' logs grow in their reader tasks
        return None


async def run_soak(
    sizes: SoakSizes, *, database_url: str, certs: CertPaths, directory: Path
) -> SoakReport:
    """Run the soak on an empty, reachable database; ``certs`` must cover ``sizes.agents``.
    The fleet and the store live in this process; the daemons are child processes."""
    async with (
        open_loop_and_store(database_url, max_size=4) as store,
        open_world(store, certs) as world,
    ):
        low, high = sizes.apply_time
        failing = {
            # The stopped batch's failure comes early, while its sibling still applies: there
            # is a reconciliation to interrupt.
            k: Behaviour(
                apply_time=(low / 4, low / 2) if kind == "stopped batch" else sizes.apply_time,
                fail=INJECTED_FAILURE,
            )
            for k, kind in failing_agents(sizes).items()
        }
        fleet = await world.serve_fleet(
            sizes.agents, failing, behaviour=Behaviour(apply_time=(low, high))
        )
        receiver = HookReceiver(secrets.token_urlsafe(24))
        hook_url = await world.nursery.start(receiver.serve)
        hook = await store.create_webhook(WebhookSpec(hook_url, WEBHOOK_KINDS, receiver.secret))
        async with open_daemons(soak_env(sizes, certs, database_url), directory) as group:
            soak = _Soak(sizes, database_url, group, random.Random(sizes.seed))
            for slot in range(sizes.daemons):
                soak.slots.append(await soak.start(slot))
            started = trio.current_time()
            release_ids = []
            selections = lanes(await store.list_nodes(), sizes.scopes)
            expected: dict[int, ReleaseStatus] = {}
            for k in range(sizes.releases):
                lane = k % sizes.scopes
                spec = ReleaseSpec(
                    reason=f"soak {k}",
                    selection=selections[lane],
                    max_failures=1 if lane == TOLERATED_FAILURE_LANE else 0,
                )
                release_id = (await store.create_release(spec)).release.id
                release_ids.append(release_id)
                expected[release_id] = expected_status(sizes, lane)
            newest = set(release_ids[-sizes.scopes :])
            verbs = _Verbs(
                sizes, store, random.Random(sizes.seed + 1), release_ids, newest, soak.done
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(soak.kill_at_random)
                nursery.start_soon(verbs.run)
                with trio.move_on_after(sizes.deadline_sec):
                    await _wait_all_terminal(store, release_ids)
                    # A cancel ends its release: its retry, still to come, runs it again.
                    await verbs.idle()
                    await _wait_all_terminal(store, release_ids)
                    await _wait_delivered(store, hook.id)
                soak.done.set()
            seconds = trio.current_time() - started
            logs = [entry for daemon in group.daemons for entry in daemon.logs]
        # A release paused or cancelled around a kill is claimed again only when resumed:
        # its wait is the operator's, not a takeover.
        steered = {stop.release_id for stop in verbs.stops}
        kills = [
            attrs.evolve(kill, held=tuple(r for r in kill.held if r not in steered))
            for kill in soak.kills
        ]
        report = await _report(sizes, store, fleet, expected, kills, seconds, logs)
        versions = {}
        for release_id in release_ids:
            release = await store.get_release(release_id)
            assert release is not None
            versions[release_id] = release.version
        webhooks = await _webhook_counts(store, hook.id, release_ids, receiver)
        return attrs.evolve(
            report,
            **webhooks,
            verbs_issued=verbs.issued,
            verbs_refused=verbs.refused,
            verbs_not_in_effect=verbs.not_in_effect,
            dispatched_while_stopped=_dispatched_while_stopped(fleet, versions, verbs.stops),
        )


@attrs.define
class HookReceiver:
    """A webhook receiver on loopback: notes each delivery's key and checks its signature."""

    secret: str
    keys: Counter[str] = attrs.field(factory=Counter)
    bad_signatures: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        async def take(request: Request) -> Response:
            body = await request.body()
            headers = request.headers
            if not verify(
                self.secret,
                body,
                headers.get(TIMESTAMP_HEADER),
                headers.get(SIGNATURE_HEADER),
                now=time.time(),
            ):
                self.bad_signatures += 1
                return Response("bad signature", 401)
            self.keys[json.loads(body)["idempotencyKey"]] += 1
            return Response("ok")

        app = Starlette(routes=[Route("/hook", take, methods=["POST"])])
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_api, app, "127.0.0.1:0")
            task_status.started(f"http://{address}/hook")


async def _wait_delivered(store: Store, hook_id: int) -> None:
    while True:
        rows = await store.webhook_deliveries(hook_id, limit=1_000_000)
        if all(d.status is DeliveryStatus.DELIVERED for d in rows):
            return
        await trio.sleep(0.25)


async def _webhook_counts(
    store: Store, hook_id: int, release_ids: Sequence[int], receiver: HookReceiver
) -> dict[str, int]:
    """What the events call for against what the receiver got (see SoakReport)."""
    expected = set()
    for release_id in release_ids:
        for event in await store.release_events(release_id, limit=1_000_000):
            for kind in event_kinds(event, batch_done=False):
                expected.add(idempotency_key(hook_id, event.id, kind))
    rows = await store.webhook_deliveries(hook_id, limit=1_000_000)
    return {
        "webhook_expected": len(expected),
        "webhook_missing": len(expected - set(receiver.keys)),
        "webhook_undelivered": sum(d.status is not DeliveryStatus.DELIVERED for d in rows),
        "webhook_bad_signatures": receiver.bad_signatures,
        "webhook_duplicates": sum(count - 1 for count in receiver.keys.values()),
    }


async def _wait_all_terminal(store: Store, release_ids: Sequence[int]) -> None:
    waiting = list(release_ids)
    while waiting:
        release = await store.get_release(waiting[0])
        if release is not None and release.status.terminal:
            waiting.pop(0)
        else:
            await trio.sleep(0.25)


async def _report(
    sizes: SoakSizes,
    store: Store,
    fleet: SimulatedFleet,
    expected: Mapping[int, ReleaseStatus],
    kills: Sequence[Kill],
    seconds: float,
    logs: Sequence[Mapping[str, Any]],
) -> SoakReport:
    release_ids = list(expected)
    outcomes: Counter[str] = Counter()
    unexpected = []
    skipped_but_received = 0
    finished_twice = nodes_twice = two_ids = after_recorded = redispatches = mismatches = 0
    claims: dict[int, list[float]] = {}
    invariant_failures = []
    for release_id in release_ids:
        try:
            await assert_release_invariants(store, release_id, fleet)
        except AssertionError as failure:
            invariant_failures.append(f"release {release_id}: {failure}")
        release = await store.get_release(release_id)
        assert release is not None
        outcomes[release.status.value if release.status.terminal else "lost"] += 1
        # A release an operator cancelled (the soak's verbs) ends cancelled if its retry was
        # refused; any other outcome is the one its lane's agents inject.
        if release.status not in (expected[release_id], ReleaseStatus.CANCELLED) and (
            release.status.terminal
        ):
            unexpected.append(
                f"release {release_id}: {release.status}, meant {expected[release_id]}"
                f" ({release.error})"
            )
        nodes = await store.release_nodes(release_id)
        statuses = Counter(node.status for node in nodes)
        if (
            release.success_nodes != statuses[NodeStatus.SUCCESS]
            or release.failed_nodes != statuses[NodeStatus.FAILED]
            or sum(statuses.values()) != release.total_nodes
        ):
            mismatches += 1
        all_events = await store.release_events(release_id, limit=1_000_000)
        # A retry runs the release again: what must not happen twice is counted per run.
        retries = [
            k
            for k, e in enumerate(all_events)
            if e.node_id is None and (e.message or "").startswith(RETRY_MESSAGE)
        ]
        events = all_events[retries[-1] :] if retries else all_events
        release_ends = [e for e in events if e.node_id is None and e.to_status in TERMINAL_RELEASE]
        finished_twice += len(release_ends) > 1
        claim_times = [
            e.created_at.timestamp()
            for e in all_events
            if e.node_id is None and (e.message or "").startswith(CLAIM_MESSAGE)
        ]
        claims[release_id] = claim_times
        node_ends = Counter(e.node_id for e in events if e.node_id and e.to_status in TERMINAL_NODE)
        nodes_twice += sum(count > 1 for count in node_ends.values())
        first_running: dict[int, float] = {}
        for e in events:
            if e.node_id is not None and e.to_status == NodeStatus.RUNNING.value:
                first_running.setdefault(e.node_id, e.created_at.timestamp())
        for node in nodes:
            task_id = task_id_for(node.main_ip, release.version)
            ids = {t for t in fleet.task_ids(node.main_ip) if t.endswith(f"_{release.version}")}
            two_ids += not ids <= {task_id}
            if node.attempt > 1:
                continue  # retried: its first attempt's dispatches are not this run's
            skipped_but_received += bool(ids) and node.status is NodeStatus.SKIPPED
            count = fleet.dispatch_count(node.main_ip, task_id)
            redispatches += max(0, count - 1)
            # Each owner may dispatch a node it finds pending; once a dispatch is recorded
            # (running), every later owner queries the agent first, which knows the task.
            recorded_at = first_running.get(node.node_id, math.inf)
            allowed = sum(at < recorded_at for at in claim_times)
            after_recorded += count > max(1, allowed)

    takeovers = []
    for kill in kills:
        for release_id in kill.held:
            later = [at for at in claims[release_id] if at > kill.at]
            if later:
                takeovers.append(min(later) - kill.at)
    errors = sum(entry.get("level") in ("error", "critical") for entry in logs)
    return SoakReport(
        sizes=sizes,
        seconds=seconds,
        kills=len(kills),
        succeeded=outcomes[ReleaseStatus.SUCCESS.value],
        failed=outcomes[ReleaseStatus.FAILED.value] + outcomes[ReleaseStatus.CANCELLED.value],
        lost=outcomes["lost"],
        releases_finished_twice=finished_twice,
        nodes_finished_twice=nodes_twice,
        nodes_with_two_task_ids=two_ids,
        nodes_redispatched_after_recorded=after_recorded,
        redispatches=redispatches,
        counter_mismatches=mismatches,
        unexpected_outcomes=tuple(unexpected),
        skipped_but_received=skipped_but_received,
        kills_reconciling=sum(kill.reconciling for kill in kills),
        invariant_failures=tuple(invariant_failures),
        takeovers=tuple(takeovers),
        error_lines=errors,
    )


def write_report(report: SoakReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.as_dict(), indent=2) + "\n")


# --- outside pytest ---------------------------------------------------------------------------


async def _main_async(sizes: SoakSizes, directory: Path) -> SoakReport:
    certs = await trio.to_thread.run_sync(
        lambda: init_certs(directory / "certs", agents=sizes.agents)
    )
    server = EmbeddedPostgres(directory / "pg", settings=TEST_SERVER_SETTINGS)
    await server.start_async()
    try:
        url = server.create_database(f"soak_{uuid.uuid4().hex[:12]}")
        return await run_soak(sizes, database_url=url, certs=certs, directory=directory)
    finally:
        await server.stop_async()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.soak",
        description="kill -9 soak: daemons killed at random moments; prints the report. "
        "Sizes: CI's, or --big; each overridden by FLEETWAVE_SOAK_<NAME> (e.g. _RELEASES).",
    )
    parser.add_argument("--big", action="store_true", help="200 releases over 200 agents")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    sizes = SoakSizes.from_env(os.environ, big=args.big)
    directory = server_directory()
    try:
        report = trio.run(_main_async, sizes, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(report.table())
    if args.json is not None:
        write_report(report, args.json)
        print(f"report written to {args.json}")
    return 0 if report.violations == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
