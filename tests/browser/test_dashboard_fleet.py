"""The dashboard's fleet view in a real browser (Debian's chromium, headless) against a real
daemon and simulated agents over mutual TLS: releases by scope, each scope's newest success,
and the node that drifts from the release that included it, and only that one.

Nodes are registered by ``agent-sim --register`` in agent order: agent k is node k.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import in_browser
from tests.browser.test_dashboard import api, ended, node_names, only_this_origin, sign_in
from tests.e2e.harness import Harness

pytestmark = [pytest.mark.postgres, pytest.mark.browser]


async def test_the_fleet_shows_each_scope_and_the_node_that_drifts_in_it(
    harness: Harness, screenshots: Path
) -> None:
    daemon = await harness.serve("d1")
    await harness.agent_sim(5, fail=[4], apply_time="0.2..0.4")
    viewer = await harness.token("watcher", "viewer")
    operator = await harness.token("sre", "operator")

    def scenario(page: Page, base: str) -> None:
        names = node_names(base, operator)

        def release(scope: str, nodes: list[str]) -> int:
            body = {"target": "cdn", "scope": scope, "nodeNames": nodes, "maxFailures": 1}
            created: int = api(base, operator, "POST", "/api/v1/releases", body)["releaseId"]
            ended(base, operator, created)
            return created

        # cdn-eu: nodes 1 and 2 succeed. cdn-us, the newest success: node 3 succeeds, node 4
        # fails within the tolerance, so node 4 drifts and cdn-eu's nodes do not, though
        # they never ran the newest success's config. Node 5 was in no release.
        eu = release("cdn-eu", names[0:2])
        us = release("cdn-us", names[2:4])
        us_version = api(base, viewer, "GET", f"/api/v1/releases/{us}")["release"]["version"]

        sign_in(page, base, viewer, "watcher (viewer)")
        page.click("#nav a[href='#/fleet']")
        expect(page.locator("#fleet-nodes tbody tr")).to_have_count(5)
        expect(page.locator("#drift")).to_have_text(
            "1 node(s) drift from the config of their newest successful release"
        )
        expect(page.locator("#fleet-summary")).to_contain_text(
            "1 node(s) in no successful release: nothing expected of them"
        )
        eu_row = page.locator("#fleet-by-scope tr[data-scope='cdn-eu']")
        us_row = page.locator("#fleet-by-scope tr[data-scope='cdn-us']")
        expect(eu_row).to_contain_text(f"#{eu}")
        expect(eu_row).to_contain_text("2 of 2")
        expect(eu_row).to_contain_text("none of 2")
        expect(us_row).to_contain_text(f"#{us} · config {us_version}")
        expect(us_row).to_contain_text("1 of 2")
        expect(us_row).to_contain_text(f"1 of 2: {names[3]}")

        drifting = page.locator("#fleet-nodes tbody tr[data-drift='yes']")
        expect(drifting).to_have_count(1)
        expect(drifting).to_contain_text(names[3])
        expect(drifting).to_contain_text(f"config {us_version} (release #{us}, cdn-us)")
        expect(page.locator("#fleet-nodes tbody tr[data-drift='no']")).to_have_count(4)
        page.screenshot(path=str(screenshots / "dashboard-fleet.png"), full_page=True)

        # A scope's "show" lists its drifting nodes alone; "all scopes" lists every node.
        us_row.locator("button").click()
        expect(page.locator("#fleet-scope-filter")).to_contain_text("drifting in cdn-us")
        expect(page.locator("#fleet-nodes tbody tr")).to_have_count(1)
        expect(page.locator("#fleet-nodes tbody tr")).to_contain_text(names[3])
        page.click("#fleet-scope-filter button")
        page.uncheck("#drift-only")
        expect(page.locator("#fleet-nodes tbody tr")).to_have_count(5)
        only_this_origin(page, base)

    await in_browser(scenario, daemon.api)
