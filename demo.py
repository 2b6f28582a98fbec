"""``fleetwave demo``: the whole system on one machine, from nothing, in well under a minute.

One embedded PostgreSQL server (started once, from ``DIR/pg``; a fresh ``fleetwave_demo``
database each run), a private CA and certificates (``DIR/certs``), a simulated fleet of
edge agents serving HTTPS with mutual TLS on 127.0.0.2, 127.0.0.3, ... (in this process), and
the daemon as a child process (``fleetwave serve``, API over HTTPS on a free loopback port
with the certificate ``DIR/certs/api.crt`` of the same private CA, logs in
``DIR/serve.log``), and a health endpoint over plain HTTP on a free loopback port
(agent/health_sim.py). Then releases through the API, shown live, in four acts:

1. every agent applies the config: the release succeeds;
2. the canary's agent (the first node, alone in batch 1) is switched to report every apply
   failed: the release fails at batch 1 and batch 2 is skipped, never dispatched;
3. a release is paused mid-batch (the answer comes once no dispatch will start; the nodes
   in flight finish) and resumed, and goes on where it stopped; then a bad version fails in
   its second batch and is rolled back: a new release restores the config its nodes ran
   before, canary first, and the fleet view shows every node on it again (3 agents or more);
4. a release whose strategy bakes after each batch under an HTTP health check of that
   endpoint, with ``onFailure`` rollback: the canary applies it, and during its bake the
   endpoint turns unhealthy (the canary "serves 5xx"); past its failure limit the check fails
   the release ("health check edge failed: ..."), no later batch is dispatched, and the
   release rolls itself back: the canary runs the previous config again.

Exit status 0 when every release ended as expected, 1 otherwise, 130 when interrupted. With
``keep_running`` everything stays up (API, daemon, fleet, database) until Ctrl-C. Every
child is stopped on the way out: the daemon by SIGTERM (it hands its leases back), the
database last.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Final, TextIO

import attrs
import httpx
import trio
from hypercorn.trio import serve as hypercorn_serve

from fleetwave.agent.certs import CertPaths, api_env_lines, init_certs, mtls_env_lines
from fleetwave.agent.health_sim import PATH as HEALTH_PATH
from fleetwave.agent.health_sim import HealthEndpoint
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from fleetwave.api import render
from fleetwave.api.client import ApiClient, ApiFailure, ClientError, ClientTls, open_http
from fleetwave.api.server import hypercorn_config
from fleetwave.store.embedded import EmbeddedPostgres, EmbeddedPostgresError

DEFAULT_DIR: Final = Path(".fleetwave/demo")
DEFAULT_AGENTS: Final = 20
MAX_AGENTS: Final = 200
DATABASE: Final = "fleetwave_demo"
APPLY_TIME: Final = (0.5, 2.0)
CANARY_ERROR: Final = "nginx -t: unexpected end of file in /etc/nginx/conf.d/edge.conf:42"
"""What the canary's agent reports (a simulated failure, worded as a real one would be)."""

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INTERRUPTED: Final = 130

DAEMON_READY_TIMEOUT: Final = 60.0
RELEASE_TIMEOUT: Final = 60.0
CHILD_STOP_TIMEOUT: Final = 15.0
TOKEN_TIMEOUT: Final = 30.0
WATCH_INTERVAL: Final = 0.5
LOG_TAIL_LINES: Final = 20

# Snappier than the production defaults, so the demo shows a release in seconds: claims are
# also woken by NOTIFY at once; these only shorten the agent polls and the fallback poll.
DAEMON_TIMING: Final[Mapping[str, str]] = {
    "RELEASE_EXECUTOR_INTERVAL_SEC": "1",
    "FLEETWAVE_POLL_INITIAL_SEC": "0.3",
    "FLEETWAVE_POLL_MAX_SEC": "0.6",
    "FLEETWAVE_FLUSH_INTERVAL_SEC": "0.1",
}
_FOREIGN_SETTINGS: Final = ("FLEETWAVE_", "RELEASE_EXECUTOR_", "CONTROL_", "MTLS_ENABLED")
_CURSOR_UP_AND_CLEAR: Final = "\x1b[{}F\x1b[J"


class DemoError(Exception):
    """The demo could not set something up; ``str()`` says what, for the person watching."""


@attrs.frozen
class DemoOptions:
    agents: int = DEFAULT_AGENTS
    keep_running: bool = False
    data_dir: Path = DEFAULT_DIR


@attrs.frozen
class Outcome:
    """How one release ended, as the API reports it."""

    release_id: int
    version: int
    status: str
    total: int
    success: int
    failed: int
    skipped: int
    cancelled: int
    seconds: float | None
    error: str | None

    @classmethod
    def from_detail(cls, data: Mapping[str, Any]) -> Outcome:
        release = data["release"]
        return cls(
            release_id=release["id"],
            version=release["version"],
            status=release["status"],
            total=release["totalNodes"],
            success=release["successNodes"],
            failed=release["failedNodes"],
            skipped=release["skippedNodes"],
            cancelled=release["cancelledNodes"],
            seconds=_seconds_between(release.get("startedAt"), release.get("finishedAt")),
            error=release.get("error"),
        )

    def line(self) -> str:
        took = "-" if self.seconds is None else f"{self.seconds:.1f}s"
        text = (
            f"release {self.release_id} (version {self.version}): {self.status:<8} "
            f"success {self.success}/{self.total}, failed {self.failed}, "
            f"skipped {self.skipped}, cancelled {self.cancelled}; took {took}"
        )
        return text + (f"\n    error: {self.error}" if self.error else "")


def _seconds_between(start: object, end: object) -> float | None:
    if not isinstance(start, str) or not isinstance(end, str):
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def run_demo(options: DemoOptions, out: TextIO | None = None) -> int:
    """Run the demo (blocking); the exit status. A failure to set something up is reported
    in one paragraph on stderr (status 1), not as a traceback."""
    try:
        return trio.run(_demo, options, out or sys.stdout)
    except BaseExceptionGroup as group:
        expected, rest = group.split((DemoError, ClientError, EmbeddedPostgresError))
        if expected is None or rest is not None:
            raise
        for error in _leaves(expected):
            print(f"fleetwave demo: {error}", file=sys.stderr)
        return EXIT_FAILED
    except (DemoError, ClientError, EmbeddedPostgresError) as error:
        print(f"fleetwave demo: {error}", file=sys.stderr)
        return EXIT_FAILED


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            leaves.extend(_leaves(error))
        else:
            leaves.append(error)
    return leaves


async def _demo(options: DemoOptions, out: TextIO) -> int:
    base = options.data_dir.expanduser().absolute()
    base.mkdir(parents=True, exist_ok=True)
    say = _Say(out)
    interrupted = False
    result = _Result()
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            nonlocal interrupted
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    interrupted = True
                    say("\nstopping ...")
                    nursery.cancel_scope.cancel(reason="interrupted")
                    return

        nursery.start_soon(on_signal)
        await _run_everything(options, base, say, result)
        nursery.cancel_scope.cancel()
    if interrupted:
        say("stopped: the daemon, the fleet and the database are down")
    if result.code is None:
        return EXIT_INTERRUPTED
    return result.code


@attrs.define
class _Result:
    code: int | None = None
    """Set once every act has ended."""


async def _run_everything(options: DemoOptions, base: Path, say: _Say, result: _Result) -> None:
    releases = 4 + (3 if options.agents >= ACT_THREE_AGENTS else 0)
    say(f"fleetwave demo: {options.agents} edge agents, {releases} releases; files in {base}")
    say("- database: embedded PostgreSQL ...")
    async with _database(base / "pg") as (server, url):
        say(f"  PostgreSQL on 127.0.0.1:{server.actual_port}, database {DATABASE} (fresh)")
        certs = init_certs(base / "certs", agents=options.agents)
        say(f"- certificates: private CA, control, agent and API certificates in {certs.directory}")
        fleet = SimulatedFleet(options.agents, behaviour=Behaviour(apply_time=APPLY_TIME), port=0)
        async with trio.open_nursery() as services:
            await services.start(fleet.serve, certs.directory)
            first, last = fleet.address(1), fleet.address(len(fleet))
            say(
                f"- fleet: {len(fleet)} simulated agents over mutual TLS, "
                f"{first.host}:{first.port} ... {last.host}:{last.port}"
            )
            health = HealthEndpoint()
            health_url = await services.start(_serve_health, health)
            say(f"- health endpoint: {health_url} (plain HTTP; healthy until the last act)")
            env = _child_env(certs, url)
            async with _daemon(env, base / "serve.log", _client_tls(certs)) as api:
                say(f"- daemon: `fleetwave serve`, API on {api}, log {base / 'serve.log'}")
                token = await _create_token(env, base / "token.log")
                say("- API token created with `fleetwave token create demo --role admin`")
                async with open_http(api, token, tls=_client_tls(certs)) as http:
                    client = ApiClient(http)
                    result.code = await _releases(client, fleet, health, health_url, say)
                    say("")
                    say(f"API:   {api}")
                    say(f"token: {token}")
                    say(
                        f"dashboard: {api}/ (sign in with the token; a browser trusts it once "
                        f"it trusts {certs.ca_cert})"
                    )
                    say(f"logs:  {base / 'serve.log'}")
                    say("follow events as they happen (server-sent events):")
                    say(
                        f"  FLEETWAVE_API={api} FLEETWAVE_API_CA={certs.ca_cert} "
                        "FLEETWAVE_TOKEN=<token> fleetwave release watch ID"
                    )
                    say(
                        f'  curl -sN --cacert {certs.ca_cert} -H "Authorization: Bearer '
                        f'$FLEETWAVE_TOKEN" "{api}/api/v1/events?follow=true"'
                    )
                    say(f"metrics: {api}/metrics (Prometheus, same token)")
                    if options.keep_running:
                        command = command_as_typed()
                        say("")
                        say("Everything keeps running, the canary's agent and the health endpoint")
                        say("healthy again, so a new release succeeds on every node. In another")
                        say("terminal:")
                        say(
                            f"  export FLEETWAVE_API={api} FLEETWAVE_API_CA={certs.ca_cert} "
                            f"FLEETWAVE_TOKEN={token}"
                        )
                        say(f"  {command} release list; {command} release show 2")
                        say(f'  {command} release create --reason "my first release"')
                        say(f"  {command} nodes list; {command} nodes maintenance edge-002")
                        say(f"  {command} release watch 2   # or a new release, live")
                        say(f"  curl -s '{health_url}'   # what the health check reads")
                        say("Ctrl-C stops the daemon, the fleet and the database.")
                        await trio.sleep_forever()
                    say("stopping everything (--keep-running would keep it up)")
            services.cancel_scope.cancel()


async def _releases(
    client: ApiClient, fleet: SimulatedFleet, health: HealthEndpoint, health_url: str, say: _Say
) -> int:
    node_ids = await _register(client, fleet)
    say(f"- nodes: {len(node_ids)} registered through the API (POST /api/v1/nodes)")

    say("")
    say("Release 1: every agent applies the new config.")
    first = await _release(client, "demo: roll out config to every edge", say)

    canary = await _canary_of_next_release(client)
    say("")
    say(
        f"Release 2: node {canary} is the canary (batch 1). Its agent "
        f"({fleet.address(1).host}) is now set to report every apply failed: "
        f'"{CANARY_ERROR}".'
    )
    if canary != node_ids[0]:
        raise DemoError(f"expected node {node_ids[0]} to be the canary, the API chose {canary}")
    fleet.set_behaviour(1, Behaviour(apply_time=APPLY_TIME, fail=CANARY_ERROR))
    second = await _release(client, "demo: a config the canary rejects", say)
    # The failing act is over: the fleet is left healthy for whoever keeps it running.
    fleet.set_behaviour(1, Behaviour(apply_time=APPLY_TIME))

    lines = ["  " + first.line(), "  " + second.line()]
    problems = _first_acts_problems(first, second)
    untouched = " and never touched the other nodes (batch 2 skipped)" if second.total > 1 else ""
    expected = [f"the first release succeeded; the second stopped at its canary{untouched};"]
    if len(fleet) < ACT_THREE_AGENTS:
        say("")
        say(
            f"Act three (pause, resume, rollback) needs {ACT_THREE_AGENTS} agents or more: skipped."
        )
    else:
        third, paused_view, fourth, rollback, fleet_data = await _third_act(client, fleet, say)
        lines += [
            "  " + third.line(),
            f"    {paused_view}",
            "  " + fourth.line(),
            "  " + rollback.line(),
            f"    the rollback of release {fourth.release_id}, canary first",
            f"    {_fleet_line(fleet_data)}",
        ]
        problems += _third_act_problems(third, fourth, rollback, fleet_data, len(fleet))
        expected.append(
            "the third, paused mid-batch, went on where it stopped once resumed; the fourth, a "
            "bad version, was rolled back and every node ran the last good config again;"
        )
    act = await _health_act(client, health, health_url, say)
    lines += act.lines()
    problems += act.problems(len(fleet))
    expected.append(act.expected())

    say("")
    say("Summary")
    for line in lines:
        say(line)
    for problem in problems:
        say(f"  UNEXPECTED: {problem}")
    if not problems:
        for line in textwrap.wrap("as expected: " + " ".join(expected), width=SUMMARY_WIDTH):
            say("  " + line)
    return EXIT_FAILED if problems else EXIT_OK


def _first_acts_problems(first: Outcome, second: Outcome) -> list[str]:
    problems = []
    if first.status != "success" or first.success != first.total:
        problems.append("release 1 should have succeeded on every node")
    if second.status != "failed" or second.failed != 1 or second.skipped != second.total - 1:
        problems.append("release 2 should have failed at its canary with every other node skipped")
    return problems


ACT_THREE_AGENTS: Final = 3
"""Act three pauses a release in its second batch: a canary and two nodes at least."""
PAUSE_AFTER: Final = 5
"""The third release is paused once this many nodes of its second batch succeeded."""
BAD_VERSION_ERROR: Final = 'nginx: [emerg] unknown directive "proxy_cache_lock_age2"'
BAD_AGENTS: Final = (7, 8)
"""Agents that reject the bad version (in its second batch, after some nodes applied it);
in a smaller fleet, its last agent."""
STEERED_PARALLEL: Final = 3
SUMMARY_WIDTH: Final = 86


async def _third_act(
    client: ApiClient, fleet: SimulatedFleet, say: _Say
) -> tuple[Outcome, str, Outcome, Outcome, Any]:
    pause_after = min(PAUSE_AFTER, (len(fleet) - 1) // 3)
    parallel = max(1, min(STEERED_PARALLEL, (len(fleet) - 1) // 3))
    bad_agents = tuple(k for k in BAD_AGENTS if k <= len(fleet)) or (len(fleet),)
    say("")
    say(
        f"Release 3: {parallel} node(s) at a time; paused once {pause_after} node(s) of "
        "batch 2 applied it, then resumed."
    )
    created = await client.create_release(
        {
            "target": "cdn",
            "reason": "demo: a rollout paused mid-batch",
            "plan": [1, "100%"],
            "maxParallel": parallel,
        }
    )
    say(render.created(created))
    third_id = int(created["releaseId"])
    with trio.move_on_after(RELEASE_TIMEOUT) as waited:
        while not _batch_two_under_way(await client.release(third_id), pause_after):  # noqa: ASYNC110
            await trio.sleep(0.1)
    if waited.cancelled_caught:
        raise DemoError(f"release {third_id} did not get to batch 2 in {RELEASE_TIMEOUT:g}s")
    try:
        paused = await client.steer(third_id, "pause", reason="demo: error rate looks high")
    except ApiFailure as refused:  # it ended before the pause: nothing left to stop
        say(f"  fleetwave release pause {third_id}: {refused}")
    else:
        say(f"  fleetwave release pause {third_id}: {paused['message']}")
    with trio.move_on_after(RELEASE_TIMEOUT):
        while _counts(await client.release(third_id))["running"]:  # noqa: ASYNC110 - the API
            await trio.sleep(0.1)
    held = _counts(await client.release(third_id))
    paused_view = (
        f"paused mid-batch: {held['success']} nodes done, {held['pending']} held back, "
        f"none running; then resumed"
    )
    say(f"  in-flight nodes finished: {held['success']} done, {held['pending']} held back")
    await trio.sleep(1.0)
    status = (await client.release(third_id))["release"]["status"]
    if status == "paused":
        resumed = await client.steer(third_id, "resume", reason="demo: false alarm")
        say(f"  fleetwave release resume {third_id}: {resumed['message']}")
    else:
        paused_view = f"the pause came after its last dispatch: it ended {status}"
        say(f"  {paused_view}")
    third = await _follow(client, third_id, say)

    say("")
    say(
        f"Release 4: a bad version; agents {', '.join(str(k) for k in bad_agents)} reject it "
        f'("{BAD_VERSION_ERROR}"), in batch 2, after other nodes applied it.'
    )
    for k in bad_agents:
        fleet.set_behaviour(k, Behaviour(apply_time=APPLY_TIME, fail=BAD_VERSION_ERROR))
    created = await client.create_release(
        {
            "target": "cdn",
            "reason": "demo: a bad version",
            "plan": [1, "100%"],
            "maxParallel": parallel,
        }
    )
    say(render.created(created))
    fourth = await _follow(client, int(created["releaseId"]), say)
    for k in bad_agents:
        fleet.set_behaviour(k, Behaviour(apply_time=APPLY_TIME))
    answer = await client.steer(fourth.release_id, "rollback", reason="demo: bad directive")
    say(f"  fleetwave release rollback {fourth.release_id}: {answer['message']}")
    rollback = await _follow(client, int(answer["rollback"]["id"]), say)
    fleet_data = await client.fleet()
    say(render.fleet_view(fleet_data))
    return third, paused_view, fourth, rollback, fleet_data


def _third_act_problems(
    third: Outcome, fourth: Outcome, rollback: Outcome, fleet_data: Any, agents: int
) -> list[str]:
    problems = []
    if third.status != "success" or third.success != third.total:
        problems.append("release 3 should have succeeded on every node once resumed")
    if fourth.status != "failed" or fourth.success < 1:
        problems.append("release 4 should have failed in batch 2 after some nodes applied it")
    if rollback.status != "success" or rollback.success != rollback.total:
        problems.append("the rollback of release 4 should have succeeded on every node")
    if fleet_data["differing"] or [v["nodes"] for v in fleet_data["versions"]] != [agents]:
        problems.append("every node should run the config of release 3 after the rollback")
    return problems


def _fleet_line(data: Any) -> str:
    versions = ", ".join(
        f"config {v['configVersion']}: {v['nodes']} nodes" for v in data["versions"]
    )
    return f"fleet after the rollback: {versions}; {len(data['differing'])} differ"


HEALTH_BAKE: Final = 10
"""Seconds of each bake of the health-checked release; its check cuts the first one short."""
HEALTH_CHECK: Final = "edge"
HEALTH_INTERVAL: Final = 0.2
HEALTH_LIMIT: Final = 3
HEALTH_TIMEOUT: Final = 1
HEALTHY_FIRST: Final = 3
"""Healthy answers the check gets during the canary's bake before the canary serves 5xx."""
UNHEALTHY: Final = "{node} serves 5xx: 41% of its requests since it applied version {version}"
"""Why the health endpoint turns unhealthy mid-bake (the canary's errors, as a health page
would say)."""


@attrs.frozen
class HealthAct:
    """The release baked under a health check that failed, and the rollback it made itself."""

    failed: Outcome
    expected_error: str
    applied: tuple[str, ...]
    """Nodes that applied the failed release."""
    healthy: int
    unhealthy: int
    watched: float
    """Seconds from the first probe to the last (the bake until the check failed)."""
    previous: int | None
    """The config every node ran before the release."""
    rollback: Outcome | None = None
    rollback_config: int | None = None
    rolled: tuple[str, ...] = ()
    """Nodes of the rollback release."""
    restored: tuple[tuple[str, int | None], ...] = ()
    """Each node that applied the failed release and the config it runs now (nodes list)."""
    fleet_data: Any = None

    def lines(self) -> list[str]:
        lines = [
            "  " + self.failed.line(),
            f"    health check {HEALTH_CHECK}: healthy {self.healthy} times in the canary's "
            f"{HEALTH_BAKE}s bake, then {self.unhealthy} failures in a row (failureLimit "
            f"{HEALTH_LIMIT}): the bake ended after {self.watched:.1f}s",
        ]
        if self.rollback is not None:
            lines += [
                "  " + self.rollback.line(),
                f"    the rollback of release {self.failed.release_id} by its onFailure, canary "
                f"first; now {_runs(self.restored)}",
                f"    {_fleet_line(self.fleet_data)}",
            ]
        return lines

    def expected(self) -> str:
        rollback = "" if self.rollback is None else f" (release {self.rollback.release_id})"
        return (
            f"{_ordinal(self.failed.release_id)} baked its canary under a health check that "
            "turned unhealthy mid-bake: it failed naming the check, went no further than its "
            f"canary, and rolled itself back{rollback}: every node runs the last good config "
            "again."
        )

    def problems(self, agents: int) -> list[str]:
        failed, rollback = self.failed, self.rollback
        number = f"release {failed.release_id}"
        problems = []
        if failed.status != "failed" or failed.error != self.expected_error:
            problems.append(f"{number} should have failed with: {self.expected_error}")
        if failed.success != 1 or failed.skipped != failed.total - 1:
            problems.append(f"{number} should have gone no further than its canary")
        if self.unhealthy != HEALTH_LIMIT:
            problems.append(
                f"its check should have failed {HEALTH_LIMIT} times in a row and no more, "
                f"not {self.unhealthy}"
            )
        if rollback is None:
            problems.append(f"{number} should have rolled itself back")
            return problems
        if rollback.status != "success" or rollback.success != rollback.total:
            problems.append(f"the rollback of {number} should have succeeded on every node")
        if self.rolled != self.applied:
            problems.append(f"the rollback should have run on the nodes that applied {number}")
        if self.rollback_config != self.previous or any(
            version != self.previous for _, version in self.restored
        ):
            problems.append(f"the nodes that applied {number} should run config {self.previous}")
        versions = [(v["configVersion"], v["nodes"]) for v in self.fleet_data["versions"]]
        if self.fleet_data["differing"] or versions != [(self.previous, agents)]:
            problems.append(f"every node should run config {self.previous} again")
        return problems


async def _health_act(
    client: ApiClient, health: HealthEndpoint, health_url: str, say: _Say
) -> HealthAct:
    before = await client.fleet()
    previous = [v["configVersion"] for v in before["versions"]]
    plan: list[object] = [1, {"pause": HEALTH_BAKE}, "50%", {"pause": HEALTH_BAKE}, "100%"]
    check = {
        "name": HEALTH_CHECK,
        "http": {"url": health_url + "?release={release}&batch={batch}"},
        "interval": HEALTH_INTERVAL,
        "failureLimit": HEALTH_LIMIT,
        "timeout": HEALTH_TIMEOUT,
    }
    created = await client.create_release(
        {
            "target": "cdn",
            "reason": "demo: a config the canary applies, then serves errors with",
            "plan": plan,
            "healthChecks": [check],
            "onFailure": "rollback",
        }
    )
    release_id = int(created["releaseId"])
    say("")
    say(
        f"Release {release_id}: plan {json.dumps(plan)}, health check {HEALTH_CHECK} (GET "
        f"{health_url} every {HEALTH_INTERVAL:g}s, failureLimit {HEALTH_LIMIT}), onFailure "
        "rollback. The canary applies it, then serves errors during its bake."
    )
    say(render.created(created))
    canary = _names(await client.release(release_id))[0]
    reason = UNHEALTHY.format(node=canary, version=created["version"])
    notes: list[str] = []

    async def turn_unhealthy() -> None:
        await health.wait_for(
            lambda _: sum(p.healthy for p in health.of(release_id, 1)) >= HEALTHY_FIRST
        )
        health.turn_unhealthy(reason)
        notes.append(
            f"  during the canary's bake: health check {HEALTH_CHECK} answered healthy "
            f"{HEALTHY_FIRST} times; now {reason}: the health endpoint answers 503"
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(turn_unhealthy)
        failed = await _follow(client, release_id, say, notes)
        nursery.cancel_scope.cancel()
    probes = health.of(release_id)
    detail = await client.release(release_id)
    act = HealthAct(
        failed=failed,
        expected_error=f"health check {HEALTH_CHECK} failed: HTTP 503: {reason}",
        applied=_names(detail, "success"),
        healthy=sum(p.healthy for p in probes),
        unhealthy=sum(not p.healthy for p in probes),
        watched=probes[-1].at - probes[0].at if probes else 0.0,
        previous=previous[0] if len(previous) == 1 else None,
    )
    health.turn_healthy()  # for whoever keeps the demo running
    if failed.status != "failed":
        return act
    rollback_id: int | None = None
    with trio.move_on_after(RELEASE_TIMEOUT):
        while (rollback_id := await _rollback_of(client, release_id)) is None:  # noqa: ASYNC110
            await trio.sleep(0.1)
    if rollback_id is None:
        say(f"  release {release_id} was not rolled back within {RELEASE_TIMEOUT:g}s")
        return act
    rollback_detail = await client.release(rollback_id)
    say(
        f"  onFailure rollback: release {rollback_id} restores config "
        f"{rollback_detail['release']['configVersion']} on the node(s) that applied release "
        f"{release_id}, canary first"
    )
    rollback = await _follow(client, rollback_id, say)
    fleet_data = await client.fleet()
    say(render.fleet_view(fleet_data))
    versions = {n["name"]: n["appliedVersion"] for n in (await client.list_nodes())["items"]}
    restored = tuple((name, versions.get(name)) for name in act.applied)
    say(f"  nodes list: {_runs(restored)}")
    return attrs.evolve(
        act,
        rollback=rollback,
        rollback_config=rollback_detail["release"]["configVersion"],
        rolled=_names(rollback_detail),
        restored=restored,
        fleet_data=fleet_data,
    )


def _runs(nodes: Sequence[tuple[str, int | None]]) -> str:
    return ", ".join(f"{name} runs config {version}" for name, version in nodes) or "no node"


ORDINALS: Final = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh")


def _ordinal(release_id: int) -> str:
    """How the summary names a release of the demo: "the third", else "release 12"."""
    if 1 <= release_id <= len(ORDINALS):
        return f"the {ORDINALS[release_id - 1]}"
    return f"release {release_id}"


def _names(detail: Any, status: str | None = None) -> tuple[str, ...]:
    """Names of the release's nodes (those of ``status``, when given), in batch order."""
    return tuple(
        node["nodeName"]
        for batch in detail["batches"]
        for node in batch["nodes"]
        if status is None or node["status"] == status
    )


async def _rollback_of(client: ApiClient, release_id: int) -> int | None:
    """The id of the rollback release of ``release_id``, once there is one."""
    listed = await client.list_releases(page_size=5)
    for item in listed["items"]:
        if item["rollbackOf"] == release_id:
            return int(item["id"])
    return None


def _counts(data: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for batch in data["batches"]:
        for state, count in render.batch_counts(batch).items():
            counts[state] = counts.get(state, 0) + count
    return counts


def _batch_two_under_way(data: Any, done: int) -> bool:
    """The canary and ``done`` nodes of batch 2 succeeded and batch 2 is being dispatched,
    or (a slow machine) nothing is left to dispatch: the moment for the pause."""
    counts = _counts(data)
    return counts["pending"] == 0 or (counts["success"] >= 1 + done and counts["running"] > 0)


async def _follow(
    client: ApiClient, release_id: int, say: _Say, notes: list[str] | None = None
) -> Outcome:
    with trio.move_on_after(RELEASE_TIMEOUT) as waited:
        data = await _watch(client, release_id, say, notes)
    if waited.cancelled_caught:
        raise DemoError(f"release {release_id} did not end within {RELEASE_TIMEOUT:g}s")
    return Outcome.from_detail(data)


async def _register(client: ApiClient, fleet: SimulatedFleet) -> list[int]:
    ids = []
    for k in range(1, len(fleet) + 1):
        address = fleet.address(k)
        node = await client.add_node(f"edge-{k:03d}", address.host, address.port)
        ids.append(int(node["id"]))
    return ids


async def _canary_of_next_release(client: ApiClient) -> int:
    """The node a new release puts alone in batch 1: the first enabled, online node."""
    nodes = await client.list_nodes()
    online = [n["id"] for n in nodes["items"] if n["enabled"] and n["status"] == "online"]
    if not online:
        raise DemoError("no online node registered")
    return int(min(online))


async def _release(client: ApiClient, reason: str, say: _Say) -> Outcome:
    created = await client.create_release({"target": "cdn", "reason": reason})
    say(render.created(created))
    return await _follow(client, int(created["releaseId"]), say)


async def _watch(
    client: ApiClient, release_id: int, say: _Say, notes: list[str] | None = None
) -> Any:
    """The CLI's watch view, redrawn in place on a terminal, until the release ends. Lines
    put in ``notes`` meanwhile are written below the view, the next view after them."""
    shown: str | None = None
    while True:
        data = await client.release(release_id)
        view = render.watch_view(data)
        if notes:
            for note in notes:
                say(note)
            notes.clear()
            shown = None
        if view != shown:
            say.redraw(view, replacing=shown)
            shown = view
        if data["release"]["status"] in {"success", "failed", "cancelled"}:
            return data
        await trio.sleep(WATCH_INTERVAL)


async def _serve_health(
    endpoint: HealthEndpoint, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """The health endpoint over plain HTTP on a free loopback port until cancelled; reports
    its URL once listening."""
    config = hypercorn_config("127.0.0.1:0")
    # hypercorn types scopes as TypedDicts; Starlette's are looser: the protocol is the same.
    app: Any = endpoint.app()
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(hypercorn_serve, app, config))
        task_status.started(binds[0] + HEALTH_PATH)


# --- children and the database ----------------------------------------------------------------


def command_as_typed(path: str | None = None, cwd: Path | None = None) -> str:
    """How the person watching can run this fleetwave in a shell: ``fleetwave`` when that
    name on ``path`` (PATH) is this environment's script (an activated venv), else the
    script's path (``.venv/bin/fleetwave`` from the checkout), else ``python -m fleetwave``."""
    script = Path(sys.executable).with_name("fleetwave")
    if not script.is_file():
        return f"{sys.executable} -m fleetwave"
    found = shutil.which("fleetwave", path=path)
    if found is not None and Path(found).resolve() == script.resolve():
        return "fleetwave"
    try:
        relative = script.relative_to(cwd or Path.cwd())
    except ValueError:
        return str(script)
    # A bare name would be looked up on PATH: a relative path needs a slash.
    return str(relative) if len(relative.parts) > 1 else f"./{relative}"


def cli_command(*args: str) -> list[str]:
    """``fleetwave ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "fleetwave", *args]


def _client_tls(certs: CertPaths) -> ClientTls:
    """How the demo's client verifies the daemon's API: by the demo's private CA."""
    return ClientTls(ca=str(certs.ca_cert))


def _child_env(certs: CertPaths, database_url: str) -> dict[str, str]:
    """This environment without any fleetwave setting of its own, plus the demo's (the API
    served over HTTPS with the demo's API certificate)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_SETTINGS)}
    for line in [*mtls_env_lines(certs), *api_env_lines(certs)]:
        name, _, value = line.partition("=")
        env[name] = value
    env.update(DAEMON_TIMING)
    env.update(
        {
            "FLEETWAVE_DATABASE_URL": database_url,
            "FLEETWAVE_API_BIND": "127.0.0.1:0",
            "FLEETWAVE_LOG_FORMAT": "json",
            "FLEETWAVE_DAEMON_ID": "demo-daemon",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@asynccontextmanager
async def _database(data_dir: Path) -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    """The embedded server (started once for every process of the demo) and a fresh
    database on it; the server is stopped on exit if the demo started it."""
    server = EmbeddedPostgres(data_dir)
    try:
        await server.start_async()
        url = await trio.to_thread.run_sync(_fresh_database, server)
    except EmbeddedPostgresError:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.close)
        raise
    try:
        yield server, url
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.close)


def _fresh_database(server: EmbeddedPostgres) -> str:
    server.drop_database(DATABASE)
    return server.create_database(DATABASE)


@asynccontextmanager
async def _child(
    argv: Sequence[str], env: Mapping[str, str], log_path: Path
) -> AsyncIterator[trio.Process]:
    """A child process with stdout and stderr in ``log_path``, in its own session (a Ctrl-C
    reaches the demo, which stops its children in order). On exit: SIGTERM, a bounded wait,
    then SIGKILL."""
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            await stop_process(process, CHILD_STOP_TIMEOUT)


async def stop_process(process: trio.Process, grace: float) -> int:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; the exit status."""
    if process.returncode is None:
        process.terminate()
        with trio.move_on_after(grace):
            return await process.wait()
        process.kill()
    return await process.wait()


@asynccontextmanager
async def _daemon(env: Mapping[str, str], log_path: Path, tls: ClientTls) -> AsyncIterator[str]:
    """``fleetwave serve``, ready (its /readyz answers 200); yields the API base URL."""
    async with _child(cli_command("serve"), env, log_path) as process:
        with trio.move_on_after(DAEMON_READY_TIMEOUT) as waited:
            api = await wait_ready(process, log_path, tls=tls)
        if waited.cancelled_caught:
            raise DemoError(
                f"the daemon was not ready within {DAEMON_READY_TIMEOUT:g}s\n"
                + tail(log_path, LOG_TAIL_LINES)
            )
        yield api


async def wait_ready(process: trio.Process, log_path: Path, *, tls: ClientTls | None = None) -> str:
    """The API base URL (``http://`` or ``https://``, as the daemon logged it) of a daemon
    logging JSON to ``log_path``, once /readyz answers 200; ``tls`` verifies an HTTPS API.
    Unbounded: the caller sets the deadline."""
    url: str | None = None
    verify = (tls or ClientTls()).context()
    async with httpx.AsyncClient(timeout=2.0, verify=verify) as http:
        while True:
            if process.poll() is not None:
                raise DemoError(
                    f"the daemon exited with status {process.returncode}\n"
                    + tail(log_path, LOG_TAIL_LINES)
                )
            if url is None:
                url = logged_value(log_path, "api.listening", "url")
            if url is not None:
                try:
                    response = await http.get(f"{url}/readyz")
                except httpx.TransportError:
                    pass
                else:
                    if response.status_code == 200:
                        return url
            await trio.sleep(0.1)


def logged_value(log_path: Path, event: str, key: str) -> str | None:
    """``key`` of the first JSON log line of ``event`` in ``log_path``, if written yet."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event and key in entry:
            return str(entry[key])
    return None


def tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return f"({path} was not written)"
    return f"last lines of {path}:\n" + "\n".join(text)


async def _create_token(env: Mapping[str, str], log_path: Path) -> str:
    with log_path.open("wb") as log, trio.move_on_after(TOKEN_TIMEOUT) as waited:
        result = await trio.run_process(
            cli_command("token", "create", "demo", "--role", "admin"),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            stderr=log,
            check=False,
            start_new_session=True,
        )
    if waited.cancelled_caught:
        raise DemoError(f"`fleetwave token create` took over {TOKEN_TIMEOUT:g}s")
    token = result.stdout.decode().strip()
    if result.returncode != 0 or not token:
        raise DemoError(
            f"`fleetwave token create` failed (status {result.returncode})\n"
            + tail(log_path, LOG_TAIL_LINES)
        )
    return token


# --- output -----------------------------------------------------------------------------------


def _rows(text: str) -> int:
    """Terminal rows ``text`` took, long lines wrapped at the terminal's width."""
    columns = max(1, shutil.get_terminal_size().columns)
    return sum(max(1, -(-len(line) // columns)) for line in text.split("\n"))


@attrs.define
class _Say:
    out: TextIO

    @property
    def interactive(self) -> bool:
        return self.out.isatty()

    def __call__(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def redraw(self, view: str, *, replacing: str | None) -> None:
        """On a terminal, ``view`` replaces the previous view in place; elsewhere each new
        view is written after the last one."""
        if replacing is not None:
            if self.interactive:
                self.out.write(_CURSOR_UP_AND_CLEAR.format(_rows(replacing)))
            else:
                self.out.write("\n")
        self(view)
