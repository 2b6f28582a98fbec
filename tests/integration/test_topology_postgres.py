"""A release batched by pop under a cap per pop, on PostgreSQL, against simulated agents over
real mutual-TLS sockets: the labels the daemon groups by are read from the database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fleetwave.agent.certs import CertPaths
from fleetwave.agent.sim import Behaviour
from fleetwave.api.schemas import parse_release_spec
from fleetwave.store.models import ReleaseStatus
from fleetwave.store.postgres import PostgresStore
from tests.invariants import assert_release_invariants, peak_in_flight
from tests.world import World, open_world

pytestmark = pytest.mark.postgres


@pytest.fixture
async def world(pg_store: PostgresStore, certs: CertPaths) -> AsyncIterator[World]:
    async with open_world(pg_store, certs) as opened:
        yield opened


async def test_one_pop_per_batch_and_one_node_of_a_pop_at_a_time_on_postgres(
    world: World,
) -> None:
    fleet = await world.serve_fleet(9, behaviour=Behaviour(apply_time=(0.3, 0.5)))
    nodes = await world.store.list_nodes()
    pops = ["fra1", "ams1"] * 4 + [None]
    for node, pop in zip(sorted(nodes, key=lambda n: n.id), pops, strict=True):
        if pop is not None:
            await world.store.update_node(node.id, labels={"pop": pop})
    await world.start_daemon()

    spec = parse_release_spec(
        {"target": "cdn", "reason": "it", "batchBy": "pop", "maxInFlightPer": {"pop": 1}}
    )
    created = await world.store.create_release(spec)
    release = await world.wait_terminal(created.release.id, limit=60)

    assert release.status is ReleaseStatus.SUCCESS, release.error
    assert [len(ids) for _, ids in created.batches] == [1, 3, 4, 1]
    release_nodes = await world.store.release_nodes(release.id)
    assert peak_in_flight(fleet, release_nodes, release.version, "pop") == {
        "ams1": 1,
        "fra1": 1,
        None: 1,
    }
    await assert_release_invariants(world.store, release.id, fleet)
