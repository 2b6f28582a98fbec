"""``fleetwave release watch`` under a pseudo-terminal: the installed program draws its live
view with rich while a daemon runs the release, and ends with a summary and its exit code."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from fleetwave.agent.client import AgentClient
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.api.events import EventHub
from fleetwave.api.server import serve_api
from fleetwave.config import load_settings
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import Actor, ReleaseSpec, Role
from fleetwave.store.strategy import current_step, validate_strategy
from fleetwave.supervisor import Supervisor

FLEETWAVE = Path(sys.executable).with_name("fleetwave")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@attrs.frozen
class Daemon:
    store: MemoryStore
    url: str
    token: str


@asynccontextmanager
async def serving(supervised: bool) -> AsyncIterator[tuple[Daemon, Callable[[], Awaitable[None]]]]:
    """The API over a MemoryStore and 4 simulated agents (node 4 fails), with a Supervisor
    running, or not yet (then the second item starts it)."""
    store = MemoryStore()
    fleet = SimulatedFleet(4, behaviour=Behaviour(apply_time=(0.4, 0.8)))
    fleet.set_behaviour(4, Behaviour(apply_time=(0.3, 0.3), fail="nginx: [emerg] bad config"))
    for k, host in enumerate(fleet.hosts, start=1):
        await store.upsert_node(f"edge-{k:03d}", host, fleet.address(k).port)
    token = await create_token(store, "terminal")
    settings = load_settings(environ={}, interval_sec=0.2, daemon_id="tty", log_format="json")
    async with (
        trio.open_nursery() as nursery,
        httpx.AsyncClient(transport=fleet.transport()) as http,
    ):
        hub = EventHub(store)
        await nursery.start(hub.run)
        address = await nursery.start(
            partial(serve_api, create_app(store, events=hub), "127.0.0.1:0")
        )
        supervisor = Supervisor(store, AgentClient(http, request_timeout=5), settings)

        async def supervise() -> None:
            await nursery.start(supervisor.run)

        if supervised:
            await supervise()
        yield Daemon(store, f"http://{address}", token), supervise
        nursery.cancel_scope.cancel()


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    async with serving(supervised=True) as (running, _):
        yield running


def _env(daemon: Daemon) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWAVE_")}
    env.update(
        FLEETWAVE_API=daemon.url, FLEETWAVE_TOKEN=daemon.token, TERM="xterm-256color",
        COLUMNS="120", LINES="40",
    )  # fmt: skip
    return env


async def watch_in_a_pipe(daemon: Daemon, release_id: int) -> tuple[int, str]:
    """Run the program with its output to a pipe; (exit code, what it printed)."""
    process = await trio.run_process(
        [str(FLEETWAVE), "release", "watch", str(release_id)],
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        capture_stderr=True,
        env=_env(daemon),
        check=False,
    )
    return process.returncode, (process.stdout + process.stderr).decode(errors="replace")


async def watch_in_a_terminal(daemon: Daemon, release_id: int) -> tuple[int, str]:
    """Run the program with a pty as its terminal; (exit code, what the screen received)."""
    primary, secondary = pty.openpty()
    env = _env(daemon)
    chunks: list[bytes] = []

    def read_all() -> None:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the program closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(trio.to_thread.run_sync, read_all, abandon_on_cancel=True))
            process = await trio.run_process(
                [str(FLEETWAVE), "release", "watch", str(release_id)],
                stdin=secondary,
                stdout=secondary,
                stderr=secondary,
                env=env,
                check=False,
            )
            os.close(secondary)
            secondary = -1
    finally:
        if secondary != -1:
            os.close(secondary)
        os.close(primary)
    return process.returncode, b"".join(chunks).decode(errors="replace")


async def test_watch_draws_bars_and_ends_with_the_summary_on_success(daemon: Daemon) -> None:
    # Nodes 1 to 3: the canary and the next batch; node 4 (which fails) is left out.
    await daemon.store.update_node(4, enabled=False)
    created = await daemon.store.create_release(ReleaseSpec(reason="tty"))
    with trio.fail_after(60):
        code, screen = await watch_in_a_terminal(daemon, created.release.id)

    text = _ANSI.sub("", screen)
    assert code == 0, text
    assert "\x1b[" in screen  # drawn for a terminal, not as plain lines
    assert "━" in text  # rich's bars
    assert "batch   1" in text and "batch   2" in text
    assert "ETA" in text
    assert f"release {created.release.id} (version 1) success" in text
    assert "3 succeeded, 0 failed, 0 skipped, 0 cancelled" in text


async def test_watch_shows_a_failed_canary_with_its_reason_and_exits_1(daemon: Daemon) -> None:
    for node in (1, 2, 3):
        await daemon.store.update_node(node, enabled=False)
    created = await daemon.store.create_release(ReleaseSpec(reason="tty failure"))
    with trio.fail_after(60):
        code, screen = await watch_in_a_terminal(daemon, created.release.id)

    text = _ANSI.sub("", screen)
    assert code == 1, text
    assert "failures" in text and "nginx: [emerg] bad config" in text
    assert f"release {created.release.id} (version 1) failed" in text
    assert "0 succeeded, 1 failed" in text


async def test_watch_shows_a_bake_counting_down_then_a_gate_until_promoted(
    daemon: Daemon,
) -> None:
    await daemon.store.update_node(4, enabled=False)
    strategy = validate_strategy([1, {"pause": 4}, 1, {"pause": None}, "100%"], None, 0, "stop")
    created = await daemon.store.create_release(
        ReleaseSpec(reason="tty steps", plan=strategy.plan, strategy=strategy.to_json())
    )
    release_id = created.release.id
    result: list[tuple[int, str]] = []

    async def watching() -> None:
        result.append(await watch_in_a_terminal(daemon, release_id))

    async def at_gate() -> None:
        while True:
            release = await daemon.store.get_release(release_id)
            assert release is not None
            step = current_step(release)
            if step is not None and step.kind == "gate":
                return
            await trio.sleep(0.1)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watching)
            await at_gate()
            await trio.sleep(2.5)  # held: the watch shows the gate for a few frames
            await daemon.store.promote(
                release_id, by=Actor("alice", Role.OPERATOR), reason="batch 2 healthy"
            )

    [(code, screen)] = result
    text = _ANSI.sub("", screen)
    assert code == 0, text
    # The bake's time left ticks down by itself between events (a 4 s bake: 4s, 3s, 2s...).
    left = {int(n) for n in re.findall(r"bake after batch 1: (\d)s left", text)}
    assert len(left) >= 2 and max(left) <= 4, (left, text)
    assert (
        f"gate after batch 2: waiting for promote (fleetwave release promote {release_id})" in text
    )
    assert "ETA after the promote" in text
    assert f"release {release_id} (version 1) success" in text
    assert "3 succeeded, 0 failed, 0 skipped, 0 cancelled" in text


@pytest.mark.parametrize("output", ["terminal", "pipe"])
async def test_watch_tells_a_live_owner_from_one_that_stopped_renewing_its_lease(
    output: str,
) -> None:
    async with serving(supervised=False) as (daemon, supervise):
        await daemon.store.update_node(4, enabled=False)
        created = await daemon.store.create_release(ReleaseSpec(reason="ghost"))
        release_id = created.release.id
        # "ghost" claims it and is never heard of again, as after a kill -9.
        await daemon.store.claim("ghost", 1, ttl=3)
        watcher = watch_in_a_terminal if output == "terminal" else watch_in_a_pipe
        result: list[tuple[int, str]] = []

        async def watching() -> None:
            result.append(await watcher(daemon, release_id))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watching)
                await trio.sleep(6)  # the lease ran out 3 s ago, unrenewed
                await supervise()  # a live daemon takes it over, and finishes it

    [(code, screen)] = result
    text = _ANSI.sub("", screen)
    assert code == 0, text
    lost = r"owner ghost stopped renewing its lease \d+s ago: another daemon takes the release"
    assert re.search(lost, text), text
    if output == "terminal":
        assert re.search(r"daemon: owner ghost is alive \(lease expires in [123]s\)", text), text
    # Taken over: the new owner is named as soon as its claim is an event.
    assert re.search(r"owner tty is alive \(lease expires in \d+s\)", text), text
    assert f"release {release_id} (version 1) success" in text
