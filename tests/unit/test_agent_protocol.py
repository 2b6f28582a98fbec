"""Parsing the agent wire protocol: good answers become values, bad ones say why."""

from __future__ import annotations

import pytest

from fleetwave.agent.protocol import (
    AgentAddress,
    DispatchAck,
    DispatchRequest,
    Envelope,
    InvalidJSON,
    PayloadError,
    TaskState,
    TaskStatus,
    agent_hosts,
)

FULL_STATE = {
    "taskId": "apply_config_127.0.0.2_7",
    "type": "apply_config",
    "status": "failed",
    "lastError": "nginx -t failed",
    "createdAt": "2024-05-01T10:00:00Z",
    "startedAt": "2024-05-01T10:00:01Z",
    "finishedAt": "2024-05-01T10:00:03Z",
}


def test_terminal_statuses_are_success_and_failed() -> None:
    assert {s for s in TaskStatus if s.terminal} == {TaskStatus.SUCCESS, TaskStatus.FAILED}


def test_address_base_url_and_text() -> None:
    address = AgentAddress("127.0.0.3", 8443)
    assert address.base_url == "https://127.0.0.3:8443"
    assert str(address) == "127.0.0.3:8443"


def test_ipv6_address_is_bracketed_in_url() -> None:
    assert AgentAddress("::1", 8443).base_url == "https://[::1]:8443"


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_address_rejects_ports_outside_range(port: int) -> None:
    with pytest.raises(ValueError, match="port"):
        AgentAddress("127.0.0.2", port)


def test_dispatch_request_to_json_has_the_protocol_fields() -> None:
    request = DispatchRequest(task_id="apply_config_127.0.0.2_7", version=7)
    assert request.to_json() == {
        "taskId": "apply_config_127.0.0.2_7",
        "type": "apply_config",
        "version": 7,
        "payload": {},
    }


def test_dispatch_request_round_trips() -> None:
    request = DispatchRequest(task_id="t", version=3, payload={"k": [1, 2]})
    assert DispatchRequest.from_json(request.to_json()) == request


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([], "must be a JSON object"),
        ({"type": "apply_config", "version": 1}, "taskId is missing"),
        ({"taskId": "", "type": "apply_config", "version": 1}, "taskId must be non-empty"),
        ({"taskId": "t", "type": "apply_config"}, "version is missing"),
        ({"taskId": "t", "type": "apply_config", "version": "1"}, "version must be"),
        ({"taskId": "t", "type": "apply_config", "version": True}, "version must be"),
        ({"taskId": "t", "type": "apply_config", "version": -1}, "version must be"),
        ({"taskId": "t", "type": "apply_config", "version": 1, "payload": []}, "payload"),
        ({"taskId": "t", "version": 1}, "type is missing"),
    ],
)
def test_bad_dispatch_request_says_why(data: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        DispatchRequest.from_json(data)


def test_task_state_parses_every_field() -> None:
    state = TaskState.from_json(FULL_STATE)
    assert state.status is TaskStatus.FAILED
    assert state.last_error == "nginx -t failed"
    assert state.finished_at == "2024-05-01T10:00:03Z"
    assert state.to_json() == FULL_STATE


def test_task_state_optional_fields_may_be_absent() -> None:
    state = TaskState.from_json({"taskId": "t", "type": "apply_config", "status": "pending"})
    assert (state.last_error, state.created_at, state.started_at, state.finished_at) == (
        None,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"status": "exploded"}, "unknown task status 'exploded'"),
        ({"status": 3}, "status must be text"),
        ({"status": None}, "status is missing"),
        ({"taskId": 12}, "taskId must be non-empty text"),
        ({"lastError": {"x": 1}}, "lastError must be text or null"),
        ({"type": None}, "type is missing"),
    ],
)
def test_bad_task_state_is_a_payload_error(change: dict[str, object], reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        TaskState.from_json({**FULL_STATE, **change})


def test_dispatch_ack_parses_and_rejects_unknown_status() -> None:
    assert DispatchAck.from_json({"taskId": "t", "status": "running"}) == DispatchAck(
        "t", TaskStatus.RUNNING
    )
    with pytest.raises(PayloadError, match="unknown task status"):
        DispatchAck.from_json({"taskId": "t", "status": "queued"})


def test_envelope_decodes_success_and_error_codes() -> None:
    ok = Envelope.decode(b'{"code": 0, "message": "ok", "data": {"a": 1}}')
    assert ok.ok and ok.data == {"a": 1}
    rejected = Envelope.decode(b'{"code": 7, "message": "busy", "data": null}')
    assert not rejected.ok and rejected.message == "busy"


def test_envelope_rejects_invalid_json_separately() -> None:
    with pytest.raises(InvalidJSON):
        Envelope.decode(b'{"code": 0, "data": {')
    with pytest.raises(InvalidJSON):
        Envelope.decode(b"\xff\xfe")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"[1, 2]", "the answer must be a JSON object"),
        (b'{"message": "ok"}', "code is missing"),
        (b'{"code": "0"}', "code must be a whole number"),
        (b'{"code": false}', "code must be a whole number"),
        (b'{"code": 0, "message": 5}', "message must be text"),
    ],
)
def test_envelope_wrong_shape_is_a_payload_error(content: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason) as caught:
        Envelope.decode(content)
    assert not isinstance(caught.value, InvalidJSON)


def test_agent_hosts_are_consecutive_and_roll_over() -> None:
    hosts = agent_hosts(300)
    assert hosts[:2] == ["127.0.0.2", "127.0.0.3"]
    assert hosts[253] == "127.0.0.255"
    assert hosts[254] == "127.0.1.0"
    assert len(set(hosts)) == 300
