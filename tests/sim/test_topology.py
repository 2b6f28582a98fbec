"""Topology in simulated time: batches by a node label (batchBy) and caps per label value
inside a batch (maxInFlightPer), measured by the simulated agents' own record of their
applies, with real supervisors and actors, MemoryStore and in-process agents."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import pytest
import trio
from trio.testing import MockClock

from fleetwave.agent.protocol import AgentAddress, DispatchRequest
from fleetwave.agent.sim import Behaviour
from fleetwave.api.schemas import parse_release_spec, step_item
from fleetwave.api.verbs import promote
from fleetwave.store.errors import InvalidInput
from fleetwave.store.models import (
    Actor,
    NodeChange,
    NodeStatus,
    ReleaseNode,
    ReleaseStatus,
    Role,
    task_id_for,
)
from fleetwave.store.verbs import Verb
from tests.invariants import (
    agent_applies,
    assert_release_invariants,
    assert_rollback_follows_plan,
    peak_in_flight,
)
from tests.sim.conftest import Sim
from tests.sim.test_strategy import wait_step

SLOW = Behaviour(apply_time=(20, 40))


async def label(sim: Sim, pops: Sequence[str | None]) -> None:
    """Node k carries pop ``pops[k-1]`` (None: no label) and a region by its pop."""
    nodes = await sim.register()
    for node, pop in zip(nodes, pops, strict=True):
        if pop is not None:
            region = "us" if pop.startswith("iad") else "eu"
            await sim.store.update_node(node.id, labels={"pop": pop, "region": region})


async def create(sim: Sim, **fields: object) -> int:
    """A release created from the API's body (its validation included)."""
    created = await sim.store.create_release(parse_release_spec({"target": "cdn", **fields}))
    return created.release.id


async def finished(sim: Sim, release_id: int) -> tuple[list[ReleaseNode], int]:
    release = await sim.wait_terminal(release_id, limit=24 * 3600)
    assert release.status is ReleaseStatus.SUCCESS, release.error
    await assert_release_invariants(sim.store, release_id, sim.fleet)
    return await sim.store.release_nodes(release_id), release.version


def overall_peak(applies: Sequence[tuple[float, float, ReleaseNode]]) -> int:
    moments = sorted([(start, 1) for start, _, _ in applies] + [(end, -1) for _, end, _ in applies])
    current = peak = 0
    for _, change in moments:
        current += change
        peak = max(peak, current)
    return peak


async def test_batch_by_pop_runs_one_pop_per_batch_in_value_order_after_the_canary(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(9, behaviour=Behaviour(apply_time=(5, 15)))
    await label(sim, ["lhr1", "ams1", "fra1", None, "ams1", "lhr1", "fra1", "ams1", "lhr1"])
    await sim.start_daemon()

    release_id = await create(sim, batchBy="pop")
    nodes, version = await finished(sim, release_id)

    batches = [
        sorted(node.node_name for node in nodes if node.batch == batch)
        for batch in sorted({node.batch for node in nodes})
    ]
    assert batches == [
        ["edge-002"],  # the canary: the first node of the first pop (ams1)
        ["edge-005", "edge-008"],  # the rest of ams1
        ["edge-003", "edge-007"],  # fra1
        ["edge-001", "edge-006", "edge-009"],  # lhr1
        ["edge-004"],  # no pop label: last, not dropped
    ]
    # By the agents' clocks: each batch's applies all start after the previous one's ended.
    applies = agent_applies(sim.fleet, nodes, version)
    spans = {}
    for start, end, node in applies:
        first, last = spans.get(node.batch, (start, end))
        spans[node.batch] = (min(first, start), max(last, end))
    ordered = [spans[batch] for batch in sorted(spans)]
    assert len(ordered) == 5
    for (_, ended), (began, _) in pairwise(ordered):
        assert began > ended
    events = [event.message or "" for event in await sim.store.release_events(release_id)]
    assert any("9 nodes in 5 batches" in message for message in events)


async def test_a_cap_of_one_over_a_pop_of_five_keeps_exactly_one_apply_of_it_in_flight(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(11, behaviour=SLOW)
    await label(sim, ["iad1"] + ["fra1"] * 5 + ["ams1"] * 5)
    await sim.start_daemon()

    # One batch of ten after the canary, two pops of five in it.
    release_id = await create(sim, plan=[1, "100%"], maxInFlightPer={"pop": 1})
    nodes, version = await finished(sim, release_id)

    peaks = peak_in_flight(sim.fleet, nodes, version, "pop")
    assert peaks == {"iad1": 1, "fra1": 1, "ams1": 1}
    batch_two = [apply for apply in agent_applies(sim.fleet, nodes, version) if apply[2].batch == 2]
    assert len(batch_two) == 10
    # The two pops went side by side: one of each at a time.
    assert overall_peak(batch_two) == 2
    # Without the cap the same fleet applies a whole pop at once: the measure can tell.
    again = make_sim(11, behaviour=SLOW)
    await label(again, ["iad1"] + ["fra1"] * 5 + ["ams1"] * 5)
    await again.start_daemon()
    uncapped = await create(again, plan=[1, "100%"])
    nodes, version = await finished(again, uncapped)
    assert peak_in_flight(again.fleet, nodes, version, "pop") == {"iad1": 1, "fra1": 5, "ams1": 5}


@pytest.mark.parametrize("batch_by", [None, "pop"])
async def test_three_pops_of_forty_under_a_cap_of_two_and_a_pool_of_five(
    make_sim: Callable[..., Sim], autojump_clock: MockClock, batch_by: str | None
) -> None:
    sim = make_sim(120, behaviour=Behaviour(apply_time=(5, 15)))
    await label(sim, [pop for pop in ("ams1", "fra1", "lhr1") for _ in range(40)])
    await sim.start_daemon()

    fields: dict[str, object] = {"maxInFlightPer": {"pop": 2}, "maxParallel": 5}
    if batch_by is not None:
        fields["batchBy"] = batch_by
    release_id = await create(sim, **fields)
    nodes, version = await finished(sim, release_id)

    assert peak_in_flight(sim.fleet, nodes, version, "pop") == {"ams1": 2, "fra1": 2, "lhr1": 2}
    applies = agent_applies(sim.fleet, nodes, version)
    assert len(applies) == 120
    if batch_by is None:
        # 119 nodes of three pops in batch 2: six slots by pop, five places in the pool.
        assert overall_peak(applies) == 5
    else:
        assert len({node.batch for node in nodes}) == 4
        assert overall_peak(applies) == 2


async def test_a_failure_under_a_cap_stops_the_batch_and_its_waiting_nodes_are_skipped(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    fail = Behaviour(apply_time=(20, 20), fail="config test failed")
    sim = make_sim(6, behaviour=SLOW, overrides=[(3, fail)])
    await label(sim, ["fra1"] * 6)
    await sim.start_daemon()

    release_id = await create(sim, plan=[1, "100%"], maxInFlightPer={"pop": 1})
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.FAILED
    nodes = await sim.store.release_nodes(release_id)
    statuses = [node.status for node in nodes]
    assert statuses == [NodeStatus.SUCCESS] * 2 + [NodeStatus.FAILED] + [NodeStatus.SKIPPED] * 3
    # The waiting nodes never reached their agents.
    for node in nodes[3:]:
        assert sim.fleet.task_ids(node.main_ip) == set()
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_a_new_owner_counts_the_nodes_already_running_in_the_batch(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    # An earlier owner dispatched the last node of the pop (a 200 s apply) and died.
    sim = make_sim(5, behaviour=Behaviour(apply_time=(10, 10)))
    sim.fleet.set_behaviour(5, Behaviour(apply_time=(200, 200)))
    await label(sim, ["fra1"] * 5)
    release_id = await create(sim, plan=[5], maxInFlightPer={"pop": 1})
    [claim] = await sim.store.claim("gone", 1, ttl=30)
    last = (await sim.store.release_nodes(release_id))[-1]
    task_id = task_id_for(last.main_ip, claim.release.version)
    change = NodeChange(last.id, NodeStatus.RUNNING, task_id=task_id, attempts=1, started=True)
    assert await sim.store.record(claim.lease, [change], daemon_id="gone")
    await sim.agents().dispatch(
        AgentAddress(last.main_ip, last.agent_port),
        DispatchRequest(task_id=task_id, version=claim.release.version),
    )

    await sim.start_daemon("sim-b")
    nodes, version = await finished(sim, release_id)

    assert peak_in_flight(sim.fleet, nodes, version, "pop") == {"fra1": 1}
    # The others waited for it: the first of them started once its 200 s apply ended.
    starts = sorted(start for start, _, node in agent_applies(sim.fleet, nodes, version))
    assert starts[1] - starts[0] >= 200
    assert sim.fleet.dispatch_count(last.main_ip, task_id) == 1  # asked, not sent again


async def test_the_cap_holds_across_a_takeover_of_a_dead_daemon(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(13, behaviour=Behaviour(apply_time=(60, 90)))
    await label(sim, ["ams1"] + ["fra1"] * 6 + ["lhr1"] * 6)
    first = await sim.start_daemon("sim-a")
    release_id = await create(sim, plan=[1, "100%"], maxInFlightPer={"pop": 2})
    # Batch 2 is applying: two of each pop dispatched.
    await sim.wait_for(lambda: sum(len(sim.fleet.task_ids(h)) for h in sim.fleet.hosts) == 5)
    await trio.sleep(5)

    first.crash()
    second = await sim.start_daemon("sim-b")
    nodes, version = await finished(sim, release_id)

    assert second.claimed == 1
    assert peak_in_flight(sim.fleet, nodes, version, "pop") == {"ams1": 1, "fra1": 2, "lhr1": 2}
    for node in nodes:
        assert sim.fleet.dispatch_count(node.main_ip, node.task_id or "") == 1


async def test_pause_and_resume_under_a_cap_keep_it(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    ops = Actor("ops", Role.OPERATOR)
    sim = make_sim(9, behaviour=Behaviour(apply_time=(30, 30)))
    await label(sim, ["ams1"] + ["fra1"] * 8)
    await sim.start_daemon()
    release_id = await create(sim, plan=[1, "100%"], maxInFlightPer={"pop": 1})
    await sim.wait_for(lambda: sum(len(sim.fleet.task_ids(h)) for h in sim.fleet.hosts) == 3)

    await sim.store.steer(release_id, Verb.PAUSE, by=ops)
    await trio.sleep(300)
    nodes = await sim.store.release_nodes(release_id)
    assert [node.status for node in nodes].count(NodeStatus.SUCCESS) == 3
    assert [node.status for node in nodes].count(NodeStatus.PENDING) == 6
    await sim.store.steer(release_id, Verb.RESUME, by=ops)
    nodes, version = await finished(sim, release_id)

    assert peak_in_flight(sim.fleet, nodes, version, "pop") == {"ams1": 1, "fra1": 1}


async def test_a_label_no_node_of_the_release_has_is_refused_and_nothing_is_created(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(3)
    await label(sim, ["fra1", None, "ams1"])

    with pytest.raises(InvalidInput, match=r"^batchBy: no node of the release has the label"):
        await create(sim, batchBy="rack")
    with pytest.raises(InvalidInput, match=r"^maxInFlightPer.pop: no node of the release"):
        # The selected node has no pop, though others do.
        await create(sim, nodeNames=["edge-002"], maxInFlightPer={"pop": 1})
    assert await sim.store.list_releases() == ([], 0)


async def test_a_rollback_of_a_release_batched_by_pop_goes_by_pop_under_the_same_cap(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(8, behaviour=Behaviour(apply_time=(20, 30)))
    await label(sim, ["ams1"] * 3 + ["fra1"] * 3 + ["lhr1"] * 2)
    await sim.start_daemon()
    good = await create(sim)
    assert (await sim.wait_terminal(good)).status is ReleaseStatus.SUCCESS
    # Version 2 fails in lhr1, after ams1 and fra1 took it; the operator rolls it back.
    sim.fleet.set_behaviour(8, Behaviour(apply_time=(20, 20), fail="config test failed"))
    bad = await create(sim, batchBy="pop", maxInFlightPer={"pop": 1})
    failed = await sim.wait_terminal(bad)
    assert failed.status is ReleaseStatus.FAILED
    sim.fleet.set_behaviour(8, Behaviour(apply_time=(20, 30)))

    result = await sim.store.steer(bad, Verb.ROLLBACK, by=Actor("ops", Role.OPERATOR))
    rollback = result.rollback
    assert rollback is not None
    nodes, version = await finished(sim, rollback.id)

    await assert_rollback_follows_plan(sim.store, rollback.id)
    assert rollback.config_version == 1
    pops = [{dict(n.labels)["pop"] for n in nodes if n.batch == b} for b in (1, 2, 3, 4)]
    assert pops == [{"ams1"}, {"ams1"}, {"fra1"}, {"lhr1"}]
    assert peak_in_flight(sim.fleet, nodes, version, "pop") == {"ams1": 1, "fra1": 1, "lhr1": 1}


async def test_nodes_waiting_for_their_pops_turn_do_not_slow_the_polls_of_those_applying(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    # A budget of one status query a second: 30 nodes counted as watched would space each
    # node's polls 10 s apart (poll_max); one applying at a time is asked every second.
    sim = make_sim(31, behaviour=Behaviour(apply_time=(10, 10)), poll_rate=1)
    await label(sim, ["fra1"] * 31)
    await sim.start_daemon()

    release_id = await create(sim, maxInFlightPer={"pop": 1})
    nodes, version = await finished(sim, release_id)

    batch = [node for node in nodes if node.batch == 2]
    assert len(batch) == 30
    starts = sorted(start for start, _, node in agent_applies(sim.fleet, nodes, version))
    # Each of the 30 found done within a second or two of its 10 s apply, then the next sent.
    gaps = [later - earlier for earlier, later in pairwise(starts[1:])]
    assert max(gaps) < 13, gaps


async def test_gates_repeat_between_the_batches_by_pop_and_promote_passes_each(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(5, behaviour=Behaviour(apply_time=(5, 10)))
    await label(sim, ["ams1", "ams1", "fra1", "fra1", "lhr1"])
    await sim.start_daemon()
    # The plan alone splits 5 nodes into 2 batches (no gate: it would follow the last); by
    # pop they are 4, with a gate (and a bake) after the 2nd and the 3rd.
    release_id = await create(sim, plan=[1, "100%", {"pause": None}, {"pause": 60}], batchBy="pop")

    passed = []
    for _ in range(2):
        step = step_item(await wait_step(sim, release_id, "gate"))
        assert step is not None
        passed.append(step["batch"])
        nodes = await sim.store.release_nodes(release_id)
        later = [node.status for node in nodes if node.batch > int(str(step["batch"]))]
        assert set(later) == {NodeStatus.PENDING}
        await promote(sim.store, release_id, by=Actor("ops", Role.OPERATOR))

    nodes, _ = await finished(sim, release_id)
    assert passed == [2, 3]
    assert len({node.batch for node in nodes}) == 4
