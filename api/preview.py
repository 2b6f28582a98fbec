"""The API's shapes of a release preview (``POST /api/v1/releases?dryRun=true``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleetwave.api.schemas import invalid
from fleetwave.store.preview import PreviewBatch, ReleasePreview

DRY_RUN_VALUES = {"true": True, "false": False}


def parse_dry_run(params: Mapping[str, str]) -> bool:
    """The ``dryRun`` query parameter: true or false (absent: false)."""
    value = params.get("dryRun")
    if value is None:
        return False
    if value not in DRY_RUN_VALUES:
        raise invalid("dryRun", f"must be true or false, got {value!r}")
    return DRY_RUN_VALUES[value]


def _batch_item(batch: PreviewBatch) -> dict[str, Any]:
    return {
        "batch": batch.batch,
        "nodes": [
            {
                "id": entry.node.id,
                "name": entry.node.name,
                "labels": dict(entry.node.labels),
                "applySeconds": entry.apply_seconds,
                "fromHistory": entry.from_history,
            }
            for entry in batch.nodes
        ],
        "blastRadius": {
            "nodes": len(batch.nodes),
            "pops": list(batch.pops),
            "regions": list(batch.regions),
        },
        "predictedSeconds": batch.predicted_seconds,
    }


def preview_item(preview: ReleasePreview) -> dict[str, Any]:
    return {
        "dryRun": True,
        "totalNodes": preview.total_nodes,
        "batches": [_batch_item(batch) for batch in preview.batches],
        "steps": [
            {"position": step.position, "kind": step.kind, "batch": step.batch}
            | ({} if step.kind == "gate" else {"seconds": step.seconds})
            for step in preview.steps
        ],
        "fleetMedianApplySeconds": preview.fleet_median_seconds,
        "bakeSeconds": preview.bake_seconds,
        "gates": preview.gates,
        "predictedSeconds": preview.predicted_seconds,
    }
