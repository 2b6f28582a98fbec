"""structlog set-up: one JSON object per line for ops, console rendering on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from fleetwave.config.settings import Settings


def configure_logging(settings: Settings, *, stream: Any = None) -> None:
    """JSON lines (ISO UTC timestamps, level, event, bound context) unless told otherwise."""
    out = stream if stream is not None else sys.stdout
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    stamp: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    processors: list[Any] = [structlog.contextvars.merge_contextvars, *stamp]
    # Tracebacks are structured, without local variables: a frame's locals may hold a
    # database password, a request's Authorization header or a token being checked.
    tracebacks: list[Any] = []
    if fmt == "json":
        tracebacks.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
    processors.extend(tracebacks)
    processors.append(renderer)
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(
        out, level, [structlog.stdlib.add_logger_name, *stamp], tracebacks, renderer
    )


class _StructlogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed on the root logger, to replace it later."""


def _route_stdlib_logging(
    out: Any, level: int, pre_chain: list[Any], tracebacks: list[Any], renderer: Any
) -> None:
    """Libraries log through the standard library (asyncpg's pool while the database is
    away, hypercorn): render their records like ours, one line each on the same stream,
    instead of multi-line tracebacks on stderr."""
    handler = _StructlogHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=pre_chain,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tracebacks,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StructlogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx and httpcore log every request at INFO and DEBUG: thousands a second while a
    # large batch is polled. The daemon logs what matters about agent calls itself.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))
