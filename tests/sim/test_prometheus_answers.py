"""The Prometheus probe against every kind of answer (actors/health_prometheus.py): the
shapes Prometheus gives, and the hostile ones it never should, in process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
from hypothesis import HealthCheck as Settings
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetwave.actors import health_prometheus
from fleetwave.actors.health_prometheus import ANSWER_MAX, GET_MAX
from fleetwave.store.strategy import HealthCheck, validate_health_checks
from tests.agent_answers import POISONS
from tests.prometheus_api import URL, ScriptedPrometheus, rejected, vector

[CHECK] = validate_health_checks(
    [{"name": "5xx", "prometheus": {"url": URL, "query": "q", "max": 0.01}, "timeout": 2}]
)
MATRIX = {
    "status": "success",
    "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[1, "0"]]}]},
}


@pytest.fixture
async def server() -> AsyncIterator[tuple[ScriptedPrometheus, httpx.AsyncClient]]:
    scripted = ScriptedPrometheus()
    async with httpx.AsyncClient(transport=scripted.transport()) as http:
        yield scripted, http


async def probe(
    pair: tuple[ScriptedPrometheus, httpx.AsyncClient],
    query: str = "q",
    check: HealthCheck = CHECK,
) -> str | None:
    return await health_prometheus.probe(check, pair[1], URL, query)


@pytest.mark.parametrize(
    ("status", "document", "reason"),
    [
        (200, vector({"edge-001": 0.0, "edge-002": 0.01}), None),
        (
            200,
            vector({"edge-002": 0.5, "edge-001": 0.0, "edge-003": 0.02}),
            'edge_errors_ratio{node="edge-002"} = 0.5 (above max 0.01); '
            'edge_errors_ratio{node="edge-003"} = 0.02 (above max 0.01)',
        ),
        (200, vector({"edge-001": float("nan")}), 'edge_errors_ratio{node="edge-001"} = NaN'),
        (200, vector({"e": float("inf")}), 'edge_errors_ratio{node="e"} = +Inf (above max 0.01)'),
        (200, vector({}), "the query returned no series (an empty result is unhealthy)"),
        (
            200,
            {"status": "success", "data": {"resultType": "scalar", "result": [1, "0.5"]}},
            "scalar = 0.5 (above max 0.01)",
        ),
        (200, {"status": "success", "data": {"resultType": "scalar", "result": [1, "0"]}}, None),
        (400, rejected('1:5: parse error: unexpected "}"'), "query rejected: 1:5: parse error:"),
        (
            200,
            MATRIX,
            "query rejected: the query returns a range vector (matrix); a check needs an instant",
        ),
        (
            200,
            {"status": "success", "data": {"resultType": "string", "result": [1, "x"]}},
            "query rejected: the query returns a string",
        ),
        (
            422,
            {"status": "error", "errorType": "execution", "error": "many-to-many matching"},
            "HTTP 422: execution: many-to-many matching",
        ),
        (503, {"status": "error", "errorType": "timeout"}, "HTTP 503: timeout"),
        (404, "404 page not found", "HTTP 404: the answer is not Prometheus's JSON"),
        (200, {"status": "success"}, "the answer has no data object"),
        (
            200,
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"value": [1, "0"]}]},
            },
            "a series of the answer has no labels object",
        ),
        (
            200,
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "1_0"]}]},
            },
            "a sample's value is not a number: '1_0'",
        ),
        (
            200,
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, 0.5]}]},
            },
            'a sample is not [time, "value"]',
        ),
        (
            200,
            {"status": "success", "data": {"resultType": "histogram", "result": []}},
            "the answer's resultType is 'histogram', not vector or scalar",
        ),
        (500, {"status": "success", "data": {}}, "HTTP 500 with a success envelope"),
    ],
)
async def test_an_answer_is_judged_with_a_reason(
    server: tuple[ScriptedPrometheus, httpx.AsyncClient],
    status: int,
    document: object,
    reason: str | None,
) -> None:
    scripted, _ = server
    if isinstance(document, str):
        scripted.status, scripted.body = status, document.encode()
    else:
        scripted.answer(document, status)
    said = await probe(server)
    if reason is None:
        assert said is None
    else:
        assert said is not None and said.startswith(reason), said


async def test_a_minimum_check_fails_a_series_below_it(
    server: tuple[ScriptedPrometheus, httpx.AsyncClient],
) -> None:
    [check] = validate_health_checks(
        [{"name": "rps", "prometheus": {"url": URL, "query": "q", "min": 100}}]
    )
    server[0].answer(vector({"edge-001": 250.0, "edge-002": 3.0}, metric="rps"))
    assert await probe(server, check=check) == 'rps{node="edge-002"} = 3 (below min 100)'


async def test_many_offending_series_are_counted_and_the_reason_stays_short(
    server: tuple[ScriptedPrometheus, httpx.AsyncClient],
) -> None:
    server[0].answer(vector({f"edge-{k:03d}-{'x' * 200}": 1.0 for k in range(50)}))
    said = await probe(server)
    assert said is not None and said.endswith(" and 47 more series")
    assert len(said) <= health_prometheus.REASON_MAX
    assert said.startswith('edge_errors_ratio{node="edge-000-xxx')


async def test_an_answer_larger_than_the_cap_is_a_failure(
    server: tuple[ScriptedPrometheus, httpx.AsyncClient],
) -> None:
    scripted, _ = server
    scripted.body = b'{"status": "success", "data": "' + b"x" * ANSWER_MAX + b'"}'
    assert await probe(server) == f"the answer is larger than {ANSWER_MAX} bytes"


async def test_a_value_of_a_million_digits_that_is_no_number_is_refused_in_one_pass(
    server: tuple[ScriptedPrometheus, httpx.AsyncClient],
) -> None:
    # Matched with backtracking, this answer (within ANSWER_MAX) took hours of CPU, and the
    # probe runs on the daemon's one thread: every release stalled behind it.
    server[0].answer(
        {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [{"metric": {}, "value": [1, "1" * 1_000_000 + "x"]}],
            },
        }
    )
    assert await probe(server) == "a sample's value is not a number: '" + "1" * 39 + "…'"


async def test_a_long_query_is_sent_as_a_form_and_a_short_one_in_the_url(
    server: tuple[ScriptedPrometheus, httpx.AsyncClient],
) -> None:
    scripted, _ = server
    scripted.answer(vector({"edge-001": 0.0}))
    long = 'x{node=~"' + "|".join(f"edge-{k:05d}" for k in range(GET_MAX // 8)) + '"}'
    assert await probe(server, "up") is None
    assert await probe(server, long) is None
    assert scripted.queries == [("GET", "up"), ("POST", long)]


async def test_no_answer_within_the_timeout_and_a_refused_connection_are_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def silent(scope: object, receive: object, send: object) -> None:
        await trio.sleep_forever()

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=silent)) as http:
        assert await health_prometheus.probe(CHECK, http, URL, "q") == "no answer within 2s"
    async with httpx.AsyncClient() as http:
        said = await health_prometheus.probe(CHECK, http, "http://127.0.0.1:1", "q")
    assert said is not None and said.startswith("request failed: ConnectError")


@settings(max_examples=60, deadline=None, suppress_health_check=[Settings.function_scoped_fixture])
@given(
    body=st.one_of(
        st.sampled_from(POISONS),
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "status",
                            "data",
                            "resultType",
                            "result",
                            "metric",
                            "value",
                            "error",
                            "errorType",
                        ]
                    ),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=12,
        ).map(lambda value: json.dumps(value).encode()),
    ),
    status=st.sampled_from([200, 400, 422, 503]),
)
async def test_any_answer_gives_a_verdict_never_an_exception(body: bytes, status: int) -> None:
    scripted = ScriptedPrometheus(status=status, body=body)
    async with httpx.AsyncClient(transport=scripted.transport()) as http:
        said = await health_prometheus.probe(CHECK, http, URL, "q")
    assert said is None or (
        said.isprintable() and 0 < len(said) <= 4 * health_prometheus.REASON_MAX
    )
