"""Which SQLSTATEs say "not now" (StoreUnavailable, retried) rather than "never"."""

from __future__ import annotations

import pytest

from fleetwave.store.postgres import is_transient


@pytest.mark.parametrize(
    "sqlstate",
    [
        "08000",  # connection exception
        "08006",  # connection failure
        "40001",  # serialization failure
        "40P01",  # deadlock detected
        "53100",  # disk full
        "53300",  # too many connections
        "57014",  # query canceled: statement_timeout, pg_cancel_backend
        "57P01",  # admin shutdown
        "25006",  # read-only SQL transaction, after a failover
        "25P03",  # idle-in-transaction session timeout
    ],
)
def test_transient_sqlstates(sqlstate: str) -> None:
    assert is_transient(sqlstate)


@pytest.mark.parametrize(
    "sqlstate", ["23505", "23514", "42P01", "42703", "22001", "25001", "40002", "", None]
)
def test_other_sqlstates_are_not_transient(sqlstate: str | None) -> None:
    assert not is_transient(sqlstate)
