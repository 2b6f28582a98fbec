"""Agent call failures, classified, in words an operator understands.

Every failure of a call to an edge agent becomes one ``AgentError``. Its ``kind`` drives the
executor (retry or not, how the node ends); its ``str()`` is what lands in the node's
error_msg, so it names the agent and says what happened without certificate or key contents.
"""

from __future__ import annotations

import enum

from fleetwave.config.quoting import quoted


class FailureKind(enum.StrEnum):
    UNREACHABLE = "unreachable"
    """No connection: refused, no route, reset before an answer."""
    TIMEOUT = "timeout"
    """Connected (or connecting) but no complete answer within the request timeout."""
    TLS = "tls"
    """The mutual TLS handshake failed: wrong CA, rejected client certificate, ..."""
    HTTP_STATUS = "http_status"
    """The agent answered with an HTTP status other than 200."""
    BAD_PAYLOAD = "bad_payload"
    """The answer is not the protocol's envelope: invalid JSON, wrong shape, unknown status."""
    REJECTED = "rejected"
    """The envelope says ``code != 0``."""
    TASK_FAILED = "task_failed"
    """The agent ran the task and reported status ``failed``."""
    DEADLINE = "deadline"
    """The node deadline passed before the task reached a terminal status."""
    UNKNOWN_TASK = "unknown_task"
    """The agent does not know a task it was given (it restarted and forgot it)."""
    INVALID_ADDRESS = "invalid_address"
    """The node's row holds no address an agent can be dialled at; nothing was sent."""


def quote_remote(text: str) -> str:
    """Text that came from an agent, made safe for one log line and the error_msg column:
    clipped, quoted, non-printable characters escaped."""
    return quoted(text)


def _seconds(value: float | None) -> str:
    return "the time limit" if value is None else f"{value:g}s"


class AgentError(Exception):
    """One failed agent call. ``str()`` is the operator-facing message."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self._retry = retry

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"AgentError({self.kind.value!r}, {self.message!r}, status={self.status!r})"

    @property
    def transient(self) -> bool:
        """Whether repeating the same call later may succeed (dispatch is idempotent)."""
        if self._retry is not None:
            return self._retry
        if self.kind in (FailureKind.UNREACHABLE, FailureKind.TIMEOUT):
            return True
        if self.kind is FailureKind.HTTP_STATUS and self.status is not None:
            return self.status >= 500 or self.status == 429
        return False

    # Named constructors: one wording per kind, used by the client and the actors alike.

    @classmethod
    def unreachable(cls, agent: object, reason: str) -> AgentError:
        return cls(FailureKind.UNREACHABLE, f"agent {agent} unreachable: {reason}")

    @classmethod
    def timeout(cls, agent: object, seconds: float | None) -> AgentError:
        return cls(FailureKind.TIMEOUT, f"agent {agent} did not answer within {_seconds(seconds)}")

    @classmethod
    def tls(cls, agent: object, reason: str, *, retry: bool = False) -> AgentError:
        return cls(
            FailureKind.TLS, f"TLS handshake with agent {agent} failed: {reason}", retry=retry
        )

    @classmethod
    def http_status(cls, agent: object, status: int, detail: str | None = None) -> AgentError:
        message = f"agent {agent} answered HTTP {status}"
        if detail:
            message += f": {quote_remote(detail)}"
        return cls(FailureKind.HTTP_STATUS, message, status=status)

    @classmethod
    def invalid_json(cls, agent: object) -> AgentError:
        return cls(FailureKind.BAD_PAYLOAD, f"agent {agent} sent invalid JSON")

    @classmethod
    def bad_payload(cls, agent: object, reason: str) -> AgentError:
        return cls(FailureKind.BAD_PAYLOAD, f"agent {agent} sent an invalid answer: {reason}")

    @classmethod
    def rejected(cls, agent: object, what: str, code: int, message: str) -> AgentError:
        text = f"agent {agent} rejected {what}: code {code}"
        if message:
            text += f": {quote_remote(message)}"
        return cls(FailureKind.REJECTED, text)

    @classmethod
    def task_failed(cls, agent: object, task_id: str, last_error: str | None) -> AgentError:
        reason = quote_remote(last_error) if last_error else "no error given"
        return cls(
            FailureKind.TASK_FAILED, f"agent {agent} reported task {task_id} failed: {reason}"
        )

    @classmethod
    def deadline(cls, agent: object, task_id: str, seconds: float) -> AgentError:
        return cls(
            FailureKind.DEADLINE,
            f"agent {agent} did not finish task {task_id} within {_seconds(seconds)}",
        )

    @classmethod
    def unknown_task(cls, agent: object, task_id: str) -> AgentError:
        return cls(
            FailureKind.UNKNOWN_TASK,
            f"agent {agent} does not know task {task_id} (it may have restarted)",
        )
