"""Parsing API input and shaping its answers, without HTTP."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetwave.api.commands import parse_plan
from fleetwave.api.envelope import ApiError, Code
from fleetwave.api.schemas import (
    ReleaseBody,
    parse_events_query,
    parse_id,
    parse_json,
    parse_node_registration,
    parse_release_query,
    parse_release_spec,
    timestamp,
)
from fleetwave.store.models import DEFAULT_PLAN, ReleaseStatus
from fleetwave.store.strategy import FIELDS as STRATEGY_FIELDS


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


TEXTS = st.text(
    st.characters(exclude_categories=("Cs",)) | st.sampled_from(["\x00", "\x1b", "\x85", "\t"]),
    max_size=300,
)


@pytest.mark.parametrize("field", ["scope", "reason"])
@given(value=TEXTS)
@settings(max_examples=300)
def test_the_schema_of_a_text_field_takes_what_its_type_takes(field: str, value: str) -> None:
    """The document's pattern and bounds for a one-line name and for free text accept exactly
    what the API accepts (store/inputs.py's checks); lone surrogates aside, which no JSON
    Schema pattern can name."""
    schema = ReleaseBody.model_json_schema()["properties"][field]["anyOf"][0]
    try:
        parse_release_spec({"target": "cdn", field: value})
        accepted = True
    except ApiError as error:
        assert error.message.startswith(f"{field}: "), error.message
        accepted = False

    assert jsonschema.Draft202012Validator(schema).is_valid(value) == accepted


def test_every_strategy_field_is_a_release_body_field() -> None:
    aliases = {field.alias or name for name, field in ReleaseBody.model_fields.items()}

    assert set(STRATEGY_FIELDS) <= aliases


def test_numbers_beyond_any_bound_are_named_by_their_side() -> None:
    with pytest.raises(ApiError) as above:
        parse_release_spec({"target": "cdn", "maxParallel": 10**4000})
    with pytest.raises(ApiError) as below:
        parse_events_query({"afterId": "-" + "9" * 40})

    assert above.value.message == (
        "maxParallel: must be between 1 and 2147483647, got a larger number"
    )
    assert below.value.message == (
        "afterId: must be between 0 and 9223372036854775807, got a smaller number"
    )
