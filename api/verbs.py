"""A verb as the API answers it: applied in the store, then awaited until it is in effect.

The store's compare-and-set makes the verb the release row's truth at once. It is *in
effect* once the daemon holding the release's lease has acknowledged it (it closed or opened
the release's dispatch gate), or once no live lease exists. A dead owner never acknowledges:
the answer then comes when its lease expires, and says so.
"""

from __future__ import annotations

import attrs
import trio

from fleetwave.store.base import Store
from fleetwave.store.models import Actor, Release
from fleetwave.store.verbs import Verb, VerbEffect, VerbResult

EFFECT_POLL_SEC = 0.05
"""How often the verb's effect is read while waiting (one indexed row)."""
ACK_PATIENCE_SEC = 2.0
"""A live owner acknowledges within a NOTIFY round trip; past this the answer tells that it
waits for the owner's lease to expire."""
EFFECT_PATIENCE_SEC = 90.0
"""The longest an answer waits (three default lease TTLs): a verb still not in effect then
is answered as recorded, not in effect yet."""


@attrs.frozen
class VerbAnswer:
    """A verb's result and how it took effect."""

    result: VerbResult
    effect: VerbEffect
    waited: float
    """Seconds spent waiting for the verb to take effect."""
    owner: str | None
    """The daemon that held the lease when the verb was applied (None: none held it)."""

    @property
    def lease_expired(self) -> bool:
        """The verb holds because the owner's lease ran out, not because it acknowledged."""
        return self.owner is not None and not self.effect.acknowledged

    @property
    def message(self) -> str:
        release = self.result.release
        verb = self.result.verb
        if not self.result.changed:
            if self.result.rollback is not None:
                return (
                    f"release {release.id} is already being rolled back by release "
                    f"{self.result.rollback.id}: nothing changed"
                )
            if verb is Verb.PROMOTE:
                return f"release {release.id} is promoted past that step already: nothing changed"
            return f"{verb} is already in effect on release {release.id}: nothing changed"
        if not self.effect.in_effect:
            return (
                f"{verb} recorded on release {release.id}, not in effect yet: daemon "
                f"{self.effect.owner} holds its lease and has not acknowledged it"
            )
        if (
            verb in (Verb.PAUSE, Verb.CANCEL)
            and release.status.terminal
            and not (verb is Verb.CANCEL and release.status.value == "cancelled")
        ):
            return (
                f"release {release.id} ended {release.status} before the {verb} took effect: "
                "nothing was left to stop"
            )
        text = f"{verb} in effect on release {release.id}"
        if self.owner is None:
            text += " (no daemon held its lease)"
        elif self.effect.acknowledged:
            text += f" (acknowledged by daemon {self.owner} in {self.waited:.2f}s)"
        else:
            text += (
                f" (daemon {self.owner} did not acknowledge it: in effect once its lease "
                f"expired, after {self.waited:.1f}s)"
            )
        if verb is Verb.CANCEL and release.cancelling:
            text += "; nothing new is dispatched, dispatched nodes are being reconciled"
        if self.result.rollback is not None:
            created = self.result.rollback
            text += (
                f"; release {created.id} (version {created.version}) restores config "
                f"{created.config_version} on {created.total_nodes} node(s)"
            )
        if self.result.held:
            held = ", ".join(str(other.id) for other in self.result.held)
            text += f"; paused behind the rollback: release(s) {held}"
        return text


async def steer(
    store: Store,
    release_id: int,
    verb: Verb,
    *,
    by: Actor,
    reason: str = "",
    to_version: int | None = None,
    patience: float = EFFECT_PATIENCE_SEC,
) -> VerbAnswer:
    """Apply ``verb`` and wait, at most ``patience`` seconds, until it is in effect."""
    result = await store.steer(release_id, verb, by=by, reason=reason, to_version=to_version)
    return await _in_effect(store, release_id, result, patience)


async def promote(
    store: Store,
    release_id: int,
    *,
    by: Actor,
    reason: str = "",
    full: bool = False,
    patience: float = EFFECT_PATIENCE_SEC,
) -> VerbAnswer:
    """Pass the release's current pause (``full``: every pause left), and wait, at most
    ``patience`` seconds, until its owner has taken it in."""
    result = await store.promote(release_id, by=by, reason=reason, full=full)
    return await _in_effect(store, release_id, result, patience)


async def _in_effect(
    store: Store, release_id: int, result: VerbResult, patience: float
) -> VerbAnswer:
    seq = result.release.verb_seq
    started = trio.current_time()
    effect = await store.verb_effect(release_id, seq)
    owner = effect.owner if result.wait else None
    with trio.move_on_after(patience):
        while not effect.in_effect:
            await trio.sleep(EFFECT_POLL_SEC)
            effect = await store.verb_effect(release_id, seq)
    if result.wait or not effect.in_effect:
        result = attrs.evolve(result, release=await _current(store, result))
    return VerbAnswer(result, effect, trio.current_time() - started, owner)


async def _current(store: Store, result: VerbResult) -> Release:
    release = await store.get_release(result.release.id)
    return release if release is not None else result.release
