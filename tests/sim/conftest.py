"""Simulations: MemoryStore, the in-process simulated fleet, supervisors, virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import attrs
import httpx
import pytest
import trio

from fleetwave.agent.client import AgentClient
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from fleetwave.config import Settings, load_settings
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import Node, Release, ReleaseSpec
from fleetwave.supervisor import Supervisor
from tests.waiting import wait_terminal


def sim_settings(**overrides: object) -> Settings:
    base: dict[str, object] = {
        "interval_sec": 5,
        "lease_ttl_sec": 30,
        "flush_interval_sec": 0.2,
        "log_format": "json",
        "daemon_id": "sim-a",
    }
    base.update(overrides)
    return load_settings(environ={}, **base)


@attrs.define
class Sim:
    """One simulated world: a store, a fleet of agents and the daemons driving them."""

    store: MemoryStore
    fleet: SimulatedFleet
    http: httpx.AsyncClient
    nursery: trio.Nursery
    settings: Settings
    nodes: list[Node] = attrs.field(factory=list)

    def agents(self) -> AgentClient:
        return AgentClient(self.http, request_timeout=self.settings.agent_request_timeout_sec)

    async def register(self) -> list[Node]:
        self.nodes = [
            await self.store.upsert_node(f"edge-{k:03d}", host, self.fleet.address(k).port)
            for k, host in enumerate(self.fleet.hosts, start=1)
        ]
        return self.nodes

    async def start_daemon(self, name: str = "sim-a", **overrides: object) -> Supervisor:
        settings = attrs.evolve(self.settings, daemon_id=name, **overrides)  # type: ignore[misc]
        supervisor = Supervisor(self.store, self.agents(), settings)
        await self.nursery.start(supervisor.run)
        return supervisor

    async def create(self, **spec: object) -> int:
        created = await self.store.create_release(ReleaseSpec(**spec))  # type: ignore[arg-type]
        return created.release.id

    async def wait_terminal(self, release_id: int, limit: float = 3600) -> Release:
        return await wait_terminal(self.store, release_id, limit=limit, step=0.5)

    async def wait_for(self, condition: Callable[[], object], limit: float = 3600) -> None:
        with trio.fail_after(limit):
            while not condition():  # noqa: ASYNC110 - polls state owned by other tasks
                await trio.sleep(0.1)


@pytest.fixture
async def make_sim(
    autojump_clock: trio.testing.MockClock,
) -> AsyncIterator[Callable[..., Sim]]:
    async with trio.open_nursery() as nursery:
        clients: list[httpx.AsyncClient] = []

        def make(
            count: int,
            behaviour: Behaviour | None = None,
            overrides: Sequence[tuple[int, Behaviour]] = (),
            **settings: object,
        ) -> Sim:
            fleet = SimulatedFleet(count, behaviour=behaviour or Behaviour(apply_time=(5, 15)))
            for index, special in overrides:
                fleet.set_behaviour(index, special)
            http = httpx.AsyncClient(transport=fleet.transport())
            clients.append(http)
            return Sim(MemoryStore(), fleet, http, nursery, sim_settings(**settings))

        yield make
        nursery.cancel_scope.cancel()
    for client in clients:
        with trio.CancelScope(shield=True):
            await client.aclose()
