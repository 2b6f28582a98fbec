"""Strategy fields of POST /api/v1/releases, the promote endpoint, and their commands, over a
MemoryStore (no daemon: a release nobody holds takes a verb at once)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from fleetwave.store.memory import MemoryStore
from tests.api.conftest import Served, add_nodes

GATED = {"target": "cdn", "plan": [1, {"pause": 300}, "50%", {"pause": None}, "100%"]}
PROM = "http://prometheus.internal:9090"


async def test_a_release_with_a_strategy_shows_it_and_its_step(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 4)
    body = {**GATED, "maxFailurePercent": 25, "onFailure": "stop"}

    response = await client.post("/api/v1/releases", json=body)

    assert response.status_code == 200, response.text
    release_id = response.json()["data"]["releaseId"]
    release = (await client.get(f"/api/v1/releases/{release_id}")).json()["data"]["release"]
    assert release["plan"] == [1, "50%", "100%"]
    assert release["strategy"] == {
        "plan": [1, {"pause": 300.0}, "50%", {"pause": None}, "100%"],
        "maxFailures": None,
        "maxFailurePercent": 25.0,
        "onFailure": "stop",
        "healthChecks": [],
    }
    assert release["step"] == {
        "position": 0,
        "kind": "batch",
        "batch": 1,
        "planIndex": 0,
        "until": None,
        "promoted": False,
    }


async def test_a_release_without_a_strategy_has_none(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 2)
    response = await client.post("/api/v1/releases", json={"target": "cdn", "maxFailures": 1})
    release_id = response.json()["data"]["releaseId"]
    release = (await client.get(f"/api/v1/releases/{release_id}")).json()["data"]["release"]
    assert (release["strategy"], release["step"], release["maxFailures"]) == (None, None, 1)


async def test_a_prometheus_check_is_kept_in_the_strategy_as_given(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 2)
    check = {
        "name": "5xx",
        "prometheus": {"url": PROM, "query": 'errors{node=~"{nodes}"}', "max": 0.01, "min": 0},
        "interval": 15,
        "failureLimit": 2,
        "timeout": 5,
    }
    response = await client.post("/api/v1/releases", json={**GATED, "healthChecks": [check]})
    assert response.status_code == 200, response.text
    release_id = response.json()["data"]["releaseId"]
    release = (await client.get(f"/api/v1/releases/{release_id}")).json()["data"]["release"]
    assert release["strategy"]["healthChecks"] == [check]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"plan": [1, {"pause": None}]}, "plan[1]: a gate cannot be the last step"),
        ({"plan": [1, {"bake": 5}, 2]}, "plan[1]: unknown step kind (bake)"),
        ({"plan": [1, "150%"]}, "plan[1]: must be above 0% and at most 100%"),
        ({"plan": [1, {"pause": -1}, 2]}, "plan[1].pause: must be above 0"),
        ({"maxFailurePercent": 101}, "maxFailurePercent: must be from 0 to 100"),
        ({"onFailure": "explode"}, "onFailure: must be one of stop, pause, rollback"),
        ({"maxFailures": "2"}, "maxFailures: must be a whole number"),
        (
            {"healthChecks": [{"name": "5xx", "prometheus": {"url": PROM, "query": "up"}}]},
            "healthChecks[0].prometheus: give max, min or both",
        ),
        (
            {"healthChecks": [{"name": "5xx", "prometheus": {"url": "ftp://p", "query": "up"}}]},
            "healthChecks[0].prometheus",
        ),
    ],
)
async def test_a_bad_strategy_is_400_2002_naming_the_field_and_creates_nothing(
    client: httpx.AsyncClient, store: MemoryStore, fields: dict[str, object], message: str
) -> None:
    await add_nodes(store, 2)

    response = await client.post("/api/v1/releases", json={"target": "cdn", **fields})

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 2002
    assert body["message"].startswith(message)
    assert await store.list_releases() == ([], 0)


async def test_promote_full_of_a_pending_release_skips_its_pauses(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 4)
    release_id = (await client.post("/api/v1/releases", json=GATED)).json()["data"]["releaseId"]

    refused = await client.post(f"/api/v1/releases/{release_id}/promote")
    assert refused.status_code == 409 and refused.json()["code"] == 3003
    assert "is not at a pause: nothing to promote" in refused.json()["message"]
    bad = await client.post(f"/api/v1/releases/{release_id}/promote", json={"full": "yes"})
    assert bad.status_code == 400 and bad.json()["message"].startswith("full: must be true")
    unknown = await client.post(f"/api/v1/releases/{release_id}/promote", json={"toVersion": 1})
    assert unknown.status_code == 400

    promoted = await client.post(
        f"/api/v1/releases/{release_id}/promote", json={"full": True, "reason": "hotfix"}
    )

    assert promoted.status_code == 200, promoted.text
    data = promoted.json()["data"]
    assert (data["verb"], data["changed"], data["inEffect"]) == ("promote", True, True)
    assert data["release"]["lastVerb"] == {"verb": "promote", "by": "tests", "reason": "hotfix"}
    events = (await client.get(f"/api/v1/releases/{release_id}/events")).json()["data"]
    messages = [event["message"] for event in events["items"]]
    assert "promote by tests (full: 2 remaining pause(s) skipped): hotfix" in messages


async def test_cli_release_promote_full(served: Served, store: MemoryStore) -> None:
    await add_nodes(store, 4)
    code, out, _ = await served.run(
        "release", "create", "--reason", "r", "--plan", "1,pause=300,50%,gate,100%"
    )
    assert code == 0, out
    [release], _ = await store.list_releases()
    assert release.strategy is not None
    assert release.strategy["plan"] == [1, {"pause": 300.0}, "50%", {"pause": None}, "100%"]

    code, out, err = await served.run("release", "promote", str(release.id), "--full")

    assert (code, err) == (0, "")
    assert f"promote in effect on release {release.id}" in out
    promoted = await store.get_release(release.id)
    assert promoted is not None and promoted.promoted_to == 5


async def test_cli_promote_not_at_a_pause_exits_1_with_the_reason(
    served: Served, store: MemoryStore
) -> None:
    await add_nodes(store, 2)
    await served.run("release", "create", "--reason", "r", "--plan", "1,gate,100%")
    [release], _ = await store.list_releases()

    code, _, err = await served.run("release", "promote", str(release.id))

    assert code == 1
    assert "is not at a pause: nothing to promote" in err and "(code 3003)" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--plan", "1,gate"], "plan[1]: a gate cannot be the last step"),
        (["--plan", "1,pause=0,2"], "plan[1].pause: must be above 0"),
        (["--max-failure-percent", "120"], "maxFailurePercent: must be from 0 to 100"),
        (["--on-failure", "later"], "onFailure: must be one of stop, pause, rollback"),
    ],
)
async def test_cli_a_bad_strategy_exits_2_naming_the_field(
    served: Served, store: MemoryStore, argv: list[str], message: str
) -> None:
    await add_nodes(store, 2)

    code, out, err = await served.run("release", "create", "--reason", "r", *argv)

    assert (code, out) == (2, "")
    assert err.startswith(f"fleetwave: {message}") and err.endswith("; nothing was created\n")
    assert await store.list_releases() == ([], 0)


async def test_cli_strategy_file_is_checked_and_its_options_win(
    served: Served, store: MemoryStore, tmp_path: Path
) -> None:
    await add_nodes(store, 4)
    path = tmp_path / "strategy.json"
    path.write_text(json.dumps({"plan": [1, {"pause": 60}, "100%"], "onFailure": "bad"}))
    code, _, err = await served.run("release", "create", "--reason", "r", "--strategy", str(path))
    assert code == 2 and "onFailure: must be one of" in err
    path.write_text(json.dumps({"plan": [1, "100%"], "hold": 1}))
    code, _, err = await served.run("release", "create", "--reason", "r", "--strategy", str(path))
    assert code == 2 and "hold: not a strategy field" in err
    path.write_text(json.dumps({"plan": [1, {"pause": 60}, "100%"], "onFailure": "bad"}))

    code, _, err = await served.run(
        "release", "create", "--reason", "r", "--strategy", str(path), "--on-failure", "stop"
    )

    assert code == 0, err
    [release], _ = await store.list_releases()
    assert release.strategy is not None and release.strategy["onFailure"] == "stop"
