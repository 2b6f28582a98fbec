"""Classifying agent failures: the kind, whether a retry may help, and the operator's words."""

from __future__ import annotations

import errno
import ssl

import httpx
import pytest

from fleetwave.agent.client import AgentClient, RequestTrace, classify_transport_error
from fleetwave.agent.errors import AgentError, FailureKind
from fleetwave.agent.protocol import AgentAddress, DispatchRequest

AGENT = AgentAddress("127.0.0.3", 8443)
TIMEOUTS = httpx.Timeout(60.0, connect=15.0)
REQUEST = DispatchRequest(task_id="apply_config_127.0.0.3_4", version=4)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (AgentError.unreachable(AGENT, "connection refused"), True),
        (AgentError.timeout(AGENT, 60), True),
        (AgentError.http_status(AGENT, 500), True),
        (AgentError.http_status(AGENT, 503), True),
        (AgentError.http_status(AGENT, 429), True),
        (AgentError.http_status(AGENT, 400), False),
        (AgentError.http_status(AGENT, 404), False),
        (AgentError.tls(AGENT, "certificate verify failed"), False),
        (AgentError.invalid_json(AGENT), False),
        (AgentError.bad_payload(AGENT, "x"), False),
        (AgentError.rejected(AGENT, "the task", 7, "busy"), False),
        (AgentError.task_failed(AGENT, "t", "disk full"), False),
        (AgentError.deadline(AGENT, "t", 600), False),
        (AgentError.unknown_task(AGENT, "t"), False),
        (AgentError(FailureKind.HTTP_STATUS, "no status known"), False),
    ],
)
def test_transient_only_for_unreachable_timeout_5xx_and_429(
    error: AgentError, transient: bool
) -> None:
    assert error.transient is transient


def test_messages_name_the_agent_in_plain_words() -> None:
    assert str(AgentError.unreachable(AGENT, "connection refused")) == (
        "agent 127.0.0.3:8443 unreachable: connection refused"
    )
    assert str(AgentError.timeout(AGENT, 60.0)) == "agent 127.0.0.3:8443 did not answer within 60s"
    assert str(AgentError.http_status(AGENT, 500)) == "agent 127.0.0.3:8443 answered HTTP 500"
    assert str(AgentError.invalid_json(AGENT)) == "agent 127.0.0.3:8443 sent invalid JSON"
    assert str(AgentError.rejected(AGENT, "the task", 7, "busy")) == (
        "agent 127.0.0.3:8443 rejected the task: code 7: 'busy'"
    )
    assert str(AgentError.tls(AGENT, "certificate verify failed")) == (
        "TLS handshake with agent 127.0.0.3:8443 failed: certificate verify failed"
    )
    assert str(AgentError.task_failed(AGENT, "t1", "disk full")) == (
        "agent 127.0.0.3:8443 reported task t1 failed: 'disk full'"
    )


def test_error_keeps_kind_message_and_status() -> None:
    error = AgentError.http_status(AGENT, 502, "bad gateway")
    assert error.kind is FailureKind.HTTP_STATUS
    assert error.status == 502
    assert error.message == str(error) == "agent 127.0.0.3:8443 answered HTTP 502: 'bad gateway'"


def test_text_from_the_agent_is_flattened_and_clipped() -> None:
    error = AgentError.rejected(AGENT, "the task", 9, "line one\nline two " + "x" * 500)
    assert "\n" not in str(error)
    assert len(str(error)) < 300


def _linked(outer: httpx.TransportError, cause: BaseException) -> httpx.TransportError:
    outer.__cause__ = cause
    return outer


def test_refused_connection_is_unreachable() -> None:
    error = classify_transport_error(
        AGENT,
        _linked(
            httpx.ConnectError("all attempts failed"),
            ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        ),
        TIMEOUTS,
    )
    assert error.kind is FailureKind.UNREACHABLE
    assert str(error) == "agent 127.0.0.3:8443 unreachable: connection refused"


def test_refusal_inside_an_exception_group_is_found() -> None:
    group = ExceptionGroup(
        "attempts", [ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")]
    )
    error = classify_transport_error(
        AGENT, _linked(httpx.ConnectError("failed"), OSError("all failed")), TIMEOUTS
    )
    assert error.kind is FailureKind.UNREACHABLE
    error = classify_transport_error(AGENT, _linked(httpx.ConnectError("failed"), group), TIMEOUTS)
    assert str(error).endswith("connection refused")


def test_certificate_failure_is_tls_and_says_why() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_code = 20
    verify.verify_message = "unable to get local issuer certificate"
    error = classify_transport_error(
        AGENT, _linked(httpx.ConnectError("handshake"), verify), TIMEOUTS
    )
    assert error.kind is FailureKind.TLS
    assert str(error).startswith(
        "TLS handshake with agent 127.0.0.3:8443 failed: certificate verify failed: "
        "unable to get local issuer certificate"
    )
    assert not error.transient


def test_connect_timeout_is_unreachable_and_read_timeout_is_timeout() -> None:
    connect = classify_transport_error(AGENT, httpx.ConnectTimeout("slow"), TIMEOUTS)
    assert connect.kind is FailureKind.UNREACHABLE
    assert str(connect) == "agent 127.0.0.3:8443 unreachable: no connection within 15s"
    read = classify_transport_error(AGENT, httpx.ReadTimeout("slow"), TIMEOUTS)
    assert read.kind is FailureKind.TIMEOUT
    assert str(read) == "agent 127.0.0.3:8443 did not answer within 60s"


def test_connection_lost_mid_answer_is_unreachable() -> None:
    error = classify_transport_error(
        AGENT, httpx.RemoteProtocolError("Server disconnected"), TIMEOUTS
    )
    assert error.kind is FailureKind.UNREACHABLE
    assert error.transient


# Fixed answers through httpx.MockTransport: the client's reading of each envelope shape.


async def _dispatch_answered(status: int, content: bytes) -> AgentError:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, content=content))
    async with httpx.AsyncClient(transport=transport) as http:
        client = AgentClient(http, request_timeout=5)
        with pytest.raises(AgentError) as caught:
            await client.dispatch(AGENT, REQUEST)
        assert client.requests == 1
    return caught.value


async def test_nonzero_code_is_rejected_with_the_agents_message() -> None:
    error = await _dispatch_answered(200, b'{"code": 7, "message": "disk busy", "data": null}')
    assert error.kind is FailureKind.REJECTED
    assert str(error) == (
        "agent 127.0.0.3:8443 rejected the task apply_config_127.0.0.3_4: code 7: 'disk busy'"
    )


async def test_http_error_carries_status_and_envelope_message() -> None:
    error = await _dispatch_answered(503, b'{"code": 5001, "message": "draining", "data": null}')
    assert (error.kind, error.status, error.transient) == (FailureKind.HTTP_STATUS, 503, True)
    assert str(error) == "agent 127.0.0.3:8443 answered HTTP 503: 'draining'"


async def test_ack_for_another_task_is_a_bad_payload() -> None:
    error = await _dispatch_answered(
        200, b'{"code": 0, "message": "ok", "data": {"taskId": "other", "status": "pending"}}'
    )
    assert error.kind is FailureKind.BAD_PAYLOAD
    assert "answered for task 'other'" in str(error)


async def test_missing_data_is_a_bad_payload() -> None:
    error = await _dispatch_answered(200, b'{"code": 0, "message": "ok"}')
    assert error.kind is FailureKind.BAD_PAYLOAD
    assert (
        str(error)
        == "agent 127.0.0.3:8443 sent an invalid answer: data must be a JSON object, got None"
    )


async def test_oversized_answer_is_a_bad_payload() -> None:
    error = await _dispatch_answered(200, b" " * (2 << 20))
    assert error.kind is FailureKind.BAD_PAYLOAD


async def test_client_rejects_non_positive_timeout() -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(ValueError, match="request_timeout"):
            AgentClient(http, request_timeout=0)


async def test_broken_write_after_a_fresh_handshake_means_our_certificate_was_refused() -> None:
    trace = RequestTrace()
    await trace.event("connection.start_tls.complete", {"return_value": None})
    write = httpx.WriteError("broken pipe")
    await trace.event("http11.send_request_body.failed", {"exception": write})
    error = classify_transport_error(AGENT, httpx.ReadError(""), TIMEOUTS, trace=trace)
    assert error.kind is FailureKind.TLS
    assert "refused our client certificate" in str(error)
    # A busy agent's idle timeout looks the same: retried before it is taken as a refusal.
    assert error.transient
    assert not AgentError.tls(AGENT, "certificate verify failed").transient


async def test_broken_reused_connection_is_unreachable_not_tls() -> None:
    trace = RequestTrace()
    await trace.event("http11.send_request_body.failed", {"exception": httpx.WriteError("x")})
    error = classify_transport_error(AGENT, httpx.ReadError(""), TIMEOUTS, trace=trace)
    assert error.kind is FailureKind.UNREACHABLE


async def test_tls_alert_swallowed_by_httpx_is_still_found_in_the_trace() -> None:
    trace = RequestTrace()
    alert = ssl.SSLError(1, "alert")
    alert.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    write = httpx.WriteError("alert")
    write.__cause__ = alert
    await trace.event("http11.send_request_body.failed", {"exception": write})
    error = classify_transport_error(AGENT, httpx.ReadError(""), TIMEOUTS, trace=trace)
    assert error.kind is FailureKind.TLS
    assert str(error).endswith("tlsv13 alert certificate required")
