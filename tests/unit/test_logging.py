"""Logs for ops: one JSON object per line, ISO UTC timestamps, bound release context."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from fleetwave.config import load_settings
from fleetwave.config.logging import configure_logging


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def test_json_lines_carry_level_timestamp_and_bound_context() -> None:
    out = io.StringIO()
    configure_logging(load_settings(environ={}, log_format="json"), stream=out)
    log = structlog.get_logger("fleetwave.test")

    with structlog.contextvars.bound_contextvars(release_id=7, version=3):
        with structlog.contextvars.bound_contextvars(batch=2, node_id=11):
            log.info("node.transition", status="success")
        log.warning("release.finished", status="failed")

    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["event"] == "node.transition"
    assert first["level"] == "info"
    assert (first["release_id"], first["version"], first["batch"], first["node_id"]) == (
        7,
        3,
        2,
        11,
    )
    assert first["timestamp"].endswith("Z")
    assert second["level"] == "warning"
    assert "batch" not in second  # context ends with its block


def test_log_level_setting_filters_lower_levels() -> None:
    out = io.StringIO()
    configure_logging(load_settings(environ={}, log_format="json", log_level="warning"), stream=out)
    log = structlog.get_logger("fleetwave.test")
    log.info("quiet")
    log.error("loud")
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["loud"]


def test_tracebacks_are_structured_and_never_show_local_variables() -> None:
    out = io.StringIO()
    configure_logging(load_settings(environ={}, log_format="json"), stream=out)
    log = structlog.get_logger("fleetwave.test")

    def connect(url: str) -> None:
        password = url.rsplit(":", 1)[-1]
        raise ConnectionError(f"refused ({len(password)} characters of password)")

    try:
        connect("postgresql://fleetwave:s3cret-Pa55")
    except ConnectionError:
        log.exception("database.connect_failed")

    [line] = out.getvalue().splitlines()
    record = json.loads(line)
    [exception] = record["exception"]
    assert exception["exc_type"] == "ConnectionError"
    assert exception["frames"][-1]["name"] == "connect"
    assert "s3cret-Pa55" not in line
