"""End-to-end fixtures: real ``fleetwave`` processes over mutual TLS on one PostgreSQL.

``postgres_server`` / ``database_url``  from the integration suite: one embedded server per
                   session, a fresh database per test.
``certs``          a CA, control and agent certificates for 127.0.0.2 ... 127.0.0.17.
``harness``        starts ``fleetwave serve`` / ``agent-sim`` / commands on the test's
                   database (tests/e2e/harness.py) and stops all of them when the test ends,
                   also when it fails. A failed test's report carries the tail of every log.
``demo_dir``       a directory for a demo (or a server) of its own; anything still running from
                   it is stopped after the test.
``sql``            runs SQL on the test's database, as another program would (psql).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from pathlib import Path

import pytest
import trio

from fleetwave.agent.certs import CertPaths, init_certs
from fleetwave.store.embedded import EmbeddedPostgres
from tests.e2e.harness import Harness, processes_using
from tests.integration.conftest import database_url, postgres_server, run_sql, server_directory

__all__ = ["database_url", "postgres_server"]

CERT_AGENTS = 16

Sql = Callable[[str], Awaitable[str]]


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("e2e-certs"), agents=CERT_AGENTS)


@pytest.fixture
def _leftovers() -> Iterator[list[Harness]]:
    """Last resort, after the async teardown: SIGKILL any child still running (a test whose
    own teardown was cut short)."""
    harnesses: list[Harness] = []
    yield harnesses
    for harness in harnesses:
        harness.kill_all()


@pytest.fixture
async def harness(
    tmp_path: Path, database_url: str, certs: CertPaths, _leftovers: list[Harness]
) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path, database_url, certs)
    _leftovers.append(harness)
    try:
        yield harness
    finally:
        with trio.CancelScope(shield=True):
            await harness.stop_all()


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    """A directory for a demo or a server of its own; whatever runs from it is stopped after."""
    directory = server_directory()
    try:
        yield directory
    finally:
        # Only if the demo itself could not clean up (it was killed): nothing stays behind.
        EmbeddedPostgres(directory / "pg").stop()
        for pid in processes_using(directory):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def sql(database_url: str) -> Sql:
    async def query(statement: str) -> str:
        return (await run_sql(database_url, statement)).strip()

    return query


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # pytest-trio keeps async fixture values to itself; the sync list of harnesses is here.
    for harness in getattr(item, "funcargs", {}).get("_leftovers", []):
        if report.failed and harness.children:
            report.sections.append(("fleetwave process logs (tails)", harness.tails()))
    return report
