"""``fleetwave release watch ID``: a release followed live over its event stream.

The release's batches come from one detail request; everything after comes from the SSE
stream (``GET /api/v1/releases/{id}/events?follow=true``), read from the first event, so the
view is rebuilt from the audit trail whatever happened before the watch began; the step a
release with pauses is at (its ``step``: a bake and its end, a gate) and its liveness (the
owning daemon, its lease: api/watch_liveness.py) are read again from the detail after each
release event (a claim, a verb, a step) and when the lease known is due a renewal. On a terminal
the view is drawn with rich (a bar per batch, counts, the current step with a bake's time
left ticking each second, an ETA from the apply times seen so far, failures with their
reasons as they arrive); elsewhere each event is one
plain line; with ``--json`` one JSON object a line. A dropped stream is resumed with
``Last-Event-ID`` for up to ``patience`` seconds. Exit 0 when the release succeeded.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import attrs
import trio
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from fleetwave.api.client import ApiClient, ApiUnreachable
from fleetwave.api.sse import StreamFormatError
from fleetwave.api.watch_liveness import Liveness, api_time

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
PATIENCE: Final = 30.0
RETRY_DELAY: Final = 1.0
FAILURES_SHOWN: Final = 8
TICK: Final = 1.0
"""Seconds between redraws of a bake's time left (events redraw at once)."""
_ENDED: Final = frozenset({"success", "failed", "cancelled", "skipped"})
_RELEASE_ENDED: Final = frozenset({"success", "failed", "cancelled"})


@attrs.define
class Failure:
    node: str
    batch: int
    reason: str


@attrs.define
class WatchState:
    """What the events of one release say so far."""

    release_id: int
    version: int
    max_parallel: int | None
    status: str
    batches: dict[int, list[int]]
    """Batch number -> node ids, in plan order."""
    names: dict[int, str]
    nodes: dict[int, str] = attrs.field(factory=dict)
    """Node id -> status."""
    started_at: dict[int, datetime] = attrs.field(factory=dict)
    apply_times: list[float] = attrs.field(factory=list)
    failures: list[Failure] = attrs.field(factory=list)
    error: str | None = None
    first_at: datetime | None = None
    last_at: datetime | None = None
    at_step: Mapping[str, Any] | None = None
    """The API's ``release.step``: kind (batch, bake, gate), batch, until, promoted."""
    liveness: Liveness = attrs.field(factory=Liveness)
    read_at: datetime | None = None
    """The ``updatedAt`` of the release in the detail last read: older events are in it."""
    detail_stale: bool = False
    """A release event newer than ``read_at`` arrived (a claim, a verb, a step): the step
    and the owner in the detail may be behind."""

    @classmethod
    def from_detail(cls, detail: Mapping[str, Any], wall: datetime | None = None) -> WatchState:
        release = detail["release"]
        batches = {
            batch["batch"]: [node["nodeId"] for node in batch["nodes"]]
            for batch in detail["batches"]
        }
        names = {
            node["nodeId"]: node["nodeName"]
            for batch in detail["batches"]
            for node in batch["nodes"]
        }
        state = cls(
            release_id=release["id"],
            version=release["version"],
            max_parallel=release.get("maxParallel"),
            status="pending",
            batches=batches,
            names=names,
        )
        state.nodes = {node_id: "pending" for ids in batches.values() for node_id in ids}
        state.take_detail(detail, wall or datetime.now(UTC))
        return state

    def take_detail(self, detail: Mapping[str, Any], wall: datetime) -> None:
        """The release's detail, read at ``wall``: its step and liveness."""
        release = detail["release"]
        self.at_step = release.get("step")
        self.read_at = api_time(release.get("updatedAt"))
        self.liveness = Liveness.read(detail.get("liveness"), wall)
        self.detail_stale = False

    def worth_reading(self, wall: datetime) -> bool:
        """The detail may say something the events did not: a step, a new owner, a lease
        renewed."""
        return self.detail_stale or (not self.ended and self.liveness.due(wall))

    def apply(self, event: Mapping[str, Any]) -> None:
        at = api_time(event.get("createdAt"))
        if at is not None:
            self.first_at = self.first_at or at
            self.last_at = at
        node_id = event["nodeId"]
        status = event["toStatus"]
        if node_id is None:
            self.status = status
            newer = self.read_at is None or at is None or at >= self.read_at
            if newer and status not in _RELEASE_ENDED:
                self.detail_stale = True
            if status in _RELEASE_ENDED and status != "success":
                self.error = event.get("message")
            return
        self.nodes[node_id] = status
        if at is not None:
            self._timed(node_id, status, at)
        if status == "failed":
            reason = event.get("message") or "no reason given"
            self.failures.append(Failure(self.name(node_id), event["batch"], reason))

    def _timed(self, node_id: int, status: str, at: datetime) -> None:
        """What a node's change at ``at`` says of progress and apply times."""
        if status in ("running", "success", "failed"):
            self.liveness.progressed(at)
        if status == "running":
            self.started_at.setdefault(node_id, at)
        elif status in ("success", "failed") and node_id in self.started_at:
            self.apply_times.append((at - self.started_at[node_id]).total_seconds())

    def name(self, node_id: int) -> str:
        return self.names.get(node_id, f"node {node_id}")

    def counts(self, batch: int) -> dict[str, int]:
        counts = dict.fromkeys(
            ("success", "failed", "running", "pending", "skipped", "cancelled"), 0
        )
        for node_id in self.batches[batch]:
            counts[self.nodes[node_id]] = counts.get(self.nodes[node_id], 0) + 1
        return counts

    @property
    def current_batch(self) -> int | None:
        for batch, ids in self.batches.items():
            if any(self.nodes[node_id] not in _ENDED for node_id in ids):
                return batch
        return None

    @property
    def ended(self) -> bool:
        return self.status in _RELEASE_ENDED

    def holding(self) -> str | None:
        """ "bake" or "gate" while the release holds at one not yet promoted past."""
        step = self.at_step
        if self.status != "running" or step is None or step.get("promoted"):
            return None
        kind = step.get("kind")
        return kind if kind in ("bake", "gate") else None

    def bake_left(self, wall: datetime) -> float | None:
        """Seconds until the bake held at ends, by ``wall`` (this machine's clock)."""
        until = api_time(self.at_step.get("until")) if self.at_step else None
        return None if until is None else (until - wall).total_seconds()

    def step(self, wall: datetime | None = None) -> str:
        if self.ended:
            return f"ended: {self.status}"
        current = self.current_batch
        if self.status == "pending":
            return "waiting for a daemon to claim it"
        if self.status == "paused":
            return f"paused (fleetwave release resume {self.release_id})"
        holding = self.holding()
        if holding is not None:
            assert self.at_step is not None
            after = f"{holding} after batch {self.at_step['batch']}"
            if holding == "gate":
                return f"{after}: waiting for promote (fleetwave release promote {self.release_id})"
            left = self.bake_left(wall or datetime.now(UTC))
            if left is None:
                return after
            return f"{after}: {_left(left)}"
        if current is None:
            return "finishing"
        counts = self.counts(current)
        doing = "applying" if counts["running"] else "dispatching"
        return f"batch {current} of {len(self.batches)}: {doing}"

    def eta(self, now: datetime) -> float | None:
        """Seconds left, from the mean apply time so far, batch after batch: the nodes
        applying finish one mean after they started, those not started yet go in waves of
        ``max_parallel``, the first wave beside the nodes still applying. None before any
        apply has finished."""
        if not self.apply_times or self.ended:
            return None
        mean = sum(self.apply_times) / len(self.apply_times)
        left = 0.0
        for ids in self.batches.values():
            running = [self.started_at.get(i, now) for i in ids if self.nodes[i] == "running"]
            waiting = sum(self.nodes[i] == "pending" for i in ids)
            parallel = self.max_parallel or len(ids)
            first = min(waiting, max(0, parallel - len(running)))
            wave = max(0.0, mean - (now - min(running)).total_seconds()) if running else 0.0
            if first:
                wave = mean
            left += wave + math.ceil((waiting - first) / parallel) * mean
        return left

    def summary(self) -> str:
        totals = dict.fromkeys(("success", "failed", "skipped", "cancelled"), 0)
        for status in self.nodes.values():
            if status in totals:
                totals[status] += 1
        took = ""
        if self.first_at is not None and self.last_at is not None:
            took = f" in {(self.last_at - self.first_at).total_seconds():.1f}s"
        line = (
            f"release {self.release_id} (version {self.version}) {self.status}{took}: "
            f"{totals['success']} succeeded, {totals['failed']} failed, "
            f"{totals['skipped']} skipped, {totals['cancelled']} cancelled"
        )
        if self.error:
            line += f"\nerror: {self.error}"
        for failure in self.failures[:FAILURES_SHOWN]:
            line += f"\n  failed: {failure.node} (batch {failure.batch}): {failure.reason}"
        if len(self.failures) > FAILURES_SHOWN:
            line += f"\n  ... and {len(self.failures) - FAILURES_SHOWN} more failures"
        return line


def _left(seconds: float) -> str:
    """A bake's time left: "4m 10s left", "ending" once it is over."""
    if seconds <= 0:
        return "ending"
    whole = math.ceil(seconds)
    return f"{whole // 60}m {whole % 60}s left" if whole >= 60 else f"{whole}s left"


def plain_line(state: WatchState, event: Mapping[str, Any]) -> str:
    at = api_time(event.get("createdAt"))
    when = at.strftime("%H:%M:%S") if at is not None else "--:--:--"
    change = f"{event['fromStatus'] or '-'} -> {event['toStatus']}"
    if event["nodeId"] is None:
        text = f"{when} release {state.release_id}: {change}"
    else:
        text = f"{when} batch {event['batch']} {state.name(event['nodeId'])}: {change}"
    if event.get("message"):
        text += f": {event['message']}"
    until = state.at_step.get("until") if state.at_step else None
    if event["nodeId"] is None and state.holding() == "bake" and until:
        text += f" (until {until[11:19]})"
    return text


def live_view(state: WatchState, now: datetime, wall: datetime | None = None) -> Group:
    """The rich view: header, the step, a bar per batch with its counts, the latest
    failures. ``now``: the time of the latest event (for the ETA); ``wall``: this machine's
    clock (for a bake's time left)."""
    wall = wall or datetime.now(UTC)
    eta = state.eta(now)
    eta_text = "unknown until a node finishes" if eta is None else f"~{eta:.0f}s"
    holding = state.holding()
    if holding == "gate":
        eta_text = "after the promote" + ("" if eta is None else f" ~{eta:.0f}s")
    elif holding == "bake" and eta is not None:
        eta += max(0.0, state.bake_left(wall) or 0.0)
        eta_text = f"~{eta:.0f}s"
    header = Text.assemble(
        (f"release {state.release_id} (version {state.version}) ", "bold"),
        (state.status, _style(state.status)),
        f"  ·  ETA {eta_text}",
    )
    step = Text.assemble("step: ", (state.step(wall), "bold yellow" if holding else ""))
    bars = Progress(
        TextColumn("batch {task.fields[batch]:>3}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
    )
    for batch, ids in state.batches.items():
        counts = state.counts(batch)
        done = len(ids) - counts["running"] - counts["pending"]
        shown = "  ".join(f"{name} {value}" for name, value in counts.items() if value)
        bars.add_task("", total=len(ids), completed=done, batch=batch, counts=shown)
    parts: list[Any] = [header, step]
    verdict, alive = state.liveness.verdict(state.status, holding, wall)
    if alive:
        style = {"owner-lost": "bold red", "stalled": "bold yellow"}.get(verdict, "dim")
        parts.append(Text.assemble("daemon: ", (alive, style)))
    parts.append(bars)
    if state.failures:
        table = Table("node", "batch", "reason", title="failures", title_justify="left")
        for failure in state.failures[-FAILURES_SHOWN:]:
            table.add_row(failure.node, str(failure.batch), failure.reason)
        parts.append(table)
    return Group(*parts)


def _style(status: str) -> str:
    return {"success": "green", "failed": "red", "cancelled": "yellow"}.get(status, "cyan")


@attrs.define
class _Output:
    out: TextIO
    as_json: bool
    interactive: bool
    live: Live | None = None
    verdict: str = "alive"
    """The last liveness verdict a plain line reported (only changes to and from trouble)."""

    def event(self, state: WatchState, event: Mapping[str, Any]) -> None:
        if self.as_json:
            self.out.write(json.dumps(event, ensure_ascii=False) + "\n")
        elif self.live is not None:
            self.live.update(live_view(state, state.last_at or datetime.now(UTC)))
            return
        else:
            self.out.write(plain_line(state, event) + "\n")
        self.out.flush()

    def tick(self, state: WatchState, wall: datetime) -> None:
        """A second passed without an event: redraw (a bake's time left, the lease), or in
        plain lines say when the owner looks lost or stalled, and when that is over."""
        if self.live is not None:
            self.live.update(live_view(state, state.last_at or wall, wall))
            return
        verdict, text = state.liveness.verdict(state.status, state.holding(), wall)
        trouble = ("owner-lost", "stalled")
        if verdict != self.verdict and (verdict in trouble or self.verdict in trouble) and text:
            self.out.write(f"{wall.astimezone(UTC):%H:%M:%S} release {state.release_id}: {text}\n")
            self.out.flush()
        self.verdict = verdict


async def watch(
    client: ApiClient,
    release_id: int,
    out: TextIO,
    err: TextIO,
    *,
    as_json: bool = False,
    interactive: bool = False,
    patience: float = PATIENCE,
) -> int:
    """Follow release ``release_id`` to its end; 0 when it succeeded, 1 otherwise."""
    state = WatchState.from_detail(await _detail(client, release_id, err, patience))
    output = _Output(out, as_json, interactive and not as_json)
    if output.interactive:
        console = Console(file=out, force_terminal=True)
        with Live(
            live_view(state, datetime.now().astimezone()), console=console, refresh_per_second=8
        ) as live:
            output.live = live
            await _follow_and_tick(client, state, output, err, patience)
            live.update(live_view(state, state.last_at or datetime.now().astimezone()))
    elif as_json:
        await _follow(client, state, output, err, patience)
    else:
        await _follow_and_tick(client, state, output, err, patience)
    if not as_json:
        out.write(state.summary() + "\n")
        out.flush()
    return EXIT_OK if state.status == "success" else EXIT_FAILED


async def _follow_and_tick(
    client: ApiClient, state: WatchState, output: _Output, err: TextIO, patience: float
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_tick, client, state, output)
        await _follow(client, state, output, err, patience)
        nursery.cancel_scope.cancel()


async def _tick(client: ApiClient, state: WatchState, output: _Output) -> None:
    """Each second: the detail again when the lease known is due a renewal (renewals are not
    events), then the output's tick."""
    while True:
        await trio.sleep(TICK)
        wall = datetime.now(UTC)
        if not state.detail_stale and state.worth_reading(wall):
            # Unreachable: _follow notices it too, and reads the detail once back.
            with contextlib.suppress(ApiUnreachable):
                await _read_detail(client, state, output)
        output.tick(state, datetime.now(UTC))


async def _read_detail(client: ApiClient, state: WatchState, output: _Output) -> None:
    """Read the release's detail again once an event may have moved its step, or its lease
    is due a renewal (not for ``--json``, which prints the events alone)."""
    if not output.as_json and state.worth_reading(datetime.now(UTC)):
        detail = await client.release(state.release_id)
        state.take_detail(detail, datetime.now(UTC))


@attrs.define
class _Patience:
    """How long the API may stay away (a daemon restart) before the watch gives up."""

    limit: float
    err: TextIO
    since: float | None = None

    def back(self) -> None:
        self.since = None

    def away(self, error: Exception) -> None:
        """Note a failure; re-raise ``error`` once the API has been away for ``limit``."""
        now = trio.current_time()
        if self.since is None:
            self.since = now
            self.err.write(f"fleetwave: {error}; retrying for up to {self.limit:g}s\n")
        elif now - self.since >= self.limit:
            raise error


async def _detail(client: ApiClient, release_id: int, err: TextIO, patience: float) -> Any:
    """The release's detail, asked again while the API is unreachable."""
    waiting = _Patience(patience, err)
    while True:
        try:
            return await client.release(release_id)
        except ApiUnreachable as error:
            waiting.away(error)
        await trio.sleep(min(RETRY_DELAY, patience))


async def _follow(
    client: ApiClient, state: WatchState, output: _Output, err: TextIO, patience: float
) -> None:
    last_id: str | None = None
    seen: set[int] = set()
    waiting = _Patience(patience, err)
    while True:
        try:
            await _read_detail(client, state, output)  # still to do after an error while reading it
            async for message in client.follow_release(state.release_id, last_id):
                if message.kind == "end":
                    if state.ended:
                        return
                    # The server is stopping: resume, from this daemon or another.
                    reason = f"the stream ended: {message.data.get('reason', 'no reason')}"
                    waiting.away(ApiUnreachable(str(client.http.base_url), reason))
                    break
                waiting.back()
                last_id = message.id or last_id
                event = message.data
                if event["id"] in seen:
                    continue
                seen.add(event["id"])
                state.apply(event)
                await _read_detail(client, state, output)
                output.event(state, event)
            else:
                waiting.away(
                    ApiUnreachable(str(client.http.base_url), "the event stream ended early")
                )
        except (ApiUnreachable, StreamFormatError) as error:
            waiting.away(error)
        await trio.sleep(RETRY_DELAY)
