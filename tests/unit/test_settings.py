"""Settings: defaults < TOML file < environment, and one clear line for a bad value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from fleetwave import cli
from fleetwave.config import Settings, SettingsError, load_settings
from fleetwave.config.settings import known_env_names


def test_defaults_match_the_original_system() -> None:
    settings = load_settings(environ={})
    assert settings.executor_enabled is True
    assert settings.interval_sec == 5
    assert settings.node_deadline_sec == 600
    assert settings.agent_connect_timeout_sec == 15
    assert settings.agent_request_timeout_sec == 60
    assert settings.data_dir == "./.fleetwave/pg"
    assert settings.database_url is None


def test_original_environment_names_are_honoured() -> None:
    settings = load_settings(
        environ={
            "RELEASE_EXECUTOR_ENABLED": "0",
            "RELEASE_EXECUTOR_INTERVAL_SEC": "2.5",
            "MTLS_ENABLED": "1",
            "CONTROL_CERT": "/c.crt",
            "CONTROL_KEY": "/c.key",
            "CONTROL_CA": "/ca.crt",
        }
    )
    assert settings.executor_enabled is False
    assert settings.interval_sec == 2.5
    assert (settings.control_cert, settings.control_key, settings.control_ca) == (
        "/c.crt",
        "/c.key",
        "/ca.crt",
    )


def test_environment_overrides_the_file_which_overrides_defaults(tmp_path: Path) -> None:
    config = tmp_path / "fleetwave.toml"
    config.write_text('node_deadline_sec = 120\nlease_ttl_sec = 12\nlog_format = "json"\n')
    settings = load_settings(
        environ={"FLEETWAVE_CONFIG": str(config), "FLEETWAVE_LEASE_TTL_SEC": "9"}
    )
    assert settings.node_deadline_sec == 120  # file
    assert settings.lease_ttl_sec == 9  # environment beats the file
    assert settings.max_releases == 16  # default


@pytest.mark.parametrize(
    ("environ", "named", "says"),
    [
        ({"FLEETWAVE_NODE_DEADLINE_SEC": "ten"}, "FLEETWAVE_NODE_DEADLINE_SEC", "number"),
        ({"FLEETWAVE_NODE_DEADLINE_SEC": "-1"}, "FLEETWAVE_NODE_DEADLINE_SEC", "at least"),
        ({"FLEETWAVE_MAX_RELEASES": "1.5"}, "FLEETWAVE_MAX_RELEASES", "whole number"),
        ({"RELEASE_EXECUTOR_ENABLED": "maybe"}, "RELEASE_EXECUTOR_ENABLED", "1/0"),
        ({"FLEETWAVE_LOG_FORMAT": "xml"}, "FLEETWAVE_LOG_FORMAT", "json"),
        ({"FLEETWAVE_API_BIND": "localhost"}, "FLEETWAVE_API_BIND", "HOST:PORT"),
        ({"FLEETWAVE_LEASE_TTL_SEC": "nan"}, "FLEETWAVE_LEASE_TTL_SEC", "finite"),
        ({"FLEETWAVE_CONFIG": "/nonexistent.toml"}, "FLEETWAVE_CONFIG", "does not exist"),
    ],
)
def test_a_bad_value_names_the_setting_and_the_problem(
    environ: dict[str, str], named: str, says: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(environ=environ)
    assert raised.value.name == named
    assert says in str(raised.value)


def test_an_unknown_key_in_the_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "fleetwave.toml"
    config.write_text("node_deadline = 5\n")
    with pytest.raises(SettingsError, match="not a known setting"):
        load_settings(environ={"FLEETWAVE_CONFIG": str(config)})


def test_an_unknown_key_in_the_file_names_the_closest_setting(tmp_path: Path) -> None:
    config = tmp_path / "fleetwave.toml"
    config.write_text("node_deadline = 5\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(environ={"FLEETWAVE_CONFIG": str(config)})
    assert str(raised.value) == (
        f"setting node_deadline (in {config}): is not a known setting"
        " (did you mean node_deadline_sec?)"
    )


def test_an_unknown_fleetwave_variable_is_refused_naming_the_closest() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(environ={"FLEETWAVE_DATABSE_URL": "postgresql://db/x"})
    assert str(raised.value) == (
        "setting FLEETWAVE_DATABSE_URL: is not a known setting"
        " (did you mean FLEETWAVE_DATABASE_URL?)"
    )
    with pytest.raises(SettingsError, match=r"FLEETWAVE_ZZZ: is not a known setting$"):
        load_settings(environ={"FLEETWAVE_ZZZ": "1"})
    # Other programs' variables are not ours to judge.
    assert load_settings(environ={"FLEETWAVEX": "1", "RELEASE_FOO": "2"}).database_url is None


def test_every_setting_and_every_variable_the_command_line_reads_is_known() -> None:
    environ = {Settings.env_name(name): "" for name in attrs.fields_dict(Settings)}
    assert set(environ) <= known_env_names()
    cli.build_parser()
    assert {"FLEETWAVE_API", "FLEETWAVE_TOKEN", "FLEETWAVE_API_CA"} <= cli.CLIENT_ENV
    client = {name: "x" for name in cli.CLIENT_ENV}
    with pytest.raises(SettingsError, match="FLEETWAVE_API: is not a known setting"):
        load_settings(environ=client)
    assert load_settings(environ=client, other_env=cli.CLIENT_ENV).daemon_id


def test_the_default_daemon_id_differs_between_processes_with_the_same_host_and_pid() -> None:
    ids = {load_settings(environ={}).daemon_id for _ in range(50)}
    assert len(ids) == 50
    host, pid, suffix = next(iter(ids)).rsplit(":", 2)
    assert host and pid == str(os.getpid()) and len(suffix) == 8


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"FLEETWAVE_DAEMON_ID": "  "}, "FLEETWAVE_DAEMON_ID: must not be empty"),
        ({"FLEETWAVE_DAEMON_ID": "a\tb"}, "FLEETWAVE_DAEMON_ID: must be at most 255 printable"),
        ({"FLEETWAVE_AGENT_PORT": "0"}, "FLEETWAVE_AGENT_PORT: must be at least 1"),
        ({"FLEETWAVE_AGENT_PORT": "65536"}, "FLEETWAVE_AGENT_PORT: must be from 1 to 65535"),
        ({"FLEETWAVE_AGENT_PORT": "9" * 5000}, "FLEETWAVE_AGENT_PORT: must be a whole number"),
        ({"FLEETWAVE_API_BIND": "127.0.0.1:65536"}, "FLEETWAVE_API_BIND: must be HOST:PORT"),
        ({"FLEETWAVE_DATABASE_URL": "127.0.0.1:5432"}, "must be a postgresql://"),
        ({"FLEETWAVE_DATABASE_URL": "mysql://u:pw@h/d"}, "got 'mysql://u:***@h/d'"),
        ({"FLEETWAVE_DATABASE_URL": "postgresql://h:x/d"}, "is not a valid URL"),
    ],
)
def test_names_ports_and_database_urls_are_checked_at_start(
    environ: dict[str, str], says: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(environ=environ)
    assert says in str(raised.value)
    assert "pw@" not in str(raised.value)


def test_a_daemon_id_in_the_file_must_be_one_printable_line(tmp_path: Path) -> None:
    config = tmp_path / "fleetwave.toml"
    config.write_text('daemon_id = "edge\\u0000x"\n')
    with pytest.raises(SettingsError, match=r"daemon_id .* printable"):
        load_settings(environ={"FLEETWAVE_CONFIG": str(config)})


def test_mtls_is_required_with_readable_files(tmp_path: Path) -> None:
    settings = load_settings(environ={"MTLS_ENABLED": "0"})
    with pytest.raises(SettingsError, match="MTLS_ENABLED: must be 1"):
        settings.require_mtls()
    settings = load_settings(environ={"CONTROL_CERT": str(tmp_path / "missing.crt")})
    with pytest.raises(SettingsError, match=r"CONTROL_CERT: file .* does not exist"):
        settings.require_mtls()


def fleetwave(command: str, cwd: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    """Run the command line in a bare environment, as a fresh shell would."""
    return subprocess.run(
        [sys.executable, "-m", "fleetwave", command],
        env={"PATH": "/usr/bin:/bin", **environ},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def test_serve_with_a_bad_setting_exits_2_with_one_line(tmp_path: Path) -> None:
    result = fleetwave("serve", tmp_path, FLEETWAVE_NODE_DEADLINE_SEC="soon")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fleetwave: setting FLEETWAVE_NODE_DEADLINE_SEC: must be a number, got 'soon'"
    ]
    assert result.stdout == ""


def test_serve_without_certificates_exits_2_naming_control_cert(tmp_path: Path) -> None:
    result = fleetwave("serve", tmp_path)
    assert result.returncode == 2
    assert "CONTROL_CERT" in result.stderr


def test_an_unreachable_database_exits_1_with_one_line(tmp_path: Path) -> None:
    result = fleetwave("migrate", tmp_path, FLEETWAVE_DATABASE_URL="postgresql://u@127.0.0.1:1/x")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "fleetwave: database unavailable: [Errno 111] Connect call failed ('127.0.0.1', 1)"
    ]
