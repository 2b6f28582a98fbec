"""The agent connection pool above its cap, over real mutual TLS: many more agents than
``agent_max_connections``, asked concurrently, while idle pools are evicted concurrently."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest
import trio

from fleetwave.agent.certs import CertPaths, init_certs, mtls_env_lines
from fleetwave.agent.client import (
    AgentClient,
    AgentPoolTransport,
    build_http_client,
    client_ssl_context,
)
from fleetwave.agent.protocol import DispatchRequest, TaskStatus
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from fleetwave.config import Settings, load_settings
from fleetwave.store.models import task_id_for

BOUND = 60.0
AGENTS = 40
CAP = 4


def _settings(certs: CertPaths, **values: object) -> Settings:
    environ = dict(line.split("=", 1) for line in mtls_env_lines(certs))
    return load_settings(environ, **values)


@pytest.fixture
def certs(tmp_path: Path) -> CertPaths:
    return init_certs(tmp_path / "certs", agents=AGENTS)


async def test_ten_times_more_agents_than_connections_all_answer_while_pools_are_evicted(
    certs: CertPaths, nursery: trio.Nursery
) -> None:
    fleet = SimulatedFleet(AGENTS, behaviour=Behaviour(apply_time=(0.1, 0.1)), port=0, seed=3)
    for k in range(1, AGENTS + 1, 3):
        fleet.set_behaviour(k, Behaviour(apply_time=(0.1, 0.1), delay=0.05))
    await nursery.start(fleet.serve, certs.directory)
    settings = _settings(certs, agent_max_connections=CAP, agent_request_timeout_sec=20)
    rng = random.Random(7)
    answers: list[TaskStatus | None] = []

    async with build_http_client(settings) as http:
        transport = http._transport
        assert isinstance(transport, AgentPoolTransport)
        client = AgentClient(http, request_timeout=settings.agent_request_timeout_sec)

        async def ask(k: int) -> None:
            await trio.sleep(rng.random() * 0.05)
            address = fleet.address(k)
            request = DispatchRequest(task_id=task_id_for(address.host, 1), version=1)
            ack = await client.dispatch(address, request)
            answers.append(ack.status)
            state = await client.query(address, request.task_id)
            answers.append(None if state is None else state.status)

        with trio.fail_after(BOUND):
            for _ in range(3):  # rounds: every pool is evicted and made again, concurrently
                async with trio.open_nursery() as round_nursery:
                    for k in rng.sample(range(1, AGENTS + 1), AGENTS):
                        round_nursery.start_soon(ask, k)
            await client.query(fleet.address(1), "apply_config_unknown_1")

        assert len(answers) == 3 * AGENTS * 2
        assert None not in answers
        # Idle pools beyond the cap are closed at the next request.
        assert transport.pools <= CAP
    for host in fleet.hosts:
        assert fleet.dispatch_count(host, task_id_for(host, 1)) == 3


async def test_a_wait_for_a_local_slot_is_not_counted_as_the_agent_being_slow(
    certs: CertPaths, nursery: trio.Nursery
) -> None:
    # One slot, three agents each answering in 0.7 s, a request timeout of 1 s: the third
    # request waits 1.4 s for the slot, then gets its answer in 0.7 s. Nothing timed out.
    fleet = SimulatedFleet(3, behaviour=Behaviour(apply_time=(5, 5), delay=0.7), port=0)
    await nursery.start(fleet.serve, certs.directory)
    settings = _settings(certs, agent_max_connections=1, agent_request_timeout_sec=1)
    statuses: list[TaskStatus] = []

    async with build_http_client(settings) as http:
        client = AgentClient(http, request_timeout=settings.agent_request_timeout_sec)

        async def dispatch(k: int) -> None:
            address = fleet.address(k)
            request = DispatchRequest(task_id=task_id_for(address.host, 1), version=1)
            statuses.append((await client.dispatch(address, request)).status)

        start = trio.current_time()
        with trio.fail_after(BOUND):
            async with trio.open_nursery() as inner:
                for k in (1, 2, 3):
                    inner.start_soon(dispatch, k)
        assert trio.current_time() - start >= 2.1

    assert len(statuses) == 3  # every dispatch answered; none timed out
    assert all(fleet.dispatch_count(h, task_id_for(h, 1)) == 1 for h in fleet.hosts)


async def test_new_connections_are_opened_a_few_at_a_time_and_kept_ones_do_not_wait(
    certs: CertPaths, nursery: trio.Nursery
) -> None:
    fleet = SimulatedFleet(AGENTS, behaviour=Behaviour(delay=0.2), port=0)
    await nursery.start(fleet.serve, certs.directory)
    context = client_ssl_context(
        str(certs.control_cert), str(certs.control_key), str(certs.ca_cert)
    )
    transport = AgentPoolTransport(context, max_connections=AGENTS, max_connecting=4)

    async def every_agent_once(client: AgentClient) -> float:
        start = trio.current_time()
        async with trio.open_nursery() as inner:
            for k in range(1, AGENTS + 1):
                inner.start_soon(client.query, fleet.address(k), "apply_config_unknown_1")
        return trio.current_time() - start

    async with httpx.AsyncClient(transport=transport) as http:
        client = AgentClient(http, request_timeout=20)
        with trio.fail_after(BOUND):
            connecting = await every_agent_once(client)  # 40 handshakes, 4 at a time
            kept = await every_agent_once(client)  # 40 kept connections, all at once
    assert connecting >= AGENTS / 4 * 0.2
    assert kept < connecting / 3
    assert fleet.requests == 2 * AGENTS
