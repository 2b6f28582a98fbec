"""Tokens end to end, on PostgreSQL with a real daemon: roles refused with 1004, revocation
taking effect at once, and last use written by the daemon (at the latest when it stops)."""

from __future__ import annotations

import json

import pytest

from tests.e2e.harness import Harness

pytestmark = pytest.mark.postgres


async def test_roles_revocation_and_last_use_with_a_real_daemon(harness: Harness) -> None:
    await harness.agent_sim(1)
    daemon = await harness.serve("daemon", RELEASE_EXECUTOR_ENABLED="0")
    root = await harness.token("root", "admin")
    dash = (
        await harness.command("token", "create", "dash", "--role", "viewer", "--expires", "30d")
    ).strip()

    def as_(token: str) -> dict[str, str]:
        return {"FLEETWAVE_API": daemon.api, "FLEETWAVE_TOKEN": token}

    assert (await harness.run("nodes", "list", env=as_(dash))).returncode == 0
    refused = await harness.run("release", "create", "--reason", "r", env=as_(dash))
    assert refused.returncode == 1
    assert refused.stderr.decode() == (
        "fleetwave: forbidden: POST /api/v1/releases needs the operator role; "
        "token 'dash' is viewer (code 1004)\n"
    )
    assert (await harness.run("release", "list", env=as_(root))).returncode == 0

    assert (await harness.command("token", "revoke", "dash")).startswith("revoked token dash")
    gone = await harness.run("nodes", "list", env=as_(dash))
    assert gone.returncode == 1 and "invalid token (code 1002)" in gone.stderr.decode()

    assert await daemon.stop() == 0  # a clean stop writes the uses noted since the last write
    listed = json.loads(await harness.command("token", "list", "--json"))
    [item] = listed["items"]
    assert (item["name"], item["role"], item["expiresAt"]) == ("root", "admin", None)
    assert item["lastUsedAt"] is not None

    audits = daemon.events("api.audit")
    assert [(a["path"], a["status"], a["token_name"], a["token_role"]) for a in audits] == [
        ("/api/v1/releases", 403, "dash", "viewer")
    ]
    log = daemon.log()
    assert root not in log and dash not in log
