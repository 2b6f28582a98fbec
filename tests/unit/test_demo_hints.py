"""The demo's hints name fleetwave as the person watching can type it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fleetwave.demo import command_as_typed

SCRIPT = Path(sys.executable).with_name("fleetwave")

pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="needs the installed script")


def test_an_activated_environment_is_typed_by_name() -> None:
    path = os.pathsep.join([str(SCRIPT.parent), "/usr/bin", "/bin"])

    assert command_as_typed(path=path, cwd=Path("/")) == "fleetwave"


def test_without_it_on_path_the_script_is_named_from_the_current_directory() -> None:
    venv = SCRIPT.parent.parent

    assert command_as_typed(path="/usr/bin:/bin", cwd=venv.parent) == str(
        Path(venv.name) / "bin" / "fleetwave"
    )
    assert command_as_typed(path="/usr/bin:/bin", cwd=SCRIPT.parent) == "./fleetwave"


def test_outside_the_environment_the_script_is_named_by_its_full_path(tmp_path: Path) -> None:
    assert command_as_typed(path="/usr/bin:/bin", cwd=tmp_path) == str(SCRIPT)


def test_another_fleetwave_first_on_path_is_not_this_one(tmp_path: Path) -> None:
    other = tmp_path / "fleetwave"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)

    hinted = command_as_typed(path=f"{tmp_path}:{SCRIPT.parent}", cwd=tmp_path)

    assert hinted == str(SCRIPT)
