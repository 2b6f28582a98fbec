"""The dashboard in a real browser (Debian's chromium, headless) against a real daemon and
simulated agents over mutual TLS: sign in, watch a release go to success as it happens, see a
failed canary with its reason and the batch it skipped, pause and resume from the page, roll
back; a bake counting down and a gate passed with promote. The list and release pages are
saved as screenshots (``screenshots``: docs/images/ with FLEETWAVE_UPDATE_SCREENSHOTS=1).

Nodes are registered by ``agent-sim --register`` in agent order: agent 1 is node 1, the
lowest id, so it is the canary of any release that includes it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from playwright.sync_api import Page, expect

from tests.browser.conftest import VIEWPORT, in_browser
from tests.e2e.harness import Harness

pytestmark = [pytest.mark.postgres, pytest.mark.browser]

LIVE_TIMEOUT = 45_000
"""ms: a release of a few nodes ends well within this on a busy machine."""


def api(base: str, token: str, method: str, path: str, body: object = None) -> Any:
    answer = httpx.request(
        method,
        base + path,
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    document = answer.json()
    assert answer.status_code == 200 and document["code"] == 0, document
    return document["data"]


def ended(base: str, token: str, release_id: int) -> None:
    """Until the release is terminal (by the API, not the page); fails if it did not succeed."""
    deadline = time.monotonic() + LIVE_TIMEOUT / 1000
    while time.monotonic() < deadline:
        status = api(base, token, "GET", f"/api/v1/releases/{release_id}")["release"]["status"]
        if status in ("success", "failed", "cancelled"):
            assert status == "success", status
            return
        time.sleep(0.2)
    raise AssertionError(f"release {release_id} did not end within {LIVE_TIMEOUT} ms")


def node_names(base: str, token: str) -> list[str]:
    return [node["name"] for node in api(base, token, "GET", "/api/v1/nodes")["items"]]


def sign_in(page: Page, base: str, token: str, who: str) -> None:
    page.goto(base + "/")
    expect(page.locator("#sign-in")).to_be_visible()
    page.fill("#token", token)
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#who")).to_have_text(who)
    assert token not in page.url


def release_status(page: Page) -> Any:
    return page.locator("#facts h1 .status")


def verb(page: Page, name: str, reason: str) -> None:
    """Press verb button ``name``: the dialog asks for a reason, then sends it once given."""
    page.click(f"#verbs button[data-verb='{name}']")
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(page.locator("#confirm-title")).to_contain_text(name.split("-")[0].capitalize())
    page.click("#confirm-ok")  # no reason yet: asked for one, nothing sent
    expect(page.locator("#confirm-error")).to_have_text("a reason is required")
    page.fill("#confirm-reason", reason)
    page.click("#confirm-ok")
    expect(dialog).to_be_hidden(timeout=LIVE_TIMEOUT)


def readable_on_a_laptop_and_a_large_monitor(page: Page) -> None:
    """The page fits a laptop's width (no sideways scrolling, the step and verbs in view) and
    uses a large monitor's (a larger font, a wider column); back to the test's viewport."""
    for width, height, font in ((1280, 720, "14px"), (2560, 1440, "16px")):
        page.set_viewport_size({"width": width, "height": height})
        fits = page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert fits, f"the page scrolls sideways at {width}x{height}"
        assert page.evaluate("getComputedStyle(document.body).fontSize") == font
        expect(page.locator("#step")).to_be_in_viewport()
        expect(page.locator("#verbs button").last).to_be_in_viewport()
    main = page.evaluate("document.getElementById('main').getBoundingClientRect().width")
    assert main > 1800, main  # a large monitor's width is used, not a laptop's column
    page.set_viewport_size(VIEWPORT)


def only_this_origin(page: Page, base: str) -> None:
    requested: list[str] = page.requested  # type: ignore[attr-defined]
    assert requested, "the page made no request"
    assert [url for url in requested if not url.startswith(base + "/")] == []


async def test_sign_in_watch_a_release_go_live_to_success_and_a_failed_canary(
    harness: Harness, screenshots: Path
) -> None:
    daemon = await harness.serve("d1")
    await harness.agent_sim(5, fail=[1], apply_time="0.8..1.2")
    admin = await harness.token("admin", "admin")
    operator = await harness.token("sre", "operator")

    def scenario(page: Page, base: str) -> None:
        # A wrong token is refused on the page, and nothing else is shown.
        page.goto(base + "/")
        page.fill("#token", "fw_not-a-token")
        page.click("#sign-in button[type=submit]")
        expect(page.locator("#sign-in-error")).to_have_text("invalid token")
        expect(page.locator("#nav")).to_be_hidden()
        sign_in(page, base, operator, "sre (operator)")
        cookies = {cookie["name"]: cookie for cookie in page.context.cookies()}
        assert cookies["fw_session"]["httpOnly"] and cookies["fw_session"]["sameSite"] == "Strict"
        assert page.evaluate("document.cookie").count("fw_session") == 0

        names = node_names(base, admin)
        good = api(
            base,
            operator,
            "POST",
            "/api/v1/releases",
            {
                "target": "cdn",
                "reason": "new cache rules",
                "nodeNames": names[1:],
                "plan": [1, "100%"],
            },
        )["releaseId"]

        # Opened at once, before the release has run: it fills up as its events arrive.
        page.goto(f"{base}/#/releases/{good}")
        expect(page.locator("#created-by")).to_have_text("sre (operator)")
        expect(page.locator("#reason")).to_have_text("new cache rules")
        expect(page.locator("#live")).to_have_text("live", timeout=LIVE_TIMEOUT)
        expect(page.locator("#owner")).to_have_text("d1", timeout=LIVE_TIMEOUT)
        expect(release_status(page)).to_have_text("success", timeout=LIVE_TIMEOUT)
        expect(page.locator("[data-batch='1'] .counts")).to_have_text("success 1 of 1")
        expect(page.locator("[data-batch='2'] .counts")).to_have_text("success 3 of 3")
        expect(page.locator("#events tr[data-event-id]").first).to_be_visible()
        expect(page.locator("#nodes tbody tr")).to_have_count(4)
        expect(page.locator("#verdict [data-state='ended']")).to_be_visible()

        # The list, open while a release whose canary fails runs: its row turns failed live.
        page.goto(f"{base}/#/")
        expect(page.locator(f"#releases tr[data-release-id='{good}'] .status")).to_have_text(
            "success"
        )
        bad = api(
            base,
            operator,
            "POST",
            "/api/v1/releases",
            {"target": "cdn", "reason": "canary", "nodeNames": names[:3], "plan": [1, "100%"]},
        )["releaseId"]
        row = page.locator(f"#releases tr[data-release-id='{bad}']")
        expect(row.locator(".status")).to_have_text("failed", timeout=LIVE_TIMEOUT)
        expect(row.locator(".by")).to_have_text("sre (operator)")
        expect(row).to_contain_text("0/3 ok, 1 failed, 2 skipped")
        page.screenshot(path=str(screenshots / "dashboard-releases.png"))

        row.locator("a").click()
        expect(release_status(page)).to_have_text("failed")
        expect(page.locator("#release-error")).to_contain_text(f"node {names[0]}")
        expect(page.locator("#release-error")).to_contain_text("simulated failure")
        expect(page.locator("[data-batch='1'] .counts")).to_have_text("failed 1 of 1")
        expect(page.locator("[data-batch='2'] .counts")).to_have_text("skipped 2 of 2")
        kinds = page.locator("#failure-kinds tr[data-kind='rejected']")
        expect(kinds).to_contain_text("agent rejected the config")
        expect(kinds).to_contain_text("simulated failure")
        kinds.locator("button").click()
        expect(page.locator("#nodes tbody tr")).to_have_count(1)
        expect(page.locator("#nodes tbody tr")).to_contain_text("simulated failure")
        page.screenshot(path=str(screenshots / "dashboard-release.png"), full_page=True)
        only_this_origin(page, base)

    await in_browser(scenario, daemon.api)

    # The token was never logged, by the daemon nor the agents.
    for child in harness.children:
        assert operator not in child.log(), child.name


async def test_pause_resume_and_roll_back_from_the_page_and_a_viewer_sees_no_verbs(
    harness: Harness,
) -> None:
    daemon = await harness.serve("d1")
    await harness.agent_sim(4, apply_time="1.0..1.5")
    operator = await harness.token("sre", "operator")
    viewer = await harness.token("watcher", "viewer")

    def scenario(page: Page, base: str) -> None:
        # A first config every node runs, for the rollback to put back.
        first = api(
            base, operator, "POST", "/api/v1/releases", {"target": "cdn", "reason": "baseline"}
        )
        ended(base, operator, first["releaseId"])
        sign_in(page, base, operator, "sre (operator)")
        release = api(
            base,
            operator,
            "POST",
            "/api/v1/releases",
            {"target": "cdn", "reason": "slow push", "plan": [1, 1, 1, 1]},
        )["releaseId"]
        page.goto(f"{base}/#/releases/{release}")
        expect(release_status(page)).to_have_text("running", timeout=LIVE_TIMEOUT)
        expect(page.locator("#verdict [data-state='alive']")).to_be_visible()

        # Back out of a confirmation: nothing happens.
        page.click("#verbs button[data-verb='pause']")
        page.click("#confirm-cancel")
        expect(page.locator("#confirm")).to_be_hidden()
        expect(release_status(page)).to_have_text("running")

        verb(page, "pause", "error rate up in fra1")
        expect(release_status(page)).to_have_text("paused")
        expect(page.locator("#last-verb")).to_have_text("pause by sre: error rate up in fra1")
        expect(page.locator("#verbs button[data-verb='resume']")).to_be_visible()
        expect(page.locator("#verbs button[data-verb='pause']")).to_have_count(0)
        paused = api(base, operator, "GET", f"/api/v1/releases/{release}")
        assert paused["release"]["status"] == "paused"
        assert paused["release"]["successNodes"] < 4

        verb(page, "resume", "false alarm")
        expect(release_status(page)).to_have_text("success", timeout=LIVE_TIMEOUT)
        expect(page.locator("[data-batch='4'] .counts")).to_have_text("success 1 of 1")
        # No promote button: the release holds at no bake or gate.
        expect(page.locator("#verbs button[data-verb='promote']")).to_have_count(0)

        verb(page, "rollback", "bad config after all")
        link = page.locator("#rollback-link")
        expect(link).to_be_visible()
        link.click()
        expect(page.locator("#facts")).to_contain_text(f"rollback of #{release}")
        expect(release_status(page)).to_have_text("success", timeout=LIVE_TIMEOUT)
        rollback = api(base, operator, "GET", "/api/v1/releases")["items"][0]
        assert rollback["rollbackOf"] == release and rollback["status"] == "success"

        # A viewer reads the same page without a single verb button.
        page.click("#sign-out")
        expect(page.locator("#sign-in")).to_be_visible()
        sign_in(page, base, viewer, "watcher (viewer)")
        page.goto(f"{base}/#/releases/{release}")
        expect(release_status(page)).to_have_text("success")
        expect(page.locator("#verbs")).to_have_text("signed in as viewer: no verbs")
        expect(page.locator("#verbs button")).to_have_count(0)

        # The fleet: every node runs the config the rollback put back.
        page.click("#nav a[href='#/fleet']")
        expect(page.locator("#fleet-nodes tbody tr")).to_have_count(4)
        expect(page.locator("#fleet-summary")).to_contain_text(
            f"4 nodes · config {first['version']}: 4"
        )
        expect(page.locator("#drift")).to_have_text(
            "no node drifts: each runs the config of its newest successful release"
            f" (newest: config {first['version']}, release #{rollback['id']})"
        )
        only_this_origin(page, base)

    await in_browser(scenario, daemon.api)


async def test_a_bake_counts_down_a_gate_waits_and_promote_from_the_page_lets_it_go_on(
    harness: Harness, screenshots: Path
) -> None:
    daemon = await harness.serve("d1")
    await harness.agent_sim(4, apply_time="0.3..0.5")
    operator = await harness.token("sre", "operator")

    def step(page: Page) -> Any:
        return page.locator("#step")

    def create(base: str, reason: str, plan: list[object]) -> int:
        body = {"target": "cdn", "reason": reason, "plan": plan}
        return int(api(base, operator, "POST", "/api/v1/releases", body)["releaseId"])

    def scenario(page: Page, base: str) -> None:
        sign_in(page, base, operator, "sre (operator)")
        gated = create(base, "new TLS ciphers", [1, {"pause": 600}, 1, {"pause": None}, "100%"])
        page.goto(f"{base}/#/releases/{gated}")
        expect(page.locator("#plan")).to_contain_text("1 · bake 10m 0s · 1 · gate · 100%")

        # The canary done, the bake counts down to its end, live; the owner is alive and
        # bakes (no node moves, and that is no stall); promote is offered, twice.
        left = re.compile(r"^bake after batch 1: 9m \d+s left \(until ")
        expect(step(page)).to_have_text(left, timeout=LIVE_TIMEOUT)
        expect(page.locator("#step-marker")).to_have_text(left)
        expect(page.locator("[data-batch='1'] .counts")).to_have_text("success 1 of 1")
        expect(page.locator("[data-batch='2'] .counts")).to_have_text("pending 1 of 1")
        expect(page.locator("#verdict [data-state='holding']")).to_have_text(
            "owner d1 is alive and bakes after batch 1"
        )
        before = step(page).inner_text()
        expect(step(page)).not_to_have_text(before, timeout=3_000)  # it ticks, by itself
        expect(page.locator("#verbs button[data-verb='promote-full']")).to_have_text(
            "Promote, skip all remaining steps"
        )

        # Back out: the bake goes on. Then promote ends it.
        page.click("#verbs button[data-verb='promote']")
        expect(page.locator("#confirm-text")).to_have_text(
            "End the bake after batch 1 now: the release goes on to its next batch."
        )
        page.click("#confirm-cancel")
        expect(step(page)).to_have_text(left)
        verb(page, "promote", "canary looks fine")

        # Batch 2, then the gate: it waits for a promote, and says so in the list too.
        gate = "gate after batch 2: waiting for promote"
        expect(step(page)).to_have_text(gate, timeout=LIVE_TIMEOUT)
        expect(page.locator("[data-batch='2'] .counts")).to_have_text("success 1 of 1")
        expect(page.locator("[data-batch='3'] .counts")).to_have_text("pending 2 of 2")
        expect(page.locator("#verdict [data-state='holding']")).to_contain_text(
            "waits at the gate after batch 2 for a promote"
        )
        page.screenshot(path=str(screenshots / "dashboard-gate.png"), full_page=True)
        readable_on_a_laptop_and_a_large_monitor(page)
        page.goto(f"{base}/#/")
        row = page.locator(f"#releases tr[data-release-id='{gated}']")
        expect(row.locator(".step-brief")).to_have_text("gate: waiting for promote")
        time.sleep(2)  # a gate holds, whatever the time
        held = api(base, operator, "GET", f"/api/v1/releases/{gated}")["release"]
        assert (held["status"], held["step"]["kind"], held["successNodes"]) == (
            "running",
            "gate",
            2,
        )

        # Paused at the gate, it takes no promote until resumed; then the gate still holds.
        row.locator("a").click()
        api(base, operator, "POST", f"/api/v1/releases/{gated}/pause", {"reason": "lunch"})
        expect(step(page)).to_have_text(f"{gate} · release paused: resume it first")
        expect(page.locator("#verbs button[data-verb='resume']")).to_be_visible()
        expect(page.locator("#verbs button[data-verb='promote']")).to_have_count(0)
        api(base, operator, "POST", f"/api/v1/releases/{gated}/resume", {"reason": "back"})
        expect(step(page)).to_have_text(gate, timeout=LIVE_TIMEOUT)
        verb(page, "promote", "batch 2 healthy")
        expect(release_status(page)).to_have_text("success", timeout=LIVE_TIMEOUT)
        expect(page.locator("[data-batch='3'] .counts")).to_have_text("success 2 of 2")
        expect(page.locator("#verbs button[data-verb='promote']")).to_have_count(0)
        expect(page.locator("#step-marker")).to_be_hidden()
        events = page.locator("#events")
        expect(events).to_contain_text("step 1: bake 600s")
        expect(events).to_contain_text(
            "promote by sre (bake after batch 1 passed): canary looks fine"
        )
        expect(events).to_contain_text(
            "promote by sre (gate after batch 2 passed): batch 2 healthy"
        )

        # Promote, skip all remaining steps: from the first gate, past the bake after it too.
        skipped = create(base, "hotfix", [1, {"pause": None}, 1, {"pause": 600}, "100%"])
        page.goto(f"{base}/#/releases/{skipped}")
        expect(step(page)).to_have_text(
            "gate after batch 1: waiting for promote", timeout=LIVE_TIMEOUT
        )
        page.click("#verbs button[data-verb='promote-full']")
        expect(page.locator("#confirm-title")).to_have_text(
            f"Promote, skipping all remaining steps, release #{skipped}?"
        )
        page.click("#confirm-cancel")
        verb(page, "promote-full", "hotfix: no time to bake")
        expect(release_status(page)).to_have_text("success", timeout=LIVE_TIMEOUT)
        expect(page.locator("#events")).to_contain_text(
            "promote by sre (full: 2 remaining pause(s) skipped): hotfix: no time to bake"
        )
        assert "bake 600s" not in page.locator("#events").inner_text()
        only_this_origin(page, base)

    await in_browser(scenario, daemon.api)


async def test_a_killed_owner_looks_different_from_a_live_one_and_a_new_owner_keeps_the_gate(
    harness: Harness,
) -> None:
    # The page's API is a daemon that runs no release; w1 owns it, and is killed with -9.
    daemon = await harness.serve("d-api", RELEASE_EXECUTOR_ENABLED="false")
    worker = await harness.serve("w1", FLEETWAVE_LEASE_TTL_SEC="9")  # renewed every 3 s
    await harness.agent_sim(3, apply_time="0.3..0.5")
    operator = await harness.token("sre", "operator")

    def scenario(page: Page, base: str) -> None:
        sign_in(page, base, operator, "sre (operator)")
        body = {"target": "cdn", "reason": "failover", "plan": [1, {"pause": None}, "100%"]}
        release = api(base, operator, "POST", "/api/v1/releases", body)["releaseId"]
        page.goto(f"{base}/#/releases/{release}")
        gate = "gate after batch 1: waiting for promote"
        expect(page.locator("#step")).to_have_text(gate, timeout=LIVE_TIMEOUT)
        expect(page.locator("#verdict [data-state='holding']")).to_have_text(
            "owner w1 is alive and waits at the gate after batch 1 for a promote"
        )
        # Alive: its lease is renewed, though no event says so (the page looks again before
        # the lease it shows runs out), and it never looks lost meanwhile.
        deadline = time.monotonic() + 12  # beyond the 9 s lease
        while time.monotonic() < deadline:
            expect(page.locator("#verdict [data-state='holding']")).to_be_visible(timeout=100)
            expect(page.locator("#lease")).to_have_text(re.compile(r"^expires in \d+s$"))
            time.sleep(0.1)

        trio.from_thread.run_sync(worker.kill)  # kill -9: its lease is no longer renewed
        lost = page.locator("#verdict [data-state='owner-lost']")
        expect(lost).to_contain_text("owner w1 stopped renewing its lease", timeout=LIVE_TIMEOUT)
        expect(lost).to_contain_text("another daemon takes the release over")
        expect(page.locator("#lease")).to_have_text(re.compile(r"^expired \d+s ago$"))
        expect(page.locator("#step")).to_have_text(gate)

        trio.from_thread.run(harness.serve, "w2")
        expect(page.locator("#owner")).to_have_text("w2", timeout=LIVE_TIMEOUT)
        expect(page.locator("#verdict [data-state='holding']")).to_have_text(
            "owner w2 is alive and waits at the gate after batch 1 for a promote",
            timeout=LIVE_TIMEOUT,
        )
        expect(page.locator("#step")).to_have_text(gate)  # the gate still holds
        verb(page, "promote", "after the failover")
        expect(release_status(page)).to_have_text("success", timeout=LIVE_TIMEOUT)
        expect(page.locator("[data-batch='2'] .counts")).to_have_text("success 2 of 2")

    await in_browser(scenario, daemon.api)
