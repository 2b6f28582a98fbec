"""Retry backoff and paced polling: pure schedules, jittered by a caller-owned RNG."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import attrs

from fleetwave.config import Settings


@attrs.frozen(kw_only=True)
class NodeTiming:
    """The knobs a NodeActor runs by, taken from Settings."""

    deadline: float = 600.0
    dispatch_attempts: int = 5
    retry_initial: float = 1.0
    retry_max: float = 30.0
    poll_initial: float = 0.25
    poll_max: float = 10.0
    poll_age_factor: float = 0.02
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
            poll_age_factor=settings.poll_age_factor,
        )


@attrs.define
class PollPacer:
    """One daemon's budget of status queries per second, shared by every node it watches.

    A node's next query waits ``watching / rate`` seconds, so the daemon sends about ``rate``
    queries a second however many nodes are applying, and the interval shrinks as nodes
    finish: the last nodes of a batch, and a lone canary, are watched closely, which is when
    quick detection matters. A batch counts in full from its start, so that its first nodes do
    not spend the budget while the rest are still being dispatched. Two floors keep small
    batches from hammering their agents: the shortest interval, and a fraction of how long the
    node has been applying (a node applying for a minute is asked every few seconds).
    """

    rate: float = 2000.0
    watching: int = 0

    def interval(self, age: float, timing: NodeTiming) -> float:
        paced = max(timing.poll_initial, self.watching / self.rate, age * timing.poll_age_factor)
        return min(timing.poll_max, paced)

    @contextlib.contextmanager
    def share(self, count: int, *, bound: int | None = None) -> Iterator[PollShare]:
        """Count a batch of ``count`` nodes as watched until each finishes or the block ends;
        at most ``bound`` of them at once (a batch under maxInFlightPer: its nodes waiting for
        their turn are not applying)."""
        share = PollShare(self, count, bound)
        self.watching += share.watched
        try:
            yield share
        finally:
            self.watching -= share.watched
            share.remaining = 0


@attrs.define
class PollShare:
    """A batch's part of a PollPacer; each of its nodes calls ``finished`` once."""

    pacer: PollPacer
    remaining: int
    bound: int | None = None
    """At most this many of its nodes are watched at once (None: all that remain)."""

    @property
    def watched(self) -> int:
        return self.remaining if self.bound is None else min(self.remaining, self.bound)

    def interval(self, age: float, timing: NodeTiming) -> float:
        return self.pacer.interval(age, timing)

    def finished(self) -> None:
        if self.remaining > 0:
            before = self.watched
            self.remaining -= 1
            self.pacer.watching -= before - self.watched


class Uniform(Protocol):
    """What jitter draws from: ``random.Random``, or a replay of one (simmodel.py)."""

    def uniform(self, a: float, b: float) -> float: ...


def jittered(value: float, timing: NodeTiming, rng: Uniform) -> float:
    """``value`` spread by ±jitter, so a large batch does not act in lockstep."""
    return value * (1 + rng.uniform(-timing.jitter, timing.jitter))


def retry_delay(attempt: int, timing: NodeTiming, rng: Uniform) -> float:
    """Delay before retry number ``attempt`` (1-based): exponential, capped, jittered."""
    return jittered(min(timing.retry_max, timing.retry_initial * 2 ** (attempt - 1)), timing, rng)
