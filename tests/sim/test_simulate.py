"""``fleetwave simulate`` end to end: the real daemon in virtual time over small fleets, its
figures checked against what each strategy implies."""

from __future__ import annotations

import io
import json
import multiprocessing
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from fleetwave import cli, simulate
from fleetwave.config import load_settings

NODES = 50


def strategy_file(tmp_path: Path, value: object) -> Path:
    path = tmp_path / "strategy.json"
    path.write_text(json.dumps(value))
    return path


def simulated(
    tmp_path: Path,
    strategy: object,
    *,
    nodes: int = NODES,
    apply_time: str = "5..15",
    fail_rate: str = "0",
    runs: int = 3,
    seed: int = 11,
    gate_wait: str | None = None,
    jobs: int = 1,
    engine: str = "model",
    **settings: object,
) -> dict[str, Any]:
    """The summary of a simulation, as ``--json`` prints it."""
    options = simulate.build_options(
        strategy=strategy_file(tmp_path, strategy),
        nodes=str(nodes),
        apply_time=apply_time,
        fail_rate=fail_rate,
        runs=str(runs),
        seed=str(seed),
        gate_wait=gate_wait,
        jobs=str(jobs),
        engine=engine,
    )
    out = io.StringIO()
    summary = simulate.simulate(
        options,
        load_settings(environ={}, **settings),
        as_json=True,
        stdout=out,
        stderr=io.StringIO(),
    )
    assert json.loads(out.getvalue()) == json.loads(json.dumps(summary))
    return summary


@pytest.fixture(params=simulate.ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Each figure holds whichever engine computes the runs."""
    return str(request.param)


def per_run(summary: dict[str, Any], key: str) -> list[Any]:
    return [run[key] for run in summary["perRun"]]


# Between two batches the daemon needs a poll interval or so to see the last node finish
# (0.25 s at least, 2 % of the apply time so far, plus jitter) and a flush (0.2 s): well
# under two seconds a batch at these sizes.
SLACK_PER_BATCH = 2.0
TICK = 1e-5
"""The store's times are whole microseconds."""


def test_with_no_failure_every_run_succeeds_within_the_plan_s_bound(
    tmp_path: Path, engine: str
) -> None:
    summary = simulated(tmp_path, {"plan": [1, "10%", "100%"]}, nodes=100, runs=4, engine=engine)
    # Batches of 1, 10 and 89 nodes, one after another, each 5..15 s.
    assert summary["outcomes"] == {"success": 4, "failed": 0, "rolledBack": 0, "paused": 0}
    for seconds in per_run(summary, "seconds"):
        assert 3 * 5 <= seconds <= 3 * (15 + SLACK_PER_BATCH)
    times = summary["timeToFinish"]
    assert times["min"] <= times["p50"] <= times["p90"] <= times["p99"] <= times["max"]
    assert times["min"] == min(per_run(summary, "seconds"))
    assert times["max"] == max(per_run(summary, "seconds"))
    assert summary["nodesLeftOnOldVersion"] == dict.fromkeys(simulate.FIGURES, 0)
    assert summary["runsWithFailureCaught"] == 0
    assert summary["nodesTouchedBeforeFailureCaught"] is None
    assert per_run(summary, "touched") == [100] * 4


def test_with_every_node_failing_the_canary_stops_the_release(tmp_path: Path, engine: str) -> None:
    summary = simulated(tmp_path, {"plan": [2, "100%"]}, fail_rate="1", runs=4, engine=engine)
    assert summary["outcomes"] == {"success": 0, "failed": 4, "rolledBack": 0, "paused": 0}
    # The canary's two agents were reached and nobody else: all 50 stay on version 1.
    assert summary["nodesTouchedBeforeFailureCaught"] == dict.fromkeys(simulate.FIGURES, 2)
    assert summary["nodesLeftOnOldVersion"] == dict.fromkeys(simulate.FIGURES, NODES)
    assert summary["runsWithFailureCaught"] == 4
    for run in summary["perRun"]:
        assert 5 <= run["seconds"] <= 15 + SLACK_PER_BATCH
        assert "simulated failure" in run["error"]


def test_a_bake_adds_its_seconds_to_the_time_to_finish(tmp_path: Path, engine: str) -> None:
    plain = simulated(tmp_path, {"plan": [1, "100%"]}, runs=2, engine=engine)
    baked = simulated(tmp_path, {"plan": [1, {"pause": 300}, "100%"]}, runs=2, engine=engine)
    assert baked["outcomes"]["success"] == 2
    # The same seed draws the same apply times: only the bake differs.
    for before, after in zip(per_run(plain, "seconds"), per_run(baked, "seconds"), strict=True):
        assert 300 - TICK <= after - before <= 300 + SLACK_PER_BATCH
        assert 300 + 2 * 5 <= after <= 300 + 2 * (15 + SLACK_PER_BATCH)


def test_a_gate_is_promoted_after_gate_wait(tmp_path: Path, engine: str) -> None:
    plain = simulated(tmp_path, {"plan": [1, "100%"]}, runs=2, engine=engine)
    gated = simulated(
        tmp_path, {"plan": [1, {"pause": None}, "100%"]}, runs=2, gate_wait="120", engine=engine
    )
    assert gated["gateWait"] == 120
    assert gated["outcomes"]["success"] == 2
    for before, after in zip(per_run(plain, "seconds"), per_run(gated, "seconds"), strict=True):
        assert 120 - TICK <= after - before <= 120 + SLACK_PER_BATCH


def test_on_failure_rollback_and_pause_are_counted_as_such(tmp_path: Path, engine: str) -> None:
    rolled = simulated(
        tmp_path, {"plan": [1, "100%"], "onFailure": "rollback"}, fail_rate="1", engine=engine
    )
    assert rolled["outcomes"] == {"success": 0, "failed": 0, "rolledBack": 3, "paused": 0}
    paused = simulated(
        tmp_path, {"plan": [1, "100%"], "onFailure": "pause"}, fail_rate="1", engine=engine
    )
    assert paused["outcomes"] == {"success": 0, "failed": 0, "rolledBack": 0, "paused": 3}
    for summary in (rolled, paused):
        assert summary["nodesTouchedBeforeFailureCaught"] == dict.fromkeys(simulate.FIGURES, 1)
        assert summary["nodesLeftOnOldVersion"] == dict.fromkeys(simulate.FIGURES, NODES)


def test_a_budget_lets_failures_through_and_leaves_those_nodes_old(
    tmp_path: Path, engine: str
) -> None:
    summary = simulated(
        tmp_path,
        {"plan": [{"batch": 5, "maxFailures": 5}, "100%"], "maxFailurePercent": 100},
        fail_rate="0.2",
        runs=3,
        engine=engine,
    )
    assert summary["outcomes"]["success"] == 3
    for run in summary["perRun"]:
        # Every failed node stays on the old version; every other one applied.
        assert run["leftOnOldVersion"] == run["failedNodes"] > 0
        assert run["touched"] == NODES


def test_the_same_seed_gives_the_same_figures_in_one_process_or_several(
    tmp_path: Path, engine: str
) -> None:
    # Batches larger than max_parallel: their places go in row order whatever order trio
    # runs ready tasks in; the seed fixes that order too.
    strategy = {"plan": [1, "20%", "100%"], "maxFailurePercent": 10}

    def run(seed: int, jobs: int = 1) -> dict[str, Any]:
        return simulated(
            tmp_path,
            strategy,
            engine=engine,
            nodes=120,
            fail_rate="0.05",
            runs=4,
            seed=seed,
            jobs=jobs,
            max_parallel=10,
        )

    first, again, apart, other = run(5), run(5), run(5, jobs=2), run(6)
    varying = ("wallSeconds", "machine", "jobs")
    figures = {k: v for k, v in first.items() if k not in varying}
    assert figures == {k: v for k, v in again.items() if k not in varying}
    assert figures == {k: v for k, v in apart.items() if k not in varying}
    assert first["perRun"] != other["perRun"]


def test_health_checks_are_ignored_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = strategy_file(
        tmp_path,
        {
            "plan": [1, {"pause": 30}, "100%"],
            "healthChecks": [
                {"name": "edge", "http": {"url": "https://checks.example/"}},
                {
                    "name": "5xx",
                    "prometheus": {
                        "url": "http://prometheus.example:9090",
                        "query": "sum(rate(errors_total[1m]))",
                        "max": 0.01,
                    },
                },
            ],
        },
    )
    argv = ["simulate", "--strategy", str(path), "--nodes", "10", "--apply-time", "1..2"]
    argv += ["--fail-rate", "0", "--runs", "2", "--seed", "1", "--jobs", "1"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert "warning: health check(s) edge, 5xx ignored" in err
    assert "outcomes: success 2, failed 0, rolled back 0, paused 0" in out
    assert "time to finish (virtual s)" in out
    assert "nodes touched before a failure is caught (0 runs)" in out
    assert "nodes left on the old version" in out


def test_json_output_has_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = strategy_file(tmp_path, {"plan": [1, "100%"], "maxFailures": 0})
    argv = ["simulate", "--strategy", str(path), "--nodes", "20", "--apply-time", "2..3"]
    argv += ["--fail-rate", "0.5", "--runs", "3", "--seed", "9", "--jobs", "1", "--json"]
    assert cli.main(argv) == 0
    out, _ = capsys.readouterr()
    summary = json.loads(out)
    assert set(summary) >= {
        "strategy",
        "nodes",
        "applyTime",
        "failRate",
        "runs",
        "seed",
        "engine",
        "gateWait",
        "ignoredHealthChecks",
        "outcomes",
        "timeToFinish",
        "nodesTouchedBeforeFailureCaught",
        "runsWithFailureCaught",
        "nodesLeftOnOldVersion",
        "perRun",
        "wallSeconds",
        "jobs",
        "machine",
    }
    assert summary["strategy"]["plan"] == [1, "100%"]
    assert (summary["nodes"], summary["applyTime"], summary["failRate"]) == (20, [2, 3], 0.5)
    assert (summary["runs"], summary["seed"]) == (3, 9)
    assert sum(summary["outcomes"].values()) == 3
    for key in ("timeToFinish", "nodesLeftOnOldVersion"):
        assert set(summary[key]) == set(simulate.FIGURES)
    assert len(summary["perRun"]) == 3
    assert set(summary["perRun"][0]) == {
        "run",
        "outcome",
        "seconds",
        "touched",
        "leftOnOldVersion",
        "failedNodes",
        "error",
    }


def test_the_simulation_s_daemon_runs_whatever_the_settings_say_of_serve_s(
    tmp_path: Path,
) -> None:
    # A daemon configured not to execute releases would claim nothing: the simulation's
    # own daemon always does.
    summary = simulated(tmp_path, {"plan": [1, "100%"]}, runs=1, executor_enabled=False)
    assert summary["outcomes"]["success"] == 1


def test_a_run_s_time_limit_covers_every_wave_and_pause(tmp_path: Path) -> None:
    options = simulate.build_options(
        strategy=strategy_file(
            tmp_path, {"plan": [5, {"pause": 300}, "50%", {"pause": None}, "50%", {"pause": 30}]}
        ),
        nodes="100",
        apply_time="1",
        fail_rate="0",
        runs="1",
        gate_wait="60",
    )
    settings = load_settings(
        environ={}, max_parallel=20, node_deadline_sec=100, reconcile_timeout_sec=10
    )
    # Batches of 5, 50 and 45: 1 + 3 + 3 waves of at most 20; the bake after the canary, the
    # gate after the second batch, the last bake after the third.
    assert simulate.run_limit(options, settings) == 7 * 110 + 300 + 60 + 30 + 86_400


def test_a_strategy_the_store_refuses_for_the_simulated_fleet_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_run(*args: object) -> None:
        raise AssertionError("a run started for a strategy the store refuses")

    monkeypatch.setattr(simulate, "run_all", no_run)  # refused before any run starts
    # The simulated nodes carry no labels: batching by one is refused, as the API would.
    path = strategy_file(tmp_path, {"plan": [1, "100%"], "batchBy": "pop"})
    argv = ["simulate", "--strategy", str(path), "--nodes", "10", "--apply-time", "1..2"]
    argv += ["--fail-rate", "0", "--runs", "2", "--seed", "1", "--jobs", "2"]
    assert cli.main(argv) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert f"fleetwave: --strategy {path}: " in err and "pop" in err


def test_a_trio_whose_task_order_cannot_be_seeded_is_said_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["simulate", "--strategy", str(strategy_file(tmp_path, {"plan": [1, "100%"]}))]
    argv += ["--nodes", "5", "--apply-time", "1..2", "--fail-rate", "0", "--runs", "1"]
    argv += ["--jobs", "1", "--engine", "daemon"]
    assert cli.main(argv) == 0
    assert "task order" not in capsys.readouterr().err

    monkeypatch.setattr(simulate, "_scheduler", lambda: None)  # as a trio that moved it
    assert cli.main(argv) == 0
    assert "runs of one --seed may differ" in capsys.readouterr().err


def test_the_model_s_runs_need_no_seeded_task_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(simulate, "_scheduler", lambda: None)
    argv = ["simulate", "--strategy", str(strategy_file(tmp_path, {"plan": [1, "100%"]}))]
    argv += ["--nodes", "5", "--apply-time", "1..2", "--fail-rate", "0", "--runs", "1"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert "task order" not in err
    assert "engine model" in out


def test_an_engine_that_does_not_exist_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["simulate", "--strategy", str(strategy_file(tmp_path, {"plan": [1, "100%"]}))]
    argv += ["--nodes", "5", "--apply-time", "1..2", "--fail-rate", "0", "--runs", "1"]
    assert cli.main([*argv, "--engine", "fast"]) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert "fleetwave: --engine 'fast': expected one of model, daemon" in err


def test_verify_runs_the_first_runs_by_the_daemon_and_finds_them_equal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    strategy = {"plan": [1, {"pause": 60}, "25%", "100%"], "maxFailures": 1}
    argv = ["simulate", "--strategy", str(strategy_file(tmp_path, strategy)), "--nodes", "60"]
    argv += ["--apply-time", "5..15", "--fail-rate", "0.03", "--runs", "12", "--seed", "3"]
    assert cli.main([*argv, "--verify", "3", "--json"]) == 0
    checked = json.loads(capsys.readouterr().out)["verified"]
    assert checked["runs"] == 3
    assert checked["differing"] == []
    assert checked["largestTimeDifference"] < 1e-3
    assert cli.main([*argv, "--verify", "2"]) == 0
    assert "verified by the daemon: 2 of 2 run(s) agree" in capsys.readouterr().out


def test_verify_names_a_batch_whose_caps_let_more_in_flight_than_max_parallel(
    tmp_path: Path,
) -> None:
    """There nodes admitted together take the daemon's places in trio's order: the
    comparison says so (a difference there is documented, not a defect of the model)."""
    path = strategy_file(tmp_path, {"plan": [1, "100%"], "maxInFlightPer": {"pop": 2}})
    words = {"nodes": "30", "apply_time": "1..3", "fail_rate": "0", "runs": "2", "seed": "4"}
    opts = simulate.build_options(strategy=path, jobs="1", verify="1", labels=["pop=3"], **words)
    out = io.StringIO()
    racing = simulate.simulate(opts, load_settings(environ={}, max_parallel=2), stdout=out)
    assert racing["verified"]["note"].startswith(
        "batch 2: maxInFlightPer lets 6 of its nodes in flight, above max_parallel 2:"
    )
    assert "  note: batch 2: maxInFlightPer lets 6" in out.getvalue()
    calm = simulate.simulate(opts, load_settings(environ={}, max_parallel=6), stdout=out)
    assert calm["verified"]["note"] is None


def test_verify_needs_the_model_and_no_more_runs_than_there_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["simulate", "--strategy", str(strategy_file(tmp_path, {"plan": [1, "100%"]}))]
    argv += ["--nodes", "5", "--apply-time", "1..2", "--fail-rate", "0", "--runs", "3"]
    assert cli.main([*argv, "--verify", "4"]) == cli.EXIT_USAGE
    assert "fleetwave: --verify 4: must be from 0 to 3" in capsys.readouterr().err
    assert cli.main([*argv, "--verify", "1", "--engine", "daemon"]) == cli.EXIT_USAGE
    assert "it goes with --engine model" in capsys.readouterr().err


def test_differences_name_each_run_whose_outcome_nodes_or_time_differ() -> None:
    def run(index: int, **changed: Any) -> simulate.RunResult:
        fields: dict[str, Any] = {
            "index": index,
            "outcome": "failed",
            "seconds": 100.0,
            "touched": 11,
            "left_old": 90,
            "failed_nodes": 1,
            "error": None,
        }
        return simulate.RunResult(**(fields | changed))

    model = [run(0), run(1), run(2), run(3), run(4)]
    daemon = [run(0, seconds=104.9), run(1, touched=12), run(2, outcome="success")]
    daemon += [run(3, seconds=105.1), run(4, left_old=89, failed_nodes=2)]
    found = simulate.differences(model, daemon, tolerance=5.0)
    assert [line.split(":")[0] for line in found] == ["run 1", "run 2", "run 3", "run 4"]
    assert "model failed, 11 touched, 90 left on the old version, 1 failed, 100.000 s" in found[0]
    assert "daemon failed, 12 touched" in found[0]


def test_labels_let_a_topology_strategy_be_simulated(tmp_path: Path, engine: str) -> None:
    # Twelve PoPs of five nodes in three regions; after the canary one region per batch, two
    # nodes of a PoP at once.
    strategy = {"plan": [1, "100%"], "batchBy": "region", "maxInFlightPer": {"pop": 2}}
    options = simulate.build_options(
        strategy=strategy_file(tmp_path, strategy),
        nodes="60",
        apply_time="5..15",
        fail_rate="0",
        runs="2",
        seed="4",
        jobs="1",
        engine=engine,
        labels=["pop=12", "region=3"],
    )
    out = io.StringIO()
    summary = simulate.simulate(
        options, load_settings(environ={}), as_json=True, stdout=out, stderr=io.StringIO()
    )
    assert summary["outcomes"]["success"] == 2
    assert summary["labels"] == {"pop": 12, "region": 3}
    for seconds in per_run(summary, "seconds"):
        # canary, then 3 regions in turn, each of 4 PoPs of 5 nodes at 2 at once: 3 waves
        assert 5 + 3 * 3 * 5 <= seconds <= 15 + 3 * 3 * (15 + SLACK_PER_BATCH)


def test_the_daemon_engine_starts_no_more_processes_than_there_are_runs(tmp_path: Path) -> None:
    """The summary counts min(--jobs, --runs) processes: the daemon's pool starts no more."""
    path = strategy_file(tmp_path, {"plan": [1, "100%"]})
    words = {"nodes": "300", "apply_time": "5", "fail_rate": "0", "runs": "2", "seed": "1"}
    opts = simulate.build_options(strategy=path, jobs="6", engine="daemon", **words)
    done: list[dict[str, Any]] = []
    worker = threading.Thread(
        target=lambda: done.append(
            simulate.simulate(opts, load_settings(environ={}), stdout=io.StringIO())
        )
    )
    worker.start()
    most = 0
    while worker.is_alive():
        most = max(most, len(multiprocessing.active_children()))
        worker.join(0.005)
    assert done[0]["jobs"] == 2
    assert 1 <= most <= 2


def test_a_run_paused_by_a_failure_says_why_in_either_engine(tmp_path: Path) -> None:
    """onFailure pause records its cause as the pause's reason (the release's error stays
    empty): a paused run's error is that reason, by the daemon as by the model."""
    path = strategy_file(tmp_path, {"plan": [1, "100%"], "onFailure": "pause"})
    words = {"nodes": "10", "apply_time": "1..2", "fail_rate": "1", "runs": "1", "seed": "2"}
    opts = simulate.build_options(strategy=path, jobs="1", **words)
    config = load_settings(environ={})
    daemon = simulate.run_one(opts, config, 0)
    model = simulate.model_result(simulate.schedule_model(opts, config), opts, 0)
    for result in (daemon, model):
        assert result.outcome == "paused"
        assert result.error is not None
        assert result.error.startswith("onFailure pause: node edge-00001 ")
        assert "'simulated failure' (1 of 1 node(s) of the canary failed" in result.error


class _Steps(trio.abc.Instrument):
    """Counts the task steps of a trio run."""

    def __init__(self) -> None:
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


def test_a_bake_of_a_day_costs_the_daemon_engine_no_look_every_half_second(
    tmp_path: Path,
) -> None:
    """The run waits for the release's changes on the store's event feed: a day's bake
    adds no 172,800 looks at the release (trio task steps of the whole run counted)."""
    path = strategy_file(tmp_path, {"plan": [1, {"pause": 86_400}, "100%"]})
    words = {"nodes": "5", "apply_time": "1", "fail_rate": "0", "runs": "1", "seed": "1"}
    opts = simulate.build_options(strategy=path, jobs="1", engine="daemon", **words)
    config = load_settings(environ={})
    steps = _Steps()
    with simulate._quiet_logging(config):
        result = trio.run(
            simulate.simulate_run,
            opts,
            config,
            0,
            clock=trio.testing.MockClock(autojump_threshold=0),
            instruments=[steps],
        )
    assert (result.outcome, result.touched, result.left_old) == ("success", 5, 0)
    assert 86_400 < result.seconds < 86_400 + 10
    assert steps.count < 100_000
