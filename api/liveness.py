"""Whether a release is alive, and who created it: what the dashboard shows beside its counts.

``liveness`` tells "slow" from "stuck" from "owner gone": the daemon holding the release's
lease, when that lease runs out (renewed by a live owner every few seconds), and when a node
last moved (the newest start or finish of its nodes). A live owner with old progress is slow
or stuck on its agents; an expired lease is an owner that stopped renewing (killed, cut off),
which another daemon takes over. ``serverTime`` lets a browser with a skewed clock count.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from fleetwave.api import shapes
from fleetwave.api.schemas import timestamp
from fleetwave.store.base import Store
from fleetwave.store.models import Actor, Release, ReleaseNode, ReleaseStatus
from fleetwave.store.strategy import current_step
from fleetwave.store.verbs import ALLOWED, IN_EFFECT, Verb, phase


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def last_progress(release: Release, nodes: Sequence[ReleaseNode]) -> datetime | None:
    """The newest moment a node of ``release`` started or finished, else its start."""
    moments = [
        _aware(moment)
        for node in nodes
        for moment in (node.started_at, node.finished_at)
        if moment is not None
    ]
    if not moments and release.started_at is not None:
        moments.append(_aware(release.started_at))
    return max(moments, default=None)


def liveness_item(release: Release, nodes: Sequence[ReleaseNode], now: datetime) -> shapes.Liveness:
    expires = None if release.lease_expires_at is None else _aware(release.lease_expires_at)
    return {
        "owner": release.lease_owner,
        "leaseExpiresAt": timestamp(expires),
        "leaseLive": expires is not None and expires > now,
        "lastProgressAt": timestamp(last_progress(release, nodes)),
    }


def actor_item(actor: Actor | None) -> shapes.ActorShape | None:
    return None if actor is None else {"tokenName": actor.token_name, "role": actor.role.value}


async def creators(store: Store, releases: Sequence[Release]) -> dict[int, Actor | None]:
    """Who created each of ``releases``: the actor of its first event ("created"), read
    for all of them in one store call. None for a release created without a token (the
    CLI's own database commands, the original's rows)."""
    first = await store.first_events([release.id for release in releases])
    return {
        release.id: event.actor if (event := first.get(release.id)) else None
        for release in releases
    }


def available_verbs(release: Release) -> list[str]:
    """The verbs that would change ``release`` now (those already in effect left out);
    promote while it holds at a bake or gate not yet promoted past."""
    now = phase(release)
    verbs = [str(verb) for verb in ALLOWED[now] if now not in IN_EFFECT[verb]]
    if at_pause(release):
        verbs.append(str(Verb.PROMOTE))
    return verbs


def at_pause(release: Release) -> bool:
    """The release runs and holds at a bake or gate that no promote has passed yet."""
    if release.strategy is None or release.cancelling:
        return False
    if release.status is not ReleaseStatus.RUNNING:
        return False
    step = current_step(release)
    return step is not None and step.pause is not None and release.promoted_to <= step.position
