"""Metrics in simulated time: scraped from the API before, during and after a real release."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio.testing import MockClock

from fleetwave.agent.sim import Behaviour
from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.store.metered import metered
from fleetwave.store.models import ReleaseStatus
from fleetwave.supervisor import Supervisor
from tests.sim.conftest import Sim


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return _samples(text).get((name, frozenset(labels.items())), 0.0)


async def test_metrics_move_while_a_release_runs_and_after_it_ends(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(
        5,
        behaviour=Behaviour(apply_time=(10, 20)),
        overrides=[(5, Behaviour(apply_time=(2, 2), fail="disk full"))],
    )
    store = metered(sim.store)
    await sim.register()
    token = await create_token(sim.store, "prometheus")
    app = create_app(store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api.test",
        headers={"Authorization": f"Bearer {token}"},
    ) as api:

        async def scrape() -> str:
            response = await api.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            return response.text

        before = await scrape()
        await sim.nursery.start(Supervisor(store, sim.agents(), sim.settings).run)
        release_id = await sim.create(max_failures=1)
        # The canary (10-20 s) has been dispatched and asked about a few times by now.
        await trio.sleep(8)
        during = await scrape()
        await sim.wait_terminal(release_id)
        after = await scrape()

    assert value(during, "fleetwave_releases", status="running") == 1
    assert value(during, "fleetwave_claims_total") == value(before, "fleetwave_claims_total") + 1
    dispatches = "fleetwave_agent_request_seconds_count"
    assert value(during, dispatches, operation="dispatch") > value(
        before, dispatches, operation="dispatch"
    )
    assert value(during, dispatches, operation="status") > value(
        before, dispatches, operation="status"
    )
    assert value(during, "fleetwave_poll_budget_watching") == 1
    assert value(during, "fleetwave_poll_budget_rate") == sim.settings.poll_rate

    release = await sim.store.get_release(release_id)
    assert release is not None and release.status is ReleaseStatus.SUCCESS
    assert value(after, "fleetwave_releases", status="running") == 0
    assert value(after, "fleetwave_releases", status="success") == 1
    finished = "fleetwave_nodes_finished_total"
    assert (
        value(after, finished, outcome="success", kind="")
        - value(before, finished, outcome="success", kind="")
        == 4
    )
    assert (
        value(after, finished, outcome="failed", kind="task_failed")
        - value(before, finished, outcome="failed", kind="task_failed")
        == 1
    )
    released = "fleetwave_releases_finished_total"
    assert value(after, released, status="success") - value(before, released, status="success") == 1
    applies = "fleetwave_node_apply_seconds_count"
    assert value(after, applies) - value(before, applies) == 5
    # Every store operation of the daemon and the API went through the metered store.
    records = "fleetwave_store_operations_total"
    assert value(after, records, operation="record", result="ok") > value(
        during, records, operation="record", result="ok"
    )
    assert value(after, "fleetwave_store_operation_seconds_count", operation="claim") > 0
    assert value(after, "fleetwave_api_requests_total", route="/metrics", status="200") >= 2
    assert value(during, "fleetwave_poll_budget_watching") > value(
        after, "fleetwave_poll_budget_watching"
    )


async def test_unknown_paths_share_one_route_label(make_sim: Callable[..., Sim]) -> None:
    sim = make_sim(1)
    token = await create_token(sim.store, "prometheus")
    app = create_app(sim.store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api.test",
        headers={"Authorization": f"Bearer {token}"},
    ) as api:
        for k in range(3):
            assert (await api.get(f"/no/such/path/{k}")).status_code == 404
        assert (await api.get("/api/v1/releases/77")).status_code == 404
        text = (await api.get("/metrics")).text
    assert value(text, "fleetwave_api_requests_total", route="unmatched", status="404") >= 3
    assert value(text, "fleetwave_api_requests_total", route="/api/v1/releases/{id}", status="404")
    assert "/no/such/path" not in text


async def test_metrics_need_a_token_on_the_api_port_and_vanish_with_a_bind_of_their_own(
    make_sim: Callable[..., Sim],
) -> None:
    sim = make_sim(1)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(sim.store)), base_url="http://api.test"
    ) as api:
        assert (await api.get("/metrics")).status_code == 401
    token = await create_token(sim.store, "prometheus")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(sim.store, serve_metrics=False)),
        base_url="http://api.test",
        headers={"Authorization": f"Bearer {token}"},
    ) as api:
        assert (await api.get("/metrics")).status_code == 404


async def test_metrics_are_served_while_the_database_is_away(make_sim: Callable[..., Sim]) -> None:
    from fleetwave.api.metrics import create_metrics_app

    sim = make_sim(1)
    await sim.register()
    await sim.create()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_metrics_app(sim.store)),
        base_url="http://metrics.test",
    ) as scraper:
        up = (await scraper.get("/metrics")).text
        sim.store.unavailable = True
        down = await scraper.get("/metrics")
    assert value(up, "fleetwave_releases", status="pending") == 1
    assert down.status_code == 200
    assert "fleetwave_agent_request_seconds_count" in down.text
    assert 'fleetwave_releases{status="pending"}' not in down.text
