"""Parsing API input and shaping its answers, without HTTP."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone

import pytest

from fleetwave.api.commands import parse_plan
from fleetwave.api.envelope import ApiError, Code
from fleetwave.api.schemas import (
    parse_id,
    parse_json,
    parse_node_registration,
    parse_release_query,
    parse_release_spec,
    timestamp,
)
from fleetwave.store.models import DEFAULT_PLAN, ReleaseStatus


def test_release_spec_defaults_to_the_original_plan() -> None:
    spec = parse_release_spec({"target": "cdn", "reason": "r"})

    assert (spec.plan, spec.max_failures, spec.max_parallel, spec.scope) == (
        DEFAULT_PLAN,
        0,
        None,
        None,
    )


def test_release_spec_normalizes_percentages() -> None:
    spec = parse_release_spec({"target": "cdn", "reason": "r", "plan": [1, " 25 %", "100%"]})

    assert spec.plan == (1, "25%", "100%")


def test_missing_target_is_code_2002_and_unknown_field_2003() -> None:
    with pytest.raises(ApiError) as missing:
        parse_release_spec({"reason": "r"})
    with pytest.raises(ApiError) as unknown:
        parse_release_spec({"target": "cdn", "reason": "r", "max_parallel": 1})

    assert (missing.value.code, missing.value.message) == (
        Code.PARAM_INVALID,
        'target: is required (one of "cdn")',
    )
    assert unknown.value.code == Code.PARAM_ILLEGAL
    assert unknown.value.message.startswith("max_parallel: unknown field (allowed: target,")


def test_wrong_type_message_shows_the_kind_and_value() -> None:
    with pytest.raises(ApiError) as error:
        parse_release_spec({"target": "cdn", "reason": "r", "maxParallel": 2.5})

    assert error.value.message == "maxParallel: must be an integer, got a number 2.5"


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(ApiError) as error:
        parse_node_registration({"name": "e", "mainIp": "x" * 500})

    assert len(error.value.message) < 160
    assert "x" * 60 not in error.value.message


@pytest.mark.parametrize("body", [b"NaN", b'{"a": Infinity}'])
def test_json_constants_that_are_not_numbers_are_refused(body: bytes) -> None:
    with pytest.raises(ApiError, match=r"^body: "):
        parse_json(body)


def test_empty_body_is_an_empty_object() -> None:
    assert parse_json(b"  ") == {}


def test_ipv6_addresses_are_normalized() -> None:
    node = parse_node_registration({"name": "e", "mainIp": "2001:DB8:0::1"})

    assert node.main_ip == "2001:db8::1"


@pytest.mark.parametrize("text", ["", "+1", "１", "1e3", " 1"])
def test_ids_are_plain_ascii_digits(text: str) -> None:
    with pytest.raises(ApiError, match=r"^id: "):
        parse_id(text)


def test_release_query_defaults_and_empty_status() -> None:
    page = parse_release_query({"status": ""})

    assert (page.status, page.page, page.page_size, page.offset) == (None, 1, 20, 0)
    assert parse_release_query({"status": "failed", "page": "3", "pageSize": "100"}).offset == 200
    assert parse_release_query({"status": "failed"}).status is ReleaseStatus.FAILED


def test_timestamps_are_utc_with_z() -> None:
    moment = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone(timedelta(hours=8)))

    assert timestamp(moment) == "2025-03-01T04:00:00Z"
    assert timestamp(datetime(2025, 3, 1, 4, 0, tzinfo=UTC)) == "2025-03-01T04:00:00Z"
    assert timestamp(None) is None


def test_cli_plan_takes_counts_and_percentages() -> None:
    assert parse_plan("1,25%,100%") == [1, "25%", "100%"]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_plan("1,,2")
