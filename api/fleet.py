"""The answer of ``GET /api/v1/fleet``: which config version each node runs, per label and
per scope, and which nodes drift from what the record expects of them (store/fleet.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from fleetwave.api import shapes
from fleetwave.api.schemas import timestamp
from fleetwave.store.fleet import Expectation, FleetNode, FleetState

SCOPE_DIFFERING_SHOWN: Final = 20
"""Drifting nodes named per scope; the scope's count and the fleet's list have them all."""


def _versions(found: dict[int | None, int]) -> list[shapes.VersionCount]:
    ordered = sorted(found.items(), key=lambda item: (item[0] is None, -(item[0] or 0)))
    return [{"configVersion": version, "nodes": count} for version, count in ordered]


def _release(release: Expectation | None) -> shapes.NewestSucceeded | None:
    if release is None:
        return None
    return {
        "releaseId": release.release_id,
        "version": release.version,
        "configVersion": release.config_version,
    }


def _differing(entries: Iterable[FleetNode]) -> list[shapes.DifferingNode]:
    answer: list[shapes.DifferingNode] = []
    for entry in entries:
        assert entry.expected is not None  # a drifting node has an expectation
        answer.append(
            {
                "nodeId": entry.node.id,
                "nodeName": entry.node.name,
                "appliedVersion": entry.node.applied_version,
                "appliedAt": timestamp(entry.node.applied_at),
                "expectedVersion": entry.expected.config_version,
                "expectedRelease": {
                    "releaseId": entry.expected.release_id,
                    "version": entry.expected.version,
                    "scope": entry.expected.scope,
                },
            }
        )
    return answer


def fleet_summary(state: FleetState) -> shapes.FleetSummary:
    counts: dict[int | None, int] = {}
    by_label: dict[str, dict[int | None, int]] = {}
    for entry in state.nodes:
        applied = entry.node.applied_version
        counts[applied] = counts.get(applied, 0) + 1
        for key, value in entry.node.labels:
            label = by_label.setdefault(f"{key}={value}", {})
            label[applied] = label.get(applied, 0) + 1
    drifting = [entry for entry in state.nodes if entry.drifting]
    # Each node counts in the scope of the release that set its expectation.
    expected: dict[str | None, int] = {}
    scope_drifting: dict[str | None, list[FleetNode]] = {}
    for entry in state.nodes:
        if entry.expected is not None:
            scope = entry.expected.scope
            expected[scope] = expected.get(scope, 0) + 1
            if entry.drifting:
                scope_drifting.setdefault(scope, []).append(entry)
    by_scope: list[shapes.ScopeFleetShape] = []
    for group in state.scopes:
        mine = scope_drifting.get(group.scope, [])
        by_scope.append(
            {
                "scope": group.scope,
                "releases": group.releases,
                "newestSucceeded": _release(group.newest),
                "releaseNodes": group.release_nodes,
                "runningConfig": group.running_config,
                "expectedNodes": expected.get(group.scope, 0),
                "differingNodes": len(mine),
                "differing": _differing(mine[:SCOPE_DIFFERING_SHOWN]),
            }
        )
    return {
        "totalNodes": len(state.nodes),
        "versions": _versions(counts),
        "byLabel": [
            {"label": label, "versions": _versions(found)}
            for label, found in sorted(by_label.items())
        ],
        "newestSucceeded": _release(state.newest),
        "differing": _differing(drifting),
        "unreleasedNodes": sum(1 for entry in state.nodes if entry.expected is None),
        "byScope": by_scope,
    }
