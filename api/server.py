"""Serving the API with hypercorn's trio worker, inside the daemon's own trio program."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import cast

import structlog
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework
from starlette.applications import Starlette

from fleetwave.config.api_tls import ApiTls
from fleetwave.config.startup import StartupError

log = structlog.get_logger("fleetwave.api")

GRACEFUL_TIMEOUT = 5.0
"""After a shutdown request, requests in flight get this long before they are cancelled."""


def hypercorn_config(bind: str, tls: ApiTls | None = None) -> Config:
    config = Config()
    config.bind = [bind]
    if tls is not None:
        # TLS 1.2 at least (hypercorn's context sets it); with a client CA, a client without a
        # certificate from it fails the handshake before any request is read.
        config.certfile, config.keyfile = tls.cert, tls.key
        if tls.client_ca is not None:
            config.ca_certs = tls.client_ca
            config.verify_mode = ssl.CERT_REQUIRED
    # Requests are logged by the app itself (one structlog line each); hypercorn only speaks
    # up about its own trouble.
    config.accesslog = None
    quiet = logging.getLogger("fleetwave.api.hypercorn")
    quiet.setLevel(logging.WARNING)
    config.errorlog = quiet
    config.graceful_timeout = GRACEFUL_TIMEOUT
    config.include_server_header = False
    return config


async def serve_api(
    app: Starlette,
    bind: str,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    tls: ApiTls | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``bind`` ("HOST:PORT", port 0 picks a free one) until cancelled, over
    HTTPS when ``tls`` is given.

    Reports the address actually bound ("HOST:PORT") through ``task_status`` once listening.
    When ``shutdown_trigger`` returns, stops accepting, lets requests in flight finish for at
    most GRACEFUL_TIMEOUT seconds, then returns.
    """
    config = hypercorn_config(bind, tls)
    # Starlette's ASGI types are looser than hypercorn's; the protocol is the same.
    framework = cast(ASGIFramework, app)
    async with trio.open_nursery() as nursery:
        try:
            binds: list[str] = await nursery.start(
                partial(serve, framework, config, shutdown_trigger=shutdown_trigger)
            )
        except* OSError as group:
            # Binding is the only thing that happens before the server reports started.
            error: BaseException = group
            while isinstance(error, BaseExceptionGroup):
                error = error.exceptions[0]
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise StartupError(f"cannot listen on {bind} for the API: {reason}") from None
        address = binds[0].partition("://")[2]
        scheme = "http" if tls is None else "https"
        log.info(
            "api.listening",
            address=address,
            url=f"{scheme}://{address}",
            client_certificates=tls is not None and tls.client_ca is not None,
        )
        task_status.started(address)
    log.info("api.stopped", address=address)
