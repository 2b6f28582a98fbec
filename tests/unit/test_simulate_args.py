"""``fleetwave simulate``'s input: every bad flag and strategy file exits 2 naming what is
wrong, before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

from fleetwave import cli, simulate
from fleetwave.store.strategy import Strategy


def strategy_file(tmp_path: Path, value: object, name: str = "strategy.json") -> Path:
    path = tmp_path / name
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return path


def run(capsys: pytest.CaptureFixture[str], path: Path, *extra: str, **flags: str) -> str:
    """Run the command with good defaults overridden by ``flags``; return stderr after
    checking it exited 2 with nothing on stdout."""
    options = {"nodes": "10", "apply-time": "1..2", "fail-rate": "0", "runs": "1"}
    options.update({key.replace("_", "-"): value for key, value in flags.items()})
    argv = ["simulate", "--strategy", str(path)]
    for key, value in options.items():
        argv.append(f"--{key}={value}")
    assert cli.main([*argv, *extra]) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    return err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"apply_time": "5..1"}, "--apply-time '5..1': expected 0 <= MIN <= MAX"),
        ({"apply_time": "-1..2"}, "--apply-time '-1..2': expected 0 <= MIN <= MAX"),
        ({"apply_time": "1..90000"}, "--apply-time '1..90000': expected 0 <= MIN <= MAX <= 86400"),
        ({"apply_time": "nan..1"}, "--apply-time 'nan': must be a finite number"),
        ({"apply_time": "1..inf"}, "--apply-time 'inf': must be a finite number"),
        ({"apply_time": "fast"}, "--apply-time 'fast': not a number"),
        ({"apply_time": "1.."}, "--apply-time '1..': expected MIN..MAX seconds"),
        ({"fail_rate": "1.5"}, "--fail-rate '1.5': a probability per node, from 0"),
        ({"fail_rate": "-0.1"}, "--fail-rate '-0.1': a probability per node"),
        ({"fail_rate": "often"}, "--fail-rate 'often': not a number"),
        ({"nodes": "0"}, "--nodes 0: must be from 1 to 100000"),
        ({"nodes": "100001"}, "--nodes 100001: must be from 1 to 100000"),
        ({"nodes": "ten"}, "--nodes 'ten': not a whole number"),
        ({"runs": "0"}, "--runs 0: must be from 1 to 10000"),
        ({"runs": "10001"}, "--runs 10001: must be from 1 to 10000"),
        ({"seed": "-1"}, "--seed -1: must be from 0 to"),
        ({"jobs": "0"}, "--jobs 0: must be from 1 to 64"),
        ({"jobs": "65"}, "--jobs 65: must be from 1 to 64"),
        ({"gate_wait": "-5"}, "--gate-wait '-5': seconds from 0 to 2592000"),
        ({"gate_wait": "2592001"}, "--gate-wait '2592001': seconds from 0 to 2592000"),
    ],
)
def test_a_bad_flag_exits_2_naming_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: dict[str, str],
    expected: str,
) -> None:
    path = strategy_file(tmp_path, {"plan": [1, "100%"]})
    assert expected in run(capsys, path, **flags)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"plan": [1, "100%"], "speed": "fast"}, "strategy: unknown field(s) speed"),
        ({"plan": [1, "150%"]}, "plan[1]"),
        ({"plan": [1, {"wait": 5}]}, "plan[1]: unknown step kind (wait)"),
        ({"plan": [1, {"pause": -3}, "100%"]}, "plan[1].pause: must be above 0"),
        ({"plan": [1, {"pause": None}]}, "plan[1]: a gate cannot be the last step"),
        ({"onFailure": "explode"}, "onFailure: must be one of stop, pause, rollback"),
        ({"maxFailurePercent": 101}, "maxFailurePercent: must be from 0 to 100"),
        ([1, "100%"], "strategy: must be an object"),
        ('{"plan": [1, ', "not JSON: Expecting value (line 1, column 14)"),
        ("[" * 100_000 + "]" * 100_000, "not JSON: nested too deeply"),
        ('{"maxFailures": 1' + "0" * 5000 + "}", "not JSON: a number of more than 4300 digits"),
    ],
)
def test_a_bad_strategy_file_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: object, expected: str
) -> None:
    path = strategy_file(tmp_path, content)
    err = run(capsys, path)
    assert f"--strategy {path}: " in err
    assert expected in err


def test_a_missing_or_unreadable_strategy_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = run(capsys, tmp_path / "nowhere.json")
    assert f"--strategy {tmp_path / 'nowhere.json'}: cannot read it: No such file" in err
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{}")
    assert "not UTF-8 text" in run(capsys, binary)
    huge = strategy_file(tmp_path, " " * (simulate.MAX_STRATEGY_BYTES + 1) + "{}", "huge.json")
    assert f"larger than {simulate.MAX_STRATEGY_BYTES} bytes" in run(capsys, huge)


def test_a_gate_is_refused_without_gate_wait_naming_its_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = strategy_file(tmp_path, {"plan": [1, {"pause": 60}, "10%", {"pause": None}, "100%"]})
    err = run(capsys, path)
    assert "plan[3] is a gate" in err and "give --gate-wait SECONDS" in err


def test_a_gate_the_fleet_never_reaches_is_not_refused(tmp_path: Path) -> None:
    # One node makes one batch: the gate after it never holds anything.
    path = strategy_file(tmp_path, {"plan": [1, {"pause": None}, "100%"]})
    options = simulate.build_options(
        strategy=path, nodes="1", apply_time="1", fail_rate="0", runs="1"
    )
    assert options.gate_wait is None


def test_good_flags_give_the_options_the_runs_use(tmp_path: Path) -> None:
    path = strategy_file(
        tmp_path,
        {
            "plan": [1, {"pause": None}, "100%"],
            "onFailure": "rollback",
            "healthChecks": [{"name": "edge", "http": {"url": "https://checks.example/{batch}"}}],
        },
    )
    options = simulate.build_options(
        strategy=path,
        nodes="50",
        apply_time="2..4",
        fail_rate="0.25",
        runs="3",
        seed="7",
        gate_wait="30",
        jobs="1",
    )
    assert (options.nodes, options.apply_time, options.fail_rate) == (50, (2.0, 4.0), 0.25)
    assert (options.runs, options.seed, options.gate_wait, options.jobs) == (3, 7, 30.0, 1)
    assert options.ignored_checks == ("edge",)
    assert options.strategy.health_checks == ()
    assert options.strategy.on_failure.value == "rollback"
    one = simulate.build_options(
        strategy=path, nodes="5", apply_time="3", fail_rate="1", runs="2", gate_wait="0"
    )
    assert one.apply_time == (3.0, 3.0)
    assert 1 <= one.jobs <= 2  # at most one process per run
    again = simulate.build_options(
        strategy=path, nodes="5", apply_time="3", fail_rate="1", runs="2", gate_wait="0"
    )
    assert 0 <= one.seed < 2**32 and one.seed != again.seed  # a fresh seed unless given


def test_fail_rate_draws_each_node_independently_from_the_seed() -> None:
    options = simulate.Options(
        strategy=Strategy(),
        source="-",
        nodes=2000,
        apply_time=(1.0, 2.0),
        fail_rate=0.1,
        runs=1,
        seed=3,
    )
    fleet = simulate.build_fleet(options, 0)
    failing = [k for k in range(1, 2001) if fleet.behaviour(k).fail == simulate.FAILURE]
    assert 150 <= len(failing) <= 250  # 10 % of 2,000, well inside 5 standard deviations
    again = simulate.build_fleet(options, 0)
    assert failing == [k for k in range(1, 2001) if again.behaviour(k).fail == simulate.FAILURE]
    other = simulate.build_fleet(options, 1)
    assert failing != [k for k in range(1, 2001) if other.behaviour(k).fail == simulate.FAILURE]
    everyone = simulate.build_fleet(attrs.evolve(options, fail_rate=1.0), 0)
    nobody = simulate.build_fleet(attrs.evolve(options, fail_rate=0.0), 0)
    assert all(everyone.behaviour(k).fail == simulate.FAILURE for k in range(1, 2001))
    assert all(nobody.behaviour(k).fail is None for k in range(1, 2001))


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["pop"], "--label 'pop': expected KEY=COUNT, e.g. pop=20"),
        (["pop=0"], "--label 'pop=0': COUNT must be from 1 to 10 (the nodes)"),
        (["pop=11"], "--label 'pop=11': COUNT must be from 1 to 10 (the nodes)"),
        (["pop=many"], "--label 'pop=many': COUNT is not a whole number"),
        (["bad key=3"], "--label 'bad key=3': label key 'bad key': at most 63 letters"),
        (["=3"], "--label '=3': label key must be a non-empty string"),
        (["pop=3", "pop=4"], "--label pop: given more than once"),
        (["pop=\u0663"], "--label 'pop=\u0663': COUNT is not a whole number"),
        (["pop= 3"], "--label 'pop= 3': COUNT is not a whole number"),
        (
            [f"{'a' * 62}=3"],
            f"--label '{'a' * 62}=3': label {'a' * 62}: value '{'a' * 62}-3' must be 1 to 63",
        ),
        ([f"k{i}=2" for i in range(65)], "--label: given 65 times, but a node carries at most 64"),
    ],
)
def test_a_bad_label_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], labels: list[str], expected: str
) -> None:
    path = strategy_file(tmp_path, {"plan": [1, "100%"]})
    extra = [word for label in labels for word in ("--label", label)]
    assert f"fleetwave: {expected}" in run(capsys, path, *extra)


def test_labels_go_on_blocks_of_consecutive_nodes_and_nest() -> None:
    labels = [("pop", 4), ("region", 2)]
    seen = [simulate.node_labels(labels, 10, k) for k in range(1, 11)]
    assert [node["pop"] for node in seen] == ["pop-1"] * 3 + ["pop-2"] * 2 + ["pop-3"] * 3 + [
        "pop-4"
    ] * 2
    assert [node["region"] for node in seen] == ["region-1"] * 5 + ["region-2"] * 5
    assert simulate.node_labels([("pop", 12)], 12, 12) == {"pop": "pop-12"}
    assert simulate.node_labels([("pop", 12)], 12, 1) == {"pop": "pop-01"}


def test_a_label_key_with_a_slash_gives_values_without_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert simulate.node_labels([("topology/pop", 3)], 9, 9) == {"topology/pop": "pop-3"}
    path = strategy_file(tmp_path, {"plan": [1, "100%"], "batchBy": "topology/pop"})
    argv = ["simulate", "--strategy", str(path), "--nodes", "9", "--apply-time", "1"]
    argv += ["--fail-rate", "0", "--runs", "1", "--jobs", "1", "--label", "topology/pop=3"]
    assert cli.main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["outcomes"]["success"] == 1
    assert summary["labels"] == {"topology/pop": 3}


def test_the_help_says_the_defaults_and_ranges_the_options_have(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["simulate", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "(default: one per CPU, at most one per run)" in shown
    assert "with --engine model: also run the first N runs (0 to K) by the daemon" in shown
