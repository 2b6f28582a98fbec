"""Event streams: release_events fanned out live to every follower over server-sent events.

One EventHub per daemon LISTENs for the NOTIFY that every statement appending events sends
(migration 0007), reads what is new once, and hands each event to every follower over a trio
memory channel. However many clients follow, the database sees one LISTEN and one read per
notification (or per poll interval, the truth when a notification is lost), the same with
no follower as with hundreds.

Event ids come from a sequence, so a transaction that took a lower id can commit after one
with a higher id. The hub remembers ids it skipped for a while and asks for them again; the
resume point it gives with each event (the SSE ``id``) is the highest id below which every
event has been handed out, so resuming from it (``Last-Event-ID``) loses nothing. Events
may then come twice; each carries its own ``id`` in its data to tell.

A follower whose buffer is full is dropped by the hub, which never waits for anyone; its
stream goes on from the table where it was (a slow reader costs queries only while it
catches up), and after MAX_RESUMES of those it ends with an ``end`` event saying why.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import attrs
import structlog
import trio

from fleetwave.api.schemas import event_item
from fleetwave.api.sse import frame
from fleetwave.config import metrics
from fleetwave.store.base import Store
from fleetwave.store.errors import StoreUnavailable
from fleetwave.store.models import Event, ReleaseStatus

log = structlog.get_logger("fleetwave.api.events")

FOLLOWER_BUFFER: Final = 1024
"""Events buffered per follower before the hub drops it (it then catches up from the table)."""
PAGE: Final = 1000
POLL_INTERVAL: Final = 5.0
GAP_GRACE: Final = 30.0
"""How long an id the hub skipped is asked for again (a transaction may commit that late)."""
MAX_GAPS: Final = 10_000
MAX_RESUMES: Final = 3
KEEPALIVE: Final = 15.0
RETRY_MS: Final = 3000
STORE_RETRY_MAX: Final = 30.0
_TERMINAL: Final = frozenset(status.value for status in ReleaseStatus if status.terminal)


class HubClosed(Exception):
    """The hub is not running (yet, or any more): no stream can be followed."""


@attrs.frozen
class Fanned:
    """An event and the resume point after it: every event with an id up to ``mark`` has
    been handed out by the hub."""

    event: Event
    mark: int


@attrs.define(eq=False)
class Follower:
    release_id: int | None
    send: trio.MemorySendChannel[Fanned]
    receive: trio.MemoryReceiveChannel[Fanned]
    mark: int
    """The hub's resume point when this follower joined."""
    cursor: int
    """The highest id the hub had read when this follower joined."""
    lagged: bool = False


@attrs.define
class EventHub:
    """Reads new events once per notification and fans them out to every follower."""

    store: Store
    buffer: int = FOLLOWER_BUFFER
    poll_interval: float = POLL_INTERVAL
    gap_grace: float = GAP_GRACE
    reads: int = 0
    """Times the hub read the table, for tests and benchmarks."""
    _followers: dict[int | None, set[Follower]] = attrs.field(factory=dict)
    _cursor: int = 0
    _gaps: dict[int, float] = attrs.field(factory=dict)
    _wake: trio.Event = attrs.field(factory=trio.Event)
    _running: bool = False

    @property
    def followers(self) -> int:
        return sum(len(group) for group in self._followers.values())

    @property
    def mark(self) -> int:
        return min(self._gaps) - 1 if self._gaps else self._cursor

    def poke(self) -> None:
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._listen)
            self._cursor = await self._retrying(self.store.last_event_id)
            self._running = True
            task_status.started()
            try:
                await self._serve()
            finally:
                self.close()
                nursery.cancel_scope.cancel()

    def close(self) -> None:
        """End every stream (they send an ``end`` event), refuse new ones, and stop."""
        self._running = False
        self._wake.set()
        for group in self._followers.values():
            for follower in group:
                follower.send.close()
        self._followers.clear()

    def follow(self, release_id: int | None) -> Follower:
        """Join the fan-out for one release's events (or all, with None)."""
        if not self._running:
            raise HubClosed("event streams are not available: the daemon is not serving them")
        send, receive = trio.open_memory_channel[Fanned](self.buffer)
        follower = Follower(release_id, send, receive, self.mark, self._cursor)
        self._followers.setdefault(release_id, set()).add(follower)
        return follower

    def unfollow(self, follower: Follower) -> None:
        self.unfollow_sender(follower)
        follower.receive.close()

    async def _listen(self, *, task_status: trio.TaskStatus[None]) -> None:
        delay = 1.0
        started = False
        while True:
            try:
                if started:
                    await self.store.listen_events(self.poke)
                else:
                    await self.store.listen_events(self.poke, task_status=task_status)
                return
            except StoreUnavailable as error:
                # Without notifications the poll interval still brings every event.
                log.warning("events.listen_failed", error=str(error), retry_in=delay)
                if not started:
                    started = True
                    task_status.started()
                await trio.sleep(delay)
                delay = min(STORE_RETRY_MAX, delay * 2)

    async def _retrying(self, operation: Callable[[], Awaitable[int]]) -> int:
        delay = 1.0
        while True:
            try:
                return await operation()
            except StoreUnavailable as error:
                log.warning("events.store_unavailable", error=str(error), retry_in=delay)
                await trio.sleep(delay)
                delay = min(STORE_RETRY_MAX, delay * 2)

    async def _serve(self) -> None:
        delay = 1.0
        while True:
            with trio.move_on_after(self.poll_interval):
                await self._wake.wait()
            if not self._running:
                return
            self._wake = trio.Event()
            # Read even with nobody following: a follower joining later then backfills from
            # the table up to a cursor that is current, and its resume points are exact.
            try:
                await self._read()
            except StoreUnavailable as error:
                log.warning("events.read_failed", error=str(error), retry_in=delay)
                await trio.sleep(delay)
                delay = min(STORE_RETRY_MAX, delay * 2)
                self.poke()
            else:
                delay = 1.0

    async def _read(self) -> None:
        while True:
            now = trio.current_time()
            self._gaps = {k: until for k, until in self._gaps.items() if until > now}
            events = await self.store.events_since(
                self._cursor, missing=sorted(self._gaps), limit=PAGE
            )
            self.reads += 1
            for event in events:
                if event.id in self._gaps:
                    del self._gaps[event.id]
                elif event.id > self._cursor:
                    for skipped in range(max(self._cursor + 1, event.id - MAX_GAPS), event.id):
                        self._gaps[skipped] = now + self.gap_grace
                    self._cursor = event.id
                else:
                    continue
                self._fan_out(Fanned(event, self.mark))
            if len(events) < PAGE:
                return

    def _fan_out(self, fanned: Fanned) -> None:
        for key in (None, fanned.event.release_id):
            group = self._followers.get(key)
            if not group:
                continue
            for follower in list(group):
                try:
                    follower.send.send_nowait(fanned)
                except trio.WouldBlock:
                    # Never wait for a slow reader: it catches up from the table.
                    follower.lagged = True
                    self.unfollow_sender(follower)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.unfollow_sender(follower)

    def unfollow_sender(self, follower: Follower) -> None:
        """Drop ``follower`` from the fan-out; what it has buffered stays readable."""
        group = self._followers.get(follower.release_id)
        if group is not None:
            group.discard(follower)
            if not group:
                del self._followers[follower.release_id]
        follower.send.close()


@attrs.define
class EventStream:
    """One follower's stream: the events after ``after`` (None: from now on for all releases,
    from the first event for one release), then live ones, as SSE frames."""

    hub: EventHub
    store: Store
    release_id: int | None
    after: int | None
    keepalive: float = KEEPALIVE
    max_resumes: int = MAX_RESUMES
    resumed: int = 0
    """Times this stream fell behind and went on from the table."""
    _mark: int = 0
    _sent: set[int] = attrs.field(factory=set)
    """Ids sent that are above ``_mark``: each event is sent once however it arrives."""

    def __attrs_post_init__(self) -> None:
        if self.after is not None:
            self._mark = self.after

    async def frames(self) -> AsyncIterator[bytes]:
        yield f"retry: {RETRY_MS}\n\n".encode()
        metrics.EVENT_FOLLOWERS.inc()
        try:
            async for chunk in self._frames():
                yield chunk
        finally:
            metrics.EVENT_FOLLOWERS.dec()

    async def _frames(self) -> AsyncIterator[bytes]:
        while True:
            try:
                follower = self.hub.follow(self.release_id)
            except HubClosed:
                yield frame({"reason": "the server is stopping"}, kind="end")
                return
            try:
                if self.after is None:
                    self.after = 0 if self.release_id is not None else follower.mark
                    self._mark = self.after
                async for event in self._backfill(self.after, follower.cursor):
                    chunk, ended = await self._event_frame(event, min(event.id, follower.mark))
                    if chunk:
                        yield chunk
                    if ended:
                        yield ended
                        return
                while True:
                    fanned: Fanned | None = None
                    with trio.move_on_after(self.keepalive):
                        try:
                            fanned = await follower.receive.receive()
                        except trio.EndOfChannel:
                            break
                    if fanned is None:
                        yield b": keepalive\n\n"
                        continue
                    chunk, ended = await self._event_frame(fanned.event, fanned.mark)
                    if chunk:
                        yield chunk
                    if ended:
                        yield ended
                        return
            finally:
                self.hub.unfollow(follower)
            if not follower.lagged:
                yield frame({"reason": "the server is stopping"}, kind="end")
                return
            self.resumed += 1
            if self.resumed > self.max_resumes:
                yield frame(
                    {
                        "reason": "this client reads more slowly than events arrive; resume "
                        "with Last-Event-ID"
                    },
                    kind="end",
                )
                return
            self.after = self._mark

    async def _backfill(self, after: int, cursor: int) -> AsyncIterator[Event]:
        """Events from the table after ``after`` up to the hub's ``cursor``, by id."""
        while True:
            if self.release_id is None:
                events = await self.store.events_since(after, limit=PAGE)
            else:
                events = await self.store.release_events(
                    self.release_id, after_id=after, limit=PAGE
                )
            for event in events:
                if event.id > cursor:
                    return
                yield event
            if len(events) < PAGE:
                return
            after = events[-1].id

    async def _event_frame(self, event: Event, mark: int) -> tuple[bytes, bytes]:
        """The frame of ``event`` (empty if sent already) and, when it ended the release
        followed, the closing ``end`` frame."""
        if event.id <= self._mark or event.id in self._sent:
            return b"", b""
        if mark > self._mark:
            self._mark = mark
            self._sent = {sent for sent in self._sent if sent > mark}
        if event.id > self._mark:
            self._sent.add(event.id)
        chunk = frame(event_item(event), event_id=self._mark)
        if (
            self.release_id is not None
            and event.node_id is None
            and event.to_status in _TERMINAL
            and await self._release_ended()
        ):
            return chunk, frame(
                {"reason": "the release ended", "status": event.to_status}, kind="end"
            )
        return chunk, b""

    async def _release_ended(self) -> bool:
        assert self.release_id is not None
        release = await self.store.get_release(self.release_id)
        return release is None or release.status.terminal
