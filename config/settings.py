"""fleetwave settings.

Each setting has a default, may be set in a TOML file named by ``FLEETWAVE_CONFIG`` (top-level
keys are the attribute names below) and may be overridden by its environment variable. The
original system's variable names (``RELEASE_EXECUTOR_*``, ``MTLS_ENABLED``, ``CONTROL_*``) are
honoured as they are; every other variable is ``FLEETWAVE_`` + the upper-cased attribute name.
"""

from __future__ import annotations

import difflib
import os
import secrets
import socket
import tomllib
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs


class SettingsError(Exception):
    """A setting is missing or invalid. ``str()`` is one line naming it and the problem."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"setting {name}: {problem}")
        self.name = name
        self.problem = problem


# --- value parsers: text (from env) or TOML value -> typed value, ValueError with a reason ---


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"must be one of 1/0/true/false, got {value!r}")


def _number(minimum: float, *, allow_zero: bool = False) -> Callable[[object], float]:
    def parse(value: object) -> float:
        if isinstance(value, bool):
            raise ValueError(f"must be a number, got {value!r}")
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"must be a number, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"must be a finite number, got {value!r}")
        if number < minimum or (number == 0 and not allow_zero and minimum == 0):
            raise ValueError(f"must be at least {minimum:g}, got {value!r}")
        return number

    return parse


def _integer(minimum: int, maximum: int | None = None) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise ValueError(f"must be a whole number, got {value!r}")
        try:
            number = int(str(value).strip()) if not isinstance(value, int) else value
        except ValueError:
            raise ValueError(f"must be a whole number, got {value!r}") from None
        if number < minimum:
            raise ValueError(f"must be at least {minimum}, got {value!r}")
        if maximum is not None and number > maximum:
            raise ValueError(f"must be from {minimum} to {maximum}, got {value!r}")
        return number

    return parse


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be text, got {value!r}")
    return value


def _optional_text(value: object) -> str | None:
    text = _text(value).strip()
    return text or None


def _choice(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _text(value).strip().lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


def _bind(value: object) -> str:
    text = _text(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be HOST:PORT, got {value!r}")
    return text


def _name(value: object) -> str:
    """A name written into rows and logs: one printable line, not empty."""
    text = _text(value).strip()
    if not text:
        raise ValueError("must not be empty")
    if not text.isprintable() or len(text) > 255:
        raise ValueError(f"must be at most 255 printable characters, got {value!r}")
    return text


DATABASE_SCHEMES = ("postgresql", "postgres")


def _database_url(value: object) -> str | None:
    """A PostgreSQL URL, checked as far as can be without connecting."""
    text = _optional_text(value)
    if text is None:
        return None
    scheme, sep, _ = text.partition("://")
    if not sep or scheme.lower() not in DATABASE_SCHEMES:
        raise ValueError(
            f"must be a postgresql://USER:PASSWORD@HOST:PORT/DATABASE URL, got {redact_url(text)!r}"
        )
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 -- parsing the port is the check
    except ValueError as error:
        raise ValueError(f"is not a valid URL ({error}): {redact_url(text)!r}") from None
    return text


def redact_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{hostport}{slash}{path}"


def _optional_bind(value: object) -> str | None:
    if _optional_text(value) is None:
        return None
    return _bind(value)


def _field(default: Any, parse: Callable[[object], Any], env: str | None = None) -> Any:
    return attrs.field(default=default, metadata={"parse": parse, "env": env})


def _default_daemon_id() -> str:
    # Containers often share a hostname pattern and all run as pid 1: the random part keeps
    # two daemons apart wherever they run.
    return f"{socket.gethostname() or 'host'}:{os.getpid()}:{secrets.token_hex(4)}"


@attrs.frozen(kw_only=True)
class Settings:
    """Every knob of the daemon, the agent client and the API. Units are in the names."""

    # The original system's names.
    executor_enabled: bool = _field(True, _bool, "RELEASE_EXECUTOR_ENABLED")
    interval_sec: float = _field(5.0, _number(0.01), "RELEASE_EXECUTOR_INTERVAL_SEC")
    mtls_enabled: bool = _field(True, _bool, "MTLS_ENABLED")
    control_cert: str | None = _field(None, _optional_text, "CONTROL_CERT")
    control_key: str | None = _field(None, _optional_text, "CONTROL_KEY")
    control_ca: str | None = _field(None, _optional_text, "CONTROL_CA")

    # Database.
    database_url: str | None = _field(None, _database_url)
    data_dir: str = _field("./.fleetwave/pg", _text)

    # Executor.
    daemon_id: str = attrs.field(factory=_default_daemon_id, metadata={"parse": _name, "env": None})
    node_deadline_sec: float = _field(600.0, _number(0.001))
    lease_ttl_sec: float = _field(30.0, _number(0.3))
    max_releases: int = _field(16, _integer(1))
    max_parallel: int = _field(1000, _integer(1))
    flush_interval_sec: float = _field(0.2, _number(0.0, allow_zero=True))
    reconcile_timeout_sec: float = _field(10.0, _number(0.001))
    max_crashes: int = _field(3, _integer(1))
    """Crashes of a release's actors before the daemon that claims it next ends it failed."""
    crash_backoff_sec: float = _field(10.0, _number(0.0, allow_zero=True))
    """No daemon claims a crashed release for this long, doubled at each further crash."""
    store_timeout_sec: float = _field(10.0, _number(0.1))
    """Bound of every database operation: statement, connection wait and the whole call."""

    # Agent client.
    agent_port: int = _field(8443, _integer(1, 65535))
    agent_connect_timeout_sec: float = _field(15.0, _number(0.001))
    agent_request_timeout_sec: float = _field(60.0, _number(0.001))
    agent_max_connections: int = _field(1000, _integer(1))
    dispatch_attempts: int = _field(5, _integer(1))
    retry_initial_sec: float = _field(1.0, _number(0.001))
    retry_max_sec: float = _field(30.0, _number(0.001))
    poll_initial_sec: float = _field(0.25, _number(0.001))
    poll_max_sec: float = _field(10.0, _number(0.001))
    poll_age_factor: float = _field(0.02, _number(0.0, allow_zero=True))
    poll_rate: float = _field(2000.0, _number(1.0))

    # Webhooks.
    webhook_poll_sec: float = _field(1.0, _number(0.01))
    webhook_timeout_sec: float = _field(10.0, _number(0.001))
    webhook_attempts: int = _field(12, _integer(1))
    webhook_retry_max_sec: float = _field(3600.0, _number(1.0))

    # API and logs.
    api_bind: str = _field("127.0.0.1:8080", _bind)
    api_tls_cert: str | None = _field(None, _optional_text)
    api_tls_key: str | None = _field(None, _optional_text)
    api_client_ca: str | None = _field(None, _optional_text)
    api_insecure: bool = _field(False, _bool)
    metrics_bind: str | None = _field(None, _optional_bind)
    log_format: str = _field("auto", _choice("auto", "json", "console"))
    log_level: str = _field("info", _choice("debug", "info", "warning", "error"))

    @classmethod
    def env_name(cls, attribute: str) -> str:
        env = attrs.fields_dict(cls)[attribute].metadata["env"]
        return env if env else f"FLEETWAVE_{attribute.upper()}"

    def require_mtls(self) -> tuple[str, str, str]:
        """The client certificate, key and CA paths, checked to exist and be readable."""
        if not self.mtls_enabled:
            raise SettingsError(
                "MTLS_ENABLED", "must be 1: agents are only ever called over mutual TLS"
            )
        paths = []
        for attribute in ("control_cert", "control_key", "control_ca"):
            name = self.env_name(attribute)
            value = getattr(self, attribute)
            if value is None:
                raise SettingsError(name, "is required (a PEM file path)")
            path = Path(value)
            if not path.is_file():
                raise SettingsError(name, f"file {value} does not exist")
            if not os.access(path, os.R_OK):
                raise SettingsError(name, f"file {value} is not readable")
            paths.append(str(path))
        return paths[0], paths[1], paths[2]


def _read_toml(path: str) -> Mapping[str, object]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError("FLEETWAVE_CONFIG", f"file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError("FLEETWAVE_CONFIG", f"{path} is not valid TOML: {error}") from None
    except OSError as error:
        raise SettingsError("FLEETWAVE_CONFIG", f"cannot read {path}: {error.strerror}") from None


CONFIG_ENV = "FLEETWAVE_CONFIG"
ENV_PREFIX = "FLEETWAVE_"


def known_env_names() -> set[str]:
    """The environment names of every setting, and FLEETWAVE_CONFIG."""
    return {Settings.env_name(attribute) for attribute in attrs.fields_dict(Settings)} | {
        CONFIG_ENV
    }


def _unknown(name: str, known: Collection[str]) -> str:
    """The problem of an unknown name, with the closest known one when one is close (the
    shared FLEETWAVE_ prefix is not counted as likeness)."""

    def stem(text: str) -> str:
        return text.removeprefix(ENV_PREFIX)

    stems = {stem(other): other for other in known}
    close = difflib.get_close_matches(stem(name), sorted(stems), n=1, cutoff=0.6)
    hint = f" (did you mean {stems[close[0]]}?)" if close else ""
    return f"is not a known setting{hint}"


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    other_env: Collection[str] = (),
    **overrides: object,
) -> Settings:
    """Build Settings from defaults, the TOML file, the environment, then ``overrides``.

    Every ``FLEETWAVE_*`` variable must be a setting's, FLEETWAVE_CONFIG, or one of
    ``other_env`` (those the command line reads itself): a misspelt name stops the program
    rather than leaving its setting at the default. Raises SettingsError naming the first
    invalid or unknown setting, and for an unknown name the closest known one.
    """
    env = os.environ if environ is None else environ
    fields = attrs.fields_dict(Settings)
    values: dict[str, object] = {}

    known_env = known_env_names() | set(other_env)
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known_env:
            raise SettingsError(name, _unknown(name, known_env))

    config_path = env.get(CONFIG_ENV)
    if config_path:
        for key, raw in _read_toml(config_path).items():
            if key not in fields:
                raise SettingsError(f"{key} (in {config_path})", _unknown(key, fields))
            values[key] = _parse(key, f"{key} (in {config_path})", raw)

    for attribute in fields:
        name = Settings.env_name(attribute)
        if name in env:
            values[attribute] = _parse(attribute, name, env[name])

    for attribute, raw in overrides.items():
        if attribute not in fields:
            raise SettingsError(attribute, _unknown(attribute, fields))
        values[attribute] = _parse(attribute, attribute, raw)

    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.retry_max_sec < settings.retry_initial_sec:
        raise SettingsError(
            Settings.env_name("retry_max_sec"), "must not be below FLEETWAVE_RETRY_INITIAL_SEC"
        )
    if settings.poll_max_sec < settings.poll_initial_sec:
        raise SettingsError(
            Settings.env_name("poll_max_sec"), "must not be below FLEETWAVE_POLL_INITIAL_SEC"
        )
    return settings


def _parse(attribute: str, name: str, raw: object) -> object:
    parse = attrs.fields_dict(Settings)[attribute].metadata["parse"]
    try:
        return parse(raw)
    except ValueError as error:
        raise SettingsError(name, str(error)) from None
