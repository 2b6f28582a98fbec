"""Property: whatever bytes an agent answers, AgentClient gives a typed answer or a classified
AgentError with a readable reason, never another exception (the in-process fleet: the real
client, the real agent app, no sockets)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
import structlog
import trio
from hypothesis import HealthCheck, given, settings
from trio.testing import MockClock

from fleetwave.agent.client import AgentClient
from fleetwave.agent.errors import AgentError, FailureKind
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from tests.agent_answers import POISONS, TASK_ID, answer_bodies, call_both, check_outcome
from tests.sim.conftest import Sim


async def _outcomes(body: bytes) -> list[object]:
    fleet = SimulatedFleet(1, behaviour=Behaviour(body=body))
    async with httpx.AsyncClient(transport=fleet.transport()) as http:
        return await call_both(AgentClient(http, request_timeout=5), fleet.address(1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=answer_bodies(TASK_ID))
def test_any_answer_body_is_a_typed_answer_or_a_classified_agent_error(body: bytes) -> None:
    for outcome in trio.run(_outcomes, body):
        check_outcome(outcome)


@pytest.mark.parametrize("body", POISONS, ids=[f"poison-{k}" for k in range(len(POISONS))])
async def test_each_classic_poison_is_refused_as_a_bad_or_rejecting_answer(body: bytes) -> None:
    dispatched, queried = await _outcomes(body)
    for outcome in (dispatched, queried):
        assert isinstance(outcome, AgentError), outcome
        assert outcome.kind in (FailureKind.BAD_PAYLOAD, FailureKind.REJECTED), outcome
        check_outcome(outcome)


async def test_deep_nesting_and_long_numbers_are_named_in_the_reason() -> None:
    nested, _ = await _outcomes(POISONS[0])
    digits, _ = await _outcomes(POISONS[2])
    nan, _ = await _outcomes(POISONS[4])
    assert str(nested) == "agent 127.0.0.2:8443 sent invalid JSON"
    assert str(digits) == (
        "agent 127.0.0.2:8443 sent an invalid answer: a number of more than 4300 digits"
    )
    assert str(nan) == "agent 127.0.0.2:8443 sent an invalid answer: NaN is not a JSON number"


async def test_an_agents_last_error_is_clipped_and_quoted_in_logs_and_error_msg(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    hostile = 'bad\n{"event": "forged"}\x00\ud800' + "z" * 5000
    sim = make_sim(1, behaviour=Behaviour(apply_time=(2, 2), fail=hostile))
    await sim.register()
    await sim.start_daemon()
    with structlog.testing.capture_logs() as logs:
        release = await sim.wait_terminal(await sim.create())

    [node] = await sim.store.release_nodes(release.id)
    assert node.error_msg is not None
    assert node.error_msg.startswith(
        'agent 127.0.0.2:8443 reported failure: \'bad {"event": "forged"}\\x00\\ud800zzz'
    )
    node.error_msg.encode("utf-8")
    [failed] = [e for e in logs if e["event"] == "node.transition" and e["status"] == "failed"]
    assert failed["error"].isprintable() and len(failed["error"]) < 400
    assert release.error is not None and "\n" not in release.error
    [finished] = [e for e in logs if e["event"] == "release.finished"]
    [aborted] = [e for e in logs if e["event"] == "batch.aborted"]
    for line in (finished["error"], aborted["reason"]):
        assert line.startswith("'node edge-001 (127.0.0.2) failed: ") and line.isprintable()
    assert len(finished["error"]) < 2 * 255 and len(aborted["reason"]) < 2 * 200
