"""Tables for the command line."""

from __future__ import annotations

from fleetwave.api.render import table, watch_view


def test_table_aligns_columns_and_shows_missing_values_as_dash() -> None:
    text = table(("ID", "NAME"), [(1, "edge-001"), (22, None)])

    assert text.splitlines() == ["ID  NAME", "1   edge-001", "22  -"]


def _node(status: str) -> dict[str, object]:
    return {"nodeId": 1, "nodeName": "n", "status": status, "errorMsg": None}


def test_watch_view_counts_each_batch_and_shows_the_release_status() -> None:
    data = {
        "release": {"id": 4, "version": 9, "status": "running", "error": None},
        "batches": [
            {"batch": 1, "nodes": [_node("success")]},
            {"batch": 2, "nodes": [_node("running"), _node("pending"), _node("failed")]},
        ],
    }

    lines = watch_view(data).splitlines()

    assert lines[0].split() == [
        "BATCH", "PROGRESS", "SUCCESS", "FAILED", "RUNNING", "PENDING", "SKIPPED", "CANCELLED",
        "TOTAL",
    ]  # fmt: skip
    assert lines[1].split() == ["1", "[" + "#" * 20 + "]", "1", "0", "0", "0", "0", "0", "1"]
    assert lines[2].split()[2:] == ["0", "1", "1", "1", "0", "0", "3"]
    assert lines[2].split()[1] == "[" + "#" * 6 + "." * 14 + "]"
    assert lines[3] == "release 4 (version 9): running"
