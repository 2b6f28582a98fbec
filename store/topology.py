"""Topology of a release: batches by a node label, and the labels its caps name.

``batchBy`` (a label key, e.g. ``pop``) places the nodes of a release by that label's value:

- The values are taken in ascending order (code point order of the value: ``ams1`` before
  ``fra1`` before ``lhr1``); inside a value, nodes go in id order.
- The canary is the plan's first size, taken from the first value; it never holds nodes of
  two values (a first value smaller than the canary size gives a smaller canary).
- Every later batch holds nodes of one value only: the plan's size for that batch number (the
  last size repeating, percentages of the whole release as everywhere) caps it, so a value
  larger than its batch's size is split over consecutive batches, and a value smaller than it
  is a batch of its own. With the default plan ``[1, "100%"]``: the canary, the rest of its
  value, then one whole value per batch.
- Nodes without the label are not dropped: they come last, as one more group split the same
  way (their value is unknown, so none of it is mixed into a labelled batch).

The batches are fixed at creation, as every release's are: the rows hold them, and a daemon
that takes the release over runs the same batches. A key that no node of the release carries
is refused (a typo would otherwise give one batch of "nodes without the label").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

import attrs

from fleetwave.store.errors import InvalidInput
from fleetwave.store.models import PlanStep
from fleetwave.store.plan import MAX_STEP, _shown, assign_batches, step_size
from fleetwave.store.selection import Labels, check_label_key

if TYPE_CHECKING:
    from fleetwave.store.strategy import Strategy

MAX_CAPS: Final = 16
"""Label keys one maxInFlightPer may name."""

Lane = tuple[str, str | None]
"""(label key, value) of maxInFlightPer's slots; None: the nodes without that label."""


def _key(field: str, value: object) -> str:
    try:
        return check_label_key(value)
    except InvalidInput:
        raise InvalidInput(
            f"{field}: must be a label key (1 to 63 letters, digits, '.', '_', '-' or '/', "
            f"starting and ending with a letter or digit), got {_shown(value)}"
        ) from None


def validate_batch_by(value: object) -> str | None:
    """The ``batchBy`` field: a label key, or None (not given)."""
    return None if value is None else _key("batchBy", value)


def validate_max_in_flight_per(value: object) -> tuple[tuple[str, int], ...]:
    """The ``maxInFlightPer`` field: an object of label key -> a whole number from 1; as
    (key, N) pairs sorted by key. None (not given) and ``{}`` give no cap."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise InvalidInput(
            f'maxInFlightPer: must be an object of label key -> nodes, like {{"pop": 1}}, '
            f"got {_shown(value)}"
        )
    if len(value) > MAX_CAPS:
        raise InvalidInput(f"maxInFlightPer: at most {MAX_CAPS} labels, got {len(value)}")
    caps: dict[str, int] = {}
    for key, count in value.items():
        field = f"maxInFlightPer.{key}" if isinstance(key, str) and len(key) <= 63 else ""
        checked = _key(field or "maxInFlightPer", key)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_STEP:
            raise InvalidInput(
                f"{field}: must be a whole number of nodes from 1 to {MAX_STEP}, "
                f"got {_shown(count)}"
            )
        caps[checked] = count
    return tuple(sorted(caps.items()))


def check_labels_carried(strategy: Strategy, labels: Iterable[Labels]) -> None:
    """Every label key the strategy names is carried by one of the nodes at least (their
    ``labels``); else InvalidInput naming the field and the labels the nodes do carry."""
    fields = [] if strategy.batch_by is None else [("batchBy", strategy.batch_by)]
    fields.extend((f"maxInFlightPer.{key}", key) for key, _ in strategy.max_in_flight_per)
    if not fields:
        return
    carried: set[str] = set()
    for node_labels in labels:
        carried.update(key for key, _ in node_labels)
    for field, key in fields:
        if key not in carried:
            known = ", ".join(sorted(carried)[:10]) or "none"
            raise InvalidInput(
                f"{field}: no node of the release has the label {key!r} (their labels: {known})"
            )


def place_nodes(
    strategy: Strategy, plan: Sequence[PlanStep], nodes: Sequence[tuple[int, Labels]]
) -> list[tuple[int, int]]:
    """(node id, batch) of a new release over ``nodes`` ((id, labels) in id order): by
    ``batchBy`` when the strategy has one, else by the plan alone. The labels the strategy
    names are checked first (check_labels_carried)."""
    check_labels_carried(strategy, (labels for _, labels in nodes))
    if strategy.batch_by is None:
        return assign_batches(plan, [node_id for node_id, _ in nodes])
    return topology_batches(plan, nodes, strategy.batch_by)


def group_key(labels: Labels, key: str) -> str | None:
    """The node's value of label ``key``; None: it has no such label."""
    for name, value in labels:
        if name == key:
            return value
    return None


def topology_batches(
    plan: Sequence[PlanStep], nodes: Sequence[tuple[int, Labels]], batch_by: str
) -> list[tuple[int, int]]:
    """(node id, batch from 1) for ``nodes`` ((id, labels) in id order) batched by the value
    of label ``batch_by``, as the module's docstring says; in batch order."""
    groups: dict[str | None, list[int]] = {}
    for node_id, labels in nodes:
        groups.setdefault(group_key(labels, batch_by), []).append(node_id)
    values = sorted(value for value in groups if value is not None)
    ordered = [groups[value] for value in values]
    if None in groups:
        ordered.append(groups[None])
    total = len(nodes)
    placed: list[tuple[int, int]] = []
    batch = 0
    for members in ordered:
        position = 0
        while position < len(members):
            batch += 1
            size = step_size(plan[min(batch, len(plan)) - 1], total)
            taken = members[position : position + size]
            placed.extend((node_id, batch) for node_id in taken)
            position += len(taken)
    return placed


def rollback_topology(
    strategy: Strategy, plan: Sequence[PlanStep], nodes: Sequence[tuple[int, Labels]]
) -> tuple[list[tuple[int, int]], Strategy | None]:
    """(node id, batch) and strategy of a rollback of a release run with ``strategy``, over
    ``nodes`` ((id, labels) in the release's order). A rollback is a rollout too: it keeps the
    release's batchBy and maxInFlightPer, with its plan's sizes and no pause or check (it goes
    at once, as every rollback). Without topology: the plan alone, and no strategy. Labels are
    not checked: a rollback is never refused for them (nodes without them go last, sharing a
    cap)."""
    if not strategy.topology_labels:
        return assign_batches(plan, [node_id for node_id, _ in nodes]), None
    topology = attrs.evolve(
        type(strategy).of_plan(plan, strategy.max_failures or 0),
        batch_by=strategy.batch_by,
        max_in_flight_per=strategy.max_in_flight_per,
    )
    if strategy.batch_by is None:
        return assign_batches(plan, [node_id for node_id, _ in nodes]), topology
    return topology_batches(plan, nodes, strategy.batch_by), topology
