"""kill -9 soak at the sizes of the environment (CI's by default; see tests/faults/soak.py).

Daemons are ``fleetwave serve`` processes killed with SIGKILL at random moments, half of them
while reconciling a stopped batch, and restarted, while releases are paused and resumed,
cancelled and retried at random moments; afterwards nothing is lost or done twice, no verb
answered before it was in effect, nothing was dispatched while paused or cancelled, counters
match node rows, every release ends as its injected failures say (failing canaries fail,
tolerated failures succeed), no node whose agent received its task is skipped, and every
release a killed daemon held is claimed again within lease TTL + claim interval + 1 s, and
every webhook delivery the releases' events call for reaches a receiver on loopback, signed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetwave.agent.certs import CertPaths, init_certs
from tests.faults.conftest import CERT_AGENTS
from tests.faults.soak import SoakSizes, run_soak, write_report

pytestmark = pytest.mark.postgres

SIZES = SoakSizes.from_env(os.environ)


@pytest.fixture
def soak_certs(certs: CertPaths, tmp_path: Path) -> CertPaths:
    if SIZES.agents <= CERT_AGENTS:
        return certs
    return init_certs(tmp_path / "certs", agents=SIZES.agents)


async def test_daemons_killed_at_random_moments_lose_and_repeat_nothing(
    database_url: str, soak_certs: CertPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = await run_soak(SIZES, database_url=database_url, certs=soak_certs, directory=tmp_path)
    path = Path(os.environ.get("FLEETWAVE_SOAK_REPORT", tmp_path / "soak-report.json"))
    write_report(report, path)
    with capsys.disabled():
        print(f"\nkill -9 soak ({path})\n{report.table()}")

    assert report.kills == SIZES.kills, "the releases ended before every kill was made"
    assert report.lost == 0
    assert report.releases_finished_twice == 0
    assert report.nodes_finished_twice == 0
    assert report.nodes_with_two_task_ids == 0
    assert report.nodes_redispatched_after_recorded == 0
    assert report.counter_mismatches == 0
    assert report.invariant_failures == ()
    assert report.unexpected_outcomes == ()
    assert report.skipped_but_received == 0
    assert report.failed > 0 and report.succeeded > 0  # failing canaries, tolerated failures
    assert report.kills_reconciling > 0, "no kill landed while a stopped batch was reconciled"
    assert report.error_lines == 0
    assert report.verbs_issued > report.verbs_refused, "no verb found a release to steer"
    assert report.verbs_not_in_effect == 0
    assert report.dispatched_while_stopped == 0
    # Webhooks: every delivery the events call for arrived, signed, whatever was killed.
    assert report.webhook_expected > 0
    assert report.webhook_missing == 0
    assert report.webhook_undelivered == 0
    assert report.webhook_bad_signatures == 0
    assert report.takeovers, "no killed daemon held a release"
    assert report.takeover_p99 <= SIZES.takeover_bound_sec, report.takeovers
