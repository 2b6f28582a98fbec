"""``fleetwave bench``: how close releases come to their ideal on this machine.

No release can finish sooner than its ideal: the sum over its batches of the slowest node's
apply time. Each scenario runs the real daemon (Supervisor, ReleaseActors, NodeActors,
PostgresStore on an embedded PostgreSQL of its own) against simulated agents, takes the
apply times the agents actually drew, and reports figures. It is a benchmark, never a test.

Scenarios:

- a: one release over ``nodes`` in-process simulated agents, plan [1, "100%"];
- b: one release over ``nodes`` agents served over mutual TLS by ``fleetwave agent-sim``
  in a process of its own; this process is the daemon;
- c: ``releases`` releases of ``nodes`` nodes each (distinct nodes), all pending when the
  daemon starts;
- d: ``releases`` releases of ``nodes`` nodes each (distinct nodes, chosen by name), created
  one every ``PICKUP_SPACING`` seconds while the daemon runs: pick-up latency. (Releases
  sharing a node wait for each other, which is not what this measures.)

Clocks: in-process agents share the daemon's trio clock; served agents report wall-clock
``createdAt``/``finishedAt``, so that scenario measures on the wall clock (same machine).
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio

from fleetwave.agent.certs import init_certs
from fleetwave.agent.client import AgentClient, build_http_client
from fleetwave.agent.errors import AgentError
from fleetwave.agent.protocol import AgentAddress, agent_hosts
from fleetwave.agent.sim import Behaviour, SimulatedFleet, free_agent_port
from fleetwave.config import Settings
from fleetwave.config.logging import configure_logging
from fleetwave.inprocess import DoneWatch, in_process_agents
from fleetwave.store.embedded import EmbeddedPostgres, open_embedded_postgres
from fleetwave.store.factory import open_store
from fleetwave.store.metered import metered
from fleetwave.store.models import ReleaseSpec, ReleaseStatus, task_id_for
from fleetwave.store.postgres import PostgresStore
from fleetwave.store.selection import NodeSelection
from fleetwave.supervisor import Supervisor

SCENARIOS = ("a", "b", "c", "d")
PICKUP_SPACING = 1.0
"""Seconds between the releases of scenario d."""
QUERY_ATTEMPTS = 3
AGENT_SIM_STARTS = 3
"""Tries to start scenario b's agents, each on a port found free on all their addresses."""
"""Tries per task when reading the served agents' task times after a run."""
SERVER_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "top",
    "pg_stat_statements.track_utility": "on",
    "max_connections": "100",
}
"""The bench's own server: durability left at PostgreSQL's defaults, statements counted."""


@attrs.frozen
class Scenario:
    name: str
    nodes: int
    """Nodes per release."""
    releases: int
    apply_time: tuple[float, float]
    title: str

    @property
    def total_nodes(self) -> int:
        """Distinct nodes (agents) the scenario registers."""
        return self.nodes if self.name in ("a", "b") else self.nodes * self.releases

    @property
    def node_tasks(self) -> int:
        """Node runs over all releases: what per-node figures divide by."""
        return self.nodes * self.releases


DEFAULTS: Mapping[str, Scenario] = {
    "a": Scenario("a", 10_000, 1, (5.0, 15.0), "one release, in-process agents"),
    "b": Scenario("b", 1_000, 1, (5.0, 15.0), "one release, agents over mTLS in another process"),
    "c": Scenario("c", 100, 100, (5.0, 15.0), "releases over disjoint nodes at once"),
    "d": Scenario("d", 10, 50, (5.0, 15.0), "pick-up latency, one release a second"),
}


def scenario(
    name: str,
    *,
    nodes: int | None = None,
    releases: int | None = None,
    apply_time: tuple[float, float] | None = None,
) -> Scenario:
    """The default scenario ``name`` with the given sizes overridden."""
    base = DEFAULTS[name]
    if name in ("a", "b") and releases not in (None, 1):
        raise ValueError(f"scenario {name} runs one release")
    return attrs.evolve(
        base,
        nodes=nodes or base.nodes,
        releases=releases or base.releases,
        apply_time=apply_time or base.apply_time,
    )


# --- figures (pure) ----------------------------------------------------------------------


@attrs.frozen
class Sample:
    """One node run: its release, batch, when it reached the agent, the apply time drawn."""

    release_id: int
    batch: int
    dispatched_at: float
    apply_time: float


@attrs.frozen
class ReleaseTimes:
    """One release: when it could first start (creation commit, or the daemon's start if
    later) and when the daemon finished it."""

    release_id: int
    start: float
    done: float


@attrs.frozen
class BatchFigures:
    release_id: int
    batch: int
    nodes: int
    ideal_s: float
    """The slowest node's apply time."""
    span_s: float
    """First dispatch of this batch to the first dispatch of the next (or the release's end)."""
    dispatch_spread_s: float
    """First to last dispatch inside the batch."""
    tail_s: float
    """The last node finishing its apply to the next batch starting (or the release's end)."""

    @property
    def overhead_s(self) -> float:
        return self.span_s - self.ideal_s


def ideal_time(apply_times_by_batch: Mapping[int, Sequence[float]]) -> float:
    """The shortest a release can take: per batch, its slowest node; summed."""
    return sum(max(times) for times in apply_times_by_batch.values() if times)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(wall: float, ideal: float) -> float:
    """Wall time over ideal time; 1.0 is perfect."""
    if ideal <= 0:
        return math.nan
    return wall / ideal


def batch_figures(
    samples: Iterable[Sample], releases: Sequence[ReleaseTimes]
) -> list[BatchFigures]:
    """Per release and batch: ideal, span, dispatch spread and tail (see BatchFigures)."""
    grouped: dict[int, dict[int, list[Sample]]] = {}
    for sample in samples:
        grouped.setdefault(sample.release_id, {}).setdefault(sample.batch, []).append(sample)
    figures: list[BatchFigures] = []
    for release in releases:
        batches = grouped.get(release.release_id, {})
        numbers = sorted(batches)
        for index, number in enumerate(numbers):
            members = batches[number]
            first = min(s.dispatched_at for s in members)
            last = max(s.dispatched_at for s in members)
            finished = max(s.dispatched_at + s.apply_time for s in members)
            end = (
                min(s.dispatched_at for s in batches[numbers[index + 1]])
                if index + 1 < len(numbers)
                else release.done
            )
            figures.append(
                BatchFigures(
                    release_id=release.release_id,
                    batch=number,
                    nodes=len(members),
                    ideal_s=max(s.apply_time for s in members),
                    span_s=end - first,
                    dispatch_spread_s=last - first,
                    tail_s=end - finished,
                )
            )
    return figures


def pickups(samples: Iterable[Sample], releases: Sequence[ReleaseTimes]) -> list[float]:
    """Seconds from each release's start to its first dispatch."""
    first: dict[int, float] = {}
    for sample in samples:
        seen = first.get(sample.release_id)
        if seen is None or sample.dispatched_at < seen:
            first[sample.release_id] = sample.dispatched_at
    return [first[r.release_id] - r.start for r in releases if r.release_id in first]


def wall_and_ideal(
    samples: Sequence[Sample], releases: Sequence[ReleaseTimes]
) -> tuple[float, float]:
    """Wall: the earliest start to the last end. Ideal: the latest any release could have
    ended, had each started at its start and taken its ideal time."""
    if not releases:
        return math.nan, math.nan
    t0 = min(r.start for r in releases)
    by_release: dict[int, dict[int, list[float]]] = {}
    for sample in samples:
        batches = by_release.setdefault(sample.release_id, {})
        batches.setdefault(sample.batch, []).append(sample.apply_time)
    wall = max(r.done for r in releases) - t0
    ideal = max(r.start - t0 + ideal_time(by_release.get(r.release_id, {})) for r in releases)
    return wall, ideal


@attrs.frozen
class Target:
    figure: str
    limit: float

    def met(self, value: float) -> bool:
        return not math.isnan(value) and value <= self.limit


TARGETS: Mapping[str, tuple[Target, ...]] = {
    "a": (
        Target("ratio", 1.15),
        Target("peak_rss_mb", 500),
        Target("sql_per_node", 0.5),
        Target("requests_per_node", 10),
    ),
    "b": (Target("ratio", 1.25),),
    "c": (Target("ratio", 1.20),),
    "d": (Target("pickup_p50_ms", 100),),
}


@attrs.frozen
class Measured:
    """What one run observed; turned into figures by ``Result.build``."""

    scenario: Scenario
    samples: tuple[Sample, ...]
    releases: tuple[ReleaseTimes, ...]
    succeeded: int
    sql_statements: int
    sql_top: tuple[tuple[int, str], ...]
    agent_requests: int
    cpu_s: float
    peak_rss_mb: float
    db_cpu_s: float | None
    agent_cpu_s: float | None
    settings: Mapping[str, Any]


def build_result(measured: Measured) -> dict[str, Any]:
    """The figures of one run, as the JSON written by ``--out``."""
    sc = measured.scenario
    wall, ideal = wall_and_ideal(measured.samples, measured.releases)
    batches = batch_figures(measured.samples, measured.releases)
    picked = [p * 1000 for p in pickups(measured.samples, measured.releases)]
    per_release = [
        ratio(
            r.done - r.start,
            ideal_time(
                _apply_by_batch(s for s in measured.samples if s.release_id == r.release_id)
            ),
        )
        for r in measured.releases
    ]
    node_tasks = sc.node_tasks
    result: dict[str, Any] = {
        "scenario": sc.name,
        "title": sc.title,
        "nodes_per_release": sc.nodes,
        "releases": sc.releases,
        "apply_time_s": list(sc.apply_time),
        "completed": measured.succeeded,
        "wall_s": wall,
        "ideal_s": ideal,
        "ratio": ratio(wall, ideal),
        "release_ratio_p50": percentile(per_release, 50),
        "release_ratio_max": max(per_release, default=math.nan),
        "overhead_per_batch_s": _mean(b.overhead_s for b in batches),
        "dispatch_spread_per_batch_s": _mean(b.dispatch_spread_s for b in batches),
        "tail_per_batch_s": _mean(b.tail_s for b in batches),
        "pickup_p50_ms": percentile(picked, 50),
        "pickup_p99_ms": percentile(picked, 99),
        "sql_statements": measured.sql_statements,
        "sql_per_node": measured.sql_statements / node_tasks,
        "sql_top": [{"calls": calls, "query": query} for calls, query in measured.sql_top],
        "agent_requests": measured.agent_requests,
        "requests_per_node": measured.agent_requests / node_tasks,
        "peak_rss_mb": measured.peak_rss_mb,
        "cpu_s": measured.cpu_s,
        "db_cpu_s": measured.db_cpu_s,
        "agent_cpu_s": measured.agent_cpu_s,
        "settings": dict(measured.settings),
    }
    if sc.releases == 1:
        result["batches"] = [
            {
                "batch": b.batch,
                "nodes": b.nodes,
                "ideal_s": b.ideal_s,
                "span_s": b.span_s,
                "dispatch_spread_s": b.dispatch_spread_s,
                "tail_s": b.tail_s,
            }
            for b in batches
        ]
    targets = {}
    for target in TARGETS[sc.name]:
        value = float(result[target.figure])
        targets[target.figure] = {"limit": target.limit, "met": target.met(value)}
    if sc.name == "c":
        targets["completed"] = {
            "limit": sc.releases,
            "met": measured.succeeded == sc.releases,
        }
    result["targets"] = targets
    return result


def _apply_by_batch(samples: Iterable[Sample]) -> dict[int, list[float]]:
    batches: dict[int, list[float]] = {}
    for sample in samples:
        batches.setdefault(sample.batch, []).append(sample.apply_time)
    return batches


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else math.nan


TABLE_ROWS = (
    ("completed", "releases succeeded", "{:d}"),
    ("wall_s", "wall time (s)", "{:.2f}"),
    ("ideal_s", "ideal time (s)", "{:.2f}"),
    ("ratio", "wall / ideal", "{:.3f}"),
    ("release_ratio_max", "worst release wall / ideal", "{:.3f}"),
    ("overhead_per_batch_s", "executor overhead per batch (s)", "{:.3f}"),
    ("dispatch_spread_per_batch_s", "  dispatch spread per batch (s)", "{:.3f}"),
    ("tail_per_batch_s", "  last finish to next step (s)", "{:.3f}"),
    ("pickup_p50_ms", "pick-up p50 (ms)", "{:.1f}"),
    ("pickup_p99_ms", "pick-up p99 (ms)", "{:.1f}"),
    ("sql_per_node", "SQL statements per node", "{:.3f}"),
    ("requests_per_node", "agent requests per node", "{:.2f}"),
    ("peak_rss_mb", "peak RSS, daemon process (MB)", "{:.0f}"),
    ("cpu_s", "CPU, daemon process (s)", "{:.1f}"),
    ("db_cpu_s", "CPU, PostgreSQL (s)", "{:.1f}"),
    ("agent_cpu_s", "CPU, agent-sim process (s)", "{:.1f}"),
)


def render_table(result: Mapping[str, Any]) -> str:
    """The figures as a two-column table, with each target and whether it was met."""
    low, high = result["apply_time_s"]
    lines = [
        f"scenario {result['scenario']}: {result['title']} "
        f"({result['releases']} x {result['nodes_per_release']} nodes, "
        f"apply {low:g}..{high:g} s)"
    ]
    targets: Mapping[str, Mapping[str, Any]] = result.get("targets", {})
    for key, label, fmt in TABLE_ROWS:
        value = result.get(key)
        if value is None:
            continue
        text = "n/a" if isinstance(value, float) and math.isnan(value) else fmt.format(value)
        target = targets.get(key)
        mark = ""
        if target is not None:
            verdict = "met" if target["met"] else "MISSED"
            mark = f"  target <= {target['limit']:g}: {verdict}"
            if key == "completed":
                mark = f"  target {target['limit']:g}: {verdict}"
        lines.append(f"  {label:<34} {text:>10}{mark}")
    return "\n".join(lines)


# --- running -----------------------------------------------------------------------------


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _proc_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_cpu(server: EmbeddedPostgres) -> float | None:
    """CPU seconds of the PostgreSQL postmaster and its live children."""
    try:
        postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    total = _proc_cpu(postmaster) or 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == postmaster:
            total += _proc_cpu(int(entry.name)) or 0.0
    return total


_STATEMENTS_FILTER = (
    "dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND query NOT ILIKE '%pg_stat_statements%'"
)


async def _psql(server: EmbeddedPostgres, sql: str) -> str:
    return await trio.to_thread.run_sync(server.psql, sql)


async def _count_statements(server: EmbeddedPostgres) -> tuple[int, tuple[tuple[int, str], ...]]:
    total = await _psql(
        server, f"SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE {_STATEMENTS_FILTER}"
    )
    top = await _psql(
        server,
        "SELECT calls || '|' || left(regexp_replace(query, '\\s+', ' ', 'g'), 90)"
        f" FROM pg_stat_statements WHERE {_STATEMENTS_FILTER} ORDER BY calls DESC LIMIT 8",
    )
    rows = []
    for line in top.splitlines():
        calls, _, query = line.partition("|")
        if calls.strip().isdigit():
            rows.append((int(calls), query.strip()))
    return int(total.strip() or 0), tuple(rows)


async def _register_nodes(
    server: EmbeddedPostgres, hosts: Sequence[str], port: int, *, enabled: bool = True
) -> None:
    """Insert the nodes as another program would, a thousand rows per statement."""
    for offset in range(0, len(hosts), 1000):
        values = ", ".join(
            f"('edge-{offset + k + 1:05d}', '{host}', {port}, {str(enabled).lower()})"
            for k, host in enumerate(hosts[offset : offset + 1000])
        )
        await _psql(
            server, f"INSERT INTO nodes (name, main_ip, agent_port, enabled) VALUES {values}"
        )


async def _enable_only(server: EmbeddedPostgres, first: int, last: int) -> None:
    """Enable nodes edge-``first`` .. edge-``last`` (1-based), disable the rest."""
    await _psql(
        server,
        f"UPDATE nodes SET enabled = (name BETWEEN 'edge-{first:05d}' AND 'edge-{last:05d}')",
    )


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _daemon_settings(settings: Settings, sc: Scenario, **overrides: Any) -> Settings:
    """The user's settings, with what the scenario needs for its ideal to be reachable:
    max_parallel at least the largest batch, max_releases at least the releases run."""
    return attrs.evolve(
        settings,
        max_parallel=max(settings.max_parallel, sc.nodes),
        max_releases=max(settings.max_releases, sc.releases),
        log_format="json",
        **overrides,
    )


def _settings_summary(settings: Settings) -> dict[str, Any]:
    names = (
        "max_parallel",
        "max_releases",
        "interval_sec",
        "flush_interval_sec",
        "poll_initial_sec",
        "poll_max_sec",
        "poll_age_factor",
        "poll_rate",
        "agent_max_connections",
        "lease_ttl_sec",
    )
    return {name: getattr(settings, name) for name in names}


async def run_scenario(
    sc: Scenario, settings: Settings, workdir: Path, log_file: TextIO
) -> dict[str, Any]:
    """Run one scenario in ``workdir`` (its own PostgreSQL, certificates); daemon logs go
    to ``log_file``."""
    _progress(f"scenario {sc.name}: starting PostgreSQL in {workdir}")
    async with open_embedded_postgres(workdir / "pg", settings=SERVER_SETTINGS) as server:
        daemon = _daemon_settings(settings, sc, database_url=server.url, data_dir=str(workdir))
        configure_logging(daemon, stream=log_file)
        async with open_store(daemon) as store:
            await _psql(server, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            if sc.name == "b":
                measured = await _run_served(sc, daemon, store, server, workdir, log_file)
            else:
                measured = await _run_in_process(sc, daemon, store, server)
    return build_result(measured)


async def _run_in_process(
    sc: Scenario, settings: Settings, store: PostgresStore, server: EmbeddedPostgres
) -> Measured:
    fleet = SimulatedFleet(sc.total_nodes, behaviour=Behaviour(apply_time=sc.apply_time))
    await _register_nodes(server, fleet.hosts, fleet.port, enabled=sc.name != "c")
    async with in_process_agents(fleet, settings) as agents:
        measured = await _drive(sc, settings, store, server, agents, trio.current_time)
    # In-process task ids are unique across the fleet: the host is part of each.
    times = {t.task_id: (t.dispatched_at, t.apply_time) for t in fleet.task_times()}
    samples = await _samples(store, measured.releases, times.get)
    return attrs.evolve(measured, samples=samples)


async def _samples(
    store: PostgresStore,
    releases: Sequence[ReleaseTimes],
    lookup: Callable[[str], tuple[float, float] | None],
) -> tuple[Sample, ...]:
    samples: list[Sample] = []
    for release in releases:
        info = await store.get_release(release.release_id)
        assert info is not None
        for node in await store.release_nodes(release.release_id):
            found = lookup(task_id_for(node.main_ip, info.version))
            if found is not None:
                samples.append(Sample(release.release_id, node.batch, found[0], found[1]))
    return tuple(samples)


async def _drive(
    sc: Scenario,
    settings: Settings,
    store: PostgresStore,
    server: EmbeddedPostgres,
    agents: AgentClient,
    clock: Callable[[], float],
) -> Measured:
    """Start the daemon, create the releases, wait for them all, count what it cost."""
    # Measured as `serve` runs it: every store operation recorded in the metrics.
    supervisor = Supervisor(metered(store), agents, settings)
    starts: dict[int, float] = {}
    limit = 600 + 20 * sc.apply_time[1] * max(1, sc.releases // 10)
    waiting: list[int] = []
    if sc.name == "c":
        _progress(f"creating {sc.releases} releases of {sc.nodes} nodes before the daemon starts")
        for k in range(sc.releases):
            await _enable_only(server, k * sc.nodes + 1, (k + 1) * sc.nodes)
            created = await store.create_release(ReleaseSpec(reason="bench c"))
            waiting.append(created.release.id)
    await _psql(server, "SELECT pg_stat_statements_reset()")
    db_cpu_before = _server_cpu(server)
    cpu_before = _cpu_self()
    requests_before = agents.requests
    watch = DoneWatch(supervisor, clock, sc.releases)
    async with trio.open_nursery() as nursery:
        daemon_started = clock()
        await nursery.start(supervisor.run)
        # The watch runs from the start: a release may end while later ones are created.
        async with trio.open_nursery() as watching:
            watching.start_soon(watch.run, limit, lambda: sorted(starts))
            if waiting:
                starts = dict.fromkeys(waiting, daemon_started)
            for k in range(0 if waiting else sc.releases):
                if k:
                    await trio.sleep(PICKUP_SPACING)
                selection = None
                if sc.releases > 1:
                    names = [f"edge-{k * sc.nodes + n:05d}" for n in range(1, sc.nodes + 1)]
                    selection = NodeSelection.by_names(names)
                created = await store.create_release(
                    ReleaseSpec(reason=f"bench {sc.name}", selection=selection)
                )
                starts[created.release.id] = clock()
            _progress(f"created {sc.releases} release(s); waiting for the daemon")
        cpu = _cpu_self() - cpu_before
        requests = agents.requests - requests_before
        db_cpu_after = _server_cpu(server)
        supervisor.stop()
    if watch.timed_out:
        _progress(f"gave up after {limit:g} s; figures cover what finished")
    statements, top = await _count_statements(server)
    succeeded = 0
    for release_id in starts:
        info = await store.get_release(release_id)
        succeeded += info is not None and info.status is ReleaseStatus.SUCCESS
    releases = tuple(
        ReleaseTimes(release_id, start, watch.done.get(release_id, clock()))
        for release_id, start in sorted(starts.items())
    )
    return Measured(
        scenario=sc,
        samples=(),
        releases=releases,
        succeeded=succeeded,
        sql_statements=statements,
        sql_top=top,
        agent_requests=requests,
        cpu_s=cpu,
        peak_rss_mb=_peak_rss_mb(),
        db_cpu_s=None
        if db_cpu_before is None or db_cpu_after is None
        else db_cpu_after - db_cpu_before,
        agent_cpu_s=None,
        settings=_settings_summary(settings),
    )


async def _run_served(
    sc: Scenario,
    settings: Settings,
    store: PostgresStore,
    server: EmbeddedPostgres,
    workdir: Path,
    log_file: TextIO,
) -> Measured:
    certs = init_certs(workdir / "certs", agents=sc.total_nodes)
    hosts = agent_hosts(sc.total_nodes)
    port = free_agent_port(sc.total_nodes)
    await _register_nodes(server, hosts, port)
    settings = attrs.evolve(
        settings,
        control_cert=str(certs.control_cert),
        control_key=str(certs.control_key),
        control_ca=str(certs.ca_cert),
    )
    low, high = sc.apply_time
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWAVE_")}
    env["FLEETWAVE_LOG_FORMAT"] = "json"
    command = [
        sys.executable,
        "-m",
        "fleetwave",
        "agent-sim",
        "--count",
        str(sc.total_nodes),
        "--certs",
        str(certs.directory),
        "--apply-time",
        f"{low}..{high}",
        "--port",
        str(port),
    ]
    for attempt in range(1, AGENT_SIM_STARTS + 1):
        _progress(f"starting {sc.total_nodes} agents over mTLS on port {port} in another process")
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=log_file, env=env
        )
        assert process.stdout is not None
        with trio.fail_after(120):
            listening = await _wait_listening(process.stdout)
        if listening:
            break
        await process.wait()
        if attempt == AGENT_SIM_STARTS:
            raise RuntimeError("fleetwave agent-sim exited before listening (its log: daemon.log)")
        # Another program took the port on one of the addresses meanwhile: another port.
        port = free_agent_port(sc.total_nodes)
        command[command.index("--port") + 1] = str(port)
        await _psql(server, f"UPDATE nodes SET agent_port = {port}")
    try:
        agent_cpu_before = _proc_cpu(process.pid)
        async with build_http_client(settings) as http:
            agents = AgentClient(http, request_timeout=settings.agent_request_timeout_sec)
            measured = await _drive(sc, settings, store, server, agents, time.time)
            agent_cpu_after = _proc_cpu(process.pid)
            times = await _served_task_times(store, agents, measured.releases, port)
        samples = await _samples(store, measured.releases, times.get)
    finally:
        process.terminate()
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
    agent_cpu = (
        None
        if agent_cpu_before is None or agent_cpu_after is None
        else agent_cpu_after - agent_cpu_before
    )
    return attrs.evolve(measured, samples=samples, agent_cpu_s=agent_cpu)


async def _wait_listening(stdout: trio.abc.ReceiveStream) -> bool:
    """True once agent-sim says it listens, False when it exits first."""
    buffer = b""
    async for chunk in stdout:
        buffer += chunk
        if b"agent_sim.listening" in buffer:
            return True
    return False


async def _served_task_times(
    store: PostgresStore, agents: AgentClient, releases: Sequence[ReleaseTimes], port: int
) -> dict[str, tuple[float, float]]:
    """Each task's dispatch time and drawn apply time, as its agent reports them (ms)."""
    times: dict[str, tuple[float, float]] = {}
    limiter = trio.CapacityLimiter(64)

    async def ask(host: str, task_id: str) -> None:
        state = None
        for attempt in range(1, QUERY_ATTEMPTS + 1):
            try:
                async with limiter:
                    state = await agents.query(AgentAddress(host, port), task_id)
                break
            except AgentError:
                # A kept-alive connection the agent has just closed: ask again.
                if attempt == QUERY_ATTEMPTS:
                    raise
        if state is None or state.created_at is None or state.finished_at is None:
            return
        created = datetime.fromisoformat(state.created_at).timestamp()
        finished = datetime.fromisoformat(state.finished_at).timestamp()
        times[task_id] = (created, finished - created)

    async with trio.open_nursery() as nursery:
        for release in releases:
            info = await store.get_release(release.release_id)
            assert info is not None
            for node in await store.release_nodes(release.release_id):
                nursery.start_soon(ask, node.main_ip, task_id_for(node.main_ip, info.version))
    return times


def bench(
    sc: Scenario,
    settings: Settings,
    *,
    out: Path | None = None,
    stdout: TextIO = sys.stdout,
    command: str = "",
) -> dict[str, Any]:
    """Run ``sc``, print its table to ``stdout``, write JSON to ``out`` when given.

    Everything lives in a temporary directory, removed afterwards; the daemon's JSON log
    lines are written there too (their cost is part of the figures, their text is not).
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"fleetwave-bench-{sc.name}-"))
    try:
        with open(workdir / "daemon.log", "w") as log_file:
            result = trio.run(run_scenario, sc, settings, workdir, log_file)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["machine"] = machine()
    result["command"] = command
    print(render_table(result), file=stdout)
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def machine() -> dict[str, Any]:
    """Where the figures came from."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(pages / 2**30, 1),
        "python": sys.version.split()[0],
    }
