"""ReleaseActor: runs one claimed release, batch after batch, as the only writer of it."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime
from functools import partial
from typing import TypeVar

import attrs
import httpx
import structlog
import trio

from fleetwave.actors import health
from fleetwave.actors.messages import (
    Dispatched,
    Dispatching,
    Failed,
    Held,
    NodeMessage,
    Succeeded,
)
from fleetwave.actors.node import NodeActor, last_error
from fleetwave.actors.steering import Steering
from fleetwave.actors.timing import NodeTiming, PollPacer, PollShare, jittered
from fleetwave.actors.topology import LabelCaps
from fleetwave.agent.client import AgentClient
from fleetwave.agent.errors import AgentError
from fleetwave.agent.protocol import AgentAddress, TaskStatus
from fleetwave.config import metrics
from fleetwave.config.quoting import quoted
from fleetwave.store.address import InvalidAddress, check_agent_host
from fleetwave.store.base import Store
from fleetwave.store.errors import Conflict, StoreUnavailable
from fleetwave.store.models import (
    ERROR_MSG_MAX,
    Actor,
    Claim,
    LeaseState,
    NodeChange,
    NodeStatus,
    Outcome,
    ReleaseNode,
    ReleaseStatus,
    Role,
    task_id_for,
)
from fleetwave.store.strategy import OnFailure, ScheduledStep, Strategy, strategy_of
from fleetwave.store.verbs import Verb, VerbResult

log = structlog.get_logger("fleetwave.release")

T = TypeVar("T")

# NodeActors spawned between two checkpoints of the spawner.
SPAWN_GROUP = 64
RECONCILE_PARALLEL = 64
STORE_RETRY_INITIAL = 0.5
STORE_RETRY_MAX = 5.0


class LeaseLost(Exception):
    """A fenced write changed nothing: another daemon holds this release now."""


@contextlib.contextmanager
def _unwrapped(*kinds: type[Exception]) -> Iterator[None]:
    """Re-raise a nursery's group of one of ``kinds`` as that exception, so the supervisor
    can tell an operational stop (lost lease, database away) from a defect.

    The group may also hold Cancelled from a scope further out, cancelled at the same moment
    (the lease keeper finds the lease lost while a write is refused by the fence). Those are
    dropped with it: cancellation is level-triggered, so that scope raises Cancelled again at
    the next checkpoint inside it."""
    try:
        yield
    except BaseExceptionGroup as group:
        for kind in kinds:
            matched, rest = group.split(kind)
            if rest is not None:
                _, rest = rest.split(trio.Cancelled)
            if matched is not None and rest is None:
                raise _first_leaf(matched) from group
        raise


def _ip_of(node: ReleaseNode) -> str:
    """The node's address for a message: as checked, or quoted when the row's is not one."""
    try:
        return check_agent_host(node.main_ip)
    except InvalidAddress:
        return quoted(str(node.main_ip), 60)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _deadline_spent(nodes: Sequence[ReleaseNode], claimed_at: datetime) -> dict[int, float]:
    """Per running node of a release taken over, the seconds since its first dispatch (both
    times by the database's clock): that much of its deadline is gone."""
    return {
        node.id: max(0.0, (claimed_at - node.started_at).total_seconds())
        for node in nodes
        if node.status is NodeStatus.RUNNING and node.started_at is not None
    }


@attrs.frozen(kw_only=True)
class ReleaseConfig:
    """What a ReleaseActor needs besides its claim: taken from Settings by the supervisor."""

    daemon_id: str
    max_parallel: int = 1000
    flush_interval: float = 0.2
    reconcile_timeout: float = 10.0
    """When a batch stops, a dispatched node is followed until its deadline, and at least this
    long when its deadline is already spent."""
    store_patience: float = 30.0
    max_crashes: int = 3
    """A release claimed with this many crashes behind it is reconciled and ended failed."""
    node: NodeTiming = attrs.field(factory=NodeTiming)
    pacer: PollPacer = attrs.field(factory=PollPacer)
    checks_http: httpx.AsyncClient | None = None
    """The client of releases' HTTP health checks (None: a release with checks fails)."""
    """Shared by every release of a daemon: the status-query budget is the daemon's."""


@attrs.define
class ReleaseActor:
    """Drives a claimed release to success or failure.

    Batches run strictly in plan order. Inside a batch one NodeActor per unfinished member runs,
    at most ``max_parallel`` at a time, reporting over a memory channel. Without label caps
    the places go in the batch's row order (the order the preview shows): the spawner takes
    each node's place before it starts the node's actor (``_spawn``). Under label caps a node
    takes its place once it holds its lanes. Transitions are persisted in one fenced
    transaction per tick. A failure beyond ``max_failures`` cancels the
    batch scope; then dispatched nodes are reconciled with their agents, and the outcome
    (which skips every node never dispatched) is recorded.

    A dispatch is announced before it is made: a NodeActor's Dispatching is written (node
    running, attempts + 1) and only then does the actor send its task, so the rows always
    name every node that may have reached its agent. A release taken over past its tolerance
    reconciles those nodes before it records the outcome.
    """

    claim: Claim
    store: Store
    agents: AgentClient
    config: ReleaseConfig
    steering: Steering = attrs.field(factory=Steering)
    """Closed by a pause or a cancel: the Supervisor applies the release row's verbs here."""
    _nodes: dict[int, ReleaseNode] = attrs.field(factory=dict)
    _changes: dict[int, NodeChange] = attrs.field(factory=dict)
    _dispatched: set[int] = attrs.field(factory=set)
    _spent: dict[int, float] = attrs.field(factory=dict)
    _dispatched_at: dict[int, float] = attrs.field(factory=dict)
    """trio time of each node's first dispatch (taken-over nodes: by its started_at)."""
    _intents: dict[int, tuple[trio.Event, ReleaseNode]] = attrs.field(factory=dict)
    """Dispatch intents not yet written: the NodeActor's event, and the node before it."""
    _failures: int = 0
    _failed: dict[int, int] = attrs.field(factory=dict)
    """Failures counted per batch (the budgets' input)."""
    _sizes: dict[int, int] = attrs.field(factory=dict)
    _strategy: Strategy = attrs.field(factory=Strategy)
    _schedule: tuple[ScheduledStep, ...] = ()
    _step: int = 0
    """The schedule position reached (as the row says once written)."""
    _error: str | None = None
    _unhealthy: bool = False
    """A health check failed past its limit: the release fails (nodes stay as recorded)."""
    _flush_at: float = math.inf

    @property
    def release_id(self) -> int:
        return self.claim.release.id

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        release = self.claim.release
        with structlog.contextvars.bound_contextvars(
            release_id=release.id, version=release.version
        ):
            self.steering.apply(LeaseState.of(release))
            task_status.started()
            nodes = await self._retrying(
                "release.read_retry", partial(self.store.release_nodes, release.id)
            )
            self._nodes = {node.id: node for node in nodes}
            self._spent = _deadline_spent(nodes, self.claim.claimed_at)
            now = trio.current_time()
            self._dispatched_at = {row: now - spent for row, spent in self._spent.items()}
            self._failures = sum(node.status is NodeStatus.FAILED for node in nodes)
            for node in nodes:
                self._sizes[node.batch] = self._sizes.get(node.batch, 0) + 1
                if node.status is NodeStatus.FAILED:
                    self._failed[node.batch] = self._failed.get(node.batch, 0) + 1
            self._strategy = strategy_of(release)
            if self._strategy.batch_by is None:
                self._schedule = self._strategy.schedule(len(nodes))
            else:  # batches by a label: as many as the rows hold, not as the plan splits
                self._schedule = self._strategy.schedule_batches(
                    max((node.batch for node in nodes), default=0)
                )
            self._step = release.step
            # Claimed beyond its budget: resumed after an onFailure pause (or taken over
            # before the pause was written), it ends failed.
            failed_before = self._tolerance_exceeded
            resumed = any(node.status is not NodeStatus.PENDING for node in nodes)
            log.info(
                "release.started",
                epoch=self.claim.lease.epoch,
                total_nodes=len(nodes),
                resumed=resumed,
            )
            if release.crash_count >= self.config.max_crashes:
                await self._give_up()
                return
            if not resumed and not await self._preflight():
                await self._finish()  # nothing was dispatched: onFailure has nothing to do
                return
            limiter = trio.CapacityLimiter(release.max_parallel or self.config.max_parallel)
            for batch in sorted({node.batch for node in nodes}):
                with structlog.contextvars.bound_contextvars(batch=batch):
                    await self._reach_batch(batch)
                    if not await self._run_until_done(batch, limiter):
                        return  # paused: no daemon holds the release until it is resumed
                    if self._tolerance_exceeded or self.steering.cancel is not None:
                        break
                    if not await self._pauses_after(batch):
                        return  # paused during a pause step
                    if self._unhealthy:
                        break
            if self._tolerance_exceeded and self.steering.cancel is None:
                # Taken over past the tolerance (the owner died stopping a batch): the nodes
                # it may have dispatched are followed before the outcome skips or cancels any.
                if self._error is None:
                    first = next(n for n in nodes if n.status is NodeStatus.FAILED)
                    self._error = (
                        f"node {first.node_name} ({_ip_of(first)}) failed: {first.error_msg}"
                    )
                await self._reconcile(
                    [node for node in self._nodes.values() if node.status is NodeStatus.RUNNING]
                )
            if (
                self._tolerance_exceeded
                and self.steering.cancel is None
                and self._strategy.on_failure is OnFailure.PAUSE
                and not failed_before
                and await self._pause_for_failure()
            ):
                return  # paused: the operator resumes (ends it failed), cancels or rolls back
            await self._finish()
            if self._tolerance_exceeded and self._strategy.on_failure is OnFailure.ROLLBACK:
                await self._roll_back()

    async def _run_until_done(self, batch: int, limiter: trio.CapacityLimiter) -> bool:
        """Run ``batch`` until each member is terminal, the release is cancelled or fails.

        A pause lets in-flight nodes finish, then gives the lease up (False). A resume that
        comes first runs what the pause held back."""
        while not (self._tolerance_exceeded or self.steering.cancel is not None):
            members = [node for node in self._nodes.values() if node.batch == batch]
            if all(node.status.terminal for node in members):
                return True
            if not self.steering.open:
                if await self._park():
                    return False
                continue
            await self._run_batch(members, limiter)
        return True

    async def _park(self) -> bool:
        """Give the lease of a paused release up; False when it was resumed meanwhile."""
        await self._flush()
        state = await self.store.park(self.claim.lease)
        if state is None:
            log.warning("release.lease_lost", epoch=self.claim.lease.epoch)
            raise LeaseLost(f"release {self.release_id}: lease epoch {self.claim.lease.epoch} lost")
        self.steering.apply(state)
        if state.status is ReleaseStatus.PAUSED:
            log.info("release.parked", reason="paused")
            return True
        return False

    @property
    def _by(self) -> Actor:
        """Who gives the verbs of onFailure: this daemon, under the release's own strategy."""
        return Actor(f"onFailure of daemon {self.config.daemon_id}", Role.OPERATOR)

    async def _pause_for_failure(self) -> bool:
        """onFailure pause: pause the release through the pause verb's store path, then give
        its lease up. False when it cannot be paused (a cancel came) or was resumed at once."""
        result = await self._on_failure_verb(Verb.PAUSE)
        if result is None:
            return False
        self.steering.apply(LeaseState.of(result.release))
        return await self._park()

    async def _roll_back(self) -> None:
        """onFailure rollback: the rollback verb's store path on the failed release."""
        result = await self._on_failure_verb(Verb.ROLLBACK)
        if result is not None and result.rollback is not None:
            log.info("release.rolled_back", rollback_id=result.rollback.id)

    async def _on_failure_verb(self, verb: Verb) -> VerbResult | None:
        """``verb`` applied by onFailure, naming the failure; None when the store refuses it."""
        try:
            return await self._retrying(
                "release.write_retry",
                partial(
                    self.store.steer,
                    self.release_id,
                    verb,
                    by=self._by,
                    reason=f"onFailure {verb}: {self._error}",
                ),
            )
        except Conflict as refused:
            log.warning("release.on_failure_refused", action=str(verb), reason=str(refused))
            return None

    async def _give_up(self) -> None:
        """End a release whose actors crashed ``max_crashes`` times: reconcile what may have
        been dispatched, then record it failed, naming the last crash. When even that
        crashed (one crash more), record it failed without asking any agent."""
        release = self.claim.release
        self._error = (
            f"release crashed {release.crash_count} times; last crash: {release.last_crash}"
        )
        log.warning("release.giving_up", crashes=release.crash_count, last_crash=release.last_crash)
        if release.crash_count == self.config.max_crashes:
            await self._reconcile(list(self._nodes.values()))
        await self._flush(Outcome(ReleaseStatus.FAILED, self._error))
        log.info("release.finished", status=str(ReleaseStatus.FAILED), error=self._error)

    @property
    def _tolerance_exceeded(self) -> bool:
        return self._unhealthy or self._over_budget() is not None

    async def _watch_health(self, batch: int, deadline: float = math.inf) -> bool:
        """Watch the release's health checks after ``batch``: until ``deadline`` (a bake),
        else until each passed once. False when one failed past its limit: the release
        fails naming it."""
        checks = self._strategy.health_checks
        if not checks or self._unhealthy:
            return not self._unhealthy
        http = self.config.checks_http
        if http is None:
            report: health.Unhealthy | None = health.Unhealthy(
                checks[0].name, "this daemon has no HTTP client for health checks"
            )
        else:
            report = await health.watch(
                checks,
                http,
                self._check_values(batch),
                until_healthy=deadline == math.inf,
                deadline=deadline,
            )
        if report is None:
            return True
        return self._health_failed(f"health check {report.name} failed: {report.reason}", report)

    def _health_failed(self, error: str, report: health.Unhealthy) -> bool:
        """The release fails with ``error`` (nodes stay as recorded); False."""
        self._unhealthy = True
        self._error = error
        log.warning("release.unhealthy", check=report.name, reason=report.reason)
        return False

    def _check_values(self, batch: int) -> dict[str, object]:
        """What a check's URL and query are filled in with after ``batch``."""
        release = self.claim.release
        return {
            "release": release.id,
            "version": release.version,
            "batch": batch,
            "scope": release.scope or "",
            "nodes": [node.node_name for node in self._nodes.values() if node.batch == batch],
        }

    async def _preflight(self) -> bool:
        """Ask each Prometheus check's query once, as after the canary: False when a server
        rejects one, and the release fails naming it before anything is dispatched."""
        http = self.config.checks_http
        checks = self._strategy.health_checks
        if http is None or all(check.prometheus is None for check in checks):
            return True
        report = await health.preflight(checks, http, self._check_values(1))
        if report is None:
            return True
        return self._health_failed(
            f"health check {report.name}: query rejected: {report.reason}", report
        )

    def _over_budget(self) -> str | None:
        """Why the failures so far stop the release (store/strategy.py), or None."""
        return self._strategy.release_over_budget(self._failed, self._sizes)

    async def _write_step(self, step: int, message: str | None, bake: float | None) -> None:
        written = await self._retrying(
            "release.write_retry",
            partial(
                self.store.record_step,
                self.claim.lease,
                step,
                message,
                bake=bake,
                daemon_id=self.config.daemon_id,
            ),
        )
        if not written:
            log.warning("release.lease_lost", epoch=self.claim.lease.epoch)
            raise LeaseLost(f"release {self.release_id}: lease epoch {self.claim.lease.epoch} lost")
        self._step = step

    async def _reach_batch(self, batch: int) -> None:
        """Record the schedule position of ``batch`` (only releases with pauses keep one)."""
        if not self._strategy.has_pauses:
            return
        for step in self._schedule:
            if step.pause is None and step.batch == batch and step.position > self._step:
                await self._write_step(step.position, None, None)

    async def _watch_bake(self, batch: int, deadline: float, holding: trio.CancelScope) -> None:
        if not await self._watch_health(batch, deadline):
            holding.cancel(reason=self._error)

    async def _wait_pause(self, step: ScheduledStep, deadline: float) -> str | None:
        """Hold until ``deadline`` or a promote ("bake ended", "promoted"); "parked" when a
        pause gave the lease up, None on a cancel."""
        while trio.current_time() < deadline:
            if self.steering.promoted_to > step.position:
                return "promoted"
            if self.steering.cancel is not None:
                return None
            if not self.steering.open:
                if await self._park():
                    return "parked"
                continue
            with trio.move_on_at(deadline):
                await self.steering.wait_changed()
        return "bake ended"

    async def _pauses_after(self, batch: int) -> bool:
        """Hold the pauses that follow ``batch``: a bake for its seconds, a gate until a
        promote; a promote ends either. False when the release was paused meanwhile and
        its lease given up. A bake resumed by a new owner ends when the row says."""
        baked = False
        for step in self._schedule:
            if step.pause is None or step.batch != batch or step.position < self._step:
                continue
            if self.steering.cancel is not None:
                return True
            baked = baked or not step.pause.gate
            with structlog.contextvars.bound_contextvars(step=step.position, kind=step.kind):
                if not await self._hold(step):
                    return False
            if self._unhealthy:
                return True
        if not baked:
            await self._watch_health(batch)  # no bake watched it: until each check passes once
        return True

    async def _hold(self, step: ScheduledStep) -> bool:
        assert step.pause is not None
        seconds = step.pause.seconds
        release = self.claim.release
        if step.position < self.steering.promoted_to:
            passed = "promoted"
        else:
            deadline = math.inf
            if seconds is not None and step.position == self._step and release.step_ends_at:
                # Taken over mid-bake: the rest of it, by the database's clock.
                left = (release.step_ends_at - self.claim.claimed_at).total_seconds()
                deadline = trio.current_time() + max(0.0, left)
            elif seconds is not None:
                await self._write_step(
                    step.position, f"step {step.position}: bake {seconds:g}s", seconds
                )
                deadline = trio.current_time() + seconds
            elif step.position != self._step or release.step_ends_at is not None:
                await self._write_step(
                    step.position, f"step {step.position}: gate: waits for promote", None
                )
            log.info("step.holding", seconds=seconds)
            held: str | None = None
            with trio.CancelScope() as holding:
                async with trio.open_nursery() as nursery:
                    if seconds is not None:
                        nursery.start_soon(self._watch_bake, step.batch, deadline, holding)
                    held = await self._wait_pause(step, deadline)
                    nursery.cancel_scope.cancel()
            if self._unhealthy or held is None:
                return True  # the release fails naming the check, or was cancelled
            if held == "parked":
                return False
            passed = held
        log.info("step.passed", passed=passed)
        await self._write_step(step.position + 1, f"step {step.position}: {passed}", None)
        return True

    async def _run_batch(
        self, members: Sequence[ReleaseNode], limiter: trio.CapacityLimiter
    ) -> None:
        todo = [node for node in members if not node.status.terminal]
        log.info("batch.started", nodes=len(members), to_run=len(todo))
        caps = None
        if self._strategy.max_in_flight_per:
            caps = LabelCaps(self._strategy.max_in_flight_per)
            # Before any other node can take a slot: nodes running already are in flight.
            for node in todo:
                if node.status is NodeStatus.RUNNING:
                    caps.hold_nowait(node.labels)
        # A buffer of one message per node: a node never waits for the writer, so dispatching
        # goes on while a tick is written (with no buffer every write stalled the whole batch).
        send, receive = trio.open_memory_channel[NodeMessage](max(1, len(todo)))
        with receive:
            with (
                _unwrapped(LeaseLost, StoreUnavailable),
                trio.CancelScope() as batch_scope,
                self.config.pacer.share(
                    len(todo),
                    bound=None if caps is None else caps.most_in_flight(n.labels for n in todo),
                ) as pacing,
            ):
                self.steering.enter_batch(batch_scope)
                async with trio.open_nursery() as nursery:
                    # Spawn from a task of its own so that the first nodes report (and
                    # dispatch) while the last ones of a large batch are still being started.
                    nursery.start_soon(self._spawn, nursery, todo, send, limiter, pacing, caps)
                    await self._collect(receive, batch_scope)
            self.steering.leave_batch()
            if batch_scope.cancelled_caught:
                # What was sent before the cancel may still be buffered: the outcomes count.
                await self._drain(receive, batch_scope)
                # An intent not yet written was never acted on (its actor waited for the
                # write and is gone): that node never reached its agent and stays pending.
                self._drop_intents()
        await self._flush()
        if batch_scope.cancelled_caught:
            # An operator's cancel reason or an agent's words: clipped and quoted.
            log.warning("batch.aborted", reason=quoted(self.steering.cancel or self._error or ""))
            await self._reconcile(members)
        else:
            log.info("batch.finished", failures=self._failures)

    async def _spawn(
        self,
        nursery: trio.Nursery,
        todo: Sequence[ReleaseNode],
        send: trio.MemorySendChannel[NodeMessage],
        limiter: trio.CapacityLimiter,
        pacing: PollShare,
        caps: LabelCaps | None,
    ) -> None:
        """Start the batch's NodeActors in its order (the rows' order, as the preview shows).

        Without label caps the spawner takes each node's place in ``limiter`` before it
        starts the node's actor, one node after the other, so places go strictly in that
        order whatever order trio runs tasks in, and at most ``max_parallel`` actors exist at
        once; nodes already running (a release taken over) come first, being in flight
        already. Under label caps each node waits for its lanes in a task of its own and then
        takes its own place (actors/topology.py): a node waiting for its PoP holds none."""
        if caps is None:
            # Stable: the running ones first, each part in the batch's order.
            todo = sorted(todo, key=lambda node: node.status is not NodeStatus.RUNNING)
        async with send:
            for spawned, node in enumerate(todo, 1):
                if not self.steering.open:
                    break  # paused or cancelled: the rest stay as they are
                if caps is None and not await self._take_place(limiter, node.id):
                    break  # paused or cancelled while waiting for the place
                try:
                    actor = NodeActor(
                        node=node,
                        version=self.claim.release.version,
                        config_version=self.claim.release.config_version,
                        gate=self.steering,
                        agents=self.agents,
                        timing=self.config.node,
                        outbox=send.clone(),
                        limiter=limiter,
                        pacer=pacing,
                        rng=random.Random(node.id),
                        spent=self._spent.get(node.id, 0.0),
                        held_place=node.id if caps is None else None,
                    )
                    # start_soon, not start: start waits a scheduling round per actor. The
                    # actor owns its outbox clone and its place from its first statement,
                    # so nothing can leak.
                    if caps is None:
                        nursery.start_soon(actor.run)
                    else:
                        place = (
                            None
                            if node.status is NodeStatus.RUNNING
                            else caps.queue_nowait(node.labels)
                        )
                        nursery.start_soon(
                            caps.run_in_lanes, place, node.labels, actor.run, actor.outbox
                        )
                except BaseException:
                    if caps is None:
                        limiter.release_on_behalf_of(node.id)
                    raise
                if spawned % SPAWN_GROUP == 0:
                    # Let the started ones dispatch while the rest of a large batch is spawned.
                    await trio.lowlevel.checkpoint()

    async def _take_place(self, limiter: trio.CapacityLimiter, borrower: int) -> bool:
        """A place in ``limiter`` for ``borrower``: at once while one is free (no scheduling
        round per node), else once an actor ends and gives its own back. False, holding
        none, when the release was paused or cancelled meanwhile."""
        try:
            limiter.acquire_on_behalf_of_nowait(borrower)
            return True
        except trio.WouldBlock:
            pass
        await limiter.acquire_on_behalf_of(borrower)
        if self.steering.open:
            return True
        limiter.release_on_behalf_of(borrower)
        return False

    async def _collect(
        self, receive: trio.MemoryReceiveChannel[NodeMessage], batch_scope: trio.CancelScope
    ) -> None:
        while True:
            # Only the wait is bounded by the flush deadline: a message, once received, is
            # handled whole. Handling may write (a second change of the same row flushes
            # first); cut short by the deadline, that write and the message would be lost.
            message: NodeMessage | None = None
            with trio.move_on_at(self._flush_at):
                try:
                    message = await receive.receive()
                except trio.EndOfChannel:
                    return
            if message is None:
                await self._flush()
                continue
            await self._handle(message, batch_scope)
            if self._intents:
                # Intents hold their nodes back until written: gather what else has already
                # arrived into the same write, which is due now.
                await self._gather(receive, batch_scope)

    async def _gather(
        self, receive: trio.MemoryReceiveChannel[NodeMessage], batch_scope: trio.CancelScope
    ) -> None:
        while not batch_scope.cancel_called:
            try:
                message = receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            await self._handle(message, batch_scope)

    def _drop_intents(self) -> None:
        for row_id, (_, before) in self._intents.items():
            self._changes.pop(row_id, None)
            self._dispatched.discard(row_id)
            self._dispatched_at.pop(row_id, None)
            self._nodes[row_id] = before
        self._intents.clear()

    async def _drain(
        self, receive: trio.MemoryReceiveChannel[NodeMessage], batch_scope: trio.CancelScope
    ) -> None:
        while True:
            try:
                message = receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            await self._handle(message, batch_scope)

    async def _handle(self, message: NodeMessage, batch_scope: trio.CancelScope) -> None:
        match message:
            case Dispatching(row_id=row_id, recorded=recorded):
                before = self._nodes[row_id]
                self._dispatched_at.setdefault(row_id, trio.current_time())
                await self._change(
                    NodeChange(
                        row_id,
                        NodeStatus.RUNNING,
                        task_id=task_id_for(
                            before.main_ip, self.claim.release.version, before.attempt
                        ),
                        attempts=before.attempts + 1,
                        started=before.status is NodeStatus.PENDING,
                    )
                )
                self._intents[row_id] = (recorded, before)
                self._dispatched.add(row_id)
                self._flush_at = min(self._flush_at, trio.current_time())
            case Held():
                pass  # its row stays as it is: run again on resume, reconciled on cancel
            case Dispatched(row_id=row_id, attempts=attempts):
                # The row has said so since the intent was written: nothing to persist.
                log.debug("node.dispatched", row_id=row_id, requests=attempts)
            case Succeeded(row_id=row_id):
                await self._change(NodeChange(row_id, NodeStatus.SUCCESS, finished=True))
            case Failed(row_id=row_id, reason=reason, kind=kind):
                node = self._nodes[row_id]
                await self._change(
                    NodeChange(row_id, NodeStatus.FAILED, error_msg=reason, finished=True),
                    kind=str(kind),
                )
                self._failures += 1
                self._failed[node.batch] = self._failed.get(node.batch, 0) + 1
                why = self._over_budget()
                if why is not None and self._error is None:
                    self._error = f"node {node.node_name} ({_ip_of(node)}) failed: {reason}"
                    release = self.claim.release
                    if release.strategy is not None or release.max_failures:
                        self._error += f" ({why})"
                    batch_scope.cancel(reason=self._error)

    async def _change(self, change: NodeChange, **context: str) -> None:
        if change.row_id in self._changes:
            await self._flush()  # one change per row per transaction keeps the audit complete
        self._changes[change.row_id] = change
        node = self._nodes[change.row_id]
        self._nodes[change.row_id] = attrs.evolve(
            node,
            status=change.status,
            task_id=change.task_id or node.task_id,
            attempts=node.attempts if change.attempts is None else change.attempts,
        )
        if change.status.terminal:
            metrics.NODES_FINISHED.labels(str(change.status), context.get("kind", "")).inc()
        level = log.warning if change.status is NodeStatus.FAILED else log.info
        level(
            "node.transition",
            node_id=node.node_id,
            node=node.node_name,
            batch=node.batch,
            from_status=str(node.status),
            status=str(change.status),
            error=change.error_msg,
            **context,
        )
        if self._flush_at == math.inf:
            self._flush_at = trio.current_time() + self.config.flush_interval

    async def _flush(self, outcome: Outcome | None = None) -> None:
        changes = list(self._changes.values())
        self._changes.clear()
        intents = [recorded for recorded, _ in self._intents.values()]
        self._intents.clear()
        self._flush_at = math.inf
        if not changes and outcome is None:
            return
        if not await self._record(changes, outcome):
            log.warning("release.lease_lost", epoch=self.claim.lease.epoch)
            raise LeaseLost(f"release {self.release_id}: lease epoch {self.claim.lease.epoch} lost")
        for recorded in intents:
            recorded.set()

    async def _record(self, changes: list[NodeChange], outcome: Outcome | None) -> bool:
        """One fenced write, retried with backoff while the database is away.

        Retrying is safe: a repeated change leaves the rows as they are. Past
        ``store_patience`` (the lease TTL: by then the lease may be another daemon's) the
        error propagates and the release is abandoned to whoever claims it next.
        """
        return await self._retrying(
            "release.write_retry",
            partial(
                self.store.record,
                self.claim.lease,
                changes,
                outcome,
                daemon_id=self.config.daemon_id,
            ),
        )

    async def _retrying(self, event: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, retried with backoff on StoreUnavailable for up to ``store_patience``."""
        delay = STORE_RETRY_INITIAL
        give_up_at = trio.current_time() + self.config.store_patience
        while True:
            try:
                return await call()
            except StoreUnavailable as error:
                if trio.current_time() + delay > give_up_at:
                    raise
                log.warning(event, error=str(error), retry_in=delay)
                await trio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX)

    async def _reconcile(self, members: Sequence[ReleaseNode]) -> None:
        """Follow the dispatched, unfinished nodes of a stopped batch to their true outcome.

        Each is asked until its agent reports the task finished or the node's deadline
        (from its first dispatch) passes, and for at least ``reconcile_timeout``: an agent
        that finishes after the batch stopped is recorded as what it did, not as unknown."""
        open_nodes = [
            self._nodes[node.id]
            for node in members
            if not self._nodes[node.id].status.terminal
            and (node.id in self._dispatched or self._nodes[node.id].status is NodeStatus.RUNNING)
        ]
        if not open_nodes:
            return
        limiter = trio.CapacityLimiter(RECONCILE_PARALLEL)
        stopped_at = trio.current_time()
        log.info("batch.reconciling", nodes=len(open_nodes))
        with self.config.pacer.share(len(open_nodes)) as pacing:

            async def follow(node: ReleaseNode) -> None:
                try:
                    await self._follow(node, limiter, pacing, stopped_at)
                finally:
                    pacing.finished()

            async with trio.open_nursery() as nursery:
                for node in open_nodes:
                    nursery.start_soon(follow, node)
        log.info("batch.reconciled", nodes=len(open_nodes))
        await self._flush()

    async def _follow(
        self,
        node: ReleaseNode,
        limiter: trio.CapacityLimiter,
        pacing: PollShare,
        stopped_at: float,
    ) -> None:
        timing = self.config.node
        dispatched_at = self._dispatched_at.get(node.id, stopped_at)
        give_up_at = max(
            dispatched_at + timing.deadline, stopped_at + self.config.reconcile_timeout
        )
        rng = random.Random(node.id)
        change: NodeChange | None = None
        with trio.move_on_at(give_up_at):
            while True:
                async with limiter:
                    change = await self._true_outcome(node)
                if change.status is not NodeStatus.RUNNING:
                    break
                age = trio.current_time() - dispatched_at
                await trio.sleep(jittered(pacing.interval(age, timing), timing, rng))
        if change is None or change.status is NodeStatus.RUNNING:
            detail = "" if change is None else f": {change.error_msg}"
            change = NodeChange(
                node.id,
                NodeStatus.CANCELLED,
                error_msg=f"release stopped; no outcome from the agent by the node deadline"
                f" ({timing.deadline:g}s){detail}",
                finished=True,
            )
        if change.status is not NodeStatus.PENDING:
            await self._change(change)
            if trio.current_time() >= self._flush_at:
                await self._flush()  # a long follow is recorded as it goes, one tick at a time

    async def _true_outcome(self, node: ReleaseNode) -> NodeChange:
        """What the agent says of the node's task now. RUNNING: ask again later (the agent is
        still applying, or could not be asked); PENDING: the task never reached it."""
        task_id = task_id_for(node.main_ip, self.claim.release.version, node.attempt)
        try:
            state = await self.agents.query(AgentAddress(node.main_ip, node.agent_port), task_id)
        except (AgentError, InvalidAddress) as error:
            if isinstance(error, AgentError) and error.transient:
                return NodeChange(node.id, NodeStatus.RUNNING, error_msg=f"last error: {error}")
            unknown = (
                f"invalid agent address: {error}" if isinstance(error, InvalidAddress) else error
            )
            return NodeChange(
                node.id,
                NodeStatus.CANCELLED,
                error_msg=f"release stopped; outcome unknown: {unknown}",
                finished=True,
            )
        if state is None:
            if node.status is NodeStatus.PENDING:
                return NodeChange(node.id, NodeStatus.PENDING)  # never reached the agent
            return NodeChange(
                node.id,
                NodeStatus.CANCELLED,
                error_msg="release stopped; the agent does not know the task",
                finished=True,
            )
        if state.status is TaskStatus.SUCCESS:
            return NodeChange(node.id, NodeStatus.SUCCESS, task_id=task_id, finished=True)
        if state.status is TaskStatus.FAILED:
            return NodeChange(
                node.id,
                NodeStatus.FAILED,
                error_msg=f"agent reported failure: {last_error(state)}",
                task_id=task_id,
                finished=True,
            )
        return NodeChange(
            node.id,
            NodeStatus.RUNNING,
            error_msg=f"the agent was still applying ({state.status})",
            task_id=task_id,
        )

    async def _finish(self) -> None:
        if self.steering.cancel is not None:
            # Nodes dispatched in earlier batches or by an earlier owner are asked too.
            await self._reconcile(list(self._nodes.values()))
            error = self.steering.cancel
            if self._error is not None:
                error += f" (after {self._error})"
            outcome = Outcome(ReleaseStatus.CANCELLED, error)
        elif self._tolerance_exceeded:
            error = self._error or f"{self._failures} node(s) failed"
            outcome = Outcome(ReleaseStatus.FAILED, error)
        else:
            outcome = Outcome(ReleaseStatus.SUCCESS)
        await self._flush(outcome)
        # The outcome skipped every node still pending and cancelled every one still running.
        left = [node.status for node in self._nodes.values()]
        for status, ended in ((NodeStatus.PENDING, "skipped"), (NodeStatus.RUNNING, "cancelled")):
            if count := left.count(status):
                metrics.NODES_FINISHED.labels(ended, "").inc(count)
        metrics.RELEASES_FINISHED.labels(str(outcome.status)).inc()
        shown = None if outcome.error is None else quoted(outcome.error, ERROR_MSG_MAX)
        log.info("release.finished", status=str(outcome.status), error=shown)
