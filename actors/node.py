"""NodeActor: drives one node of one release to a terminal outcome and reports it."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import attrs
import structlog
import trio

from fleetwave.actors.messages import (
    Dispatched,
    Dispatching,
    Failed,
    Held,
    NodeMessage,
    Succeeded,
)
from fleetwave.actors.steering import DispatchGate, OpenGate
from fleetwave.actors.timing import NodeTiming, PollShare, jittered, retry_delay
from fleetwave.agent.client import AgentClient
from fleetwave.agent.errors import AgentError, FailureKind, quote_remote
from fleetwave.agent.protocol import AgentAddress, DispatchRequest, TaskState, TaskStatus
from fleetwave.config import metrics
from fleetwave.store.address import InvalidAddress
from fleetwave.store.models import NodeStatus, ReleaseNode, task_id_for

log = structlog.get_logger("fleetwave.node")

# A node taken over past its deadline still gets this long for one look at its agent.
RESUME_GRACE_SEC = 10.0


class _Finished(Exception):
    """Internal: the node reached its outcome while dispatching or polling."""

    def __init__(self, message: Succeeded | Failed | Held) -> None:
        self.message = message


@attrs.define
class NodeActor:
    """One batch member. Talks to its ReleaseActor only through ``outbox``.

    Dispatch is retried with backoff on transient errors (safe: the taskId is idempotent).
    A dispatch that times out may have reached the agent, so the actor then observes instead
    of re-sending. A running node taken over from another daemon is queried first and only
    dispatched again when its agent does not know the task. The whole life of the actor is
    bounded by the node deadline. Every dispatch passes ``gate`` (closed while the
    release is paused or cancelled); a node the gate stops ends with Held. The actor drives
    its node holding a place of ``limiter`` (the release's ``max_parallel``): the one its
    spawner took for it (``held_place``), else one it waits for itself.
    """

    node: ReleaseNode
    version: int
    """The release's own version: it makes the taskId."""
    agents: AgentClient
    timing: NodeTiming
    outbox: trio.MemorySendChannel[NodeMessage]
    limiter: trio.CapacityLimiter
    pacer: PollShare
    rng: random.Random = attrs.field(factory=random.Random)
    spent: float = 0.0
    """Seconds of the node deadline already used under an earlier owner of the release: the
    deadline runs from the node's first dispatch, whichever daemon watches it."""
    config_version: int | None = None
    """The config the agent applies (the dispatch body's version); None: ``version``."""
    gate: DispatchGate = attrs.field(factory=OpenGate)
    held_place: object | None = None
    """The borrower a place of ``limiter`` is already held for (the spawner took it, in the
    batch's order): the actor gives it back when it ends, however it ends. None: the actor
    takes its own place before it drives its node."""
    _last_error: str | None = None
    _dispatches: int = 0
    _since: float = 0.0

    _address: AgentAddress | None = None

    @property
    def address(self) -> AgentAddress:
        """The row's own address, checked in ``run`` before anything is sent."""
        assert self._address is not None, "address read before run() checked it"
        return self._address

    @property
    def task_id(self) -> str:
        return task_id_for(self.node.main_ip, self.version, self.node.attempt)

    async def run(self) -> None:
        # The outbox is entered first, before any checkpoint: however early the batch is
        # cancelled, this clone is closed and the ReleaseActor sees the channel end, and a
        # place held for this actor is given back.
        with (
            self.outbox,
            structlog.contextvars.bound_contextvars(
                node_id=self.node.node_id, batch=self.node.batch
            ),
            self._giving_place_back(),
        ):
            try:
                self._address = AgentAddress(self.node.main_ip, self.node.agent_port)
            except InvalidAddress as error:
                # A row another program wrote: this node fails, nothing is dialled.
                self.pacer.finished()
                reason = f"invalid agent address: {error}"
                await self.outbox.send(Failed(self.node.id, reason, FailureKind.INVALID_ADDRESS))
                return
            async with self._place():
                outcome: Succeeded | Failed | Held | None = None
                budget = self.timing.deadline - self.spent
                if self.spent:
                    # Its deadline may have passed while no daemon watched: ask once anyway,
                    # the agent may have finished meanwhile.
                    budget = max(budget, min(RESUME_GRACE_SEC, self.timing.deadline))
                try:
                    with trio.move_on_after(budget):
                        outcome = await self._drive()
                finally:
                    self.pacer.finished()
                if outcome is None:
                    detail = f" (last error: {self._last_error})" if self._last_error else ""
                    outcome = Failed(
                        self.node.id,
                        f"no result from agent {self.address} within "
                        f"{self.timing.deadline:g}s{detail}",
                        FailureKind.DEADLINE,
                    )
                await self.outbox.send(outcome)

    @contextlib.contextmanager
    def _giving_place_back(self) -> Iterator[None]:
        try:
            yield
        finally:
            if self.held_place is not None:
                self.limiter.release_on_behalf_of(self.held_place)

    def _place(self) -> contextlib.AbstractAsyncContextManager[None]:
        """What holds the node's place while it is driven: the one held already, else its own."""
        return contextlib.nullcontext() if self.held_place is not None else self.limiter

    async def _drive(self) -> Succeeded | Failed | Held:
        self._since = trio.current_time() - self.spent
        try:
            if self.node.status is NodeStatus.RUNNING:
                await self._resume()
            else:
                await self._dispatch()
            await self._poll()
        except _Finished as finished:
            return finished.message
        raise AssertionError("polling only ends with an outcome")  # pragma: no cover

    async def _resume(self) -> None:
        """A node some daemon already dispatched: ask before sending it again."""
        try:
            state = await self.agents.query(self.address, self.task_id)
        except AgentError as error:
            self._note(error)
            return  # keep polling: the deadline bounds an agent that stays away
        if state is None:
            log.info("node.resume_redispatch", reason="agent does not know the task")
            await self._dispatch()
        else:
            self._finish_if_terminal(state)

    async def _dispatch(self) -> None:
        if not self.gate.enter():
            raise _Finished(Held(self.node.id))
        try:
            await self._send()
        finally:
            self.gate.leave()

    async def _send(self) -> None:
        request = DispatchRequest(task_id=self.task_id, version=self.config_version or self.version)
        intent = Dispatching(self.node.id)
        await self.outbox.send(intent)
        # Nothing is sent before the row says it may have been: a daemon that takes the
        # release over then reconciles exactly the nodes that might have reached their agents.
        await intent.recorded.wait()
        attempt = 0
        while True:
            attempt += 1
            self._dispatches += 1
            try:
                await self.agents.dispatch(self.address, request)
            except AgentError as error:
                self._note(error)
                if error.kind is FailureKind.TIMEOUT:
                    # The agent may have taken the task: observe instead of resending.
                    break
                if not error.transient or attempt >= self.timing.dispatch_attempts:
                    raise _Finished(
                        Failed(
                            self.node.id,
                            f"dispatch failed after {attempt} attempt(s): {error}",
                            error.kind,
                        )
                    ) from None
                await trio.sleep(retry_delay(attempt, self.timing, self.rng))
                if not self.gate.open:
                    break  # paused or cancelled meanwhile: observe what the agent has
                continue
            break
        await self.outbox.send(Dispatched(self.node.id, self.task_id, self._dispatches))

    async def _poll(self) -> None:
        while True:
            await self._poll_once()

    async def _poll_once(self) -> None:
        age = trio.current_time() - self._since
        await trio.sleep(jittered(self.pacer.interval(age, self.timing), self.timing, self.rng))
        try:
            state = await self.agents.query(self.address, self.task_id)
        except AgentError as error:
            self._note(error)
            if error.transient:
                return  # keep asking: the deadline bounds an agent that stays away
            raise _Finished(Failed(self.node.id, str(error), error.kind)) from None
        if state is None:
            if self._dispatches >= self.timing.dispatch_attempts:
                raise _Finished(
                    Failed(
                        self.node.id,
                        f"agent {self.address} lost task {self.task_id} {self._dispatches} times",
                        FailureKind.UNKNOWN_TASK,
                    )
                )
            log.warning("node.task_forgotten", task_id=self.task_id)
            await self._dispatch()
            return
        self._finish_if_terminal(state)

    def _finish_if_terminal(self, state: TaskState) -> None:
        if state.status.terminal:
            metrics.APPLY_TIME.observe(trio.current_time() - self._since)
        if state.status is TaskStatus.SUCCESS:
            raise _Finished(Succeeded(self.node.id))
        if state.status is TaskStatus.FAILED:
            raise _Finished(
                Failed(
                    self.node.id,
                    f"agent {self.address} reported failure: {last_error(state)}",
                    FailureKind.TASK_FAILED,
                )
            )

    def _note(self, error: AgentError) -> None:
        self._last_error = str(error)
        log.info("node.agent_error", kind=str(error.kind), error=str(error))


def last_error(state: TaskState) -> str:
    """The agent's lastError of a failed task, quoted, for error_msg and logs."""
    return quote_remote(state.last_error) if state.last_error else "no lastError given"
