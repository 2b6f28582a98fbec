"""The closed set of messages a NodeActor sends its ReleaseActor over a memory channel."""

from __future__ import annotations

import attrs
import trio

from fleetwave.agent.errors import FailureKind


@attrs.frozen
class Dispatching:
    """About to send the task to the agent: from now on its outcome must be reconciled.

    The sender waits for ``recorded`` before it sends anything: the ReleaseActor sets it once
    the row says so in a committed write (status running, attempts + 1), so whichever daemon
    owns the release next asks this node's agent instead of skipping the node."""

    row_id: int
    recorded: trio.Event = attrs.field(factory=trio.Event, eq=False, repr=False)


@attrs.frozen
class Dispatched:
    """The agent accepted the task (after ``attempts`` tries)."""

    row_id: int
    task_id: str
    attempts: int


@attrs.frozen
class Succeeded:
    row_id: int


@attrs.frozen
class Failed:
    """The node failed; ``reason`` is what an operator reads in error_msg."""

    row_id: int
    reason: str
    kind: FailureKind


@attrs.frozen
class Held:
    """A pause or a cancel forbade the next dispatch: the node stays as its row says."""

    row_id: int


NodeMessage = Dispatching | Dispatched | Succeeded | Failed | Held
