"""AgentClient: dispatch tasks to edge agents and query them, over one pooled mTLS client.

Trio-flavored. Every call is bounded by its own ``trio.fail_after`` (so the bound holds for
any transport, including the in-process simulated fleet and trio's autojump clock) and every
failure leaves as one classified ``AgentError``.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import itertools
import math
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import quote

import attrs
import httpx
import trio

from fleetwave.agent.errors import AgentError, quote_remote
from fleetwave.agent.protocol import (
    DISPATCH_PATH,
    TASKS_PATH,
    AgentAddress,
    DispatchAck,
    DispatchRequest,
    Envelope,
    InvalidJSON,
    PayloadError,
    TaskState,
)
from fleetwave.config import Settings, SettingsError, metrics

MAX_ANSWER_BYTES = 1 << 20
"""An agent's answer is a few hundred bytes; anything past this is not the protocol."""

USER_AGENT = "fleetwave"

_REQUEST_HEADERS = {"user-agent": USER_AGENT, "accept": "application/json"}
"""No Accept-Encoding: answers are read as sent, a few hundred bytes."""

# Agent URLs parsed lately: a node is asked for its task's state at the same URL again and
# again, and httpx parses and validates a URL string in full each time it is given one (a
# tenth of the daemon's CPU in a 10,000-node release). One entry is about 1 KiB.
_URL_CACHE_SIZE = 16384


@functools.lru_cache(maxsize=_URL_CACHE_SIZE)
def _parsed_url(url: str) -> httpx.URL:
    return httpx.URL(url)


def _transport_of(http: httpx.AsyncClient) -> httpx.AsyncBaseTransport:
    """The client's own transport: the pool it was built with (build_http_client), or the
    in-process simulated fleet."""
    transport = getattr(http, "_transport", None)
    if not isinstance(transport, httpx.AsyncBaseTransport):
        raise TypeError("this httpx version keeps its transport elsewhere")
    return transport


def client_ssl_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """TLS 1.2+, the agent's certificate verified against the private CA ``ca`` (hostname
    checked, IP SANs included), and the control plane's client certificate presented."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as error:
        raise SettingsError(
            Settings.env_name("control_ca"),
            f"file {ca} is not a usable PEM CA certificate ({_ssl_reason(error)})",
        ) from None
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as error:
        raise SettingsError(
            f"{Settings.env_name('control_cert')}/{Settings.env_name('control_key')}",
            f"files {cert} and {key} are not a matching PEM certificate and key "
            f"({_ssl_reason(error)})",
        ) from None
    return context


def build_http_client(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The one pooled HTTP client of a daemon.

    Mutual TLS from CONTROL_CERT/KEY/CA through AgentPoolTransport (keep-alive connections,
    at most ``agent_max_connections`` requests in flight) unless ``transport`` is given (the
    in-process simulated fleet). Proxies from the environment are ignored: agent traffic
    goes direct.
    """
    timeout = httpx.Timeout(
        settings.agent_request_timeout_sec, connect=settings.agent_connect_timeout_sec
    )
    headers = {"user-agent": USER_AGENT}
    if transport is not None:
        return httpx.AsyncClient(
            transport=transport, timeout=timeout, headers=headers, trust_env=False
        )
    cert, key, ca = settings.require_mtls()
    return httpx.AsyncClient(
        transport=AgentPoolTransport(
            client_ssl_context(cert, key, ca), max_connections=settings.agent_max_connections
        ),
        timeout=timeout,
        headers=headers,
        trust_env=False,
    )


PER_AGENT_CONNECTIONS = 4
"""Concurrent connections to one agent (one node is polled by one task; a few suffice)."""
CONNECT_PARALLEL = 64
"""Requests opening a new connection at once (a TLS handshake each, on both sides). More
in parallel opens them no sooner: handshakes are CPU, and a thousand at once on a busy
machine outlast the connect timeout and are all lost together."""


@attrs.define
class _AgentPool:
    transport: httpx.AsyncHTTPTransport
    active: int = 0
    idle_since: float = -math.inf
    """When its last request ended (its connection is then kept for keepalive_expiry)."""


class AgentPoolTransport(httpx.AsyncBaseTransport):
    """Mutual TLS connections to many agents: one small keep-alive pool per agent.

    httpcore's single pool rescans every connection for every request (quadratic in the
    number of open connections), which collapses with thousands of agents. Here each agent
    has its own pool of at most PER_AGENT_CONNECTIONS (one kept idle). ``max_connections``
    bounds the requests in flight across all agents: a request is sent only by a task that
    holds one of that many slots (``slot()``, which AgentClient takes before its request
    timeout starts, so a wait for a local slot is never mistaken for a slow agent; other
    callers get one for the life of their response). Once
    more than ``max_connections`` agents have a pool, the pools of the least recently used
    idle agents are closed, so open sockets stay below about twice ``max_connections``.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        max_connections: int,
        max_connecting: int = CONNECT_PARALLEL,
        keepalive_expiry: float = 5.0,
    ) -> None:
        self._ssl_context = ssl_context
        self._keepalive_expiry = keepalive_expiry
        self._max_pools = max_connections
        self._slots = trio.Semaphore(max_connections)
        self._connects = trio.Semaphore(max_connecting)
        self._holders: set[trio.lowlevel.Task] = set()
        self._pools: collections.OrderedDict[tuple[str, str, int | None], _AgentPool] = (
            collections.OrderedDict()
        )

    @contextlib.asynccontextmanager
    async def slot(self, url: httpx.URL | None = None) -> AsyncIterator[None]:
        """Hold one of the ``max_connections`` request slots and, when the request to
        ``url`` will need a new connection, one of the ``max_connecting`` connect permits.
        Waiting for either is local: nothing has been sent yet."""
        task = trio.lowlevel.current_task()
        async with self._slots:
            connecting = url is not None and self._needs_connection(url)
            async with self._connects if connecting else contextlib.nullcontext():
                self._holders.add(task)
                try:
                    yield
                finally:
                    self._holders.discard(task)

    def _needs_connection(self, url: httpx.URL) -> bool:
        pool = self._pools.get((url.scheme, url.host, url.port))
        if pool is None or pool.active > 0:
            return True
        return trio.current_time() - pool.idle_since >= self._keepalive_expiry

    def _pool(self, url: httpx.URL) -> _AgentPool:
        key = (url.scheme, url.host, url.port)
        pool = self._pools.get(key)
        if pool is None:
            pool = _AgentPool(
                httpx.AsyncHTTPTransport(
                    verify=self._ssl_context,
                    trust_env=False,
                    limits=httpx.Limits(
                        max_connections=PER_AGENT_CONNECTIONS,
                        max_keepalive_connections=1,
                        keepalive_expiry=self._keepalive_expiry,
                    ),
                )
            )
            self._pools[key] = pool
        else:
            self._pools.move_to_end(key)
        return pool

    def _take_idle_surplus(self) -> list[_AgentPool]:
        """Remove the least recently used idle pools beyond the limit, all at once and
        without a checkpoint: other tasks may evict (and await) at the same time, and each
        pool is then closed by the one task that removed it."""
        surplus = len(self._pools) - self._max_pools
        if surplus <= 0:
            return []
        idle = list(itertools.islice((k for k, p in self._pools.items() if p.active == 0), surplus))
        return [self._pools.pop(key) for key in idle]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # A caller outside slot() (a plain client.get) holds a slot until its body is closed.
        own_slot = trio.lowlevel.current_task() not in self._holders
        if own_slot:
            await self._slots.acquire()
        pool = self._pool(request.url)
        pool.active += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                pool.active -= 1
                pool.idle_since = trio.current_time()
                if own_slot:
                    self._slots.release()

        try:
            evicted = self._take_idle_surplus()
            if evicted:
                with trio.move_on_after(1, shield=True):
                    for old in evicted:
                        await old.transport.aclose()
            response = await pool.transport.handle_async_request(request)
        except BaseException:
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_ReleasingStream(response.stream, release),
            extensions=response.extensions,
        )

    @property
    def pools(self) -> int:
        """Agents with a pool (open or idle connections) now."""
        return len(self._pools)

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), collections.OrderedDict()
        for pool in pools:
            await pool.transport.aclose()


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that marks its pool idle (and frees its slot) when closed."""

    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._release()


# Looked up once: a label lookup costs as much as the recording itself.
_DISPATCH_LATENCY = metrics.AGENT_LATENCY.labels("dispatch")
_STATUS_LATENCY = metrics.AGENT_LATENCY.labels("status")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.define
class AgentClient:
    """Trio-flavored calls to agents. Safe to share between any number of tasks."""

    http: httpx.AsyncClient
    request_timeout: float = attrs.field(kw_only=True, validator=_positive)
    requests: int = attrs.field(default=0, init=False)
    """Requests sent, for benchmarks."""

    async def dispatch(self, address: AgentAddress, request: DispatchRequest) -> DispatchAck:
        """POST /tasks/dispatch. Idempotent on the agent for the same taskId."""
        started = trio.current_time()
        try:
            return await self._dispatch(address, request)
        except AgentError as error:
            metrics.AGENT_ERRORS.labels("dispatch", error.kind.value).inc()
            raise
        finally:
            _DISPATCH_LATENCY.observe(trio.current_time() - started)

    async def _dispatch(self, address: AgentAddress, request: DispatchRequest) -> DispatchAck:
        status, content = await self._call(
            address, "POST", DISPATCH_PATH, json_body=request.to_json()
        )
        data = self._data(address, status, content, f"the task {request.task_id}")
        try:
            ack = DispatchAck.from_json(data)
        except PayloadError as error:
            raise AgentError.bad_payload(address, str(error)) from None
        if ack.task_id != request.task_id:
            raise AgentError.bad_payload(
                address,
                f"answered for task {quote_remote(ack.task_id)}, dispatched {request.task_id}",
            )
        return ack

    async def query(self, address: AgentAddress, task_id: str) -> TaskState | None:
        """GET /tasks/{taskId}. None when the agent answers 404: it does not know the task."""
        started = trio.current_time()
        try:
            return await self._query(address, task_id)
        except AgentError as error:
            metrics.AGENT_ERRORS.labels("status", error.kind.value).inc()
            raise
        finally:
            _STATUS_LATENCY.observe(trio.current_time() - started)

    async def _query(self, address: AgentAddress, task_id: str) -> TaskState | None:
        status, content = await self._call(address, "GET", TASKS_PATH + quote(task_id, safe=""))
        if status == 404:
            return None
        data = self._data(address, status, content, f"the query for task {task_id}")
        try:
            state = TaskState.from_json(data)
        except PayloadError as error:
            raise AgentError.bad_payload(address, str(error)) from None
        if state.task_id != task_id:
            raise AgentError.bad_payload(
                address, f"answered for task {quote_remote(state.task_id)}, asked for {task_id}"
            )
        return state

    async def _call(
        self, address: AgentAddress, method: str, path: str, *, json_body: Any = None
    ) -> tuple[int, bytes]:
        self.requests += 1
        trace = RequestTrace()
        request = httpx.Request(
            method,
            _parsed_url(address.base_url + path),
            headers=_REQUEST_HEADERS,
            json=json_body,
            extensions={"timeout": self.http.timeout.as_dict(), "trace": trace.event},
        )
        transport = _transport_of(self.http)
        async with _request_slot(transport, request.url):
            return await self._send(address, transport, request, trace)

    async def _send(
        self,
        address: AgentAddress,
        transport: httpx.AsyncBaseTransport,
        request: httpx.Request,
        trace: RequestTrace,
    ) -> tuple[int, bytes]:
        try:
            with trio.fail_after(self.request_timeout):
                # Straight to the client's transport (its connection pool): the protocol uses
                # none of the client's cookie, auth, redirect or hook layers, and they cost
                # twice what the call itself does (measured 97 µs against 33 µs a request
                # through the in-process fleet).
                response = await transport.handle_async_request(request)
                try:
                    content = bytearray()
                    assert isinstance(response.stream, httpx.AsyncByteStream)
                    async for chunk in response.stream:
                        content += chunk
                        if len(content) > MAX_ANSWER_BYTES:
                            raise AgentError.bad_payload(
                                address, f"answer larger than {MAX_ANSWER_BYTES} bytes"
                            )
                finally:
                    await response.aclose()
                return response.status_code, bytes(content)
        except trio.TooSlowError:
            raise AgentError.timeout(address, self.request_timeout) from None
        except httpx.TransportError as error:
            raise classify_transport_error(
                address, error, self.http.timeout, trace=trace
            ) from error

    @staticmethod
    def _data(address: AgentAddress, status: int, content: bytes, what: str) -> object:
        """The ``data`` of a successful envelope, or the classified error."""
        if status != 200:
            detail: str | None = None
            with contextlib.suppress(PayloadError):
                detail = Envelope.decode(content).message or None
            raise AgentError.http_status(address, status, detail)
        try:
            answer = Envelope.decode(content)
        except InvalidJSON:
            raise AgentError.invalid_json(address) from None
        except PayloadError as error:
            raise AgentError.bad_payload(address, str(error)) from None
        if not answer.ok:
            raise AgentError.rejected(address, what, answer.code, answer.message)
        return answer.data


def _request_slot(
    transport: httpx.AsyncBaseTransport, url: httpx.URL
) -> AbstractAsyncContextManager[None]:
    """The pool's request slot, taken before the request timeout starts; other transports
    (the in-process fleet) have no cap."""
    if isinstance(transport, AgentPoolTransport):
        return transport.slot(url)
    return contextlib.nullcontext()


@attrs.define
class RequestTrace:
    """What httpcore reported while sending one request (its ``trace`` extension).

    httpcore swallows a failed request write (to read an early answer) and then reports only
    the broken read; the trace keeps the write's cause. It also tells whether this request
    opened its connection: TLS 1.3 completes the client's side of the handshake before the
    agent checks our certificate, so an agent refusing it shows as a connection that breaks
    right after the handshake, before any answer.
    """

    failures: list[BaseException] = attrs.field(factory=list)
    handshake_done: bool = False
    answer_started: bool = False

    async def event(self, name: str, info: dict[str, Any]) -> None:
        if name == "connection.start_tls.complete":
            self.handshake_done = True
        elif name == "http11.receive_response_headers.complete":
            self.answer_started = True
        failure = info.get("exception")
        if name.endswith(".failed") and isinstance(failure, BaseException):
            self.failures.append(failure)


def classify_transport_error(
    address: AgentAddress,
    error: httpx.TransportError,
    timeout: httpx.Timeout,
    *,
    trace: RequestTrace | None = None,
) -> AgentError:
    """An httpx transport failure, in the operator's words."""
    trace = trace or RequestTrace()
    links = [link for root in (error, *trace.failures) for link in _chain(root)]
    tls = next((e for e in links if isinstance(e, ssl.SSLError)), None)
    if tls is not None:
        return AgentError.tls(address, _tls_reason(tls))
    if (
        trace.handshake_done
        and not trace.answer_started
        and isinstance(error, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError)
    ):
        # Also what an agent too busy to read our request in time does (its idle timeout
        # runs from the handshake): retried, and reported as a refusal if it stays so.
        return AgentError.tls(
            address,
            "the agent refused our client certificate (CONTROL_CERT) or dropped the "
            "connection: it closed the connection right after the handshake",
            retry=True,
        )
    if isinstance(error, httpx.ConnectTimeout):
        return AgentError.unreachable(address, f"no connection within {_limit(timeout.connect)}")
    if isinstance(error, httpx.PoolTimeout):
        # Every connection to this agent was busy: nothing was sent.
        return AgentError.unreachable(
            address, f"no free connection to it within {_limit(timeout.pool)} (nothing sent)"
        )
    if isinstance(error, httpx.TimeoutException):
        return AgentError.timeout(address, timeout.read)
    if isinstance(error, httpx.ConnectError):
        return AgentError.unreachable(address, _os_reason(error))
    if isinstance(error, httpx.NetworkError | httpx.RemoteProtocolError):
        if trace.answer_started:
            return AgentError.unreachable(
                address, f"connection lost in the middle of its answer ({_plain(error)})"
            )
        return AgentError.unreachable(address, f"connection lost: {_os_reason(error)}")
    return AgentError.unreachable(address, _os_reason(error))


def _limit(seconds: float | None) -> str:
    return "the time limit" if seconds is None else f"{seconds:g}s"


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error, its causes and contexts, and members of exception groups among them."""
    seen: set[int] = set()
    queue: list[BaseException] = [error]
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            queue.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                queue.append(linked)


_OS_REASONS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connection timed out",
    errno.EPIPE: "connection closed",
}


def _errno_reason(error: BaseException) -> str | None:
    for link in _chain(error):
        if isinstance(link, OSError) and link.errno is not None:
            return _OS_REASONS.get(link.errno) or (link.strerror or str(link)).lower()
    return None


def _os_reason(error: BaseException) -> str:
    reason = _errno_reason(error)
    if reason is not None:
        return reason
    if isinstance(error, httpx.RemoteProtocolError):
        return "the agent closed the connection without answering"
    return _library_words(error)


def _plain(error: BaseException) -> str:
    """The OS's reason, else the library's words (h11 names what broke in the answer)."""
    return _errno_reason(error) or _library_words(error)


def _library_words(error: BaseException) -> str:
    """httpcore's and h11's text, which may carry the agent's bytes: clipped and quoted."""
    text = str(error).strip()
    return quote_remote(text) if text else type(error).__name__


def _tls_reason(error: ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or "unknown reason"
        reason = f"certificate verify failed: {detail}"
        if error.verify_code in (2, 19, 20, 21):
            # unable to get (local) issuer / self-signed in chain: not our CA.
            reason += " (the agent's certificate is not signed by CONTROL_CA)"
        return reason
    code = (error.reason or "").upper()
    if "ALERT" in code and ("CERTIFICATE" in code or "UNKNOWN_CA" in code):
        alert = code.lower().replace("_", " ")
        return f"the agent refused our client certificate (CONTROL_CERT): {alert}"
    return _ssl_reason(error)


def _ssl_reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason).lower().replace("_", " ")
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return type(error).__name__
