"""Topology of a strategy (store/topology.py): batchBy and maxInFlightPer validated, nodes
batched by a label, and the labels a release's nodes must carry."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fleetwave.store.errors import InvalidInput
from fleetwave.store.models import Release, ReleaseStatus
from fleetwave.store.preview import capped_batch_seconds
from fleetwave.store.selection import Labels
from fleetwave.store.strategy import (
    Strategy,
    release_schedule,
    strategy_from_json,
    validate_strategy,
)
from fleetwave.store.topology import check_labels_carried, place_nodes, topology_batches


def release_with(strategy: Strategy, *, total_nodes: int, batch_count: int) -> Release:
    now = datetime.now(UTC)
    return Release(
        id=1,
        type="apply_config",
        target="cdn",
        scope=None,
        version=1,
        status=ReleaseStatus.RUNNING,
        total_nodes=total_nodes,
        success_nodes=0,
        failed_nodes=0,
        skipped_nodes=0,
        cancelled_nodes=0,
        current_batch=1,
        plan=strategy.plan,
        max_parallel=None,
        max_failures=0,
        reason="",
        error=None,
        lease_owner=None,
        lease_epoch=0,
        lease_expires_at=None,
        created_at=now,
        updated_at=now,
        started_at=None,
        finished_at=None,
        strategy=strategy.to_json(),
        batch_count=batch_count,
    )


def pops(*values: str | None) -> list[tuple[int, Labels]]:
    """Nodes 1, 2, ... with these pop labels (None: no label at all)."""
    return [
        (node_id, () if value is None else (("pop", value), ("region", "eu")))
        for node_id, value in enumerate(values, start=1)
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"batch_by": 5}, "batchBy: must be a label key"),
        ({"batch_by": ""}, "batchBy: must be a label key"),
        ({"batch_by": "pop=fra1"}, "batchBy: must be a label key"),
        ({"batch_by": "-pop"}, "batchBy: must be a label key"),
        ({"max_in_flight_per": 1}, "maxInFlightPer: must be an object of label key -> nodes"),
        ({"max_in_flight_per": ["pop"]}, "maxInFlightPer: must be an object"),
        ({"max_in_flight_per": {"pop": 0}}, "maxInFlightPer.pop: must be a whole number"),
        ({"max_in_flight_per": {"pop": -1}}, "maxInFlightPer.pop: must be a whole number"),
        ({"max_in_flight_per": {"pop": 1.5}}, "maxInFlightPer.pop: must be a whole number"),
        ({"max_in_flight_per": {"pop": "1"}}, "maxInFlightPer.pop: must be a whole number"),
        ({"max_in_flight_per": {"pop": True}}, "maxInFlightPer.pop: must be a whole number"),
        ({"max_in_flight_per": {"pop": 2**31}}, "maxInFlightPer.pop: must be a whole number"),
        ({"max_in_flight_per": {"p o p": 1}}, "maxInFlightPer.p o p: must be a label key"),
        ({"max_in_flight_per": {"x" * 64: 1}}, "maxInFlightPer: must be a label key"),
        (
            {"max_in_flight_per": {f"k{n}": 1 for n in range(17)}},
            "maxInFlightPer: at most 16 labels",
        ),
    ],
)
def test_a_bad_topology_field_is_refused_naming_it(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_strategy(**fields)  # type: ignore[arg-type]
    assert str(refused.value).startswith(message), str(refused.value)


def test_topology_fields_round_trip_and_are_shown_only_when_set() -> None:
    strategy = validate_strategy(
        [1, {"pause": 60}, "100%"], batch_by="pop", max_in_flight_per={"region": 3, "pop": 1}
    )
    assert strategy.batch_by == "pop"
    assert strategy.max_in_flight_per == (("pop", 1), ("region", 3))
    assert strategy.topology_labels == ("pop", "region")
    shown = strategy.to_json()
    assert (shown["batchBy"], shown["maxInFlightPer"]) == ("pop", {"pop": 1, "region": 3})
    assert strategy_from_json(shown) == strategy
    plain = validate_strategy([1, "100%"]).to_json()
    assert "batchBy" not in plain and "maxInFlightPer" not in plain
    assert validate_strategy(max_in_flight_per={}).max_in_flight_per == ()


def test_batches_go_one_pop_at_a_time_in_value_order_after_a_canary_from_the_first() -> None:
    nodes = pops("lhr1", "fra1", "ams1", "fra1", "ams1", "lhr1", "ams1")

    placed = topology_batches((1, "100%"), nodes, "pop")

    # ams1 = 3, 5, 7; fra1 = 2, 4; lhr1 = 1, 6.
    assert placed == [(3, 1), (5, 2), (7, 2), (2, 3), (4, 3), (1, 4), (6, 4)]


def test_nodes_without_the_label_come_last_in_a_group_of_their_own() -> None:
    nodes = pops(None, "fra1", None, "ams1", "fra1")

    assert topology_batches((1, "100%"), nodes, "pop") == [
        (4, 1),
        (2, 2),
        (5, 2),
        (1, 3),
        (3, 3),
    ]


def test_plan_sizes_cap_each_batch_and_a_batch_never_mixes_two_pops() -> None:
    nodes = pops(*["ams1"] * 5, *["fra1"] * 3)

    placed = topology_batches((1, 2), nodes, "pop")

    batches: dict[int, list[int]] = {}
    for node_id, batch in placed:
        batches.setdefault(batch, []).append(node_id)
    # ams1 (1-5): canary 1, then 2 + 2; fra1 (6-8): 2 + 1.
    assert list(batches.values()) == [[1], [2, 3], [4, 5], [6, 7], [8]]


def test_the_canary_never_spans_two_pops() -> None:
    nodes = pops("ams1", "ams1", "fra1", "fra1", "fra1")

    placed = topology_batches((3, "100%"), nodes, "pop")

    assert placed == [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2)]


def test_percentages_are_of_the_whole_release() -> None:
    nodes = pops(*["ams1"] * 10, *["fra1"] * 10)

    placed = topology_batches((1, "25%"), nodes, "pop")

    sizes: dict[int, int] = {}
    for _, batch in placed:
        sizes[batch] = sizes.get(batch, 0) + 1
    # 25% of 20 = 5 per batch, never across the two pops.
    assert list(sizes.values()) == [1, 5, 4, 5, 5]


def test_a_label_no_node_carries_is_refused_naming_the_field() -> None:
    nodes = pops("ams1", None)
    with pytest.raises(InvalidInput) as refused:
        place_nodes(validate_strategy(batch_by="rack"), (1, "100%"), nodes)
    assert str(refused.value) == (
        "batchBy: no node of the release has the label 'rack' (their labels: pop, region)"
    )
    with pytest.raises(InvalidInput, match=r"^maxInFlightPer.site: no node of the release"):
        check_labels_carried(
            validate_strategy(max_in_flight_per={"pop": 1, "site": 2}), [(("pop", "x"),)]
        )
    assert place_nodes(validate_strategy(max_in_flight_per={"pop": 1}), (1, "100%"), nodes) == [
        (1, 1),
        (2, 2),
    ]


def test_a_release_batched_by_a_label_is_scheduled_over_the_batches_its_rows_hold() -> None:
    strategy = validate_strategy(
        [1, {"pause": 60}, "100%", {"pause": None}, {"pause": 30}], batch_by="pop"
    )
    # The plan alone would split 10 nodes into 2 batches; by pop they are 4.
    assert len([s for s in strategy.schedule(10) if s.pause is None]) == 2
    release = release_with(strategy, total_nodes=10, batch_count=4)
    kinds = [(step.kind, step.batch) for step in release_schedule(release)]
    assert kinds == [
        ("batch", 1),
        ("bake", 1),
        ("batch", 2),
        ("gate", 2),
        ("bake", 2),
        ("batch", 3),
        ("gate", 3),
        ("bake", 3),
        ("batch", 4),
        ("bake", 4),
    ]
    unbatched = release_with(Strategy.of_plan((1, "100%")), total_nodes=10, batch_count=7)
    assert len(release_schedule(unbatched)) == 2


FRA: Labels = (("pop", "fra1"),)
AMS: Labels = (("pop", "ams1"),)


@pytest.mark.parametrize(
    ("nodes", "max_parallel", "caps", "seconds"),
    [
        ([(10.0, FRA)] * 5, None, (("pop", 1),), 50),
        ([(10.0, FRA)] * 5, None, (("pop", 2),), 30),
        ([(10.0, FRA)] * 5 + [(10.0, AMS)] * 5, None, (("pop", 1),), 50),
        ([(10.0, FRA)] * 5 + [(10.0, AMS)] * 5, 1, (("pop", 1),), 100),
        # Nodes without the label share one lane: their pop is unknown.
        ([(10.0, ())] * 3 + [(10.0, FRA)], None, (("pop", 1),), 30),
        ([(30.0, FRA), (10.0, AMS), (10.0, AMS), (10.0, AMS)], None, (("pop", 1),), 30),
        ([(10.0, FRA)] * 4, None, (("region", 1),), 40),
    ],
)
def test_a_preview_predicts_a_batch_under_its_caps(
    nodes: list[tuple[float, Labels]],
    max_parallel: int | None,
    caps: tuple[tuple[str, int], ...],
    seconds: float,
) -> None:
    assert capped_batch_seconds(nodes, max_parallel, caps) == seconds


def test_a_preview_of_ten_thousand_nodes_under_caps_is_computed_whole() -> None:
    nodes = [
        (1.0, (("pop", f"p{k % 100}"), ("rack", f"r{k % 1000}"), ("region", f"g{k % 5}")))
        for k in range(10_000)
    ]
    # 100 pops of 100 nodes, two at once each: 50 s; one node per rack at once and 1000 per
    # region never bind before that.
    caps = (("pop", 2), ("rack", 1), ("region", 1000))
    assert capped_batch_seconds(nodes, None, caps) == 50
    assert capped_batch_seconds(nodes, 100, caps) == 100
