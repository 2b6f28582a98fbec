"""``fleetwave serve`` as a real child process, its JSON log lines collected as they come.

``start_daemon(nursery, daemon_id, env)`` runs the daemon with the given settings (the
environment of this process is not inherited beyond PATH-like basics), reads its stdout
line by line and keeps every JSON log entry. ``stop()`` sends SIGTERM and waits, bounded;
``kill()`` is SIGKILL, ``pause()`` / ``resume()`` are SIGSTOP / SIGCONT.

``open_daemons(env, directory)`` is a group of daemons on one environment: ``start(id)``
runs one more, and every daemon still running when the block ends is killed, also when the
block fails, so a test never leaves a process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from fleetwave.agent.certs import CertPaths, mtls_env_lines

REPO = Path(__file__).resolve().parents[2]
SERVE = [sys.executable, "-c", "import sys, cli; sys.exit(cli.main(sys.argv[1:]))", "serve"]
_KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
STOP_TIMEOUT = 20.0
KILL_TIMEOUT = 5.0


def daemon_env(certs: CertPaths, database_url: str, **settings: object) -> dict[str, str]:
    """Environment of a daemon: mTLS from ``certs``, the database, an API on a free port,
    JSON logs, and ``settings`` given by environment variable name."""
    env = {name: os.environ[name] for name in _KEPT_ENV if name in os.environ}
    env.update(line.split("=", 1) for line in mtls_env_lines(certs))  # type: ignore[misc]
    env.update(
        {
            "FLEETWAVE_DATABASE_URL": database_url,
            "FLEETWAVE_API_BIND": "127.0.0.1:0",
            "FLEETWAVE_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({name: str(value) for name, value in settings.items()})
    return env


@attrs.define
class Daemon:
    daemon_id: str
    process: trio.Process
    stderr_path: Path
    logs: list[dict[str, Any]] = attrs.field(factory=list)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def events(self, name: str) -> list[dict[str, Any]]:
        return [entry for entry in self.logs if entry.get("event") == name]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def wait_event(self, name: str, *, count: int = 1, limit: float = 30) -> None:
        """Until the daemon has logged ``name`` ``count`` times; fails after ``limit`` s."""
        await self.wait_logged(lambda: len(self.events(name)) >= count, limit=limit)

    async def wait_logged(self, check: Callable[[], bool], *, limit: float = 30) -> None:
        """Until ``check()`` holds, asked whenever the daemon logs; fails after ``limit`` s."""
        with trio.fail_after(limit):
            while not check():
                assert self.alive, f"{self.daemon_id} exited: {self.stderr()[-2000:]}"
                self._changed = trio.Event()
                with trio.move_on_after(0.5):
                    await self._changed.wait()

    async def _read(self) -> None:
        assert self.process.stdout is not None
        pending = b""
        async for chunk in self.process.stdout:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                try:
                    entry = json.loads(line)
                except ValueError:
                    entry = {"event": "<not json>", "line": line.decode(errors="replace")}
                self.logs.append(entry)
            self._changed.set()

    async def stop(self) -> int:
        """SIGTERM, then wait for the exit (SIGKILL after STOP_TIMEOUT); the exit status."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            return await self.process.wait()
        self.process.kill()
        await self.process.wait()
        raise AssertionError(f"{self.daemon_id} did not stop within {STOP_TIMEOUT}s of SIGTERM")

    async def kill(self) -> None:
        """SIGKILL (a stopped process dies too), then wait for it to be gone, bounded."""
        if self.alive:
            self.process.kill()
        with trio.fail_after(KILL_TIMEOUT):
            await self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the process stays, holding its connections, and runs nothing."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)


async def start_daemon(
    nursery: trio.Nursery, daemon_id: str, env: Mapping[str, str], stderr_dir: Path
) -> Daemon:
    """Start ``fleetwave serve`` and return once it has logged ``supervisor.started``."""
    stderr_path = stderr_dir / f"{daemon_id}.stderr"
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            SERVE,
            env={**env, "FLEETWAVE_DAEMON_ID": daemon_id},
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    daemon = Daemon(daemon_id, process, stderr_path)
    nursery.start_soon(daemon._read)
    try:
        await daemon.wait_event("supervisor.started")
    except BaseException:
        process.kill()
        raise
    return daemon


@attrs.define
class DaemonGroup:
    """Daemons started on one environment; see ``open_daemons``."""

    nursery: trio.Nursery
    env: Mapping[str, str]
    directory: Path
    daemons: list[Daemon] = attrs.field(factory=list)

    async def start(self, daemon_id: str, **settings: object) -> Daemon:
        """One more daemon, with ``settings`` (by environment variable name) over the group's."""
        env = {**self.env, **{name: str(value) for name, value in settings.items()}}
        daemon = await start_daemon(self.nursery, daemon_id, env, self.directory)
        self.daemons.append(daemon)
        return daemon

    def kill_all(self) -> None:
        for daemon in self.daemons:
            if daemon.alive:
                daemon.process.kill()


@asynccontextmanager
async def open_daemons(env: Mapping[str, str], directory: Path) -> AsyncIterator[DaemonGroup]:
    async with trio.open_nursery() as nursery:
        group = DaemonGroup(nursery, env, directory)
        try:
            yield group
        finally:
            group.kill_all()
            with trio.move_on_after(KILL_TIMEOUT, shield=True):
                for daemon in group.daemons:
                    await daemon.process.wait()
