"""Retry backoff and adaptive polling: pure schedules, jittered by a caller-owned RNG."""

from __future__ import annotations

import random
from collections.abc import Iterator

import attrs

from config import Settings


@attrs.frozen(kw_only=True)
class NodeTiming:
    """The knobs a NodeActor runs by, taken from Settings."""

    deadline: float = 600.0
    dispatch_attempts: int = 5
    retry_initial: float = 1.0
    retry_max: float = 30.0
    poll_initial: float = 1.0
    poll_max: float = 2.0
    poll_factor: float = 1.5
    jitter: float = 0.1

    @classmethod
    def from_settings(cls, settings: Settings) -> NodeTiming:
        return cls(
            deadline=settings.node_deadline_sec,
            dispatch_attempts=settings.dispatch_attempts,
            retry_initial=settings.retry_initial_sec,
            retry_max=settings.retry_max_sec,
            poll_initial=settings.poll_initial_sec,
            poll_max=settings.poll_max_sec,
            poll_factor=settings.poll_factor,
        )


def _jittered(value: float, jitter: float, rng: random.Random) -> float:
    return value * (1 + rng.uniform(-jitter, jitter))


def retry_delay(attempt: int, timing: NodeTiming, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (1-based): exponential, capped, jittered."""
    base = min(timing.retry_max, timing.retry_initial * 2 ** (attempt - 1))
    return _jittered(base, timing.jitter, rng)


def poll_delays(timing: NodeTiming, rng: random.Random) -> Iterator[float]:
    """Delays between status queries: soon after dispatch, then backing off to poll_max.

    Jitter spreads the queries of a large batch so agents and the daemon see a steady
    stream instead of synchronized bursts.
    """
    delay = timing.poll_initial
    while True:
        yield _jittered(delay, timing.jitter, rng)
        delay = min(timing.poll_max, delay * timing.poll_factor)
