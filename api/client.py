"""An httpx client of the API, for the command line (and scripts written in Python)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs
import httpx

from fleetwave.api.sse import Message, messages

DEFAULT_API = "http://127.0.0.1:8080"
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 30.0
VERB_TIMEOUT = 120.0
"""A verb's answer waits until it is in effect: up to a dead owner's lease expiry (the API
gives up after 90 s)."""
STREAM_READ_TIMEOUT = 60.0
"""A stream sends at least a keepalive every 15 s; silence this long means it is gone."""


class ClientError(Exception):
    """The API could not answer as asked; ``str()`` is one line for an operator."""


class ApiFailure(ClientError):
    """The API answered with an error envelope (or something that is not an envelope)."""

    def __init__(self, message: str, code: int | None, status: int) -> None:
        super().__init__(message if code is None else f"{message} (code {code})")
        self.message = message
        self.code = code
        self.status = status


class ApiUnreachable(ClientError):
    """No answer at all: nothing listening, DNS, timeout, connection dropped."""

    def __init__(self, base_url: str, reason: str) -> None:
        super().__init__(f"cannot reach the API at {base_url}: {reason}")
        self.base_url = base_url


@attrs.frozen
class ClientTls:
    """How the client verifies the API over HTTPS: the CA that signed the API's certificate
    (None: the system's CAs) and a client certificate and key to present (for an API that
    asks for one)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def context(self) -> ssl.SSLContext:
        """An SSL context (TLS 1.2+); ClientError naming the file that cannot be loaded."""
        try:
            context = ssl.create_default_context(cafile=self.ca)
        except (OSError, ssl.SSLError) as error:
            raise ClientError(
                f"cannot load the API's CA {self.ca} (FLEETWAVE_API_CA): {error}"
            ) from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert is not None:
            try:
                context.load_cert_chain(self.cert, self.key)
            except (OSError, ssl.SSLError) as error:
                raise ClientError(
                    f"cannot load the client certificate {self.cert} with its key "
                    f"(FLEETWAVE_API_CLIENT_CERT, FLEETWAVE_API_CLIENT_KEY): {error}"
                ) from None
        return context


def open_http(
    base_url: str,
    token: str,
    *,
    tls: ClientTls | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT),
        verify=(tls or ClientTls()).context(),
        transport=transport,
    )


def _tls_error(error: BaseException) -> ssl.SSLError | None:
    """The SSL error behind a transport error (the trio backend wraps it twice), if any."""
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None or isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _reason(error: httpx.TransportError, scheme: str) -> str:
    text = str(error)
    tls = _tls_error(error)
    if isinstance(tls, ssl.SSLCertVerificationError):
        return (
            f"TLS: the API's certificate is not trusted ({tls.verify_message}); "
            "set FLEETWAVE_API_CA (or --ca) to the CA that signed it"
        )
    if tls is not None:
        return (
            f"TLS handshake failed: {tls.reason or tls}; an API that asks for a client "
            "certificate needs --cert and --key (FLEETWAVE_API_CLIENT_CERT, _KEY)"
        )
    match error:
        case httpx.ConnectError():
            return "connection refused or host unknown"
        case httpx.TimeoutException():
            return "timed out"
        case httpx.RemoteProtocolError() if scheme == "https":
            # TLS 1.3: a server refusing the client certificate closes after the handshake.
            return (
                f"the server closed the connection ({text}); if it asks for a client "
                "certificate, give --cert and --key (FLEETWAVE_API_CLIENT_CERT, _KEY)"
            )
        case httpx.RemoteProtocolError():
            return f"the server closed the connection ({text}); is it HTTPS (an https:// URL)?"
    return text or type(error).__name__


def _check(response: httpx.Response) -> Any:
    """The ``data`` of a successful envelope; raises ApiFailure for anything else."""
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict) or "code" not in document:
        raise ApiFailure(
            f"unexpected answer from the API: HTTP {response.status_code}",
            None,
            response.status_code,
        )
    if document["code"] != 0 or response.is_error:
        raise ApiFailure(str(document.get("message", "")), document["code"], response.status_code)
    return document.get("data")


@attrs.frozen
class ApiClient:
    http: httpx.AsyncClient

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, object] | None = None,
        params: Mapping[str, str | int] | None = None,
        wait: float | None = None,
    ) -> Any:
        """The ``data`` of a successful envelope; raises ApiFailure or ApiUnreachable."""
        extra: dict[str, Any] = {}
        if wait is not None:
            extra["timeout"] = httpx.Timeout(wait, connect=CONNECT_TIMEOUT)
        try:
            response = await self.http.request(method, path, json=body, params=params, **extra)
        except httpx.TransportError as error:
            raise ApiUnreachable(
                str(self.http.base_url), _reason(error, self.http.base_url.scheme)
            ) from None
        return _check(response)

    async def create_release(self, spec: Mapping[str, object]) -> Any:
        return await self.call("POST", "/api/v1/releases", body=spec)

    async def preview_release(self, spec: Mapping[str, object]) -> Any:
        return await self.call("POST", "/api/v1/releases", body=spec, params={"dryRun": "true"})

    async def list_releases(
        self, *, status: str | None = None, page: int = 1, page_size: int = 20
    ) -> Any:
        params: dict[str, str | int] = {"page": page, "pageSize": page_size}
        if status:
            params["status"] = status
        return await self.call("GET", "/api/v1/releases", params=params)

    async def release(self, release_id: int) -> Any:
        return await self.call("GET", f"/api/v1/releases/{release_id}")

    async def release_events(self, release_id: int, *, after_id: int = 0) -> Any:
        return await self.call(
            "GET", f"/api/v1/releases/{release_id}/events", params={"afterId": after_id}
        )

    async def follow_release(
        self, release_id: int, last_event_id: str | None = None
    ) -> AsyncIterator[Message]:
        """The release's event stream from its first event (or after ``last_event_id``), until
        the server ends it. Raises ApiFailure for an error answer, ApiUnreachable when the
        connection fails or drops."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT, read=STREAM_READ_TIMEOUT)
        path = f"/api/v1/releases/{release_id}/events"
        try:
            async with self.http.stream(
                "GET", path, params={"follow": "true"}, headers=headers, timeout=timeout
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    _check(response)
                async for message in messages(response.aiter_lines()):
                    yield message
        except httpx.TransportError as error:
            raise ApiUnreachable(
                str(self.http.base_url), _reason(error, self.http.base_url.scheme)
            ) from None

    async def list_nodes(self) -> Any:
        return await self.call("GET", "/api/v1/nodes")

    async def add_node(
        self, name: str, main_ip: str, agent_port: int | None = None, *, update: bool = True
    ) -> Any:
        """Register a node; without ``agent_port`` the daemon's default port is used. Without
        ``update`` an existing node of that name is refused (ApiFailure, code 3002)."""
        body: dict[str, Any] = {"name": name, "mainIp": main_ip}
        if agent_port is not None:
            body["agentPort"] = agent_port
        params = None if update else {"ifExists": "refuse"}
        return await self.call("POST", "/api/v1/nodes", body=body, params=params)

    async def node(self, node_id: int) -> Any:
        return await self.call("GET", f"/api/v1/nodes/{node_id}")

    async def update_node(self, node_id: int, changes: Mapping[str, object]) -> Any:
        return await self.call("PATCH", f"/api/v1/nodes/{node_id}", body=changes)

    async def steer(
        self,
        release_id: int,
        verb: str,
        *,
        reason: str = "",
        to_version: int | None = None,
        full: bool = False,
    ) -> Any:
        """pause, resume, cancel, retry, rollback or promote; the answer comes once it is in
        effect."""
        body: dict[str, Any] = {}
        if reason:
            body["reason"] = reason
        if to_version is not None:
            body["toVersion"] = to_version
        if full:
            body["full"] = True
        return await self.call(
            "POST", f"/api/v1/releases/{release_id}/{verb}", body=body, wait=VERB_TIMEOUT
        )

    async def fleet(self) -> Any:
        return await self.call("GET", "/api/v1/fleet")
