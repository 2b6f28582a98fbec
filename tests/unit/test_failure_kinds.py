"""Failure kinds: each wording of agent/errors.py and of the release actor's stopped batch
lands in the kind the dashboard groups it under."""

from __future__ import annotations

import pytest

from fleetwave.agent.errors import AgentError
from fleetwave.api.failures import KINDS, failure_kind

AGENT = "127.0.0.9:8443"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (AgentError.unreachable(AGENT, "connection refused"), "unreachable"),
        (AgentError.timeout(AGENT, 2.0), "timeout"),
        (AgentError.tls(AGENT, "certificate verify failed"), "tls"),
        (AgentError.http_status(AGENT, 502, "bad gateway"), "protocol"),
        (AgentError.invalid_json(AGENT), "protocol"),
        (AgentError.bad_payload(AGENT, "data: not an object"), "protocol"),
        (AgentError.unknown_task(AGENT, "t-1"), "protocol"),
        (AgentError.rejected(AGENT, "the config", 4001, "bad syntax"), "rejected"),
        (AgentError.task_failed(AGENT, "t-1", "nginx -t failed"), "rejected"),
        (AgentError.deadline(AGENT, "t-1", 20.0), "deadline"),
    ],
)
def test_every_agent_error_wording_has_its_kind(error: AgentError, kind: str) -> None:
    assert failure_kind(str(error)) == kind


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("agent reported failure: disk full", "rejected"),
        ("agent 127.0.0.2:8443 reported failure: 'simulated failure'", "rejected"),
        ("release stopped; no outcome from the agent by the node deadline (20s)", "deadline"),
        ("something no one wrote before", "other"),
        ("", None),
        (None, None),
    ],
)
def test_other_messages(message: str | None, kind: str | None) -> None:
    assert failure_kind(message) == kind
    assert kind is None or kind in KINDS
