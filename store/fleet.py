"""The fleet as the record has it: which config each node is expected to run, and per scope.

A node's expected config is the config version of the newest release, by its end (its
finished_at; for a row another program wrote without one, its updated_at), that ended
``success`` and included the node (a release_task_nodes row, whatever the node's own
outcome in it). A rollback that succeeded counts with the config it restored (its
config_version). A node drifts when its applied version (the config of its last recorded
success) differs from that. A node no successful release ever included has no expectation:
nothing it runs is wrong, so it does not drift.

Releases are grouped by their scope; the releases that name none form one group of their
own (scope None). A drifting node belongs to the group of the release that set its
expectation, so the groups' drifting nodes add up to the fleet's.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from fleetwave.store.models import Node


@attrs.frozen
class Expectation:
    """The release that set what a node should run, and that config."""

    release_id: int
    version: int
    config_version: int
    scope: str | None

    @classmethod
    def from_record(cls, record: Mapping[str, Any], prefix: str = "") -> Expectation | None:
        """None when the record's ``{prefix}release_id`` is null (no such release)."""
        release_id = record[f"{prefix}release_id"]
        if release_id is None:
            return None
        return cls(
            release_id=release_id,
            version=record[f"{prefix}version"],
            config_version=record[f"{prefix}config_version"],
            scope=record[f"{prefix}scope"],
        )


@attrs.frozen
class FleetNode:
    node: Node
    expected: Expectation | None
    """None: no release that succeeded included the node."""

    @property
    def drifting(self) -> bool:
        return drifts(self.node, self.expected)


def drifts(node: Node, expected: Expectation | None) -> bool:
    """Whether ``node`` runs other than what ``expected`` set; never without an expectation."""
    return expected is not None and node.applied_version != expected.config_version


@attrs.frozen
class ScopeFleet:
    """One scope's releases: the newest that succeeded, and how many of its nodes run it."""

    scope: str | None
    """None: the releases that name no scope."""
    releases: int
    newest: Expectation | None
    """The newest release of the scope, by its end, that succeeded; None: none did."""
    newest_ended_at: datetime | None
    """When ``newest`` ended (finished_at, else updated_at)."""
    release_nodes: int
    """The nodes of ``newest`` (0 without one)."""
    running_config: int
    """Of them, those whose applied version is its config."""


@attrs.frozen
class FleetState:
    nodes: tuple[FleetNode, ...]
    """Every node, in id order."""
    scopes: tuple[ScopeFleet, ...]
    """Every scope that has a release, by name, the group without a scope last."""

    @property
    def newest(self) -> Expectation | None:
        """The newest release, by its end, that succeeded, whatever its scope."""
        ended = [scope for scope in self.scopes if scope.newest is not None]
        if not ended:
            return None
        latest = max(
            ended,
            key=lambda scope: end_order(
                scope.newest_ended_at, scope.newest.version if scope.newest else 0
            ),
        )
        return latest.newest


def end_order(ended_at: datetime | None, version: int) -> tuple[float, int]:
    """The sort key of "newest by its end": when it ended, then version. Larger is newer."""
    return (ended_at.timestamp() if ended_at is not None else float("-inf"), version)


def scope_order(scope: str | None) -> tuple[bool, str]:
    """Named scopes by name, then the group without a scope."""
    return (scope is None, scope or "")
