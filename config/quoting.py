"""Outside text (an agent's answer, an API caller's input, a row another program wrote) made
safe for one log line and one error message: clipped, quoted, non-printables escaped."""

from __future__ import annotations

QUOTED_MAX = 200
"""Characters of outside text kept in one log field or message."""


def clipped(text: str, limit: int = QUOTED_MAX) -> str:
    """``text`` with whitespace runs made one space and at most ``limit`` characters (an
    ellipsis marks a cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def quoted(text: str, limit: int = QUOTED_MAX) -> str:
    """``clipped(text)`` in quotes, every character that is not printable escaped (control
    characters, NUL, lone surrogates): the result is always valid UTF-8 text without NUL, so
    PostgreSQL stores it and a log line shows where the outside text begins and ends."""
    return repr(clipped(text, limit))


def loggable(text: str, limit: int = QUOTED_MAX) -> str:
    """A log field from outside (a request path, a method): as it is when it is short,
    printable and without spaces or quotes, else ``quoted`` (clipped, quoted, escaped), so
    a hostile value can neither break a log line nor pass for a plain one."""
    if len(text) <= limit and text.isprintable() and not any(c in text for c in " '\"\\"):
        return text
    return quoted(text, limit)
