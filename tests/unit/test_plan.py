"""Batch plans: counts and percentages, the last step repeating (Ansible serial)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetwave.store.errors import InvalidInput
from fleetwave.store.plan import assign_batches, split, validate_plan


@pytest.mark.parametrize(
    ("plan", "count", "sizes"),
    [
        ((1, "100%"), 3, [1, 2]),
        ((1, "100%"), 1, [1]),  # no batch 2 with one node
        ((1, "100%"), 10_000, [1, 9_999]),
        ((1, "30%"), 10, [1, 3, 3, 3]),
        ((2, 5), 13, [2, 5, 5, 1]),
        (("10%",), 5, [1, 1, 1, 1, 1]),  # a percentage never rounds to zero nodes
        ((1, 2, "25%"), 12, [1, 2, 3, 3, 3]),
    ],
)
def test_plan_splits_nodes_into_batch_sizes(
    plan: tuple[int | str, ...], count: int, sizes: list[int]
) -> None:
    assert split(plan, count) == sizes


def test_batches_are_numbered_from_one_in_node_order() -> None:
    assert assign_batches((1, "100%"), [7, 8, 9]) == [(7, 1), (8, 2), (9, 2)]


@given(
    plan=st.lists(
        st.one_of(st.integers(1, 50), st.integers(1, 100).map(lambda p: f"{p}%")),
        min_size=1,
        max_size=5,
    ),
    count=st.integers(0, 500),
)
def test_every_node_is_placed_exactly_once(plan: list[int | str], count: int) -> None:
    sizes = split(plan, count)
    assert sum(sizes) == count
    assert all(size >= 1 for size in sizes)


@pytest.mark.parametrize(
    ("plan", "says"),
    [
        ([], "non-empty"),
        ("1,100%", "non-empty list"),
        ([0], "at least 1"),
        ([True], "count or a percentage"),
        (["0%"], "above 0%"),
        (["150%"], "at most 100%"),
        (["half"], "percentage like"),
        ([1.5], "count or a percentage"),
    ],
)
def test_a_bad_plan_says_which_step_is_wrong(plan: object, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        validate_plan(plan)
