"""The API's shapes of a release preview (``POST /api/v1/releases?dryRun=true``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import BeforeValidator, Field

from fleetwave.api import shapes
from fleetwave.api.validation import Query, refusal, shown, validated
from fleetwave.store.preview import PreviewBatch, PreviewStep, ReleasePreview

DRY_RUN_VALUES = {"true": True, "false": False}


def _dry_run(value: object) -> object:
    if not isinstance(value, str) or value not in DRY_RUN_VALUES:
        raise refusal(f"must be true or false, got {shown(value)}")
    return DRY_RUN_VALUES[value]


class CreateQuery(Query):
    """The query of ``POST /api/v1/releases``."""

    dryRun: Annotated[
        bool,
        BeforeValidator(_dry_run),
        Field(
            description="true: the release's batches, steps and predicted time; nothing is created"
        ),
    ] = False


def parse_dry_run(params: Mapping[str, str]) -> bool:
    """The ``dryRun`` query parameter: true or false (absent: false)."""
    value = params.get("dryRun")
    return validated(CreateQuery, {} if value is None else {"dryRun": value}).dryRun


def _batch_item(batch: PreviewBatch) -> shapes.PreviewBatch:
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


def _step_item(step: PreviewStep) -> shapes.PreviewStep:
    item: shapes.PreviewStep = {"position": step.position, "kind": step.kind, "batch": step.batch}
    if step.kind != "gate":  # a gate waits for promote: no time of its own
        item["seconds"] = step.seconds
    return item


def preview_item(preview: ReleasePreview) -> shapes.ReleasePreview:
    return {
        "dryRun": True,
        "totalNodes": preview.total_nodes,
        "batches": [_batch_item(batch) for batch in preview.batches],
        "steps": [_step_item(step) for step in preview.steps],
        "fleetMedianApplySeconds": preview.fleet_median_seconds,
        "bakeSeconds": preview.bake_seconds,
        "gates": preview.gates,
        "predictedSeconds": preview.predicted_seconds,
        "defaultScope": preview.default_scope,
    }
