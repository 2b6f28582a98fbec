"""The agent fault matrix: every way an agent can misbehave, over real mutual TLS.

Each case runs a release on one misbehaving agent and checks what an operator then reads:
the node's status and error_msg, the release's status and error. Then the faulty node is
disabled and a healthy agent joins: the same daemon, still running, completes that release.
No log line of level error or above is written in any case.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial

import attrs
import pytest
import structlog
import trio
from structlog.typing import EventDict

from fleetwave.agent.certs import CertPaths
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from fleetwave.store.models import NodeStatus, ReleaseNode, ReleaseSpec, ReleaseStatus, task_id_for
from fleetwave.store.postgres import PostgresStore
from tests.invariants import assert_release_invariants
from tests.world import World, open_world

pytestmark = pytest.mark.postgres

REQUEST_TIMEOUT = 1.0
DEADLINE = 4.0
FAULT_SETTINGS: dict[str, object] = {
    "agent_request_timeout_sec": REQUEST_TIMEOUT,
    "agent_connect_timeout_sec": REQUEST_TIMEOUT,
    "node_deadline_sec": DEADLINE,
}
FAULTY_HOST = "127.0.0.2"
HEALTHY_HOST = "127.0.0.30"


@pytest.fixture
def logs() -> Iterator[list[EventDict]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest.fixture
async def world(pg_store: PostgresStore, certs: CertPaths) -> AsyncIterator[World]:
    async with open_world(pg_store, certs) as world:
        await world.start_daemon("faults-a", **FAULT_SETTINGS)
        yield world


@attrs.frozen
class Fault:
    behaviour: Behaviour
    node_status: NodeStatus
    words: tuple[str, ...]
    foreign_ca: bool = False


FAULTS = {
    "connection-refused": Fault(
        Behaviour(refuse=True),
        NodeStatus.FAILED,
        ("dispatch failed after 5 attempt(s)", "unreachable", "connection refused"),
    ),
    "certificate-from-another-ca": Fault(
        Behaviour(),
        NodeStatus.FAILED,
        ("TLS handshake", "certificate verify failed", "not signed by CONTROL_CA"),
        foreign_ca=True,
    ),
    "hang-before-answering": Fault(
        Behaviour(hang=True),
        NodeStatus.FAILED,
        (f"no result from agent {FAULTY_HOST}", f"within {DEADLINE:g}s", "did not answer within"),
    ),
    "http-500": Fault(
        Behaviour(http_status=500),
        NodeStatus.FAILED,
        ("dispatch failed after 5 attempt(s)", "answered HTTP 500", "simulated failure"),
    ),
    "invalid-json": Fault(
        Behaviour(garbage=True),
        NodeStatus.FAILED,
        ("dispatch failed after 1 attempt(s)", "sent invalid JSON"),
    ),
    "unknown-status-word": Fault(
        Behaviour(unknown_status=True),
        NodeStatus.FAILED,
        ("sent an invalid answer", "unknown task status", "exploded"),
    ),
    "slower-than-request-timeout": Fault(
        Behaviour(delay=REQUEST_TIMEOUT * 2.5),
        NodeStatus.FAILED,
        (f"within {DEADLINE:g}s", f"did not answer within {REQUEST_TIMEOUT:g}s"),
    ),
}


async def only_node(world: World, release_id: int) -> ReleaseNode:
    (node,) = await world.store.release_nodes(release_id)
    return node


async def healthy_release_completes(world: World) -> None:
    """Disable every node there is, add a healthy agent: a new release on it succeeds."""
    for faulty in await world.store.list_nodes():
        await world.store.update_node(faulty.id, enabled=False)
    await world.serve_fleet(1, first_host=HEALTHY_HOST, prefix="healthy")
    created = await world.store.create_release(ReleaseSpec(reason="after the fault"))
    release = await world.wait_terminal(created.release.id)
    assert release.status is ReleaseStatus.SUCCESS, release.error
    node = await only_node(world, release.id)
    assert (node.node_name, node.status) == ("healthy-001", NodeStatus.SUCCESS)


def assert_no_error_logs(logs: list[EventDict]) -> None:
    bad = [entry for entry in logs if entry["log_level"] in ("error", "critical", "exception")]
    assert not bad, bad


@pytest.mark.parametrize("name", list(FAULTS))
async def test_agent_fault_fails_the_node_with_a_readable_reason_and_the_daemon_goes_on(
    name: str, world: World, foreign_certs: CertPaths, logs: list[EventDict]
) -> None:
    fault = FAULTS[name]
    fleet = await world.serve_fleet(
        1,
        behaviour=fault.behaviour,
        first_host=FAULTY_HOST,
        certs_dir=foreign_certs.directory if fault.foreign_ca else None,
    )
    created = await world.store.create_release(ReleaseSpec(reason=name))

    release = await world.wait_terminal(created.release.id, limit=DEADLINE + 10)

    node = await only_node(world, release.id)
    assert node.status is fault.node_status
    assert node.error_msg is not None
    for words in fault.words:
        assert words in node.error_msg, node.error_msg
    assert release.status is ReleaseStatus.FAILED
    assert release.error == f"node edge-001 ({FAULTY_HOST}) failed: {node.error_msg}"
    await assert_release_invariants(world.store, release.id, fleet)
    transitions = [e for e in logs if e["event"] == "node.transition" and e["status"] == "failed"]
    assert [e["error"] for e in transitions] == [node.error_msg]

    await healthy_release_completes(world)
    (supervisor,) = world.supervisors
    assert supervisor.claimed == 2
    assert_no_error_logs(logs)


async def wait_until(condition: Callable[[], object], limit: float = 10) -> None:
    with trio.fail_after(limit):
        while not condition():  # noqa: ASYNC110 - the fleet's state changes in other tasks
            await trio.sleep(0.01)


async def test_agent_restarted_mid_apply_gets_the_same_task_again_and_succeeds(
    world: World, logs: list[EventDict]
) -> None:
    fleet = await world.serve_fleet(
        1, behaviour=Behaviour(apply_time=(1.5, 1.5)), first_host=FAULTY_HOST
    )
    created = await world.store.create_release(ReleaseSpec(reason="agent restart"))
    task_id = task_id_for(FAULTY_HOST, created.release.version)
    await wait_until(lambda: fleet.dispatch_count(FAULTY_HOST, task_id) == 1)
    with trio.fail_after(5):
        while (await only_node(world, created.release.id)).status is not NodeStatus.RUNNING:  # noqa: ASYNC110
            await trio.sleep(0.02)

    fleet.restart(1)  # the agent forgets the task it was applying: it now answers 404
    release = await world.wait_terminal(created.release.id)

    assert release.status is ReleaseStatus.SUCCESS, release.error
    node = await only_node(world, release.id)
    assert (node.status, node.task_id, node.attempts) == (NodeStatus.SUCCESS, task_id, 2)
    assert fleet.dispatch_count(FAULTY_HOST, task_id) == 2
    assert fleet.task_ids(FAULTY_HOST) == {task_id}
    assert [e["task_id"] for e in logs if e["event"] == "node.task_forgotten"] == [task_id]
    await assert_release_invariants(world.store, release.id, fleet)
    assert_no_error_logs(logs)


def dispatched_more_than(fleet: SimulatedFleet, host: str, task_id: str, count: int) -> bool:
    return fleet.dispatch_count(host, task_id) > count


async def forget_every_task(fleet: SimulatedFleet, host: str, task_id: str) -> None:
    """Restart the agent after every dispatch of ``task_id`` that reaches it."""
    forgotten = 0
    while True:
        await wait_until(partial(dispatched_more_than, fleet, host, task_id, forgotten), limit=60)
        forgotten = fleet.dispatch_count(host, task_id)
        fleet.restart(1)


async def test_agent_that_forgets_every_dispatch_fails_the_node_as_lost_task(
    world: World, logs: list[EventDict]
) -> None:
    fleet = await world.serve_fleet(
        1, behaviour=Behaviour(apply_time=(30, 30)), first_host=FAULTY_HOST
    )
    created = await world.store.create_release(ReleaseSpec(reason="agent keeps restarting"))
    task_id = task_id_for(FAULTY_HOST, created.release.version)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(forget_every_task, fleet, FAULTY_HOST, task_id)
        release = await world.wait_terminal(created.release.id, limit=DEADLINE + 10)
        nursery.cancel_scope.cancel()

    node = await only_node(world, release.id)
    assert node.status is NodeStatus.FAILED
    attempts = world.supervisors[0].settings.dispatch_attempts
    assert node.error_msg == (f"agent {fleet.address(1)} lost task {task_id} {attempts} times")
    assert fleet.dispatch_count(FAULTY_HOST, task_id) == attempts
    assert fleet.task_ids(FAULTY_HOST) == {task_id}
    assert release.status is ReleaseStatus.FAILED
    await assert_release_invariants(world.store, release.id, fleet)
    await healthy_release_completes(world)
    assert_no_error_logs(logs)
