"""The store contract of topology, on PostgresStore and MemoryStore alike: a release batched
by a label (batchBy) is stored with those batches and read back with their count, its nodes
read with their labels (what maxInFlightPer groups by), and a label no selected node has is
refused by creation and the preview, writing nothing."""

from __future__ import annotations

import pytest

from fleetwave.store.base import Store
from fleetwave.store.errors import InvalidInput
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import Actor, NodeStatus, Outcome, ReleaseSpec, ReleaseStatus, Role
from fleetwave.store.selection import NodeSelection
from fleetwave.store.strategy import current_step, validate_strategy
from fleetwave.store.verbs import Verb
from tests.integration.conftest import run_sql
from tests.integration.test_store_contract import add_nodes, claim_one
from tests.integration.test_store_contract_verbs import run_to

POPS = ["lhr1", "ams1", "fra1", None, "ams1", "lhr1", "fra1"]


def spec(**fields: object) -> ReleaseSpec:
    strategy = validate_strategy(
        [1, {"pause": 60}, "100%", {"pause": 30}], batch_by="pop", **fields
    )  # type: ignore[arg-type]
    return ReleaseSpec(plan=strategy.plan, strategy=strategy.to_json())


async def labelled(store: Store) -> list[int]:
    nodes = await add_nodes(store, len(POPS))
    for node, pop in zip(nodes, POPS, strict=True):
        if pop is not None:
            await store.update_node(node.id, labels={"pop": pop, "region": "eu"})
    return [node.id for node in nodes]


async def test_a_release_batched_by_pop_is_stored_with_its_batches_and_their_count(
    store: Store,
) -> None:
    ids = await labelled(store)

    created = await store.create_release(spec(max_in_flight_per={"pop": 1}))

    # ams1 (2, 5): canary 2, then 5; fra1 (3, 7); lhr1 (1, 6); no pop (4) last.
    expected = [
        (1, (ids[1],)),
        (2, (ids[4],)),
        (3, (ids[2], ids[6])),
        (4, (ids[0], ids[5])),
        (5, (ids[3],)),
    ]
    assert created.batches == tuple(expected)
    release = await store.get_release(created.release.id)
    assert release is not None
    assert release.batch_count == 5
    assert release.strategy is not None
    assert (release.strategy["batchBy"], release.strategy["maxInFlightPer"]) == (
        "pop",
        {"pop": 1},
    )
    step = current_step(release)
    assert step is not None and (step.kind, step.batch) == ("batch", 1)
    nodes = await store.release_nodes(created.release.id)
    assert [(node.node_id, node.batch) for node in nodes] == [
        (node_id, batch) for batch, members in expected for node_id in members
    ]
    by_id = {node.node_id: node for node in nodes}
    assert by_id[ids[1]].labels == (("pop", "ams1"), ("region", "eu"))
    assert by_id[ids[3]].labels == ()
    events = await store.release_events(created.release.id)
    assert "7 nodes in 5 batches" in (events[0].message or "")

    preview = await store.preview_release(spec(max_in_flight_per={"pop": 1}))
    assert [batch.pops for batch in preview.batches] == [
        ("ams1",),
        ("ams1",),
        ("fra1",),
        ("lhr1",),
        (),
    ]
    # Every batch is followed by its bake, the last one too (pauses after the last size
    # repeat with it): 5 batches and 5 bakes.
    assert [step.kind for step in preview.steps].count("bake") == 5


async def test_the_batch_count_is_read_from_the_rows_another_program_wrote(
    store: Store, store_database_url: str | None
) -> None:
    ids = await labelled(store)
    created = await store.create_release(spec())
    if isinstance(store, MemoryStore):
        [row] = [r for r in store._release_nodes[created.release.id] if r.node_id == ids[3]]
        row.batch = 9
    else:
        assert store_database_url is not None
        await run_sql(
            store_database_url,
            f"UPDATE release_task_nodes SET batch = 9 WHERE node_id = {ids[3]}",
        )
    release = await store.get_release(created.release.id)
    assert release is not None and release.batch_count == 9


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"batch_by": "rack"}, "batchBy: no node of the release has the label 'rack'"),
        (
            {"max_in_flight_per": {"site": 1}},
            "maxInFlightPer.site: no node of the release has the label 'site'",
        ),
    ],
)
async def test_a_label_no_selected_node_has_is_refused_by_creation_and_preview(
    store: Store, fields: dict[str, object], message: str
) -> None:
    await labelled(store)
    strategy = validate_strategy([1, "100%"], **fields)  # type: ignore[arg-type]
    bad = ReleaseSpec(plan=strategy.plan, strategy=strategy.to_json())

    with pytest.raises(InvalidInput) as created:
        await store.create_release(bad)
    with pytest.raises(InvalidInput) as previewed:
        await store.preview_release(bad)

    assert str(created.value) == str(previewed.value)
    assert str(created.value).startswith(message)
    assert await store.list_releases() == ([], 0)


async def test_the_labels_checked_are_those_of_the_selected_nodes(store: Store) -> None:
    ids = await labelled(store)
    strategy = validate_strategy([1, "100%"], batch_by="pop")
    unlabelled = ReleaseSpec(
        plan=strategy.plan,
        strategy=strategy.to_json(),
        selection=NodeSelection.by_ids([ids[3]]),
    )

    with pytest.raises(InvalidInput, match=r"^batchBy: no node of the release has the label"):
        await store.create_release(unlabelled)
    assert await store.list_releases() == ([], 0)


async def test_a_rollback_keeps_the_topology_of_the_release_it_rolls_back(store: Store) -> None:
    ids = await labelled(store)
    await store.create_release(ReleaseSpec(plan=(1, "100%")))
    good = await claim_one(store)
    await run_to(store, good, [NodeStatus.SUCCESS] * len(ids))
    assert await store.record(good, [], Outcome(ReleaseStatus.SUCCESS))
    await store.create_release(spec(max_in_flight_per={"pop": 1}))
    bad = await claim_one(store)
    await run_to(store, bad, [NodeStatus.SUCCESS] * len(ids))
    assert await store.record(bad, [], Outcome(ReleaseStatus.FAILED, "5xx"))

    result = await store.steer(bad.release_id, Verb.ROLLBACK, by=Actor("ops", Role.OPERATOR))

    rollback = result.rollback
    assert rollback is not None and rollback.config_version == 1
    assert rollback.strategy == {
        "plan": [1, "100%"],
        "maxFailures": 0,
        "maxFailurePercent": None,
        "onFailure": "stop",
        "healthChecks": [],
        "batchBy": "pop",
        "maxInFlightPer": {"pop": 1},
    }
    assert rollback.batch_count == 5
    nodes = await store.release_nodes(rollback.id)
    assert [(node.node_id, node.batch) for node in nodes] == [
        (ids[1], 1),
        (ids[4], 2),
        (ids[2], 3),
        (ids[6], 3),
        (ids[0], 4),
        (ids[5], 4),
        (ids[3], 5),
    ]
