"""The store contract of a release preview: the nodes, batches, steps, blast radius and
predicted duration create_release would give, on PostgresStore and MemoryStore alike, with
the same refusals as creation and nothing written."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from fleetwave.store.base import Store
from fleetwave.store.errors import Conflict, InvalidInput, StoreError
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import NodeStatus, ReleaseSpec
from fleetwave.store.postgres import PostgresStore
from fleetwave.store.selection import NodeSelection
from fleetwave.store.strategy import validate_strategy
from tests.integration.conftest import run_sql
from tests.integration.test_api_queries import QueryCount, counted  # noqa: F401
from tests.integration.test_store_contract import add_nodes

BASE = datetime(2026, 1, 1, tzinfo=UTC)
STRATEGY = validate_strategy([1, {"pause": 60}, 1, {"pause": None}, "100%"], None, 0, None)
LABELS = [
    {"pop": "fra1", "region": "eu"},
    {"pop": "ams1", "region": "eu"},
    {"pop": "fra1", "region": "eu"},
    {"pop": "iad1", "region": "us"},
    {"region": "us"},
]


async def record_runs(
    store: Store, url: str | None, first: int, runs: Sequence[tuple[int, str, float]]
) -> None:
    """Finished releases of another program, versions from ``first``, one a run: (node id,
    status, seconds), the n-th started n minutes after BASE's hour ``first``."""
    for index, (node, status, seconds) in enumerate(runs):
        version = first + index
        started = BASE + timedelta(hours=first, minutes=index)
        finished = started + timedelta(seconds=seconds)
        if isinstance(store, MemoryStore):
            release_id = store.insert_seed_release(version, [[node]], status="success")
            (row,) = store._release_nodes[release_id]
            row.status, row.started_at, row.finished_at = NodeStatus(status), started, finished
            continue
        assert url is not None
        await run_sql(
            url,
            "WITH r AS (INSERT INTO release_tasks (type, target, version, status, total_nodes,"
            f" success_nodes, failed_nodes) VALUES ('apply_config', 'cdn', {version},"
            " 'success', 1, 0, 0) RETURNING id)"
            " INSERT INTO release_task_nodes (release_task_id, node_id, batch, status,"
            f" started_at, finished_at) VALUES ((SELECT id FROM r), {node}, 1, '{status}',"
            f" '{started.isoformat()}', '{finished.isoformat()}')",
        )


def spec(**fields: object) -> ReleaseSpec:
    return ReleaseSpec(plan=STRATEGY.plan, strategy=STRATEGY.to_json(), **fields)  # type: ignore[arg-type]


async def labelled(store: Store) -> list[int]:
    nodes = await add_nodes(store, len(LABELS))
    for node, labels in zip(nodes, LABELS, strict=True):
        await store.update_node(node.id, labels=dict(labels))
    return [node.id for node in nodes]


async def test_a_preview_shows_batches_steps_blast_radius_and_predicted_time(
    store: Store, store_database_url: str | None
) -> None:
    ids = await labelled(store)
    # Node 1: an old slow success, then five recent ones (median 20); node 2: one of 50; a
    # failure's time never counts. The fleet median of the recent successes is 20.
    await record_runs(store, store_database_url, 1, [(ids[0], "success", 1000)])
    await record_runs(
        store,
        store_database_url,
        10,
        [(ids[0], "success", s) for s in (10, 10, 20, 20, 20)]
        + [(ids[1], "success", 50), (ids[2], "failed", 500)],
    )

    preview = await store.preview_release(spec(max_parallel=2))

    assert [[entry.node.id for entry in batch.nodes] for batch in preview.batches] == [
        [ids[0]],
        [ids[1]],
        ids[2:],
    ]
    last = preview.batches[2]
    assert [dict(entry.node.labels) for entry in last.nodes] == LABELS[2:]
    assert [entry.node.name for entry in last.nodes] == ["edge-3", "edge-4", "edge-5"]
    assert (last.pops, last.regions) == (("fra1", "iad1"), ("eu", "us"))
    assert (preview.batches[0].pops, preview.batches[1].pops) == (("fra1",), ("ams1",))
    assert preview.fleet_median_seconds == 20
    assert [(e.apply_seconds, e.from_history) for b in preview.batches for e in b.nodes] == [
        (20, True),
        (50, True),
        (20, False),
        (20, False),
        (20, False),
    ]
    # Three nodes of 20 s, two at once: 40 s.
    assert [batch.predicted_seconds for batch in preview.batches] == [20, 50, 40]
    assert [(step.kind, step.batch, step.seconds) for step in preview.steps] == [
        ("batch", 1, 20),
        ("bake", 1, 60),
        ("batch", 2, 50),
        ("gate", 2, None),
        ("batch", 3, 40),
    ]
    assert (preview.bake_seconds, preview.gates, preview.predicted_seconds) == (60, 1, 170)


async def test_without_any_history_the_apply_time_is_unknown(store: Store) -> None:
    await labelled(store)

    preview = await store.preview_release(ReleaseSpec())

    assert preview.fleet_median_seconds is None
    assert preview.predicted_seconds is None
    assert [len(batch.nodes) for batch in preview.batches] == [1, 4]
    assert [step.kind for step in preview.steps] == ["batch", "batch"]


async def test_a_preview_refuses_exactly_what_creation_refuses_and_writes_nothing(
    store: Store,
) -> None:
    ids = await labelled(store)
    await store.update_node(ids[4], enabled=False)
    bad = [
        ReleaseSpec(plan=(1,), strategy=STRATEGY.to_json()),
        ReleaseSpec(plan=(0,)),
        ReleaseSpec(max_failures=-1),
        ReleaseSpec(target=" "),
        spec(selection=NodeSelection.by_names(["edge-1", "nowhere"])),
        spec(selection=NodeSelection.by_ids([ids[4]])),
        spec(selection=NodeSelection.by_selector({"pop": "mars"})),
    ]
    for wrong in bad:
        with pytest.raises(StoreError) as previewed:
            await store.preview_release(wrong)
        with pytest.raises(StoreError) as created:
            await store.create_release(wrong)
        assert type(previewed.value) is type(created.value)
        assert isinstance(previewed.value, InvalidInput | Conflict)
        assert str(previewed.value) == str(created.value)

    preview = await store.preview_release(spec())

    assert preview.total_nodes == 4
    assert (await store.list_releases())[1] == 0
    assert all(node.applied_version is None for node in await store.list_nodes())
    created = await store.create_release(spec())
    assert created.release.version == 1
    assert [list(ids) for _, ids in created.batches] == [
        [entry.node.id for entry in batch.nodes] for batch in preview.batches
    ]


@pytest.mark.postgres
async def test_a_preview_costs_the_same_queries_for_5_and_60_nodes(
    counted: tuple[PostgresStore, QueryCount],  # noqa: F811
    database_url: str,
) -> None:
    store, count = counted
    ids = await add_nodes(store, 5)
    await record_runs(store, database_url, 1, [(node.id, "success", 10) for node in ids])
    await store.preview_release(ReleaseSpec())  # the pool's first use introspects types
    count.statements.clear()
    await store.preview_release(ReleaseSpec())
    small = len(count.statements)
    more = await add_nodes(store, 55, prefix="more")
    await record_runs(store, database_url, 10, [(node.id, "success", 12) for node in more])
    count.statements.clear()

    preview = await store.preview_release(ReleaseSpec())

    assert preview.total_nodes == 60
    assert len(count.statements) == small <= 4
