"""A failed node's error message sorted into the kinds an operator groups failures by.

The record keeps one message per node (agent/errors.py words each kind one way, the release
actor adds its own for a stopped batch); the dashboard groups a release's failures by these
kinds. A message that matches none is ``other``.
"""

from __future__ import annotations

import re

KINDS = ("rejected", "timeout", "unreachable", "tls", "protocol", "deadline", "other")
"""rejected: the agent refused or failed the config; protocol: an answer not of the agent
protocol (a bad status, JSON or shape, a task it does not know)."""

_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("tls", re.compile(r"TLS handshake with agent")),
    ("deadline", re.compile(r"did not finish task|by the node deadline")),
    ("timeout", re.compile(r"did not answer within")),
    ("unreachable", re.compile(r"unreachable")),
    (
        "protocol",
        re.compile(r"answered HTTP \d+|sent invalid JSON|sent an invalid answer|does not know"),
    ),
    ("rejected", re.compile(r"rejected |reported task \S+ failed|reported failure")),
)


def failure_kind(error_msg: str | None) -> str | None:
    """The kind of a node's error message; None when there is no message."""
    if not error_msg:
        return None
    for kind, pattern in _PATTERNS:
        if pattern.search(error_msg):
            return kind
    return "other"
