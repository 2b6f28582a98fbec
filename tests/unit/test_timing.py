"""Retry backoff and paced polling."""

from __future__ import annotations

import random

from fleetwave.actors.timing import NodeTiming, PollPacer, jittered, retry_delay


def test_retry_backoff_doubles_and_is_capped() -> None:
    timing = NodeTiming(retry_initial=1, retry_max=8, jitter=0)
    rng = random.Random(0)
    assert [retry_delay(n, timing, rng) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]


def test_a_lone_node_is_polled_soon_after_dispatch() -> None:
    timing = NodeTiming(poll_initial=0.25, poll_max=10, poll_age_factor=0.05)
    pacer = PollPacer(rate=1000)
    with pacer.share(1) as share:
        assert share.interval(age=0, timing=timing) == 0.25


def test_many_watched_nodes_share_the_query_budget() -> None:
    timing = NodeTiming(poll_initial=0.25, poll_max=10, poll_age_factor=0)
    pacer = PollPacer(rate=1000, watching=5000)
    assert pacer.interval(age=1, timing=timing) == 5  # 5000 nodes at 1000 queries/s
    pacer.watching = 50_000
    assert pacer.interval(age=1, timing=timing) == 10  # capped by poll_max
    pacer.watching = 10
    assert pacer.interval(age=1, timing=timing) == 0.25  # last nodes: watched closely


def test_a_long_apply_is_polled_less_often() -> None:
    timing = NodeTiming(poll_initial=0.25, poll_max=10, poll_age_factor=0.05)
    pacer = PollPacer(rate=1000, watching=1)
    assert pacer.interval(age=60, timing=timing) == 3


def test_a_batch_counts_in_full_until_its_nodes_finish() -> None:
    pacer = PollPacer(rate=1000)
    with pacer.share(3) as share:
        assert pacer.watching == 3
        share.finished()
        share.finished()
        assert pacer.watching == 1
    assert pacer.watching == 0  # the block's end releases what did not finish


def test_a_bounded_share_counts_at_most_its_bound_until_fewer_remain() -> None:
    pacer = PollPacer(rate=1000)
    with pacer.share(5, bound=2) as share:
        assert pacer.watching == 2  # three of them wait for their turn: not applying
        share.finished()
        share.finished()
        share.finished()
        assert pacer.watching == 2
        share.finished()
        assert pacer.watching == 1
    assert pacer.watching == 0


def test_a_batch_share_is_released_even_on_error() -> None:
    pacer = PollPacer(rate=1000)
    try:
        with pacer.share(5) as share:
            share.finished()
            raise RuntimeError("batch cancelled")
    except RuntimeError:
        pass
    assert pacer.watching == 0


def test_jitter_spreads_delays_within_bounds() -> None:
    timing = NodeTiming(jitter=0.1)
    rng = random.Random(1)
    delays = [jittered(1.0, timing, rng) for _ in range(200)]
    assert all(0.9 <= d <= 1.1 for d in delays)
    assert len({round(d, 6) for d in delays}) > 100  # not synchronized
