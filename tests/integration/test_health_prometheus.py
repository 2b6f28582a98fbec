"""The Prometheus health check against a real Prometheus (Debian's package, run here with a
config and storage of its own on loopback, scraping every second), which scrapes the error
ratios the simulated nodes export (agent/sim_metrics.py), while a real daemon (a Supervisor
on PostgreSQL) drives releases over mutual TLS to the simulated agents.

Prometheus missing is a failure, not a skip: ``make test`` installs it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from fleetwave.actors import health_prometheus
from fleetwave.actors.health_prometheus import GET_MAX
from fleetwave.agent.certs import CertPaths
from fleetwave.agent.client import AgentClient, build_http_client
from fleetwave.agent.sim import SimulatedFleet, free_agent_port
from fleetwave.agent.sim_metrics import METRIC, SimMetrics
from fleetwave.api.schemas import step_item
from fleetwave.store.models import NodeStatus, Release, ReleaseStatus
from fleetwave.store.postgres import PostgresStore
from fleetwave.store.promql import PrometheusQuery
from fleetwave.store.strategy import HealthCheck
from fleetwave.supervisor import Supervisor
from tests.prometheus_api import create_checked
from tests.world import World, daemon_settings, open_world

PROMETHEUS = Path("/usr/bin/prometheus")
BOUND = 60.0
"""No test here may take longer, whatever breaks."""
PREFIX = "edge(fra1)"
"""Node names with RE2 metacharacters: ``{nodes}`` must escape them to match at all."""
QUERY = METRIC + '{node=~"{nodes}"}'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def prometheus_config(directory: Path, target: str) -> Path:
    """A config scraping ``target`` every second, written in ``directory`` (made here)."""
    if not PROMETHEUS.exists():
        pytest.fail(
            f"{PROMETHEUS} is missing: this test runs Debian's prometheus package, which "
            "`make test` installs (apt-get install --no-install-recommends prometheus)"
        )
    directory.mkdir()
    config = directory / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "agent-sim", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    return config


async def run_prometheus(
    nursery: trio.Nursery, directory: Path, target: str, *, series: int
) -> str:
    """A Prometheus on loopback scraping ``target`` every second, once it holds ``series``
    series of METRIC; its URL. Stopped (killed) when ``nursery`` is cancelled."""
    config = prometheus_config(directory, target)
    url = f"http://127.0.0.1:{free_port()}"
    log = (directory / "prometheus.log").open("wb")
    argv = [
        str(PROMETHEUS),
        f"--config.file={config}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
        "--log.level=warn",
    ]
    process: trio.Process = await nursery.start(
        partial(trio.run_process, argv, check=False, stdout=log, stderr=subprocess.STDOUT)
    )
    async with httpx.AsyncClient(trust_env=False) as http:
        with trio.fail_after(30):
            while True:
                if process.returncode is not None:
                    text = (directory / "prometheus.log").read_text(errors="replace")
                    pytest.fail(f"prometheus exited {process.returncode}: {text[-2000:]}")
                try:
                    answer = await http.get(url + "/api/v1/query", params={"query": METRIC})
                    if answer.status_code == 200 and len(answer.json()["data"]["result"]) == series:
                        return url
                except httpx.TransportError:
                    pass
                await trio.sleep(0.2)


@attrs.define
class Stack:
    world: World
    fleet: SimulatedFleet
    metrics: SimMetrics
    prometheus: str
    checks_http: httpx.AsyncClient

    async def release(self, query: str = QUERY, **fields: object) -> Release:
        check = {
            "prometheus": {"url": self.prometheus, "query": query},
            "interval": 0.5,
            "timeout": 3,
        }
        return await create_checked(self.world.store, check, **fields)

    async def current(self, release: Release) -> Release:
        now = await self.world.store.get_release(release.id)
        assert now is not None
        return now

    async def names_of_batch(self, release: Release, batch: int) -> list[str]:
        nodes = await self.world.store.release_nodes(release.id)
        return [node.node_name for node in nodes if node.batch == batch]


@pytest.fixture
async def stack(pg_store: PostgresStore, certs: CertPaths, tmp_path: Path) -> AsyncIterator[Stack]:
    async with open_world(pg_store, certs) as world, httpx.AsyncClient(trust_env=False) as checks:
        fleet = await world.serve_fleet(4, prefix=PREFIX)
        metrics = SimMetrics([f"{PREFIX}-{k:03d}" for k in range(1, 5)])
        target = await world.nursery.start(metrics.serve, "127.0.0.1:0")
        prometheus = await run_prometheus(world.nursery, tmp_path / "prometheus", target, series=4)
        settings = daemon_settings(certs, "it-prom")
        agents_http = build_http_client(settings)
        supervisor = Supervisor(
            pg_store,
            AgentClient(agents_http, request_timeout=settings.agent_request_timeout_sec),
            settings,
            checks_http=checks,
        )

        async def daemon(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with agents_http:
                await supervisor.run(task_status=task_status)

        await world.nursery.start(daemon)
        yield Stack(world, fleet, metrics, prometheus, checks)


async def test_a_healthy_fleet_passes_its_bake_and_the_release_succeeds(stack: Stack) -> None:
    release = await stack.release(plan=[1, {"pause": 3}, "100%"])

    done = await stack.world.wait_terminal(release.id, limit=BOUND)

    assert done.status is ReleaseStatus.SUCCESS, done.error
    nodes = await stack.world.store.release_nodes(release.id)
    assert {node.status for node in nodes} == {NodeStatus.SUCCESS}


async def test_errors_on_a_canary_node_mid_bake_fail_the_release_naming_the_series(
    stack: Stack,
) -> None:
    release = await stack.release(plan=[1, {"pause": 120}, "100%"])
    with trio.fail_after(BOUND):
        while (step := step_item(await stack.current(release))) is None or step["kind"] != "bake":  # noqa: ASYNC110 - polls the store
            await trio.sleep(0.1)
    [canary] = await stack.names_of_batch(release, 1)
    [later, *_] = await stack.names_of_batch(release, 2)
    # A node of the next batch going bad is not the canary's business: {nodes} is the canary.
    stack.metrics.set_errors(later, 0.5)
    await trio.sleep(3)  # three scrapes, six probes
    assert (await stack.current(release)).status is ReleaseStatus.RUNNING
    stack.metrics.set_errors(canary, 0.3)

    done = await stack.world.wait_terminal(release.id, limit=BOUND)

    assert done.status is ReleaseStatus.FAILED
    assert done.error is not None
    assert done.error.startswith(f'health check 5xx failed: {METRIC}{{instance="127.0.0.1:')
    assert done.error.endswith(f'job="agent-sim", node="{canary}"}} = 0.3 (above max 0.01)'), (
        done.error
    )
    nodes = await stack.world.store.release_nodes(release.id)
    assert sorted(node.status for node in nodes) == sorted(
        [NodeStatus.SUCCESS] + [NodeStatus.SKIPPED] * 3
    )


async def test_a_query_prometheus_rejects_fails_the_release_at_its_start(stack: Stack) -> None:
    release = await stack.release(query=METRIC + '{node=~"{nodes}"', plan=[1, "100%"])

    done = await stack.world.wait_terminal(release.id, limit=BOUND)

    assert done.status is ReleaseStatus.FAILED
    assert done.error is not None
    assert done.error.startswith("health check 5xx: query rejected: "), done.error
    assert "parse error" in done.error
    assert stack.fleet.dispatch_log() == []
    nodes = await stack.world.store.release_nodes(release.id)
    assert {node.status for node in nodes} == {NodeStatus.SKIPPED}


async def test_a_query_too_long_for_a_url_is_asked_as_a_form(stack: Stack) -> None:
    check = HealthCheck("5xx", stack.prometheus, prometheus=PrometheusQuery(QUERY, max=0.01))
    names = [f"{PREFIX}-{k:03d}" for k in range(1, 5)] + [f"absent-{k:05d}" for k in range(800)]
    query = PrometheusQuery(QUERY, max=0.01).query_for({"nodes": names})
    assert len(str(httpx.QueryParams({"query": query}))) > GET_MAX

    with trio.fail_after(BOUND):
        assert (
            await health_prometheus.probe(check, stack.checks_http, stack.prometheus, query) is None
        )
        stack.metrics.set_errors(f"{PREFIX}-002", 0.5)
        said = None
        while said is None:  # until Prometheus has scraped the change
            await trio.sleep(0.2)
            said = await health_prometheus.probe(check, stack.checks_http, stack.prometheus, query)
    assert f'node="{PREFIX}-002"}} = 0.5 (above max 0.01)' in said


async def test_agent_sim_serves_the_metrics_and_takes_a_node_s_error_ratio(
    certs: CertPaths, tmp_path: Path
) -> None:
    port, metrics_port = free_agent_port(2), free_port()
    argv = [
        sys.executable,
        "-m",
        "fleetwave",
        "agent-sim",
        "--count",
        "2",
        "--certs",
        str(certs.directory),
        "--port",
        str(port),
        "--metrics-bind",
        f"127.0.0.1:{metrics_port}",
    ]
    base = f"http://127.0.0.1:{metrics_port}"
    log = (tmp_path / "agent-sim.log").open("wb")
    async with trio.open_nursery() as nursery, httpx.AsyncClient(trust_env=False) as http:
        await nursery.start(
            partial(trio.run_process, argv, check=False, stdout=log, stderr=subprocess.STDOUT)
        )
        with trio.fail_after(BOUND):
            while True:
                try:
                    exposition = await http.get(base + "/metrics")
                    break
                except httpx.TransportError:
                    await trio.sleep(0.1)
            assert exposition.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert f'{METRIC}{{node="sim-127.0.0.2"}} 0.0' in exposition.text
            changed = await http.put(base + "/errors", json={"node": "sim-127.0.0.3", "ratio": 0.3})
            assert changed.status_code == 200
            assert (
                f'{METRIC}{{node="sim-127.0.0.3"}} 0.3' in (await http.get(base + "/metrics")).text
            )
            unknown = await http.put(base + "/errors", json={"node": "edge-404", "ratio": 0.3})
            assert unknown.status_code == 404
            too_much = await http.put(base + "/errors", json={"node": "sim-127.0.0.2", "ratio": 2})
            assert (too_much.status_code, too_much.json()) == (
                400,
                {"error": "ratio must be from 0 to 1, got 2"},
            )
            assert (await http.get(base + "/errors")).json() == {
                "sim-127.0.0.2": 0.0,
                "sim-127.0.0.3": 0.3,
            }
        nursery.cancel_scope.cancel()


async def test_agent_sim_refuses_a_metrics_address_beyond_loopback() -> None:
    result = await trio.run_process(
        [
            sys.executable,
            "-m",
            "fleetwave",
            "agent-sim",
            "--count",
            "1",
            "--certs",
            "/nonexistent",
            "--metrics-bind",
            "0.0.0.0:9100",
        ],
        check=False,
        capture_stdout=True,
        capture_stderr=True,
    )
    assert result.returncode == 2
    assert b"0.0.0.0:9100 is not a loopback address" in result.stderr
