"""The closed set of messages a NodeActor sends its ReleaseActor over a memory channel."""

from __future__ import annotations

import attrs

from fleetwave.agent.errors import FailureKind


@attrs.frozen
class Dispatching:
    """About to send the task to the agent: from now on its outcome must be reconciled."""

    row_id: int


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
