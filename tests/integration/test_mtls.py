"""The simulated fleet on real sockets (127.0.0.x) with mutual TLS, called by AgentClient."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from fleetwave.agent.certs import CertPaths, init_certs, mtls_env_lines
from fleetwave.agent.client import AgentClient, AgentPoolTransport, build_http_client
from fleetwave.agent.errors import AgentError, FailureKind
from fleetwave.agent.protocol import AgentAddress, DispatchRequest, TaskStatus
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from fleetwave.config import load_settings
from fleetwave.store.models import task_id_for

BOUND = 15.0
"""No test here may take longer, whatever breaks."""

APPLY = Behaviour(apply_time=(0.2, 0.2))


@attrs.frozen
class Served:
    fleet: SimulatedFleet
    certs: CertPaths
    addresses: list[AgentAddress]


@pytest.fixture
async def served(tmp_path: Path, nursery: trio.Nursery) -> Served:
    """Agents 1-3 answer over mutual TLS; agent 4 refuses connections; agent 5 hangs."""
    certs = init_certs(tmp_path / "certs", agents=5)
    fleet = SimulatedFleet(5, behaviour=APPLY, port=0, seed=1)
    fleet.set_behaviour(4, Behaviour(refuse=True))
    fleet.set_behaviour(5, Behaviour(hang=True))
    addresses = await nursery.start(fleet.serve, certs.directory)
    return Served(fleet, certs, addresses)


def _environ(certs: CertPaths, **changes: str) -> dict[str, str]:
    environ = dict(line.split("=", 1) for line in mtls_env_lines(certs))
    environ.update(changes)
    return environ


@pytest.fixture
async def client(served: Served) -> AsyncIterator[AgentClient]:
    settings = load_settings(_environ(served.certs), agent_request_timeout_sec=2)
    async with build_http_client(settings) as http:
        yield AgentClient(http, request_timeout=settings.agent_request_timeout_sec)


def _request(address: AgentAddress) -> DispatchRequest:
    return DispatchRequest(task_id=task_id_for(address.host, 1), version=1)


async def test_serve_listens_on_every_agent_but_the_refusing_one(served: Served) -> None:
    assert [a.host for a in served.addresses] == [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.6",
    ]
    assert all(a.port > 0 for a in served.addresses)
    assert served.fleet.address(1) == served.addresses[0]


async def test_control_certificate_dispatches_and_queries_over_mutual_tls(
    served: Served, client: AgentClient
) -> None:
    with trio.fail_after(BOUND):
        for k in (1, 2, 3):
            address = served.fleet.address(k)
            ack = await client.dispatch(address, _request(address))
            assert ack.status is TaskStatus.PENDING
        await trio.sleep(0.25)
        for k in (1, 2, 3):
            address = served.fleet.address(k)
            state = await client.query(address, _request(address).task_id)
            assert state is not None and state.status is TaskStatus.SUCCESS
            assert served.fleet.dispatch_count(address.host, _request(address).task_id) == 1
        assert await client.query(served.fleet.address(1), "apply_config_unknown_1") is None
    assert client.requests == served.fleet.requests == 7


async def test_connections_are_pooled_between_calls(served: Served, client: AgentClient) -> None:
    address = served.fleet.address(2)
    with trio.fail_after(BOUND):
        await client.dispatch(address, _request(address))
        first = await client.http.get(address.base_url + "/tasks/" + _request(address).task_id)
        second = await client.http.get(address.base_url + "/tasks/" + _request(address).task_id)
    assert first.extensions["network_stream"] is second.extensions["network_stream"]
    version = first.extensions["network_stream"].get_extra_info("ssl_object").version()
    assert version in ("TLSv1.2", "TLSv1.3")


async def test_client_without_certificate_is_refused(served: Served) -> None:
    context = ssl.create_default_context(cafile=str(served.certs.ca_cert))
    address = served.fleet.address(1)
    async with httpx.AsyncClient(verify=context, trust_env=False) as http:
        client = AgentClient(http, request_timeout=5)
        with trio.fail_after(BOUND), pytest.raises(AgentError) as caught:
            await client.dispatch(address, _request(address))
    assert caught.value.kind is FailureKind.TLS
    assert str(caught.value).startswith("TLS handshake with agent 127.0.0.2:")
    assert "refused our client certificate" in str(caught.value)
    assert served.fleet.task_ids(address.host) == set()


async def test_client_certificate_from_another_ca_is_refused(
    served: Served, tmp_path: Path
) -> None:
    foreign = init_certs(tmp_path / "foreign", agents=5)
    settings = load_settings(
        _environ(
            served.certs,
            CONTROL_CERT=str(foreign.control_cert),
            CONTROL_KEY=str(foreign.control_key),
        )
    )
    address = served.fleet.address(1)
    async with build_http_client(settings) as http:
        client = AgentClient(http, request_timeout=5)
        with trio.fail_after(BOUND), pytest.raises(AgentError) as caught:
            await client.dispatch(address, _request(address))
    assert caught.value.kind is FailureKind.TLS
    assert "refused our client certificate" in str(caught.value)
    assert served.fleet.task_ids(address.host) == set()


async def test_client_refuses_agent_certified_by_another_ca(served: Served, tmp_path: Path) -> None:
    foreign = init_certs(tmp_path / "foreign", agents=5)
    settings = load_settings(_environ(served.certs, CONTROL_CA=str(foreign.ca_cert)))
    address = served.fleet.address(2)
    async with build_http_client(settings) as http:
        client = AgentClient(http, request_timeout=5)
        with trio.fail_after(BOUND), pytest.raises(AgentError) as caught:
            await client.dispatch(address, _request(address))
    assert caught.value.kind is FailureKind.TLS
    assert not caught.value.transient
    message = str(caught.value)
    assert message.startswith(f"TLS handshake with agent {address} failed: certificate verify")
    assert "not signed by CONTROL_CA" in message
    assert "BEGIN" not in message
    assert served.fleet.task_ids(address.host) == set()


async def test_agent_address_missing_from_the_certificate_is_refused(tmp_path: Path) -> None:
    certs = init_certs(tmp_path / "certs", agents=1)
    fleet = SimulatedFleet(2, behaviour=APPLY, port=0)
    settings = load_settings(_environ(certs))
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(fleet.serve, certs.directory)
            async with build_http_client(settings) as http:
                client = AgentClient(http, request_timeout=5)
                await client.dispatch(fleet.address(1), _request(fleet.address(1)))
                with pytest.raises(AgentError) as caught:
                    await client.dispatch(fleet.address(2), _request(fleet.address(2)))
            nursery.cancel_scope.cancel()
    assert caught.value.kind is FailureKind.TLS
    assert "IP address mismatch" in str(caught.value)


async def test_refusing_agent_is_unreachable(served: Served, client: AgentClient) -> None:
    address = served.fleet.address(4)
    with trio.fail_after(BOUND), pytest.raises(AgentError) as caught:
        await client.dispatch(address, _request(address))
    assert caught.value.kind is FailureKind.UNREACHABLE
    assert caught.value.transient
    assert str(caught.value) == f"agent {address} unreachable: connection refused"


async def test_hanging_agent_times_out(served: Served, client: AgentClient) -> None:
    address = served.fleet.address(5)
    start = trio.current_time()
    with trio.fail_after(BOUND), pytest.raises(AgentError) as caught:
        await client.dispatch(address, _request(address))
    assert caught.value.kind is FailureKind.TIMEOUT
    assert str(caught.value) == f"agent {address} did not answer within 2s"
    assert 2.0 <= trio.current_time() - start < 4.0
    assert served.fleet.dispatch_count(address.host, _request(address).task_id) == 1


async def test_refuse_cannot_change_while_serving(served: Served) -> None:
    with pytest.raises(ValueError, match="refuse is fixed while serving"):
        served.fleet.set_behaviour(1, Behaviour(refuse=True))
    served.fleet.set_behaviour(1, Behaviour(fail="disk full"))


async def test_requests_in_flight_stay_within_max_connections(served: Served) -> None:
    settings = load_settings(_environ(served.certs), agent_max_connections=2)
    for k in (1, 2, 3):
        served.fleet.set_behaviour(k, Behaviour(delay=0.3))

    async with build_http_client(settings) as http:
        client = AgentClient(http, request_timeout=5)
        transport = http._transport
        assert isinstance(transport, AgentPoolTransport)
        start = trio.current_time()
        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                for k in (1, 2, 3):
                    nursery.start_soon(client.query, served.fleet.address(k), "unknown_1")
        # Two answered together after 0.3 s; the third had to wait for a free slot.
        assert trio.current_time() - start >= 0.6
        with trio.fail_after(BOUND):
            await client.query(served.fleet.address(1), "unknown_1")
        # Idle pools beyond the limit were closed.
        assert len(transport._pools) <= 2
    assert served.fleet.requests == 4
