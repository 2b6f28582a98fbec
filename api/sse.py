"""The server-sent events wire format: frames written by the API, parsed by its clients."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import attrs


def frame(data: object, *, event_id: int | None = None, kind: str | None = None) -> bytes:
    """One SSE message: ``id`` (the resume point), ``event`` (absent for plain events) and one
    line of JSON ``data``."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if kind is not None:
        lines.append(f"event: {kind}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False))
    return ("\n".join(lines) + "\n\n").encode()


@attrs.frozen
class Message:
    kind: str
    """``message`` for events, ``end`` when the server closes the stream on purpose."""
    data: Any
    id: str | None


class StreamFormatError(Exception):
    """The stream is not server-sent events with JSON data."""


async def messages(lines: AsyncIterator[str]) -> AsyncIterator[Message]:
    """Messages of an SSE stream given as lines (httpx's ``aiter_lines``); comments and
    ``retry`` lines are skipped."""
    kind, last_id = "message", None
    data: list[str] = []
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    decoded = json.loads(text)
                except ValueError:
                    raise StreamFormatError(f"an event's data is not JSON: {text[:80]!r}") from None
                yield Message(kind, decoded, last_id)
            kind, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        match field:
            case "data":
                data.append(value)
            case "event":
                kind = value
            case "id":
                last_id = value
