"""Node labels and the node selection of a release.

A label is a ``key=value`` pair on a node (``pop=fra1``, ``region=eu``). A release chooses its
nodes by ids, by names or by a label selector (every pair must match); without a selection it
takes every enabled, online node, as the original does. The selection is resolved once, when
the release is created: its node rows are the release's nodes from then on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from fleetwave.store.errors import Conflict, InvalidInput

LABEL_KEY_MAX: Final = 63
LABEL_VALUE_MAX: Final = 63
MAX_LABELS: Final = 64
"""Labels one node may carry."""
MAX_SELECTED: Final = 100_000
"""Ids or names one selection may list."""

LABEL_KEY_PATTERN: Final = r"^[A-Za-z0-9](?:[A-Za-z0-9._/-]*[A-Za-z0-9])?$"
_KEY = re.compile(LABEL_KEY_PATTERN)
_VALUE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")

Labels = tuple[tuple[str, str], ...]
"""Labels as a value: (key, value) pairs sorted by key."""


def check_label_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidInput(f"label key must be a non-empty string, got {key!r}")
    if len(key) > LABEL_KEY_MAX or _KEY.match(key) is None:
        raise InvalidInput(
            f"label key {key!r}: at most {LABEL_KEY_MAX} letters, digits, '.', '_', '-' or '/',"
            " starting and ending with a letter or digit"
        )
    return key


def check_label_value(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"label {key}: the value must be a string, got {value!r}")
    if not value or len(value) > LABEL_VALUE_MAX or _VALUE.match(value) is None:
        raise InvalidInput(
            f"label {key}: value {value!r} must be 1 to {LABEL_VALUE_MAX} letters, digits,"
            " '.', '_' or '-', starting and ending with a letter or digit"
        )
    return value


def check_labels(labels: Mapping[str, object]) -> dict[str, str]:
    """Labels from outside, each key and value checked; raises InvalidInput."""
    checked = {check_label_key(key): check_label_value(key, value) for key, value in labels.items()}
    if len(checked) > MAX_LABELS:
        raise InvalidInput(f"a node carries at most {MAX_LABELS} labels, got {len(checked)}")
    return checked


def check_label_changes(changes: Mapping[str, object]) -> dict[str, str | None]:
    """A merge of labels: a value sets the label, None removes it; raises InvalidInput."""
    checked: dict[str, str | None] = {}
    for key, value in changes.items():
        check_label_key(key)
        checked[key] = None if value is None else check_label_value(key, value)
    return checked


def merge_labels(current: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    merged = dict(current)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    if len(merged) > MAX_LABELS:
        raise InvalidInput(f"a node carries at most {MAX_LABELS} labels, got {len(merged)}")
    return merged


def labels_value(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def labels_from_column(value: object) -> Labels:
    """The ``nodes.labels`` column as stored (jsonb object of strings; NULL read as none).

    The database's check keeps it an object of string values; anything else written by
    another program is reported, not guessed at."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"nodes.labels must be an object of strings, got {value!r}")
    return labels_value(value)


def format_labels(labels: Iterable[tuple[str, str]]) -> str:
    return ",".join(f"{key}={value}" for key, value in labels)


@attrs.frozen
class NodeSelection:
    """Which nodes a release is created over: exactly one of ids, names or a label selector.

    Explicitly named nodes (ids, names) must all exist, be enabled and online; a selector
    takes the enabled, online nodes carrying every one of its labels."""

    node_ids: tuple[int, ...] | None = None
    node_names: tuple[str, ...] | None = None
    selector: Labels | None = None

    def __attrs_post_init__(self) -> None:
        given = [x for x in (self.node_ids, self.node_names, self.selector) if x is not None]
        if len(given) != 1:
            raise InvalidInput("select nodes by one of nodeIds, nodeNames or selector")
        if not given[0]:
            raise InvalidInput("a node selection must not be empty")
        if len(given[0]) > MAX_SELECTED:
            raise InvalidInput(f"a selection lists at most {MAX_SELECTED} nodes")

    @classmethod
    def by_ids(cls, ids: Iterable[object]) -> NodeSelection:
        checked: dict[int, None] = {}
        for value in ids:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"nodeIds: node ids are positive integers, got {value!r}")
            checked[value] = None
        return cls(node_ids=tuple(checked))

    @classmethod
    def by_names(cls, names: Iterable[object]) -> NodeSelection:
        checked: dict[str, None] = {}
        for value in names:
            if not isinstance(value, str) or not value.strip():
                raise InvalidInput(f"nodeNames: node names are non-empty strings, got {value!r}")
            checked[value] = None
        return cls(node_names=tuple(checked))

    @classmethod
    def by_selector(cls, labels: Mapping[str, object]) -> NodeSelection:
        return cls(selector=labels_value(check_labels(labels)))

    def matches_labels(self, labels: Iterable[tuple[str, str]]) -> bool:
        assert self.selector is not None
        carried = dict(labels)
        return all(carried.get(key) == value for key, value in self.selector)

    def to_json(self) -> dict[str, Any]:
        """The API's and the ``release_tasks.selection`` column's shape."""
        if self.node_ids is not None:
            return {"nodeIds": list(self.node_ids)}
        if self.node_names is not None:
            return {"nodeNames": list(self.node_names)}
        assert self.selector is not None
        return {"selector": dict(self.selector)}

    @classmethod
    def from_column(cls, value: object) -> NodeSelection | None:
        """The stored selection; NULL (every enabled, online node) is None."""
        if value is None:
            return None
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, dict) or len(value) != 1:
            raise ValueError(f"release_tasks.selection: unexpected value {value!r}")
        match value:
            case {"nodeIds": list(ids)}:
                return cls(node_ids=tuple(int(i) for i in ids))
            case {"nodeNames": list(names)}:
                return cls(node_names=tuple(str(n) for n in names))
            case {"selector": dict(labels)}:
                return cls(selector=labels_value({str(k): str(v) for k, v in labels.items()}))
        raise ValueError(f"release_tasks.selection: unexpected value {value!r}")

    def describe(self) -> str:
        if self.node_ids is not None:
            return f"{len(self.node_ids)} node id(s)"
        if self.node_names is not None:
            return f"{len(self.node_names)} node name(s)"
        assert self.selector is not None
        return f"selector {format_labels(self.selector)}"


def check_named(
    wanted: Iterable[object], found: Mapping[object, tuple[str, bool, str]], field: str
) -> None:
    """Explicitly named nodes must exist (else InvalidInput) and be enabled and online (else
    Conflict, the original's "no online nodes" with the names). ``found`` maps an id or a
    name to (name, enabled, status) of the nodes that exist."""
    missing: list[str] = []
    unusable: list[str] = []
    for key in wanted:
        node = found.get(key)
        if node is None:
            missing.append(str(key))
            continue
        name, enabled, status = node
        if not enabled:
            unusable.append(f"{name} (disabled)")
        elif status != "online":
            unusable.append(f"{name} ({status})")
    if missing:
        raise InvalidInput(f"{field}: no such node(s): {_first(missing)}")
    if unusable:
        shown = _first(unusable)
        raise Conflict(f"no online nodes: selected node(s) not enabled and online: {shown}")


def _first(items: list[str], shown: int = 10) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
