"""Hostile agents over real mutual TLS: any answer body, answers dripped byte by byte, cut
short, too large, or a certificate from another CA. AgentClient gives a typed answer or a
classified AgentError with a readable reason, never another exception."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetwave.agent.certs import CertPaths, init_certs, mtls_env_lines
from fleetwave.agent.client import MAX_ANSWER_BYTES, AgentClient, build_http_client
from fleetwave.agent.errors import AgentError, FailureKind
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from fleetwave.config import load_settings
from fleetwave.store.models import task_id_for
from tests.agent_answers import answer_bodies, call_both, check_outcome

AGENTS = 6
REQUEST_TIMEOUT = 1.0
BOUND = 60.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("certs"), agents=AGENTS)


async def _outcomes(
    certs: CertPaths, behaviours: list[Behaviour], served_with: Path | None = None
) -> list[list[object]]:
    """Each agent dispatched and queried once, all at the same time."""
    fleet = SimulatedFleet(len(behaviours), port=0)
    for k, behaviour in enumerate(behaviours, start=1):
        fleet.set_behaviour(k, behaviour)
    environ = dict(line.split("=", 1) for line in mtls_env_lines(certs))
    daemon = load_settings(environ, agent_request_timeout_sec=REQUEST_TIMEOUT)
    results: dict[int, list[object]] = {}
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(fleet.serve, served_with or certs.directory)
            async with build_http_client(daemon) as http:
                agents = AgentClient(http, request_timeout=REQUEST_TIMEOUT)

                async def ask(k: int) -> None:
                    results[k] = await call_both(agents, fleet.address(k))

                async with trio.open_nursery() as asking:
                    for k in range(1, len(behaviours) + 1):
                        asking.start_soon(ask, k)
            nursery.cancel_scope.cancel()
    return [results[k] for k in sorted(results)]


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_answer_bodies_over_mutual_tls_are_typed_or_classified(
    certs: CertPaths, data: st.DataObject
) -> None:
    hosts = [f"127.0.0.{k + 1}" for k in range(1, AGENTS + 1)]
    bodies = [data.draw(answer_bodies(task_id_for(host, 1)), label=host) for host in hosts]
    for outcomes in trio.run(_outcomes, certs, [Behaviour(body=body) for body in bodies]):
        for outcome in outcomes:
            check_outcome(outcome)


async def test_dripped_cut_short_and_oversized_answers_are_classified(certs: CertPaths) -> None:
    behaviours = [
        Behaviour(drip=0.05),  # ~100 bytes at 20 a second: past the request timeout
        Behaviour(reset=True),
        Behaviour(body=b"[" + b"0," * (MAX_ANSWER_BYTES // 2) + b"0]"),
        Behaviour(),
    ]
    drip, reset, huge, healthy = await _outcomes(certs, behaviours)

    for outcome in drip:
        assert isinstance(outcome, AgentError) and outcome.kind is FailureKind.TIMEOUT
        assert f"did not answer within {REQUEST_TIMEOUT:g}s" in str(outcome)
    for outcome in reset:
        assert isinstance(outcome, AgentError) and outcome.kind is FailureKind.UNREACHABLE
        assert "connection lost" in str(outcome), outcome
    for outcome in huge:
        assert isinstance(outcome, AgentError) and outcome.kind is FailureKind.BAD_PAYLOAD
        assert f"answer larger than {MAX_ANSWER_BYTES} bytes" in str(outcome)
    assert not any(isinstance(outcome, AgentError) for outcome in healthy), healthy
    for outcome in [*drip, *reset, *huge, *healthy]:
        check_outcome(outcome)


async def test_an_agent_certificate_from_another_ca_is_a_tls_error(
    certs: CertPaths, tmp_path: Path
) -> None:
    foreign = init_certs(tmp_path / "foreign", agents=1)
    [outcomes] = await _outcomes(certs, [Behaviour()], served_with=foreign.directory)
    for outcome in outcomes:
        assert isinstance(outcome, AgentError) and outcome.kind is FailureKind.TLS
        assert "certificate verify failed" in str(outcome)
        check_outcome(outcome)
