"""A release of 10,000 nodes in the dashboard: the page renders 100 node rows, pages and
filters through all of them, and groups their failures; the fleet view pages the same
nodes. The API runs in this process over a MemoryStore (no agent is needed to show a release
as it stands). Prints the times it took: figures, not assertions."""

from __future__ import annotations

import time

import pytest
import trio
from playwright.sync_api import Page, expect

from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.api.schemas import parse_release_spec
from fleetwave.api.server import serve_api
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import NodeChange, NodeHealth, NodeStatus
from tests.browser.conftest import in_browser

pytestmark = pytest.mark.browser

NODES = 10_000
FAILED = 36
"""Nodes of batch 2 recorded failed, for the grouping by kind."""


async def test_a_release_of_10000_nodes_renders_a_page_of_them_and_filters_all(
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = MemoryStore()
    for k in range(NODES):
        host = f"127.{1 + k // 65536}.{(k // 256) % 256}.{k % 256 or 1}"
        await store.upsert_node(f"edge-{k:05d}", host, 8443, status=NodeHealth.ONLINE)
    spec = parse_release_spec({"target": "cdn", "reason": "big push", "plan": [1, "10%", "100%"]})
    release = (await store.create_release(spec)).release
    # A daemon "d-scale" owns it and has recorded the canary and 900 nodes of batch 2, some
    # of them failed with an agent's error, through the store's fenced write.
    (claim,) = await store.claim("d-scale", 1, ttl=3600)
    rows = await store.release_nodes(release.id)
    changes = []
    for k, row in enumerate(rows[: 1 + 900]):
        failed = k % 25 == 1
        changes.append(
            NodeChange(
                row.id,
                NodeStatus.FAILED if failed else NodeStatus.SUCCESS,
                error_msg=f"agent {row.main_ip}:8443 did not answer within 2s" if failed else None,
                started=True,
                finished=True,
            )
        )
    assert await store.record(claim.lease, changes, daemon_id="d-scale")
    failed_count = sum(1 for change in changes if change.status is NodeStatus.FAILED)
    token = await create_token(store, "big")
    app = create_app(store)

    def scenario(page: Page, base: str) -> dict[str, float]:
        page.goto(base + "/")
        page.fill("#token", token)
        page.click("#sign-in button[type=submit]")
        expect(page.locator("#who")).to_have_text("big (admin)")
        times = {}
        started = time.perf_counter()
        page.goto(f"{base}/#/releases/{release.id}")
        expect(page.locator("#nodes tbody tr")).to_have_count(100)
        times["release page, first 100 of 10,000 rows"] = time.perf_counter() - started
        expect(page.locator("#nodes-info")).to_have_text("1–100 of 10000 (page 1 of 100)")
        expect(page.locator("[data-batch='3'] .counts")).to_contain_text("of 8999")
        expect(page.locator("#owner")).to_have_text("d-scale")
        expect(page.locator("#verdict [data-state='alive']")).to_be_visible()

        started = time.perf_counter()
        page.fill("[data-filter='text']", "edge-09999")
        expect(page.locator("#nodes tbody tr")).to_have_count(1)
        times["filter 10,000 nodes by text"] = time.perf_counter() - started
        page.fill("[data-filter='text']", "")

        started = time.perf_counter()
        for _ in range(5):
            page.click("#nodes-next")
        expect(page.locator("#nodes-info")).to_have_text("501–600 of 10000 (page 6 of 100)")
        times["5 pages forward"] = time.perf_counter() - started

        timeouts = page.locator("#failure-kinds tr[data-kind='timeout']")
        expect(timeouts).to_contain_text(str(failed_count))
        timeouts.locator("button").click()
        expect(page.locator("#nodes-info")).to_have_text(
            f"1–{failed_count} of {failed_count} (page 1 of 1)"
        )

        started = time.perf_counter()
        page.goto(f"{base}/#/fleet")
        expect(page.locator("#fleet-nodes tbody tr")).to_have_count(100)
        times["fleet view of 10,000 nodes"] = time.perf_counter() - started
        expect(page.locator("#fleet-info")).to_have_text("1–100 of 10000")
        return times

    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_api, app, "127.0.0.1:0")
        times = await in_browser(scenario, f"http://{address}")
        nursery.cancel_scope.cancel()

    assert failed_count == FAILED
    with capsys.disabled():
        for what, seconds in times.items():
            print(f"\n{what}: {seconds * 1000:.0f} ms", end="")
        print()
