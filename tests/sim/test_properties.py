"""Property-based: random fleets, plans, failures and topologies (nodes in pops, batchBy,
maxInFlightPer) always keep DESIGN.md's invariants."""

from __future__ import annotations

import attrs
import httpx
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetwave.agent.client import AgentClient
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from fleetwave.store.errors import InvalidInput
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import NodeStatus, ReleaseSpec, ReleaseStatus
from fleetwave.store.strategy import Strategy, validate_strategy
from fleetwave.supervisor import Supervisor
from tests.invariants import assert_release_invariants
from tests.sim.conftest import sim_settings

plan_step = st.one_of(
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=100).map(lambda p: f"{p}%"),
)
behaviour = st.one_of(
    st.builds(
        Behaviour,
        apply_time=st.tuples(st.integers(1, 5), st.integers(5, 30)).map(
            lambda t: (float(t[0]), float(t[1]))
        ),
    ),
    st.just(Behaviour(apply_time=(1, 10), fail="config test failed")),
    st.just(Behaviour(refuse=True)),
    st.just(Behaviour(hang=True)),
    st.just(Behaviour(http_status=500)),
    st.just(Behaviour(garbage=True)),
)


# A node's pop (None: no label), and the topology of its release.
pop = st.sampled_from(["ams1", "fra1", None])
batch_by = st.sampled_from([None, "pop"])
caps = st.one_of(
    st.none(),
    st.just({"pop": 1}),
    st.integers(min_value=1, max_value=2).map(lambda n: {"pop": n}),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    members=st.lists(st.tuples(behaviour, pop), min_size=1, max_size=12),
    plan=st.lists(plan_step, min_size=1, max_size=4),
    max_failures=st.integers(min_value=0, max_value=2),
    max_parallel=st.one_of(st.none(), st.integers(min_value=1, max_value=4)),
    daemons=st.integers(min_value=1, max_value=2),
    batch_by=batch_by,
    max_in_flight_per=caps,
)
def test_random_releases_keep_the_invariants(
    members: list[tuple[Behaviour, str | None]],
    plan: list[int | str],
    max_failures: int,
    max_parallel: int | None,
    daemons: int,
    batch_by: str | None,
    max_in_flight_per: dict[str, int] | None,
) -> None:
    behaviours = [special for special, _ in members]
    topology = validate_strategy(
        plan, max_failures, batch_by=batch_by, max_in_flight_per=max_in_flight_per
    )

    async def scenario() -> None:
        store = MemoryStore()
        fleet = SimulatedFleet(len(behaviours))
        for index, special in enumerate(behaviours, start=1):
            fleet.set_behaviour(index, special)
        async with httpx.AsyncClient(transport=fleet.transport()) as http:
            for k, (host, (_, value)) in enumerate(zip(fleet.hosts, members, strict=True), start=1):
                node = await store.upsert_node(f"edge-{k:03d}", host, fleet.address(k).port)
                if value is not None:
                    await store.update_node(node.id, labels={"pop": value})
            spec = ReleaseSpec(
                plan=tuple(plan), max_failures=max_failures, max_parallel=max_parallel
            )
            if topology.topology_labels:
                spec = attrs.evolve(spec, strategy=topology.to_json())
                if all(value is None for _, value in members):
                    # A label no node of the release has: refused, nothing created.
                    with pytest.raises(InvalidInput, match="no node of the release has"):
                        await store.create_release(spec)
                    assert await store.list_releases() == ([], 0)
                    return
            created = await store.create_release(spec)
            async with trio.open_nursery() as nursery:
                for index in range(daemons):
                    config = sim_settings(daemon_id=f"sim-{index}", node_deadline_sec=120)
                    agents = AgentClient(http, request_timeout=config.agent_request_timeout_sec)
                    await nursery.start(Supervisor(store, agents, config).run)
                with trio.fail_after(24 * 3600):
                    while True:
                        release = await store.get_release(created.release.id)
                        assert release is not None
                        if release.status.terminal:
                            break
                        await trio.sleep(1)
                nursery.cancel_scope.cancel()
            await assert_release_invariants(store, release.id, fleet)
            nodes = await store.release_nodes(release.id)
            # The budgets of store/strategy.py: the release's maxFailures over every batch,
            # and none for the canary (the first of several batches).
            strategy = Strategy.of_plan(plan, max_failures)
            sizes: dict[int, int] = {}
            failed: dict[int, int] = {}
            for node in nodes:
                sizes[node.batch] = sizes.get(node.batch, 0) + 1
                if node.status is NodeStatus.FAILED:
                    failed[node.batch] = failed.get(node.batch, 0) + 1
            over = [
                why
                for batch in failed
                if (why := strategy.over_budget(batch, len(sizes), failed, sizes)) is not None
            ]
            if release.status is ReleaseStatus.SUCCESS:
                assert not over
                assert sum(failed.values()) <= max_failures
                assert all(n.status in (NodeStatus.SUCCESS, NodeStatus.FAILED) for n in nodes)
            else:
                assert release.status is ReleaseStatus.FAILED
                assert over

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
