"""docs/operations.md lists every setting with the environment name and default the code
has, in the code's order, so an operator can trust the table."""

from __future__ import annotations

import re

import attrs

from fleetwave.config.settings import Settings
from tests.e2e.harness import REPO

ROW = re.compile(r"^\| `(?P<name>[a-z_]+)` \| `(?P<env>[A-Z_]+)` \| (?P<default>[^|]+) \|")


def documented_default(field: attrs.Attribute[object]) -> str:
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return "`hostname:pid:random`"
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return f"`{int(default)}`"
    if isinstance(default, float):
        return f"`{default:g}`"
    return f"`{default}`"


def test_the_settings_table_of_operations_md_matches_the_code() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    rows = [match.groupdict() for line in text.splitlines() if (match := ROW.match(line))]
    expected = [
        {
            "name": field.name,
            "env": Settings.env_name(field.name),
            "default": documented_default(field),
        }
        for field in attrs.fields(Settings)
    ]
    assert [{k: v.strip() for k, v in row.items()} for row in rows] == expected
