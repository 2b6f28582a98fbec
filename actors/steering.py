"""Steering: what the operator's verbs ask of a claimed release, as its owner last read them.

The release row is the truth (DESIGN.md, "Verbs are row state"); the Supervisor reads it at
every lease renewal (sooner after a NOTIFY) and applies it here, synchronously, so that from
the moment it returns no NodeActor of the release starts a dispatch that a pause or a cancel
forbids. Only then does it acknowledge the verb in the store.
"""

from __future__ import annotations

from typing import Protocol

import attrs
import trio

from fleetwave.store.models import LeaseState, ReleaseStatus
from fleetwave.store.verbs import cancel_message


class DispatchGate(Protocol):
    def enter(self) -> bool:
        """True when a dispatch may start now; the caller then calls ``leave`` after it."""
        ...

    def leave(self) -> None: ...

    @property
    def open(self) -> bool: ...


@attrs.define
class OpenGate:
    """The gate of a release nobody steers."""

    def enter(self) -> bool:
        return True

    def leave(self) -> None:
        pass

    @property
    def open(self) -> bool:
        return True


@attrs.define
class Steering:
    """A release's DispatchGate, closed by a pause or a cancel.

    A verb is acknowledged once ``quiet()`` returns: the gate is closed and no dispatch that
    passed it before is still being sent."""

    seq: int = 0
    """The latest verb number applied."""
    paused: bool = False
    cancel: str | None = None
    """The cancel's message ("release cancelled: REASON") once a cancel was asked."""
    promoted_to: int = 0
    """A promote passes every pause of the schedule before this position."""
    _batch: trio.CancelScope | None = None
    _changed: trio.Event | None = None
    _sending: int = 0
    _quiet: trio.Event | None = None

    @property
    def open(self) -> bool:
        return not self.paused and self.cancel is None

    def enter(self) -> bool:
        if not self.open:
            return False
        self._sending += 1
        return True

    def leave(self) -> None:
        self._sending -= 1
        if self._sending == 0 and self._quiet is not None:
            self._quiet.set()
            self._quiet = None

    async def quiet(self) -> None:
        """Return once no dispatch is being sent (at once when none is)."""
        while self._sending:
            if self._quiet is None:
                self._quiet = trio.Event()
            await self._quiet.wait()

    def apply(self, state: LeaseState) -> None:
        """Take the row's state, unless an answer read earlier arrives after a later one."""
        if state.verb_seq < self.seq:
            return
        self.seq = state.verb_seq
        self.paused = state.status is ReleaseStatus.PAUSED
        self.promoted_to = max(self.promoted_to, state.promoted_to)
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        if state.cancel_requested and self.cancel is None:
            self.cancel = cancel_message(state.verb_by, state.verb_reason)
            if self._batch is not None:
                self._batch.cancel(reason=self.cancel)

    async def wait_changed(self) -> None:
        """Return once a row state is applied (a promote, pause or cancel may have come)."""
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()

    def enter_batch(self, scope: trio.CancelScope) -> None:
        """The batch being run: a cancel cancels it (a cancel seen before cancels it now)."""
        self._batch = scope
        if self.cancel is not None:
            scope.cancel(reason=self.cancel)

    def leave_batch(self) -> None:
        self._batch = None
