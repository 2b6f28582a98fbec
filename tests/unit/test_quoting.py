"""Outside text in log lines and error messages: clipped, quoted, non-printables escaped."""

from __future__ import annotations

import pytest

from fleetwave.config.quoting import QUOTED_MAX, clipped, loggable, quoted


def test_quoted_text_is_one_line_in_quotes() -> None:
    assert quoted("disk  full\n  on /var") == "'disk full on /var'"


@pytest.mark.parametrize("text", ["a\x00b", "\ud800x", "\x1b[31mred", "\u202eevil", "tab\x0bv"])
def test_non_printable_characters_are_escaped_so_the_text_stores_and_reads(text: str) -> None:
    shown = quoted(text)
    assert shown.isprintable()
    assert "\x00" not in shown
    shown.encode("utf-8")


def test_long_text_is_clipped_with_an_ellipsis() -> None:
    assert clipped("x" * 10_000) == "x" * (QUOTED_MAX - 1) + "…"
    assert len(quoted("y" * 10_000)) == QUOTED_MAX + 2


def test_plain_log_fields_stay_as_they_are_and_odd_ones_are_quoted() -> None:
    assert loggable("/api/v1/nodes") == "/api/v1/nodes"
    assert loggable("/a b") == "'/a b'"
    assert loggable('/x\n{"event": "forged"}') == '\'/x {"event": "forged"}\''
    assert loggable("/" + "p" * 5000) == quoted("/" + "p" * 5000)
    assert len(loggable("/" + "p" * 5000)) == QUOTED_MAX + 2
