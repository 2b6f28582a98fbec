"""structlog set-up: one JSON object per line for ops, console rendering on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from config.settings import Settings


def configure_logging(settings: Settings, *, stream: Any = None) -> None:
    """JSON lines (ISO UTC timestamps, level, event, bound context) unless told otherwise."""
    out = stream if stream is not None else sys.stdout
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors.append(structlog.processors.dict_tracebacks)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[settings.log_level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
