"""The wheel built from the checkout, installed into a fresh virtual environment beside a
distribution that owns a top-level ``config`` module, works with the repository off the path:
``fleetwave migrate``, ``fleetwave demo`` and ``python -m fleetwave --version`` run from it,
and every file the package folders hold is inside it. ``make install`` builds without a
warning."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import attrs
import pytest

from tests.e2e.harness import REPO, processes_using

pytestmark = pytest.mark.postgres

BUILD_TIMEOUT = 300
COMMAND_TIMEOUT = 180
OTHER_CONFIG = "another distribution's config module"
NOT_PACKAGED = {"tests"}
"""Top-level folders with an ``__init__.py`` that are not part of the installed package."""

# This machine's pip configuration names index folders that may not exist; pip says so on
# every run. That is the machine's, not the build's.
_MACHINE_PIP_NOTE = re.compile(
    r"^WARNING: Location '[^']*' is ignored: it is neither a file nor a directory\.$"
)


def _run(
    command: list[str], cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 0
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command,
        cwd=cwd,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout or COMMAND_TIMEOUT,
        check=False,
    )
    return result


def _warnings(output: str) -> list[str]:
    lines = [line for line in output.splitlines() if not _MACHINE_PIP_NOTE.match(line.strip())]
    return [line for line in lines if "warning" in line.lower()]


def _tracked_files() -> list[str]:
    """The checkout's files as a fresh clone would have them (and new ones not ignored)."""
    listed = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], REPO)
    assert listed.returncode == 0, listed.stderr
    return [name for name in listed.stdout.split("\0") if name and (REPO / name).is_file()]


def _package_files(files: list[str]) -> list[str]:
    """Files under the package folders (top-level folders with an ``__init__.py``) and the
    top-level modules: what the wheel installs as ``fleetwave/...``."""
    folders = {name.split("/")[0] for name in files if re.fullmatch(r"[a-z_]+/__init__\.py", name)}
    folders -= NOT_PACKAGED
    return sorted(
        name
        for name in files
        if (name.split("/")[0] in folders or re.fullmatch(r"[a-z_]+\.py", name))
        and "__pycache__" not in name
    )


@attrs.frozen
class Installed:
    checkout: Path
    """The copy of the checkout the wheel was built from."""
    wheel: Path
    build_output: str
    venv: Path
    elsewhere: Path
    """A working directory outside the repository."""

    @property
    def env(self) -> dict[str, str]:
        """A shell of someone who installed the wheel: the venv's bin first, nothing of the
        repository, no fleetwave settings."""
        return {
            "PATH": f"{self.venv / 'bin'}:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", str(self.elsewhere)),
            "LANG": "C.UTF-8",
        }

    def run(self, *command: str, **settings: str) -> subprocess.CompletedProcess[str]:
        return _run(list(command), self.elsewhere, {**self.env, **settings})


def _copy_checkout(target: Path, files: list[str]) -> None:
    # Building in the checkout itself would leave build/ and egg-info behind in it.
    for name in files:
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, destination)


def _other_config_distribution(directory: Path) -> None:
    """A distribution of its own whose one module is a top-level ``config``."""
    directory.mkdir()
    (directory / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "someone-elses-config"\nversion = "1.0"\n'
        '[tool.setuptools]\npy-modules = ["config"]\n'
    )
    (directory / "config.py").write_text(f"OWNER = {OTHER_CONFIG!r}\n")


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    # Not under pytest's tmp_path, whose base is owner-only: run as root, the database server
    # is its own system user, and it loads PL/pgSQL (migration 0007's trigger) from the venv.
    base = Path(tempfile.mkdtemp(prefix="fleetwave-wheel-"))
    base.chmod(0o755)
    try:
        yield _install(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _install(base: Path) -> Installed:
    checkout, dist, venv, elsewhere = (base / n for n in ("checkout", "dist", "venv", "cwd"))
    elsewhere.mkdir()
    _copy_checkout(checkout, _tracked_files())
    pip = [sys.executable, "-m", "pip"]
    # This environment's setuptools (the test extra) builds: no isolated build environment.
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist)]
    built = _run([*build, str(checkout)], base, timeout=BUILD_TIMEOUT)
    assert built.returncode == 0, built.stderr
    _other_config_distribution(base / "other")
    other = _run([*build, str(base / "other")], base, timeout=BUILD_TIMEOUT)
    assert other.returncode == 0, other.stderr
    [wheel] = dist.glob("fleetwave-*.whl")
    # No pip of its own: this interpreter's pip installs into it (faster, same result).
    created = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base)
    assert created.returncode == 0, created.stderr
    install = _run(
        [*pip, "--python", str(venv / "bin" / "python"), "install", *map(str, dist.glob("*.whl"))],
        base,
        timeout=BUILD_TIMEOUT,
    )
    assert install.returncode == 0, install.stderr
    return Installed(checkout, wheel, built.stdout + built.stderr, venv, elsewhere)


def test_the_wheel_builds_without_warnings(installed: Installed) -> None:
    assert _warnings(installed.build_output) == []


def test_the_wheel_holds_every_file_of_the_package_folders(installed: Installed) -> None:
    expected = {f"fleetwave/{name}" for name in _package_files(_tracked_files())}
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())

    assert any(name.endswith(".sql") for name in expected)
    assert sorted(expected - names) == []
    outside = {n for n in names if not n.startswith(("fleetwave/", "fleetwave-"))}
    assert outside == set(), "the wheel installs one import name"
    assert not any(name.startswith("fleetwave/tests/") for name in names)


def test_both_distributions_import_side_by_side_off_the_repository(installed: Installed) -> None:
    probe = (
        "import sys, config, fleetwave.config.settings as settings, fleetwave.cli;"
        "print(config.OWNER); print(settings.__file__); print(repr(sys.path))"
    )

    result = installed.run("python", "-c", probe)

    assert result.returncode == 0, result.stderr
    owner, settings_file, path = result.stdout.splitlines()
    assert owner == OTHER_CONFIG
    assert settings_file.startswith(str(installed.venv))
    assert str(REPO) not in path


def test_python_m_fleetwave_version(installed: Installed) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

    result = installed.run("python", "-m", "fleetwave", "--version")

    assert (result.returncode, result.stdout) == (0, f"fleetwave {version}\n"), result.stderr


def test_fleetwave_migrate_applies_the_wheels_migrations(
    installed: Installed, demo_dir: Path
) -> None:
    shipped = sorted(p.stem for p in (installed.checkout / "store" / "migrations").glob("*.sql"))
    latest = int(shipped[-1][:4])

    first = installed.run("fleetwave", "migrate", FLEETWAVE_DATA_DIR=str(demo_dir / "pg"))
    again = installed.run("fleetwave", "migrate", FLEETWAVE_DATA_DIR=str(demo_dir / "pg"))

    assert first.returncode == 0, first.stderr
    assert first.stdout == f"applied {', '.join(shipped)}; schema at {latest}\n"
    assert again.stdout == f"nothing to apply; schema at {latest}\n", again.stderr


def test_fleetwave_demo_runs_from_the_wheel(installed: Installed, demo_dir: Path) -> None:
    result = installed.run("fleetwave", "demo", "--agents", "3", "--data-dir", str(demo_dir))

    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-4000:]
    assert "release 1 (version 1): success  success 3/3" in text, text
    assert "release 2 (version 2): failed   success 0/3, failed 1, skipped 2" in text, text
    assert processes_using(demo_dir) == []


def test_make_install_prints_no_build_warnings(installed: Installed, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    # The recipe as written; only the dependencies (wheels, nothing built) are left out.
    env["PIP_NO_DEPS"] = "1"

    result = _run(
        ["make", "-s", "install", f"VENV={tmp_path / 'venv'}", f"PYTHON={sys.executable}"],
        installed.checkout,
        env,
        timeout=BUILD_TIMEOUT,
    )

    assert result.returncode == 0, result.stderr[-4000:]
    assert _warnings(result.stdout + result.stderr) == []
    assert (tmp_path / "venv" / "bin" / "fleetwave").is_file()
    assert (tmp_path / "venv" / "src" / "fleetwave").resolve() == installed.checkout
