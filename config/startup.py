"""StartupError: a part of the program could not start for a reason outside it (a port taken,
an address not on this machine). ``str()`` is one line; the command exits non-zero with it."""

from __future__ import annotations


class StartupError(Exception):
    """Something the program needs at start is not available; the message says what."""
