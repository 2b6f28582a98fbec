"""The bench's figures: ideal time, percentiles, ratio, per-batch overhead; one tiny run."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from fleetwave import bench
from fleetwave.bench import ReleaseTimes, Sample
from fleetwave.config import load_settings


def test_ideal_time_sums_the_slowest_node_of_each_batch() -> None:
    assert bench.ideal_time({1: [9.5], 2: [5.0, 14.0, 7.5], 3: [1.0, 2.0]}) == 9.5 + 14.0 + 2.0


def test_ideal_time_of_nothing_is_zero() -> None:
    assert bench.ideal_time({}) == 0


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [10.0, 1.0, 4.0, 2.0, 3.0]
    assert bench.percentile(values, 50) == 3.0
    assert bench.percentile(values, 0) == 1.0
    assert bench.percentile(values, 100) == 10.0
    assert bench.percentile(values, 75) == 4.0
    assert bench.percentile(values, 99) == pytest.approx(4.0 + 6.0 * 0.96)


def test_percentile_of_no_values_is_nan_and_out_of_range_is_refused() -> None:
    assert math.isnan(bench.percentile([], 50))
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        bench.percentile([1.0], 101)


def test_ratio_is_wall_over_ideal_and_nan_without_an_ideal() -> None:
    assert bench.ratio(11.5, 10.0) == 1.15
    assert math.isnan(bench.ratio(3.0, 0.0))


def test_batch_figures_split_a_release_into_spread_ideal_and_tail() -> None:
    samples = [
        Sample(7, 1, dispatched_at=100.5, apply_time=9.0),  # canary, done at 109.5
        Sample(7, 2, dispatched_at=111.0, apply_time=14.0),  # done at 125.0
        Sample(7, 2, dispatched_at=111.5, apply_time=5.0),
    ]
    release = ReleaseTimes(7, start=100.0, done=126.0)
    canary, rest = bench.batch_figures(samples, [release])
    assert (canary.ideal_s, canary.span_s, canary.dispatch_spread_s) == (9.0, 10.5, 0.0)
    assert canary.tail_s == pytest.approx(1.5)
    assert (rest.nodes, rest.ideal_s, rest.span_s) == (2, 14.0, 15.0)
    assert rest.dispatch_spread_s == 0.5
    assert rest.tail_s == pytest.approx(1.0)
    assert rest.overhead_s == pytest.approx(1.0)
    assert bench.pickups(samples, [release]) == [0.5]
    wall, ideal = bench.wall_and_ideal(samples, [release])
    assert (wall, ideal) == (26.0, 23.0)
    # Wall minus ideal is exactly the pick-up plus each batch's overhead.
    assert wall - ideal == pytest.approx(0.5 + canary.overhead_s + rest.overhead_s)


def test_ideal_of_concurrent_releases_counts_from_each_ones_start() -> None:
    samples = [Sample(1, 1, 0.1, 10.0), Sample(2, 1, 5.1, 8.0)]
    releases = [ReleaseTimes(1, 0.0, 10.5), ReleaseTimes(2, 5.0, 13.5)]
    wall, ideal = bench.wall_and_ideal(samples, releases)
    assert (wall, ideal) == (13.5, 13.0)


def test_scenario_sizes_can_be_overridden_but_a_and_b_run_one_release() -> None:
    sc = bench.scenario("c", nodes=3, releases=4, apply_time=(0.1, 0.2))
    assert (sc.nodes, sc.releases, sc.total_nodes, sc.node_tasks) == (3, 4, 12, 12)
    # d's releases run side by side on nodes of their own: sharing one they would queue.
    d = bench.DEFAULTS["d"]
    assert bench.scenario("d").total_nodes == d.nodes * d.releases
    with pytest.raises(ValueError, match="one release"):
        bench.scenario("a", releases=2)


@pytest.mark.postgres
def test_a_tiny_run_reports_every_figure(tmp_path: Path) -> None:
    sc = bench.scenario("a", nodes=4, apply_time=(0.05, 0.1))
    out = tmp_path / "figures.json"
    table = io.StringIO()
    settings = load_settings(environ={}, poll_initial_sec=0.05, poll_max_sec=0.1)
    bench.bench(sc, settings, out=out, stdout=table)
    result = json.loads(out.read_text())
    for key in (
        "scenario",
        "wall_s",
        "ideal_s",
        "ratio",
        "pickup_p50_ms",
        "pickup_p99_ms",
        "sql_per_node",
        "requests_per_node",
        "peak_rss_mb",
        "cpu_s",
    ):
        assert key in result, key
    assert result["scenario"] == "a"
    assert result["completed"] == 1
    assert 0.05 <= result["ideal_s"] <= 0.2
    assert result["wall_s"] >= result["ideal_s"]
    assert result["ratio"] >= 1
    assert 0 < result["pickup_p50_ms"] < 5000
    assert result["sql_per_node"] > 0
    assert result["requests_per_node"] >= 2  # a dispatch and at least one query each
    assert result["peak_rss_mb"] > 0
    assert result["cpu_s"] > 0
    assert "wall / ideal" in table.getvalue()
