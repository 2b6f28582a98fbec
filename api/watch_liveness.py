"""Whether a watched release is alive: what ``release watch`` says beside its counts, so that a
release that is slow, one holding at a step and one whose owner was killed look different.

From the detail's ``liveness`` (the daemon holding the lease, when the lease runs out, the
newest node start or finish) and the node events seen since. Lease renewals are not events,
so the watch reads the detail again once five sixths of the lease it knows have run (a live
owner renews every third of its lease: by then it has) and, when the lease was not renewed,
once more after it ran out: one request per lease while nothing happens, no polling loop.
The same verdicts as the dashboard's (docs/dashboard.md), by this machine's clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs

STALLED_AFTER: Final = timedelta(seconds=30)
"""A live owner whose nodes have not moved for this long is slow, or stuck at its agents."""
EARLY_MIN: Final = timedelta(seconds=0.25)
AFTER_EXPIRY: Final = timedelta(seconds=1)


def api_time(value: object) -> datetime | None:
    """A time the API gave (ISO 8601, ``Z`` for UTC), aware; None when it gave none or
    something that is no time (the answer may come through a proxy or another program)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _seconds(delta: timedelta) -> str:
    whole = max(0, round(delta.total_seconds()))
    return f"{whole // 60}m {whole % 60}s" if whole >= 60 else f"{whole}s"


@attrs.define
class Liveness:
    owner: str | None = None
    lease_expires_at: datetime | None = None
    last_progress_at: datetime | None = None
    check_at: datetime | None = None
    """When to read the detail again, though no event came (None: not before an event)."""

    @classmethod
    def read(cls, item: Mapping[str, Any] | None, wall: datetime) -> Liveness:
        """The detail's ``liveness`` item, read at ``wall``."""
        item = item or {}
        expires = api_time(item.get("leaseExpiresAt"))
        liveness = cls(item.get("owner"), expires, api_time(item.get("lastProgressAt")))
        if expires is not None and expires > wall:
            early = (expires - wall) / 6
            liveness.check_at = expires - early if early >= EARLY_MIN else expires + AFTER_EXPIRY
        return liveness

    def progressed(self, at: datetime) -> None:
        """A node of the release started or finished at ``at``."""
        if self.last_progress_at is None or at > self.last_progress_at:
            self.last_progress_at = at

    def due(self, wall: datetime) -> bool:
        return self.check_at is not None and wall >= self.check_at

    def verdict(self, status: str, holding: str | None, wall: datetime) -> tuple[str, str]:
        """(state, text): ended, pending, unowned, owner-lost, holding, stalled or alive."""
        if status in ("success", "failed", "cancelled"):
            return "ended", ""
        if status == "pending":
            return "pending", ""
        if self.owner is None or self.lease_expires_at is None:
            return "unowned", "no daemon owns it: waiting for one to claim it"
        if self.lease_expires_at <= wall:
            ago = _seconds(wall - self.lease_expires_at)
            return "owner-lost", (
                f"owner {self.owner} stopped renewing its lease {ago} ago: another daemon "
                "takes the release over"
            )
        lease = f"lease expires in {_seconds(self.lease_expires_at - wall)}"
        if holding is not None:
            doing = "waits at the gate for a promote" if holding == "gate" else "bakes"
            return "holding", f"owner {self.owner} is alive ({lease}) and {doing}"
        moved = self.last_progress_at
        if status == "running" and moved is not None and wall - moved > STALLED_AFTER:
            return "stalled", (
                f"owner {self.owner} is alive ({lease}), but no node moved for "
                f"{_seconds(wall - moved)}: slow or stuck agents"
            )
        return "alive", f"owner {self.owner} is alive ({lease})"
