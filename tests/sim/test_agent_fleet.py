"""The in-process simulated fleet, spoken to through AgentClient, in simulated time."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest
import trio
import trio.testing

from fleetwave.agent.client import AgentClient, build_http_client
from fleetwave.agent.errors import AgentError, FailureKind
from fleetwave.agent.protocol import AgentAddress, DispatchRequest, TaskState, TaskStatus
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from fleetwave.config import load_settings
from fleetwave.store.models import task_id_for

REQUEST_TIMEOUT = 60.0


@pytest.fixture
def fleet() -> SimulatedFleet:
    return SimulatedFleet(5, seed=7)


@pytest.fixture
async def client(fleet: SimulatedFleet) -> AsyncIterator[AgentClient]:
    settings = load_settings({}, agent_request_timeout_sec=REQUEST_TIMEOUT)
    async with build_http_client(settings, transport=fleet.transport()) as http:
        yield AgentClient(http, request_timeout=settings.agent_request_timeout_sec)


def _request(address: AgentAddress, version: int = 1) -> DispatchRequest:
    return DispatchRequest(task_id=task_id_for(address.host, version), version=version)


async def _query(client: AgentClient, address: AgentAddress, task_id: str) -> TaskState:
    state = await client.query(address, task_id)
    assert state is not None
    return state


async def test_dispatch_then_query_reaches_success_after_apply_time(
    fleet: SimulatedFleet, client: AgentClient, autojump_clock: trio.testing.MockClock
) -> None:
    fleet.set_behaviour(1, Behaviour(apply_time=(2.0, 2.0)))
    address = fleet.address(1)
    request = _request(address)
    start = trio.current_time()

    ack = await client.dispatch(address, request)
    assert ack.task_id == request.task_id and ack.status is TaskStatus.PENDING

    await trio.sleep(0.5)
    running = await _query(client, address, request.task_id)
    assert running.status is TaskStatus.RUNNING
    assert running.started_at is not None and running.finished_at is None

    await trio.sleep_until(start + 1.99)
    assert (await _query(client, address, request.task_id)).status is TaskStatus.RUNNING
    await trio.sleep_until(start + 2.0)
    done = await _query(client, address, request.task_id)
    assert done.status is TaskStatus.SUCCESS
    assert done.last_error is None
    assert trio.current_time() - start == pytest.approx(2.0)
    assert done.created_at is not None and done.finished_at is not None
    took = datetime.fromisoformat(done.finished_at) - datetime.fromisoformat(done.created_at)
    assert took.total_seconds() == pytest.approx(2.0, abs=0.002)
    assert done.finished_at.endswith("Z")


async def test_failing_agent_reports_failed_with_last_error(
    fleet: SimulatedFleet, client: AgentClient, autojump_clock: trio.testing.MockClock
) -> None:
    fleet.set_behaviour(2, Behaviour(apply_time=(1.0, 1.0), fail="nginx -t: syntax error"))
    address = fleet.address(2)
    request = _request(address)
    await client.dispatch(address, request)
    await trio.sleep(1.0)
    state = await _query(client, address, request.task_id)
    assert state.status is TaskStatus.FAILED
    assert state.last_error == "nginx -t: syntax error"
    assert state.finished_at is not None


async def test_repeated_dispatch_is_the_same_task(
    fleet: SimulatedFleet, client: AgentClient, autojump_clock: trio.testing.MockClock
) -> None:
    address = fleet.address(3)
    request = _request(address, version=9)
    await client.dispatch(address, request)
    first = await _query(client, address, request.task_id)
    await trio.sleep(0.5)
    again = await client.dispatch(address, request)
    assert again.task_id == request.task_id
    assert fleet.dispatch_count(address.host, request.task_id) == 2
    assert fleet.task_ids(address.host) == {request.task_id}
    assert (await _query(client, address, request.task_id)).created_at == first.created_at


async def test_restarted_agent_forgets_its_tasks(
    fleet: SimulatedFleet, client: AgentClient, autojump_clock: trio.testing.MockClock
) -> None:
    address = fleet.address(1)
    request = _request(address)
    await client.dispatch(address, request)
    fleet.restart(1)
    assert await client.query(address, request.task_id) is None
    assert fleet.task_ids(address.host) == {request.task_id}


async def test_query_of_a_never_dispatched_task_is_none(
    fleet: SimulatedFleet, client: AgentClient
) -> None:
    assert await client.query(fleet.address(1), "apply_config_127.0.0.2_404") is None


async def test_refusing_agent_is_unreachable(
    fleet: SimulatedFleet, client: AgentClient, autojump_clock: trio.testing.MockClock
) -> None:
    fleet.set_behaviour(4, Behaviour(refuse=True))
    address = fleet.address(4)
    with pytest.raises(AgentError) as caught:
        await client.dispatch(address, _request(address))
    assert caught.value.kind is FailureKind.UNREACHABLE
    assert caught.value.transient
    assert str(caught.value) == "agent 127.0.0.5:8443 unreachable: connection refused"
    assert fleet.task_ids(address.host) == set()


async def test_host_outside_the_fleet_is_unreachable(client: AgentClient) -> None:
    with pytest.raises(AgentError) as caught:
        await client.query(AgentAddress("127.0.0.200", 8443), "t")
    assert caught.value.kind is FailureKind.UNREACHABLE


async def test_wrong_port_is_unreachable(fleet: SimulatedFleet, client: AgentClient) -> None:
    with pytest.raises(AgentError) as caught:
        await client.query(AgentAddress(fleet.hosts[0], 9443), "t")
    assert caught.value.kind is FailureKind.UNREACHABLE


async def test_hanging_agent_times_out_at_exactly_the_request_timeout(
    fleet: SimulatedFleet, client: AgentClient, autojump_clock: trio.testing.MockClock
) -> None:
    fleet.set_behaviour(1, Behaviour(hang=True))
    address = fleet.address(1)
    request = _request(address)
    start = trio.current_time()
    with pytest.raises(AgentError) as caught:
        await client.dispatch(address, request)
    assert trio.current_time() - start == REQUEST_TIMEOUT
    assert caught.value.kind is FailureKind.TIMEOUT
    assert str(caught.value) == "agent 127.0.0.2:8443 did not answer within 60s"
    # The request reached the agent even though it never answered.
    assert fleet.dispatch_count(address.host, request.task_id) == 1


async def test_http_500_is_a_transient_http_status_error(
    fleet: SimulatedFleet, client: AgentClient
) -> None:
    fleet.set_behaviour(2, Behaviour(http_status=500))
    with pytest.raises(AgentError) as caught:
        await client.dispatch(fleet.address(2), _request(fleet.address(2)))
    assert caught.value.kind is FailureKind.HTTP_STATUS
    assert caught.value.status == 500
    assert caught.value.transient
    assert str(caught.value).startswith("agent 127.0.0.3:8443 answered HTTP 500")


async def test_http_403_is_not_transient(fleet: SimulatedFleet, client: AgentClient) -> None:
    fleet.set_behaviour(2, Behaviour(http_status=403))
    with pytest.raises(AgentError) as caught:
        await client.query(fleet.address(2), "t")
    assert (caught.value.status, caught.value.transient) == (403, False)


async def test_garbage_answer_is_a_bad_payload(fleet: SimulatedFleet, client: AgentClient) -> None:
    fleet.set_behaviour(3, Behaviour(garbage=True))
    with pytest.raises(AgentError) as caught:
        await client.dispatch(fleet.address(3), _request(fleet.address(3)))
    assert caught.value.kind is FailureKind.BAD_PAYLOAD
    assert str(caught.value) == "agent 127.0.0.4:8443 sent invalid JSON"


async def test_unknown_status_word_is_a_bad_payload(
    fleet: SimulatedFleet, client: AgentClient
) -> None:
    fleet.set_behaviour(1, Behaviour(unknown_status=True))
    address = fleet.address(1)
    request = _request(address)
    await client.dispatch(address, request)
    with pytest.raises(AgentError) as caught:
        await client.query(address, request.task_id)
    assert caught.value.kind is FailureKind.BAD_PAYLOAD
    assert "unknown task status 'exploded'" in str(caught.value)
    assert not caught.value.transient


async def test_delay_postpones_every_answer(
    fleet: SimulatedFleet, client: AgentClient, autojump_clock: trio.testing.MockClock
) -> None:
    fleet.set_behaviour(1, Behaviour(delay=5.0))
    address = fleet.address(1)
    start = trio.current_time()
    await client.dispatch(address, _request(address))
    assert trio.current_time() - start == 5.0


async def test_delay_beyond_the_request_timeout_is_a_timeout(
    fleet: SimulatedFleet, client: AgentClient, autojump_clock: trio.testing.MockClock
) -> None:
    fleet.set_behaviour(1, Behaviour(delay=REQUEST_TIMEOUT + 1))
    with pytest.raises(AgentError) as caught:
        await client.query(fleet.address(1), "t")
    assert caught.value.kind is FailureKind.TIMEOUT


async def test_malformed_dispatch_gets_400_with_envelope(fleet: SimulatedFleet) -> None:
    async with httpx.AsyncClient(transport=fleet.transport()) as http:
        bad_json = await http.post(
            fleet.address(1).base_url + "/tasks/dispatch", content=b"{not json"
        )
        no_version = await http.post(
            fleet.address(1).base_url + "/tasks/dispatch",
            json={"taskId": "t", "type": "apply_config"},
        )
    assert bad_json.status_code == 400
    assert bad_json.json()["code"] != 0
    assert "invalid JSON" in bad_json.json()["message"]
    assert no_version.status_code == 400
    assert no_version.json()["message"] == "version is missing"
    assert fleet.task_ids(fleet.hosts[0]) == set()


async def test_unknown_task_answer_is_a_404_envelope(fleet: SimulatedFleet) -> None:
    async with httpx.AsyncClient(transport=fleet.transport()) as http:
        answer = await http.get(fleet.address(1).base_url + "/tasks/nope")
    assert answer.status_code == 404
    assert json.loads(answer.content) == {
        "code": 3001,
        "message": "task nope not found",
        "data": None,
    }


async def test_whole_fleet_in_parallel_finishes_within_the_apply_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fleet = SimulatedFleet(300, seed=3)
    settings = load_settings({})
    states: dict[str, TaskStatus] = {}

    async def one(client: AgentClient, k: int) -> None:
        address = fleet.address(k)
        request = _request(address, version=2)
        await client.dispatch(address, request)
        while True:
            state = await _query(client, address, request.task_id)
            if state.status.terminal:
                states[address.host] = state.status
                return
            await trio.sleep(0.5)

    start = trio.current_time()
    async with build_http_client(settings, transport=fleet.transport()) as http:
        client = AgentClient(http, request_timeout=10)
        async with trio.open_nursery() as nursery:
            for k in range(1, 301):
                nursery.start_soon(one, client, k)
    assert set(states) == set(fleet.hosts)
    assert set(states.values()) == {TaskStatus.SUCCESS}
    assert 2.5 <= trio.current_time() - start <= 3.5
    assert fleet.hosts[-1] == "127.0.1.45"
    assert fleet.requests == client.requests


def _durations(seed: int) -> list[float]:
    fleet = SimulatedFleet(20, seed=seed)

    async def run() -> list[float]:
        durations = []
        for k in range(1, 21):
            address = fleet.address(k)
            task = fleet._create(fleet._agents[address.host], _request(address))
            durations.append(task.finished - task.created)
        return durations

    return trio.run(run, clock=trio.testing.MockClock())


def test_task_durations_are_deterministic_per_seed_and_in_range() -> None:
    first, again, other = _durations(1), _durations(1), _durations(2)
    assert first == again
    assert first != other
    assert all(1.0 <= d <= 3.0 for d in first)
    assert len(set(first)) == len(first)


def test_agents_are_numbered_from_one() -> None:
    fleet = SimulatedFleet(2, first_host="127.0.0.10", port=9000)
    assert fleet.address(1) == AgentAddress("127.0.0.10", 9000)
    assert fleet.address(2) == AgentAddress("127.0.0.11", 9000)
    with pytest.raises(IndexError):
        fleet.address(3)
    with pytest.raises(IndexError):
        fleet.address(0)


def test_behaviour_rejects_impossible_values() -> None:
    with pytest.raises(ValueError, match="apply_time"):
        Behaviour(apply_time=(3.0, 1.0))
    with pytest.raises(ValueError, match="http_status"):
        Behaviour(http_status=200)
    with pytest.raises(ValueError, match="delay"):
        Behaviour(delay=-1)
