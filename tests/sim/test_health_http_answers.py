"""The HTTP health check's probe against hostile answers (actors/health.py), in process: each
is a failure with a reason, never an exception, and an answer is read only so far."""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import httpx
import trio

from fleetwave.actors.health import ANSWER_MAX, HealthReport, HealthWatcher
from fleetwave.store.strategy import validate_health_checks

URL = "http://health.test/health"
[CHECK] = validate_health_checks([{"name": "edge", "http": {"url": URL}, "timeout": 2}])


async def probe(app: Any) -> str | None:
    send, _ = trio.open_memory_channel[HealthReport](0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        return await HealthWatcher(CHECK, URL, http, send).probe()


def answering(*chunks: bytes, status: int = 200) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


async def test_an_answer_larger_than_the_cap_is_a_failure_read_no_further() -> None:
    """A server on loopback sending a body without end (in process, httpx would collect the
    whole answer before handing it over): the probe stops reading past the cap."""
    sent = 0

    async def endless(stream: trio.SocketStream) -> None:
        nonlocal sent
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"1000\r\n" + b" " * 4096 + b"\r\n"
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                await stream.send_all(chunk)
                sent += 4096

    async with trio.open_nursery() as nursery:
        serving = functools.partial(trio.serve_tcp, endless, 0, host="127.0.0.1")
        [listener] = await nursery.start(serving)
        port = listener.socket.getsockname()[1]
        url = f"http://127.0.0.1:{port}/health"
        send, _ = trio.open_memory_channel[HealthReport](0)
        async with httpx.AsyncClient() as http:
            said = await HealthWatcher(CHECK, url, http, send).probe()
        nursery.cancel_scope.cancel()

    assert said == f"HTTP 200: the answer is larger than {ANSWER_MAX} bytes"
    assert sent < 64 * ANSWER_MAX


async def test_an_answer_nested_deeper_than_the_parser_reads_is_a_failure() -> None:
    assert await probe(answering(b"[" * 10_000)) == "the answer is not a JSON object"
    assert await probe(answering(b"[" * 10_000, status=503)) == "HTTP 503"


async def test_a_healthy_answer_in_chunks_is_healthy() -> None:
    assert await probe(answering(b'{"healthy"', b": true}")) is None
    assert await probe(answering(b'{"healthy": false, "reason": "5xx"}')) == "5xx"
