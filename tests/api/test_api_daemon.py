"""``fleetwave serve`` runs the API next to the supervisor and stops both on a signal."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import trio

from fleetwave import cli
from fleetwave.agent.certs import init_certs
from fleetwave.api.auth import create_token
from fleetwave.config import Settings, load_settings
from fleetwave.store.memory import MemoryStore


async def wait_logged(logs: list[dict[str, Any]], event: str) -> dict[str, Any]:
    """The first log entry of ``event``, once the daemon has written it."""
    while True:
        for entry in logs:
            if entry["event"] == event:
                return entry
        await trio.sleep(0.01)


def daemon_over(
    store: MemoryStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Settings of a daemon on loopback whose store is ``store`` (the factory swapped)."""

    @contextlib.asynccontextmanager
    async def open_store(settings: object) -> AsyncIterator[MemoryStore]:
        yield store

    factory = types.ModuleType("fleetwave.store.factory")
    factory.open_store = open_store  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fleetwave.store.factory", factory)
    paths = init_certs(tmp_path / "certs", agents=1)
    return load_settings(
        environ=environ or {},
        api_bind="127.0.0.1:0",
        control_cert=str(paths.control_cert),
        control_key=str(paths.control_key),
        control_ca=str(paths.ca_cert),
        daemon_id="daemon-test",
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_serve_answers_on_the_api_and_exits_cleanly_on_a_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: signal.Signals
) -> None:
    store = MemoryStore()
    token = await create_token(store, "daemon-test")

    settings = daemon_over(store, tmp_path, monkeypatch)

    with structlog.testing.capture_logs() as logs, trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cli._serve, settings, None)
            await wait_logged(logs, "supervisor.started")
            address = (await wait_logged(logs, "api.listening"))["address"]
            async with httpx.AsyncClient(base_url=f"http://{address}") as client:
                nodes = await client.get(
                    "/api/v1/nodes", headers={"Authorization": f"Bearer {token}"}
                )
            os.kill(os.getpid(), signum)

    assert nodes.status_code == 200
    events = [entry["event"] for entry in logs]
    assert "supervisor.stopped" in events and "api.stopped" in events


async def test_serve_with_a_metrics_bind_serves_metrics_there_without_a_token_and_not_on_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryStore()
    token = await create_token(store, "daemon-test")

    settings = daemon_over(
        store, tmp_path, monkeypatch, environ={"FLEETWAVE_METRICS_BIND": "127.0.0.1:0"}
    )
    assert settings.metrics_bind == "127.0.0.1:0"

    with structlog.testing.capture_logs() as logs, trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cli._serve, settings, None)
            await wait_logged(logs, "supervisor.started")
            # The logs are written by the daemon's tasks; there is no event to wait on.
            while len(bound := [e for e in logs if e["event"] == "api.listening"]) < 2:  # noqa: ASYNC110
                await trio.sleep(0.01)
            api_address, metrics_address = bound[0]["address"], bound[1]["address"]
            auth = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient() as client:
                on_api = await client.get(f"http://{api_address}/metrics", headers=auth)
                await client.get(f"http://{api_address}/api/v1/nodes", headers=auth)
                scraped = await client.get(f"http://{metrics_address}/metrics")
            os.kill(os.getpid(), signal.SIGTERM)

    assert on_api.status_code == 404
    assert scraped.status_code == 200
    assert 'fleetwave_api_requests_total{route="/api/v1/nodes",status="200"}' in scraped.text
    assert "fleetwave_store_operations_total" in scraped.text


def test_a_metrics_bind_that_is_not_host_port_is_refused() -> None:
    from fleetwave.config import SettingsError

    with pytest.raises(SettingsError, match="FLEETWAVE_METRICS_BIND"):
        load_settings(environ={"FLEETWAVE_METRICS_BIND": "9100"})
