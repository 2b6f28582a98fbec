"""Retry backoff and adaptive polling schedules."""

from __future__ import annotations

import itertools
import random

from actors.timing import NodeTiming, poll_delays, retry_delay


def test_retry_backoff_doubles_and_is_capped() -> None:
    timing = NodeTiming(retry_initial=1, retry_max=8, jitter=0)
    rng = random.Random(0)
    assert [retry_delay(n, timing, rng) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]


def test_polling_starts_soon_then_backs_off_to_the_cap() -> None:
    timing = NodeTiming(poll_initial=0.5, poll_max=2, poll_factor=2, jitter=0)
    delays = list(itertools.islice(poll_delays(timing, random.Random(0)), 5))
    assert delays == [0.5, 1, 2, 2, 2]


def test_jitter_spreads_polls_within_bounds() -> None:
    timing = NodeTiming(poll_initial=1, poll_max=1, jitter=0.1)
    delays = list(itertools.islice(poll_delays(timing, random.Random(1)), 200))
    assert all(0.9 <= d <= 1.1 for d in delays)
    assert len({round(d, 6) for d in delays}) > 100  # not synchronized
