"""The words of the audit events both stores write, so a release reads the same on either."""

from __future__ import annotations

from fleetwave.store.models import Outcome, storable


def created_message(version: int, nodes: int, batches: int, reason: str) -> str:
    message = f"created: version {version}, {nodes} nodes in {batches} batches"
    return f"{message}; reason: {reason}" if reason else message


def outcome_message(outcome: Outcome) -> str:
    """The event of a release's end: its error, or which end it reached."""
    error = storable(outcome.error)
    return error if error is not None else f"release {outcome.status}"
