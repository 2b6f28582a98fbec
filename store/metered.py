"""A Store that records the count, result and time of every operation it forwards.

Wraps any Store (PostgresStore in the daemon): each public coroutine method is timed and
counted under its own name in ``fleetwave_store_operations_total`` and
``fleetwave_store_operation_seconds``. Methods that run until cancelled (the LISTEN loops)
are forwarded untouched: their duration says nothing about the database.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

import trio

from fleetwave.config import metrics
from fleetwave.store.base import Store
from fleetwave.store.errors import StoreUnavailable

_LONG_RUNNING: Final = frozenset({"listen_releases", "listen_events"})


class MeteredStore:
    """Forwards every attribute to ``inner``; public coroutine methods are measured."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self._wrapped: dict[str, Callable[..., Awaitable[Any]]] = {}

    @property
    def inner(self) -> Store:
        return self._inner

    def __getattr__(self, name: str) -> Any:
        wrapped = self._wrapped.get(name)
        if wrapped is not None:
            return wrapped
        target = getattr(self._inner, name)
        if name.startswith("_") or name in _LONG_RUNNING or not inspect.iscoroutinefunction(target):
            return target
        wrapped = _measured(name, target)
        self._wrapped[name] = wrapped
        return wrapped


def _measured(name: str, target: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    latency = metrics.STORE_LATENCY.labels(name)
    results = {
        result: metrics.STORE_OPERATIONS.labels(name, result)
        for result in ("ok", "error", "unavailable", "cancelled")
    }

    @functools.wraps(target)
    async def measured(*args: Any, **kwargs: Any) -> Any:
        started = trio.current_time()
        result = "error"
        try:
            value = await target(*args, **kwargs)
            result = "ok"
            return value
        except StoreUnavailable:
            result = "unavailable"
            raise
        except trio.Cancelled:
            result = "cancelled"
            raise
        finally:
            latency.observe(trio.current_time() - started)
            results[result].inc()

    return measured


def metered(store: Store) -> Store:
    """``store`` with its operations measured (see MeteredStore)."""
    return cast(Store, MeteredStore(store))
