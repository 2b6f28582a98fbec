"""A TCP proxy on loopback that can go silent: the network between a daemon and PostgreSQL.

``open_proxy(host, port)`` listens on 127.0.0.1 (port 0) and forwards every connection to
``host:port``, both ways. ``freeze()`` stops forwarding without closing anything, as a
network that drops packets would: both sides keep their sockets open and hear nothing, so no
connection error tells either side that something is wrong. ``thaw()`` forwards again
(what was sent meanwhile is then delivered). Everything closes when the block ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from urllib.parse import urlsplit, urlunsplit

import attrs
import trio

CHUNK = 65536


@attrs.define
class Proxy:
    upstream: tuple[str, int]
    port: int = 0
    connections: int = 0
    """Connections accepted so far."""
    forwarded: int = 0
    """Bytes forwarded, both ways."""
    _flowing: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self._flowing.set()

    @property
    def frozen(self) -> bool:
        return not self._flowing.is_set()

    def freeze(self) -> None:
        """Stop forwarding; keep every connection open."""
        if not self.frozen:
            self._flowing = trio.Event()

    def thaw(self) -> None:
        self._flowing.set()

    def url(self, database_url: str) -> str:
        """``database_url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(database_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        while True:
            data = await source.receive_some(CHUNK)
            if not data:
                with trio.move_on_after(1):
                    await sink.send_eof()
                return
            # A frozen network delivers nothing, and what arrived waits until it flows again.
            await self._flowing.wait()
            await sink.send_all(data)
            self.forwarded += len(data)

    async def _serve(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            server = await trio.open_tcp_stream(*self.upstream)
        except OSError:
            await client.aclose()
            return
        async with client, server:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, server)
                    nursery.start_soon(self._pump, server, client)
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # one side went away: the other is closed with it


@asynccontextmanager
async def open_proxy(database_url: str) -> AsyncIterator[Proxy]:
    """A proxy in front of the server of ``database_url``; ``proxy.url(database_url)`` is
    the same database reached through it."""
    parts = urlsplit(database_url)
    assert parts.hostname is not None and parts.port is not None, database_url
    proxy = Proxy((parts.hostname, parts.port))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, proxy._serve, 0, host="127.0.0.1"))
        proxy.port = listeners[0].socket.getsockname()[1]
        try:
            yield proxy
        finally:
            proxy.thaw()
            nursery.cancel_scope.cancel()
