"""Real processes for the end-to-end tests: ``fleetwave serve``, ``fleetwave agent-sim`` and
one-shot commands, each with its own environment and a log file in the test's directory.

A ``Harness`` starts them, waits until each is ready (a daemon: its /readyz answers 200; a
fleet: every agent accepts TCP connections), and stops every one of them when the test ends:
SIGTERM, a bounded wait, then SIGKILL. ``tails()`` gives the end of every log, which the
e2e conftest attaches to the report of a failed test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from fleetwave.agent.certs import CertPaths, mtls_env_lines
from fleetwave.agent.protocol import agent_hosts
from fleetwave.agent.sim import free_agent_port
from fleetwave.api.client import ClientTls
from fleetwave.demo import wait_ready

REPO = Path(__file__).resolve().parents[2]
_KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")

READY_TIMEOUT = 30.0
STOP_GRACE = 10.0
COMMAND_TIMEOUT = 30.0
TAIL_LINES = 40

FAST: Mapping[str, str] = {
    "RELEASE_EXECUTOR_INTERVAL_SEC": "0.5",
    "FLEETWAVE_LEASE_TTL_SEC": "5",
    "FLEETWAVE_FLUSH_INTERVAL_SEC": "0.05",
    "FLEETWAVE_POLL_INITIAL_SEC": "0.1",
    "FLEETWAVE_POLL_MAX_SEC": "0.3",
    "FLEETWAVE_RETRY_INITIAL_SEC": "0.1",
    "FLEETWAVE_RETRY_MAX_SEC": "0.3",
    "FLEETWAVE_AGENT_CONNECT_TIMEOUT_SEC": "2",
    "FLEETWAVE_AGENT_REQUEST_TIMEOUT_SEC": "2",
    "FLEETWAVE_NODE_DEADLINE_SEC": "20",
}
"""Daemon timing for tests: quick polls and retries, short deadlines."""


def fleetwave(*args: str) -> list[str]:
    """The ``fleetwave`` command line, run by this interpreter from the repository."""
    return [sys.executable, "-m", "fleetwave", *args]


@attrs.define
class Child:
    name: str
    process: trio.Process
    log_path: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log entries of event ``name`` written so far."""
        found = []
        for line in self.log().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == name:
                found.append(entry)
        return found

    async def stop(self) -> int:
        """SIGTERM, wait up to STOP_GRACE seconds, then SIGKILL; the exit status."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_GRACE):
                return await self.process.wait()
            self.process.kill()
        return await self.process.wait()

    def kill(self) -> None:
        if self.alive:
            self.process.kill()


@attrs.define
class Daemon(Child):
    api: str = ""
    """Base URL of its API."""


@attrs.define
class Fleet(Child):
    hosts: list[str] = attrs.field(factory=list)
    port: int = 0


@attrs.define
class Harness:
    directory: Path
    database_url: str
    certs: CertPaths
    children: list[Child] = attrs.field(factory=list)

    def env(self, settings: Mapping[str, str] | None = None) -> dict[str, str]:
        """A child's environment: basics of ours, mTLS, the database, JSON logs, API on a
        free loopback port, then ``settings`` (by environment variable name)."""
        env = {name: os.environ[name] for name in _KEPT_ENV if name in os.environ}
        for line in mtls_env_lines(self.certs):
            name, _, value = line.partition("=")
            env[name] = value
        env.update(
            {
                "FLEETWAVE_DATABASE_URL": self.database_url,
                "FLEETWAVE_API_BIND": "127.0.0.1:0",
                "FLEETWAVE_LOG_FORMAT": "json",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(settings or {})
        return env

    async def _spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str]
    ) -> tuple[trio.Process, Path]:
        log_path = self.directory / f"{name}.log"
        with log_path.open("wb") as log:
            process = await trio.lowlevel.open_process(
                list(argv),
                env=dict(env),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return process, log_path

    async def serve(self, name: str, *, tls: ClientTls | None = None, **settings: str) -> Daemon:
        """``fleetwave serve`` as daemon ``name`` with FAST timing and ``settings``; returns
        once its /readyz answers 200 (verified with ``tls``, for an HTTPS API)."""
        env = self.env({**FAST, "FLEETWAVE_DAEMON_ID": name, **settings})
        daemon = Daemon(name, *await self._spawn(name, fleetwave("serve"), env))
        self.children.append(daemon)
        with trio.fail_after(READY_TIMEOUT):
            daemon.api = await wait_ready(daemon.process, daemon.log_path, tls=tls)
        return daemon

    async def agent_sim(
        self,
        count: int,
        *,
        fail: Sequence[int] = (),
        hang: Sequence[int] = (),
        apply_time: str = "0.2..0.6",
        name: str = "agents",
    ) -> Fleet:
        """``fleetwave agent-sim --register`` with ``count`` agents on 127.0.0.2, ...;
        returns once every agent accepts connections (and so is registered as a node)."""
        port = free_agent_port(count)
        argv = fleetwave(
            "agent-sim",
            "--count",
            str(count),
            "--certs",
            str(self.certs.directory),
            "--port",
            str(port),
            "--apply-time",
            apply_time,
            "--register",
            *(f"--fail={k}" for k in fail),
            *(f"--hang={k}" for k in hang),
        )
        process, log_path = await self._spawn(name, argv, self.env())
        fleet = Fleet(name, process, log_path, hosts=agent_hosts(count), port=port)
        self.children.append(fleet)
        with trio.fail_after(READY_TIMEOUT):
            await _wait_listening(fleet)
        return fleet

    async def command(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        """A one-shot ``fleetwave`` command on the test's database (``env`` added to its
        environment); its stdout. Fails the test with the command's stderr when it exits
        non-zero."""
        result = await self.run(*args, env=env)
        if result.returncode != 0:
            raise AssertionError(
                f"fleetwave {' '.join(args)} exited {result.returncode}: "
                f"{result.stderr.decode(errors='replace')[-2000:]}"
            )
        return result.stdout.decode()

    async def run(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """A one-shot ``fleetwave`` command, whatever its exit status."""
        with trio.fail_after(COMMAND_TIMEOUT):
            return await trio.run_process(
                fleetwave(*args),
                env=self.env(env),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )

    async def token(self, name: str = "e2e", role: str = "admin") -> str:
        return (await self.command("token", "create", name, "--role", role)).strip()

    async def stop_all(self) -> None:
        """Stop every child, the last started first (daemons before the agents they call)."""
        for child in reversed(self.children):
            await child.stop()

    def kill_all(self) -> None:
        for child in self.children:
            child.kill()

    def tails(self) -> str:
        return "\n\n".join(
            f"--- {child.name} ({child.log_path}) ---\n{child.tail()}" for child in self.children
        )


async def _wait_listening(fleet: Fleet) -> None:
    """Until every agent of ``fleet`` accepts a TCP connection. Unbounded, as above."""
    waiting = list(fleet.hosts)
    while waiting:
        assert fleet.alive, f"{fleet.name} exited:\n{fleet.tail()}"
        try:
            stream = await trio.open_tcp_stream(waiting[0], fleet.port)
        except OSError:
            await trio.sleep(0.1)
            continue
        await stream.aclose()
        waiting.pop(0)


def processes_using(directory: Path) -> list[int]:
    """Processes whose environment or command line names ``directory`` (the demo's children:
    its daemon holds certificate paths there, its PostgreSQL the data directory)."""
    marker = str(directory).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            text = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in text:
            found.append(int(entry.name))
    return found
