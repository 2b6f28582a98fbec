"""A daemon and simulated agents over real mutual-TLS sockets, on a real store.

``open_world(store, certs)`` gives a World: fleets are served on loopback with port 0 and
registered as nodes; daemons (in-process Supervisors with their own pooled mTLS client) are
started on demand. Everything stops when the block ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from fleetwave.agent.certs import CertPaths
from fleetwave.agent.client import AgentClient, build_http_client
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from fleetwave.config import Settings, load_settings
from fleetwave.store.base import Store
from fleetwave.store.models import Node, Release
from fleetwave.store.selection import NodeSelection
from fleetwave.supervisor import Supervisor
from tests.waiting import wait_terminal

FAST: dict[str, object] = {
    "interval_sec": 0.5,
    "lease_ttl_sec": 5,
    "flush_interval_sec": 0.05,
    "poll_initial_sec": 0.05,
    "poll_max_sec": 0.2,
    "retry_initial_sec": 0.05,
    "retry_max_sec": 0.2,
    "agent_request_timeout_sec": 2,
    "agent_connect_timeout_sec": 2,
    "node_deadline_sec": 20,
    "log_format": "json",
}
"""Timing for tests on real sockets: quick polls and retries, short deadlines."""


def lanes(nodes: Sequence[Node], count: int) -> list[NodeSelection]:
    """``count`` disjoint selections dealing ``nodes`` out in turn. Releases of one lane share
    nodes and run one after another; lanes run side by side."""
    if len(nodes) < count:
        raise ValueError(f"{count} lanes need at least {count} nodes, got {len(nodes)}")
    return [NodeSelection.by_ids([node.id for node in nodes[k::count]]) for k in range(count)]


def daemon_settings(certs: CertPaths, daemon_id: str = "it-a", **overrides: object) -> Settings:
    """FAST settings calling agents with the control certificate of ``certs``."""
    values = {**FAST, **overrides}
    return load_settings(
        environ={},
        control_cert=str(certs.control_cert),
        control_key=str(certs.control_key),
        control_ca=str(certs.ca_cert),
        daemon_id=daemon_id,
        **values,
    )


@attrs.define
class World:
    store: Store
    certs: CertPaths
    nursery: trio.Nursery
    fleets: list[SimulatedFleet] = attrs.field(factory=list)
    supervisors: list[Supervisor] = attrs.field(factory=list)

    @property
    def fleet(self) -> SimulatedFleet:
        """The first fleet served."""
        return self.fleets[0]

    async def serve_fleet(
        self,
        count: int,
        overrides: dict[int, Behaviour] | None = None,
        *,
        behaviour: Behaviour | None = None,
        first_host: str = "127.0.0.2",
        certs_dir: Path | None = None,
        prefix: str = "edge",
    ) -> SimulatedFleet:
        """Serve ``count`` agents over mTLS (with ``certs_dir``'s certificates, by default the
        world's) and register them as nodes named ``prefix-001``, ..."""
        fleet = SimulatedFleet(
            count,
            behaviour=behaviour or Behaviour(apply_time=(0.2, 0.6)),
            first_host=first_host,
            port=0,
        )
        for index, special in (overrides or {}).items():
            fleet.set_behaviour(index, special)
        await self.nursery.start(fleet.serve, certs_dir or self.certs.directory)
        for k, host in enumerate(fleet.hosts, start=1):
            await self.store.upsert_node(f"{prefix}-{k:03d}", host, fleet.address(k).port)
        self.fleets.append(fleet)
        return fleet

    async def start_daemon(self, daemon_id: str = "it-a", **overrides: object) -> Supervisor:
        """An in-process daemon on the world's store; returns once it runs."""
        settings = daemon_settings(self.certs, daemon_id, **overrides)
        http = build_http_client(settings)
        supervisor = Supervisor(
            self.store,
            AgentClient(http, request_timeout=settings.agent_request_timeout_sec),
            settings,
        )

        async def daemon(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with http:
                await supervisor.run(task_status=task_status)

        await self.nursery.start(daemon)
        self.supervisors.append(supervisor)
        return supervisor

    async def wait_terminal(self, release_id: int, limit: float = 30) -> Release:
        return await wait_terminal(self.store, release_id, limit=limit, step=0.1)


@asynccontextmanager
async def open_world(store: Store, certs: CertPaths) -> AsyncIterator[World]:
    async with trio.open_nursery() as nursery:
        yield World(store, certs, nursery)
        nursery.cancel_scope.cancel()
