"""Scope default strategies over the API (MemoryStore): GET /api/v1/scopes, GET, PUT and
DELETE /api/v1/scopes/{scope}/strategy, and releases created without strategy fields taking
the default of their scope."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from fleetwave.api.auth import create_token
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import Role
from tests.api.conftest import Served, add_nodes

BAKED = {"plan": [1, {"pause": 300}, "100%"], "maxFailurePercent": 10, "onFailure": "pause"}
BAKED_STORED = {
    "plan": [1, {"pause": 300.0}, "100%"],
    "maxFailures": None,
    "maxFailurePercent": 10.0,
    "onFailure": "pause",
    "healthChecks": [],
}
CDN = "/api/v1/scopes/cdn/strategy"


async def test_a_default_is_set_shown_listed_and_cleared_with_who_set_it(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/api/v1/scopes")).json()["data"] == {"items": [], "total": 0}

    with capture_logs() as logs:
        answer = await client.put(CDN, json=BAKED)

    assert answer.status_code == 200, answer.text
    item = answer.json()["data"]
    assert item["scope"] == "cdn"
    assert item["strategy"] == BAKED_STORED
    assert item["problem"] is None
    assert item["setBy"] == {"tokenName": "tests", "role": "admin"}
    assert item["createdAt"].endswith("Z") and item["updatedAt"].endswith("Z")
    assert [line for line in logs if line["event"] == "api.scope_strategy_set"] == [
        {
            "event": "api.scope_strategy_set",
            "scope": "cdn",
            "token_name": "tests",
            "token_role": "admin",
            "log_level": "info",
        }
    ]
    assert (await client.get(CDN)).json()["data"] == item
    listed = (await client.get("/api/v1/scopes")).json()["data"]
    assert listed == {"items": [item], "total": 1}

    with capture_logs() as logs:
        cleared = await client.delete(CDN)

    assert cleared.status_code == 200
    assert cleared.json()["data"] == {**item, "cleared": True}
    assert [line["event"] for line in logs if line["event"].startswith("api.scope")] == [
        "api.scope_strategy_cleared"
    ]
    for method in ("GET", "DELETE"):
        gone = await client.request(method, CDN)
        assert gone.status_code == 404
        assert gone.json() == {
            "code": 3001,
            "message": "scope cdn has no default strategy",
            "data": None,
        }


async def test_a_scope_name_in_unicode_is_addressed_percent_encoded_but_not_one_with_a_slash(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.put("/api/v1/scopes/eu-west%20%C3%A9/strategy", json={"plan": [2]})

    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["scope"] == "eu-west é"
    shown = await client.get("/api/v1/scopes/eu-west%20%C3%A9/strategy")
    assert shown.json()["data"]["strategy"]["plan"] == [2]
    # A "/" (even as %2F) ends the path segment: no such endpoint, and no such default.
    slashed = await client.put("/api/v1/scopes/eu%2Fwest/strategy", json={"plan": [2]})
    assert (slashed.status_code, slashed.json()["code"]) == (404, 3001)
    assert slashed.json()["message"].startswith("no such endpoint")
    assert (await client.get("/api/v1/scopes")).json()["data"]["total"] == 1


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        ({"plan": [1, {"pause": None}]}, 400, 2002, "plan[1]: a gate cannot be the last step"),
        ({"plan": [1, {"bake": 5}]}, 400, 2002, "plan[1]: unknown step kind (bake)"),
        ({"maxFailurePercent": 101}, 400, 2002, "maxFailurePercent: must be from 0 to 100"),
        ({"onFailure": "explode"}, 400, 2002, "onFailure: must be one of stop, pause, rollback"),
        (
            {"healthChecks": [{"name": "e", "http": {"url": "ftp://x"}}]},
            400,
            2002,
            "healthChecks[0].http.url: must be an http or https URL",
        ),
        ({"plan": [1], "target": "cdn"}, 400, 2003, "target: unknown field (allowed: plan,"),
        ({}, 400, 2001, "body: give at least one of plan, maxFailures"),
        ({"plan": None}, 400, 2001, "body: give at least one of"),
        ([1, 2], 400, 2002, "body: must be a JSON object, got a list"),
    ],
)
async def test_a_bad_default_is_a_400_naming_the_field_and_the_old_one_stays(
    client: httpx.AsyncClient, body: object, status: int, code: int, message: str
) -> None:
    await client.put(CDN, json={"plan": [1, "100%"]})

    answer = await client.put(CDN, json=body)

    assert answer.status_code == status
    assert answer.json()["code"] == code
    assert answer.json()["message"].startswith(message), answer.json()["message"]
    assert (await client.get(CDN)).json()["data"]["strategy"]["plan"] == [1, "100%"]


async def test_a_malformed_body_is_a_400_and_nothing_is_set(client: httpx.AsyncClient) -> None:
    answer = await client.put(CDN, content=b'{"plan": [1,', headers={"content-type": "x"})

    assert answer.status_code == 400
    assert answer.json()["message"].startswith("body: malformed JSON")
    assert (await client.get("/api/v1/scopes")).json()["data"]["total"] == 0


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/api/v1/scopes/%20/strategy", "scope: must not be empty"),
        ("/api/v1/scopes/eu%00/strategy", "scope: contains NUL (U+0000) at position 2"),
        ("/api/v1/scopes/eu%0Awest/strategy", "scope: contains a control character"),
        (f"/api/v1/scopes/{'e' * 256}/strategy", "scope: must be at most 255 characters"),
        ("/api/v1/scopes/%2E%2E/strategy", 'scope: must not be ".."'),
    ],
)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_a_bad_scope_name_is_a_400_naming_it(
    client: httpx.AsyncClient, path: str, message: str, method: str
) -> None:
    answer = await client.request(method, path, json={"plan": [1]} if method == "PUT" else None)

    assert answer.status_code == 400
    assert answer.json()["code"] == 2002
    assert answer.json()["message"].startswith(message)
    assert (await client.get("/api/v1/scopes")).json()["data"]["total"] == 0


async def test_a_viewer_reads_defaults_an_operator_sets_and_clears_them(
    anonymous: httpx.AsyncClient, store: MemoryStore
) -> None:
    viewer = {"Authorization": f"Bearer {await create_token(store, 'dash', role=Role.VIEWER)}"}
    operator = {"Authorization": f"Bearer {await create_token(store, 'ops', role=Role.OPERATOR)}"}

    refused = await anonymous.put(CDN, json=BAKED, headers=viewer)
    assert refused.status_code == 403
    assert refused.json()["message"] == (
        "forbidden: PUT /api/v1/scopes/cdn/strategy needs the operator role; token 'dash' is viewer"
    )
    assert await store.list_scope_strategies() == []

    assert (await anonymous.put(CDN, json=BAKED, headers=operator)).status_code == 200
    shown = await anonymous.get(CDN, headers=viewer)
    assert shown.json()["data"]["setBy"] == {"tokenName": "ops", "role": "operator"}
    assert (await anonymous.delete(CDN, headers=viewer)).status_code == 403
    assert (await anonymous.delete(CDN, headers=operator)).status_code == 200


async def test_a_release_of_target_alone_copies_the_default_and_says_so(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 4)
    await client.put(CDN, json=BAKED)

    created = (await client.post("/api/v1/releases", json={"target": "cdn"})).json()["data"]

    assert created["defaultScope"] == "cdn"
    assert [len(batch["nodeIds"]) for batch in created["batches"]] == [1, 3]
    detail = (await client.get(f"/api/v1/releases/{created['releaseId']}")).json()["data"]
    assert detail["release"]["strategy"] == BAKED_STORED
    assert detail["release"]["step"]["kind"] == "batch"
    events = (await client.get(f"/api/v1/releases/{created['releaseId']}/events")).json()
    first = events["data"]["items"][0]
    assert first["message"].endswith("; strategy: the default of scope cdn")
    assert first["actor"] == {"tokenName": "tests", "role": "admin"}

    # A later change of the default changes no release already created.
    await client.put(CDN, json={"plan": ["100%"]})
    again = (await client.get(f"/api/v1/releases/{created['releaseId']}")).json()["data"]
    assert again["release"]["strategy"] == BAKED_STORED


async def test_explicit_fields_win_whole_and_a_named_scope_falls_back_to_its_target(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 4)
    await client.put(CDN, json=BAKED)
    await client.put("/api/v1/scopes/eu/strategy", json={"plan": [2, "100%"]})

    given = await client.post("/api/v1/releases", json={"target": "cdn", "plan": ["100%"]})
    eu = await client.post("/api/v1/releases", json={"target": "cdn", "scope": "eu"})
    us = await client.post(
        "/api/v1/releases", json={"target": "cdn", "scope": "us", "maxFailures": 1}
    )

    strategies = []
    for answer in (given, eu, us):
        data = answer.json()["data"]
        detail = (await client.get(f"/api/v1/releases/{data['releaseId']}")).json()["data"]
        strategies.append((data["defaultScope"], detail["release"]["strategy"]))
    assert strategies[0] == ("cdn", {**BAKED_STORED, "plan": ["100%"]})
    assert strategies[1] == (
        "eu",
        {
            "plan": [2, "100%"],
            "maxFailures": 0,
            "maxFailurePercent": None,
            "onFailure": "stop",
            "healthChecks": [],
        },
    )
    # maxFailures replaces the default's whole budget (its percentage too).
    assert strategies[2] == ("cdn", {**BAKED_STORED, "maxFailures": 1, "maxFailurePercent": None})


async def test_without_a_default_target_alone_runs_as_the_original(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 3)
    await client.put("/api/v1/scopes/eu/strategy", json=BAKED)

    created = (await client.post("/api/v1/releases", json={"target": "cdn"})).json()["data"]

    assert created["defaultScope"] is None
    assert [len(batch["nodeIds"]) for batch in created["batches"]] == [1, 2]
    detail = (await client.get(f"/api/v1/releases/{created['releaseId']}")).json()["data"]
    assert (detail["release"]["strategy"], detail["release"]["plan"]) == (None, [1, "100%"])


async def test_the_dry_run_takes_the_default_and_creates_nothing(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 3)
    await client.put(CDN, json=BAKED)

    answer = await client.post("/api/v1/releases?dryRun=true", json={"target": "cdn"})

    data = answer.json()["data"]
    assert data["defaultScope"] == "cdn"
    assert [step["kind"] for step in data["steps"]] == ["batch", "bake", "batch"]
    assert data["bakeSeconds"] == 300
    assert await store.list_releases() == ([], 0)


# --- the command line -------------------------------------------------------------------------


async def test_scope_commands_set_show_list_and_clear_a_default(
    served: Served, store: MemoryStore, tmp_path: Path
) -> None:
    strategy = tmp_path / "strategy.json"
    strategy.write_text(
        json.dumps({**BAKED, "plan": [{"batch": 1, "maxFailures": 0}, *BAKED["plan"][1:]]})
    )

    code, out, err = await served.run("scope", "strategy", "set", "cdn", str(strategy))

    assert (code, err) == (0, "")
    assert out == (
        "default strategy of scope cdn set: plan 1[maxFailures 0],pause=300,100%; "
        "budget 10%; on failure pause; checks -; releases created without strategy fields "
        "take it from now on\n"
    )
    row = await store.scope_strategy("cdn")
    assert row is not None and row.set_by is not None and row.set_by.token_name == "tests"

    code, out, _ = await served.run("scope", "strategy", "show", "cdn", "--json")
    assert code == 0 and json.loads(out)["strategy"]["plan"][0] == {"batch": 1, "maxFailures": 0}
    code, out, _ = await served.run("scope", "strategy", "show", "cdn")
    assert code == 0 and out.startswith("scope cdn: default strategy set by tests (admin) at ")
    code, out, _ = await served.run("scope", "list")
    assert code == 0
    assert out.splitlines()[0].split() == ["SCOPE", "DEFAULT", "STRATEGY", "SET", "BY", "UPDATED"]
    assert out.splitlines()[1].split()[:3] == ["cdn", "plan", "1[maxFailures"]
    code, out, _ = await served.run("scope", "list", "--json")
    assert code == 0 and [item["scope"] for item in json.loads(out)["items"]] == ["cdn"]

    code, out, _ = await served.run("scope", "strategy", "clear", "cdn")
    assert code == 0 and out.startswith("default strategy of scope cdn cleared")
    assert await store.scope_strategy("cdn") is None
    code, out, err = await served.run("scope", "strategy", "show", "cdn")
    assert (code, out) == (1, "")
    assert err == "fleetwave: scope cdn has no default strategy (code 3001)\n"
    code, out, _ = await served.run("scope", "list")
    assert out.startswith("no scope has a default strategy")


@pytest.mark.parametrize(
    ("argv", "content", "message"),
    [
        (["cdn"], '{"plan": [1, {"pause": null}]}', "plan[1]: a gate cannot be the last step"),
        (["cdn"], '{"batchSize": 3}', "batchSize: not a strategy field"),
        (["cdn"], "[1, 2]", "FILE: the file must hold a JSON object"),
        (["cdn"], '{"plan": [1,', "FILE: cannot read"),
        (["cdn"], "[" * 100_000 + "]" * 100_000, "FILE: cannot read"),
        (["cdn"], "{}", "FILE: give at least one of plan"),
        ([""], '{"plan": [1]}', "scope: must not be empty"),
        (["e" * 256], '{"plan": [1]}', "scope: must be at most 255 characters"),
        (["eu/west"], '{"plan": [1]}', 'scope: must not hold "/"'),
        ([".."], '{"plan": [1]}', 'scope: must not be ".."'),
        (["."], '{"plan": [1]}', 'scope: must not be "."'),
    ],
)
async def test_scope_strategy_set_refuses_bad_input_with_exit_2_and_changes_nothing(
    served: Served,
    store: MemoryStore,
    tmp_path: Path,
    argv: list[str],
    content: str,
    message: str,
) -> None:
    strategy = tmp_path / "bad.json"
    strategy.write_text(content)

    code, out, err = await served.run("scope", "strategy", "set", *argv, str(strategy))

    assert (code, out) == (2, "")
    assert err.startswith(f"fleetwave: {message}"), err
    assert err.endswith("; nothing changed\n")
    assert await store.list_scope_strategies() == []


async def test_release_plan_and_create_show_the_scope_default_they_took(
    served: Served, store: MemoryStore, tmp_path: Path
) -> None:
    await add_nodes(store, 3)
    await store.set_scope_strategy("cdn", BAKED)

    code, out, _ = await served.run("release", "plan", "--reason", "r")
    assert code == 0
    assert "strategy: the default of scope cdn" in out
    assert "step 1: bake (batch 1)" in out

    code, out, _ = await served.run("release", "create", "--reason", "r")
    assert code == 0 and out.rstrip().endswith("; strategy: the default of scope cdn")
    [release], _ = await store.list_releases()
    assert release.strategy == BAKED_STORED


async def test_scope_strategy_set_reads_the_strategy_from_standard_input(
    served: Served, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"plan": [2, "100%"], "maxFailures": 1}'))

    code, _, err = await served.run("scope", "strategy", "set", "eu", "-")

    assert (code, err) == (0, "")
    row = await store.scope_strategy("eu")
    assert row is not None
    assert (row.strategy["plan"], row.strategy["maxFailures"]) == ([2, "100%"], 1)
