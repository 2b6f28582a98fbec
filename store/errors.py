"""Typed failures of store operations; the API maps them to the original's error codes."""


class StoreError(Exception):
    """Base of every store failure."""


class NotFound(StoreError):
    """The named row does not exist (API: 404 / 3001)."""


class AlreadyExists(StoreError):
    """A unique name is taken (API: 409 / 3002)."""


class Conflict(StoreError):
    """The request contradicts the current state, e.g. no online nodes (API: 409 / 3003)."""


class InvalidInput(StoreError):
    """A value the store cannot accept, e.g. a malformed plan (API: 400 / 2002)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached right now; the operation may be retried."""
