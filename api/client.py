"""An httpx client of the API, for the command line (and scripts written in Python)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import httpx

DEFAULT_API = "http://127.0.0.1:8080"
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 30.0


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


def open_http(
    base_url: str, token: str, *, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT),
        transport=transport,
    )


def _reason(error: httpx.TransportError) -> str:
    match error:
        case httpx.ConnectError():
            return "connection refused or host unknown"
        case httpx.TimeoutException():
            return "timed out"
    return str(error) or type(error).__name__


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
    ) -> Any:
        """The ``data`` of a successful envelope; raises ApiFailure or ApiUnreachable."""
        try:
            response = await self.http.request(method, path, json=body, params=params)
        except httpx.TransportError as error:
            raise ApiUnreachable(str(self.http.base_url), _reason(error)) from None
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
            raise ApiFailure(
                str(document.get("message", "")), document["code"], response.status_code
            )
        return document.get("data")

    async def create_release(self, spec: Mapping[str, object]) -> Any:
        return await self.call("POST", "/api/v1/releases", body=spec)

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
