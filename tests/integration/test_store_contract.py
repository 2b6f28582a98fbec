"""The Store contract: every test runs on PostgresStore and MemoryStore alike (``store``),
so simulations never drift from production. Tests of PostgreSQL-only behaviour (row locks,
lost databases) use ``pg_store``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
import trio
import trio_asyncio

from fleetwave.store.base import Store
from fleetwave.store.embedded import EmbeddedPostgres
from fleetwave.store.errors import AlreadyExists, Conflict, InvalidInput, NotFound, StoreUnavailable
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import (
    DEFAULT_PLAN,
    ERROR_MSG_MAX,
    TOKEN_LOOKUP_CHARS,
    WAIT_NODES_SHOWN,
    Actor,
    Lease,
    Node,
    NodeChange,
    NodeHealth,
    NodeStatus,
    Outcome,
    ReleaseSpec,
    ReleaseStatus,
    Role,
    Wait,
)
from fleetwave.store.postgres import PostgresStore, open_postgres_store
from fleetwave.store.selection import MAX_LABELS, NodeSelection
from fleetwave.store.webhooks import WEBHOOK_KINDS, DeliveryStatus, WebhookSpec
from tests.integration.conftest import SeedRelease, run_sql

pytestmark = pytest.mark.postgres

TTL = 30.0


async def add_nodes(store: Store, count: int, *, prefix: str = "edge") -> list[Node]:
    return [
        await store.upsert_node(f"{prefix}-{index}", f"127.0.0.{index + 1}", 8443)
        for index in range(1, count + 1)
    ]


def on(*nodes: Node) -> NodeSelection:
    """A selection of exactly these nodes."""
    return NodeSelection.by_ids([node.id for node in nodes])


async def claim_one(store: Store, owner: str = "daemon-a", ttl: float = TTL) -> Lease:
    claims = await store.claim(owner, 1, ttl)
    assert len(claims) == 1
    return claims[0].lease


# --- create_release ------------------------------------------------------------------------


async def test_create_release_puts_one_canary_then_the_rest(store: Store) -> None:
    nodes = await add_nodes(store, 3)

    created = await store.create_release(ReleaseSpec(reason="rollout"))

    ids = [node.id for node in nodes]
    assert created.batches == ((1, (ids[0],)), (2, (ids[1], ids[2])))
    release = created.release
    assert release.version == 1
    assert release.status is ReleaseStatus.PENDING
    assert (release.total_nodes, release.success_nodes, release.failed_nodes) == (3, 0, 0)
    assert (release.skipped_nodes, release.cancelled_nodes) == (0, 0)
    assert release.current_batch == 1
    assert release.plan == DEFAULT_PLAN
    assert (release.scope, release.selection) == (None, None)
    assert release.reason == "rollout"
    assert release.lease_owner is None and release.lease_epoch == 0
    rows = await store.release_nodes(release.id)
    assert [(row.node_id, row.batch, row.status) for row in rows] == [
        (ids[0], 1, NodeStatus.PENDING),
        (ids[1], 2, NodeStatus.PENDING),
        (ids[2], 2, NodeStatus.PENDING),
    ]
    assert await store.get_release(release.id) == release


async def test_create_release_uses_only_enabled_online_nodes(store: Store) -> None:
    nodes = await add_nodes(store, 4)
    await store.update_node(nodes[0].id, enabled=False)
    await store.update_node(nodes[2].id, status=NodeHealth.MAINTENANCE)

    created = await store.create_release(ReleaseSpec(plan=("50%",)))

    assert created.batches == ((1, (nodes[1].id,)), (2, (nodes[3].id,)))
    assert created.release.total_nodes == 2


async def test_create_release_stores_plan_scope_and_tolerances(store: Store) -> None:
    await add_nodes(store, 10)

    created = await store.create_release(
        ReleaseSpec(plan=(1, "30%"), max_parallel=2, max_failures=1, scope="eu")
    )

    assert [len(ids) for _, ids in created.batches] == [1, 3, 3, 3]
    release = await store.get_release(created.release.id)
    assert release is not None
    assert release.plan == (1, "30%")
    assert (release.max_parallel, release.max_failures, release.scope) == (2, 1, "eu")


async def test_create_release_without_online_nodes_is_a_conflict(store: Store) -> None:
    nodes = await add_nodes(store, 1)
    await store.update_node(nodes[0].id, status=NodeHealth.OFFLINE)

    with pytest.raises(Conflict, match="no online nodes"):
        await store.create_release(ReleaseSpec())

    assert await store.list_releases() == ([], 0)


@pytest.mark.parametrize(
    "spec",
    [
        ReleaseSpec(plan=()),
        ReleaseSpec(plan=(0,)),
        ReleaseSpec(plan=("150%",)),
        ReleaseSpec(plan=("many",)),
        ReleaseSpec(max_failures=-1),
        ReleaseSpec(max_parallel=0),
    ],
    ids=["empty-plan", "zero-step", "over-100%", "word", "negative-tolerance", "no-parallel"],
)
async def test_create_release_rejects_bad_input_and_writes_nothing(
    store: Store, spec: ReleaseSpec
) -> None:
    await add_nodes(store, 2)

    with pytest.raises(InvalidInput):
        await store.create_release(spec)

    assert await store.list_releases() == ([], 0)


async def test_versions_follow_the_previous_maximum(store: Store) -> None:
    await add_nodes(store, 1)

    versions = [(await store.create_release(ReleaseSpec())).release.version for _ in range(3)]

    assert versions == [1, 2, 3]


async def test_concurrent_creations_get_distinct_versions(store: Store) -> None:
    await add_nodes(store, 3)
    versions: list[int] = []

    async def create() -> None:
        versions.append((await store.create_release(ReleaseSpec())).release.version)

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(create)

    assert sorted(versions) == list(range(1, 9))


# --- hostile input: refused alike, in the same words -------------------------------------------

HUGE = 10**5000
"""An integer of 5,001 digits: beyond every column, and beyond what str() shows."""
BAD_TEXT = {
    "nul": ("a\x00b", "NUL (U+0000) at position 1"),
    "surrogate": ("\ud800", "a lone surrogate (U+D800) at position 0"),
    "control": ("x\x1by", "a control character (U+001B) at position 1"),
    "c1-control": ("x\x85", "a control character (U+0085) at position 1"),
}


@pytest.mark.parametrize("field", ["target", "scope", "reason", "type"])
@pytest.mark.parametrize("kind", list(BAD_TEXT))
async def test_create_release_refuses_unstorable_text_naming_the_field(
    store: Store, field: str, kind: str
) -> None:
    await add_nodes(store, 2)
    value, problem = BAD_TEXT[kind]
    if field == "reason" and kind == "control":
        value = "line one\nline two\tand\x1b"
        problem = "a control character (U+001B) at position 21"

    with pytest.raises(InvalidInput) as refused:
        await store.create_release(ReleaseSpec(**{field: value}))

    assert str(refused.value) == f"{field}: contains {problem}"
    assert await store.list_releases() == ([], 0)


async def test_create_release_keeps_line_breaks_and_tabs_in_the_reason(store: Store) -> None:
    await add_nodes(store, 1)

    created = await store.create_release(ReleaseSpec(reason="roll out\n\tnew cache keys"))

    assert created.release.reason == "roll out\n\tnew cache keys"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ReleaseSpec(max_failures=2**31), "max_failures: must be between 0 and 2147483647"),
        (ReleaseSpec(max_failures=HUGE), "max_failures: must be between 0 and 2147483647"),
        (ReleaseSpec(max_parallel=HUGE), "max_parallel: must be between 1 and 2147483647"),
        (ReleaseSpec(max_parallel=-HUGE), "max_parallel: must be between 1 and 2147483647"),
        (ReleaseSpec(plan=(HUGE,)), "plan[0] must be at most 2147483647"),
        (ReleaseSpec(plan=("9" * 5000 + "%",)), "plan[0] must be a count or a percentage like"),
        (ReleaseSpec(target=" "), "target: must not be empty"),
    ],
    ids=[
        "tolerance-int",
        "tolerance-huge",
        "parallel-huge",
        "parallel-negative",
        "plan-huge",
        "plan-long-percent",
        "blank-target",
    ],
)
async def test_create_release_refuses_out_of_range_values_alike(
    store: Store, spec: ReleaseSpec, message: str
) -> None:
    await add_nodes(store, 2)

    with pytest.raises(InvalidInput) as refused:
        await store.create_release(spec)

    assert str(refused.value).startswith(message)
    assert len(str(refused.value)) < 200
    assert await store.list_releases() == ([], 0)


@pytest.mark.parametrize(
    ("name", "main_ip", "port", "message"),
    [
        ("edge\x00", "127.0.0.2", 8443, "name: contains NUL (U+0000) at position 4"),
        ("\udfff", "127.0.0.2", 8443, "name: contains a lone surrogate (U+DFFF) at position 0"),
        ("edge\n1", "127.0.0.2", 8443, "name: contains a control character (U+000A) at position 4"),
        ("edge-1", "127.0.0.2\x00", 8443, "main_ip: contains NUL (U+0000) at position 9"),
        ("edge-1", "\ud800", 8443, "main_ip: contains a lone surrogate (U+D800) at position 0"),
        ("", "127.0.0.2", 8443, "name: must not be empty"),
        ("edge-1", " ", 8443, "main_ip: must not be empty"),
        ("edge-1", "127.0.0.2", 0, "agent_port: must be between 1 and 65535, got 0"),
        ("edge-1", "127.0.0.2", 70000, "agent_port: must be between 1 and 65535, got 70000"),
        ("edge-1", "127.0.0.2", HUGE, "agent_port: must be between 1 and 65535, got a larger"),
    ],
    ids=[
        "name-nul",
        "name-surrogate",
        "name-newline",
        "ip-nul",
        "ip-surrogate",
        "name-empty",
        "ip-blank",
        "port-0",
        "port-70000",
        "port-huge",
    ],
)
async def test_upsert_node_refuses_bad_input_naming_the_field(
    store: Store, name: str, main_ip: str, port: int, message: str
) -> None:
    [existing] = await add_nodes(store, 1)

    with pytest.raises(InvalidInput) as refused:
        await store.upsert_node(name, main_ip, port)

    assert str(refused.value).startswith(message)
    assert await store.list_nodes() == [existing]


@pytest.mark.parametrize("value", [0, -1, 2**63, HUGE], ids=["zero", "negative", "2^63", "huge"])
async def test_ids_outside_a_bigint_are_refused_by_every_lookup(store: Store, value: int) -> None:
    await add_nodes(store, 1)
    await store.create_release(ReleaseSpec())

    lookups: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("release_id", lambda: store.get_release(value)),
        ("release_id", lambda: store.release_nodes(value)),
        ("release_id", lambda: store.release_events(value)),
        ("node_id", lambda: store.update_node(value, enabled=False)),
        ("node_id", lambda: store.get_node(value)),
        ("node_id", lambda: store.node_runs(value)),
        ("id", lambda: store.revoke_token(value)),
    ]
    for field, call in lookups:
        with pytest.raises(InvalidInput, match=f"^{field}: must be between 1 and "):
            await call()
    assert [node.enabled for node in await store.list_nodes()] == [True]


async def test_offsets_and_limits_outside_their_columns_are_refused(store: Store) -> None:
    for bad in (-1, 2**63, HUGE):
        with pytest.raises(InvalidInput, match=r"^after_id: must be between 0 and "):
            await store.release_events(1, after_id=bad)
        with pytest.raises(InvalidInput, match=r"^offset: must be between 0 and "):
            await store.list_releases(offset=bad)
    for bad in (0, 2**63, -HUGE):
        with pytest.raises(InvalidInput, match=r"^limit: must be between 1 and "):
            await store.list_releases(limit=bad)


async def test_tokens_with_unstorable_names_are_refused(store: Store) -> None:
    for name, problem in BAD_TEXT.values():
        with pytest.raises(InvalidInput) as refused:
            await store.create_token(name, "ab" * 32)
        assert str(refused.value) == f"name: contains {problem}"
    with pytest.raises(InvalidInput, match=r"^name: contains a lone surrogate"):
        await store.revoke_token("\udcff")
    with pytest.raises(InvalidInput, match=r"^prefix: contains NUL"):
        await store.tokens_by_hash_prefix("\x00" * TOKEN_LOOKUP_CHARS)

    await store.create_token("ci", "ab" * 32)
    [found] = await store.tokens_by_hash_prefix("ab" * (TOKEN_LOOKUP_CHARS // 2))
    assert (found.info.name, found.token_hash) == ("ci", "ab" * 32)


async def test_agent_text_no_column_can_hold_is_stored_with_replacement_characters(
    store: Store,
) -> None:
    await add_nodes(store, 2)
    created = await store.create_release(ReleaseSpec(plan=("100%",)))
    lease = await claim_one(store)
    first, second = await store.release_nodes(created.release.id)

    assert await store.record(
        lease,
        [
            NodeChange(first.id, NodeStatus.RUNNING, task_id="t\x00\ud800", started=True),
            NodeChange(second.id, NodeStatus.FAILED, "agent said \x00 and \udcff", finished=True),
        ],
        Outcome(ReleaseStatus.FAILED, "node edge-2 failed: \x00"),
        daemon_id="daemon-a",
    )

    first, second = await store.release_nodes(created.release.id)
    assert first.task_id == "t\ufffd\ufffd"
    assert second.error_msg == "agent said \ufffd and \ufffd"
    release = await store.get_release(created.release.id)
    assert release is not None and release.error == "node edge-2 failed: \ufffd"
    events = await store.release_events(created.release.id)
    assert events[-1].message == "node edge-2 failed: \ufffd"


async def test_events_read_the_same_on_both_stores(store: Store) -> None:
    await add_nodes(store, 3)
    created = await store.create_release(ReleaseSpec(reason="rollout"))
    quiet = await store.create_release(ReleaseSpec(scope="quiet"))
    lease = await claim_one(store)
    await store.record(lease, [], Outcome(ReleaseStatus.SUCCESS), daemon_id="daemon-a")
    other = await claim_one(store, "d-b")
    await store.record(other, [], Outcome(ReleaseStatus.CANCELLED, "stopped"), daemon_id="d-b")

    events = await store.release_events(created.release.id)
    assert [(e.to_status, e.message, e.daemon_id) for e in events] == [
        ("pending", "created: version 1, 3 nodes in 2 batches; reason: rollout", None),
        ("running", "claimed by daemon-a (epoch 1)", "daemon-a"),
        ("skipped", "skipped: release success", "daemon-a"),
        ("skipped", "skipped: release success", "daemon-a"),
        ("skipped", "skipped: release success", "daemon-a"),
        ("success", "release success", "daemon-a"),
    ]
    quiet_events = await store.release_events(quiet.release.id)
    assert quiet_events[0].message == "created: version 2, 3 nodes in 2 batches"
    assert (quiet_events[-1].to_status, quiet_events[-1].message) == ("cancelled", "stopped")


async def test_first_events_are_the_created_events_of_each_release_at_once(store: Store) -> None:
    await add_nodes(store, 3)
    first = await store.create_release(ReleaseSpec(reason="one"))
    second = await store.create_release(ReleaseSpec(reason="two"))
    lease = await claim_one(store)
    await store.record(lease, [], Outcome(ReleaseStatus.SUCCESS), daemon_id="daemon-a")

    found = await store.first_events([second.release.id, first.release.id, 999])
    assert sorted(found) == [first.release.id, second.release.id]
    assert found[first.release.id].message is not None
    assert found[first.release.id].message.endswith("reason: one")
    assert found[second.release.id].to_status == "pending"
    assert await store.first_events([]) == {}


async def test_an_owner_or_daemon_id_with_nul_is_refused(store: Store) -> None:
    await add_nodes(store, 1)
    await store.create_release(ReleaseSpec())

    with pytest.raises(InvalidInput, match=r"^owner: contains NUL"):
        await store.claim("daemon\x00", 1, TTL)
    lease = await claim_one(store)
    with pytest.raises(InvalidInput, match=r"^owner: contains NUL"):
        await store.heartbeat("daemon\x00", [lease], TTL)
    with pytest.raises(InvalidInput, match=r"^daemon_id: contains a lone surrogate"):
        await store.record(lease, [], Outcome(ReleaseStatus.SUCCESS), daemon_id="\ud800")
    release = await store.get_release(lease.release_id)
    assert release is not None and release.status is ReleaseStatus.RUNNING


# --- claim -------------------------------------------------------------------------------------


async def test_claim_takes_the_oldest_pending_release_of_each_scope(store: Store) -> None:
    nodes = await add_nodes(store, 3)
    first = (await store.create_release(ReleaseSpec(scope="cdn", selection=on(nodes[0])))).release
    await store.create_release(ReleaseSpec(scope="cdn", selection=on(nodes[1])))
    other_scope = await store.create_release(ReleaseSpec(scope="dns", selection=on(nodes[2])))

    claims = await store.claim("daemon-a", 10, TTL)

    # The second "cdn" release waits for its scope although its node is free.
    assert [claim.release.id for claim in claims] == [first.id, other_scope.release.id]
    assert await store.claim("daemon-b", 10, TTL) == []


async def test_claim_sets_running_lease_and_audit_event(store: Store) -> None:
    await add_nodes(store, 1)
    created = (await store.create_release(ReleaseSpec())).release

    [claim] = await store.claim("daemon-a", 5, TTL)

    release = claim.release
    assert claim.lease == Lease(created.id, 1)
    assert release.status is ReleaseStatus.RUNNING
    assert (release.lease_owner, release.lease_epoch) == ("daemon-a", 1)
    assert release.started_at is not None and release.lease_expires_at is not None
    assert 20 < (release.lease_expires_at - release.started_at).total_seconds() <= TTL
    events = await store.release_events(created.id)
    assert [(e.from_status, e.to_status) for e in events] == [
        (None, "pending"),
        ("pending", "running"),
    ]
    assert events[-1].message == "claimed by daemon-a (epoch 1)"
    # The claim's own time, by the store's clock: what node deadlines are measured against.
    assert (release.lease_expires_at - claim.claimed_at).total_seconds() == TTL


async def test_claim_respects_the_limit_in_version_order(store: Store) -> None:
    nodes = await add_nodes(store, 4)
    ids = [(await store.create_release(ReleaseSpec(selection=on(n)))).release.id for n in nodes]

    first = await store.claim("daemon-a", 3, TTL)
    rest = await store.claim("daemon-a", 3, TTL)

    assert [claim.release.id for claim in first] == ids[:3]
    assert [claim.release.id for claim in rest] == ids[3:]


async def test_next_release_of_a_scope_waits_until_the_active_one_ends(store: Store) -> None:
    await add_nodes(store, 1)
    await store.create_release(ReleaseSpec())
    second = (await store.create_release(ReleaseSpec())).release
    lease = await claim_one(store)

    assert await store.claim("daemon-b", 5, TTL) == []
    assert await store.record(lease, [], Outcome(ReleaseStatus.SUCCESS)) is True

    [claim] = await store.claim("daemon-b", 5, TTL)
    assert claim.release.id == second.id


async def test_expired_lease_is_taken_over_with_a_new_epoch(store: Store) -> None:
    await add_nodes(store, 1)
    await store.create_release(ReleaseSpec())
    old = await claim_one(store, "daemon-a", ttl=0.2)
    assert await store.claim("daemon-b", 5, TTL) == []

    await trio.sleep(0.5)
    [claim] = await store.claim("daemon-b", 5, TTL)

    assert claim.lease == Lease(old.release_id, old.epoch + 1)
    assert claim.release.lease_owner == "daemon-b"
    assert await store.heartbeat("daemon-a", [old], TTL) == {}
    events = await store.release_events(old.release_id)
    assert (events[-1].from_status, events[-1].to_status) == ("running", "running")


async def test_hand_back_makes_the_release_claimable_at_once(store: Store) -> None:
    await add_nodes(store, 1)
    await store.create_release(ReleaseSpec())
    lease = await claim_one(store, "daemon-a")

    await store.hand_back("daemon-a", [lease])

    [claim] = await store.claim("daemon-b", 5, TTL)
    assert claim.lease.epoch == lease.epoch + 1
    assert claim.release.status is ReleaseStatus.RUNNING


async def test_hand_back_of_someone_elses_lease_changes_nothing(store: Store) -> None:
    await add_nodes(store, 1)
    await store.create_release(ReleaseSpec())
    lease = await claim_one(store, "daemon-a")

    await store.hand_back("daemon-b", [lease])

    assert await store.claim("daemon-b", 5, TTL) == []


# --- record_crash --------------------------------------------------------------------------------


async def test_record_crash_counts_it_and_holds_the_release_back_for_the_backoff(
    store: Store,
) -> None:
    await add_nodes(store, 1)
    created = await store.create_release(ReleaseSpec())
    lease = await claim_one(store, "daemon-a")

    assert await store.record_crash("daemon-a", lease, "RuntimeError: boom", 0.6) == 1

    release = await store.get_release(created.release.id)
    assert release is not None
    assert (release.status, release.crash_count) == (ReleaseStatus.RUNNING, 1)
    assert release.last_crash == "RuntimeError: boom"
    assert release.not_before is not None
    assert await store.claim("daemon-b", 5, TTL) == []  # handed back, but held back
    await trio.sleep(0.8)
    [claim] = await store.claim("daemon-b", 5, TTL)
    assert claim.lease.epoch == lease.epoch + 1
    assert (claim.release.crash_count, claim.release.last_crash) == (1, "RuntimeError: boom")
    crashed = [
        e
        for e in await store.release_events(created.release.id)
        if (e.message or "").startswith("release.crashed")
    ]
    assert [(e.from_status, e.to_status, e.daemon_id, e.message) for e in crashed] == [
        (
            "running",
            "running",
            "daemon-a",
            "release.crashed (crash 1, claimable again in 0.6 s): RuntimeError: boom",
        )
    ]
    assert await store.record_crash("daemon-b", claim.lease, "KeyError: 'x'", 0) == 2


async def test_record_crash_of_a_lease_no_longer_held_changes_nothing(store: Store) -> None:
    await add_nodes(store, 1)
    created = await store.create_release(ReleaseSpec())
    lease = await claim_one(store, "daemon-a")

    assert await store.record_crash("daemon-b", lease, "RuntimeError: boom", 10) is None
    stale = Lease(lease.release_id, lease.epoch - 1)
    assert await store.record_crash("daemon-a", stale, "RuntimeError: boom", 10) is None

    release = await store.get_release(created.release.id)
    assert release is not None
    assert (release.crash_count, release.last_crash, release.not_before) == (0, None, None)
    assert set(await store.heartbeat("daemon-a", [lease], TTL)) == {lease.release_id}


# --- heartbeat -----------------------------------------------------------------------------------


async def test_heartbeat_returns_only_the_leases_still_held(store: Store) -> None:
    for node in await add_nodes(store, 3):
        await store.create_release(ReleaseSpec(selection=on(node)))
    mine = [claim.lease for claim in await store.claim("daemon-a", 2, TTL)]
    theirs = await claim_one(store, "daemon-b")
    stale = Lease(mine[1].release_id, mine[1].epoch - 1)

    held = await store.heartbeat("daemon-a", [mine[0], stale, theirs], 60.0)

    assert held.keys() == {mine[0].release_id}
    assert held[mine[0].release_id].status is ReleaseStatus.RUNNING
    renewed = await store.get_release(mine[0].release_id)
    assert renewed is not None and renewed.lease_expires_at is not None
    assert renewed.started_at is not None
    assert (renewed.lease_expires_at - renewed.started_at).total_seconds() > 50
    assert await store.heartbeat("daemon-a", [], TTL) == {}


async def test_heartbeat_does_not_hold_a_finished_release(store: Store) -> None:
    await add_nodes(store, 1)
    await store.create_release(ReleaseSpec())
    lease = await claim_one(store)
    await store.record(lease, [], Outcome(ReleaseStatus.SUCCESS))

    assert await store.heartbeat("daemon-a", [lease], TTL) == {}


# --- record ------------------------------------------------------------------------------------


async def test_record_applies_node_changes_and_audits_each_transition(store: Store) -> None:
    await add_nodes(store, 3)
    created = await store.create_release(ReleaseSpec())
    lease = await claim_one(store)
    rows = await store.release_nodes(created.release.id)
    canary = rows[0]

    assert await store.record(
        lease,
        [NodeChange(canary.id, NodeStatus.RUNNING, task_id="t-1", attempts=1, started=True)],
        daemon_id="daemon-a",
    )
    assert await store.record(
        lease, [NodeChange(canary.id, NodeStatus.SUCCESS, finished=True)], daemon_id="daemon-a"
    )

    [row, *_] = await store.release_nodes(created.release.id)
    assert row.status is NodeStatus.SUCCESS
    assert (row.task_id, row.attempts) == ("t-1", 1)
    assert row.started_at is not None and row.finished_at is not None
    release = await store.get_release(created.release.id)
    assert release is not None
    assert (release.success_nodes, release.failed_nodes, release.current_batch) == (1, 0, 2)
    node_events = [e for e in await store.release_events(release.id) if e.node_id is not None]
    assert [(e.node_id, e.batch, e.from_status, e.to_status, e.daemon_id) for e in node_events] == [
        (canary.node_id, 1, "pending", "running", "daemon-a"),
        (canary.node_id, 1, "running", "success", "daemon-a"),
    ]


async def test_record_coalesces_many_changes_into_one_call(store: Store) -> None:
    await add_nodes(store, 3)
    created = await store.create_release(ReleaseSpec(plan=("100%",)))
    lease = await claim_one(store)
    rows = await store.release_nodes(created.release.id)

    changes = [NodeChange(row.id, NodeStatus.RUNNING, started=True) for row in rows]
    changes.append(NodeChange(rows[0].id, NodeStatus.SUCCESS, finished=True))
    changes.append(NodeChange(rows[1].id, NodeStatus.FAILED, "agent timeout", finished=True))
    assert await store.record(lease, changes)

    after = await store.release_nodes(created.release.id)
    assert [row.status for row in after] == [
        NodeStatus.SUCCESS,
        NodeStatus.FAILED,
        NodeStatus.RUNNING,
    ]
    assert after[0].started_at is not None and after[0].finished_at is not None
    assert after[1].error_msg == "agent timeout"
    release = await store.get_release(created.release.id)
    assert release is not None and (release.success_nodes, release.failed_nodes) == (1, 1)
    events = [e for e in await store.release_events(release.id) if e.node_id is not None]
    assert [(e.node_id, e.from_status, e.to_status) for e in events] == [
        (rows[0].node_id, "pending", "running"),
        (rows[1].node_id, "pending", "running"),
        (rows[2].node_id, "pending", "running"),
        (rows[0].node_id, "running", "success"),
        (rows[1].node_id, "running", "failed"),
    ]
    assert events[-1].message == "agent timeout"


async def test_record_of_an_unchanged_status_appends_no_event(store: Store) -> None:
    await add_nodes(store, 1)
    created = await store.create_release(ReleaseSpec())
    lease = await claim_one(store)
    [row] = await store.release_nodes(created.release.id)
    before = len(await store.release_events(created.release.id))

    assert await store.record(lease, [NodeChange(row.id, NodeStatus.PENDING, attempts=2)])

    assert len(await store.release_events(created.release.id)) == before
    [after] = await store.release_nodes(created.release.id)
    assert after.attempts == 2


async def test_record_clips_error_messages_to_the_column(store: Store) -> None:
    await add_nodes(store, 1)
    created = await store.create_release(ReleaseSpec())
    lease = await claim_one(store)
    [row] = await store.release_nodes(created.release.id)

    await store.record(lease, [NodeChange(row.id, NodeStatus.FAILED, "x" * 1000, finished=True)])

    [after] = await store.release_nodes(created.release.id)
    assert after.error_msg is not None
    assert len(after.error_msg) == ERROR_MSG_MAX
    assert after.error_msg.startswith("xxx")


async def test_record_with_a_stale_epoch_changes_nothing(store: Store) -> None:
    await add_nodes(store, 2)
    created = await store.create_release(ReleaseSpec())
    old = await claim_one(store, "daemon-a")
    await store.hand_back("daemon-a", [old])
    await claim_one(store, "daemon-b")
    rows = await store.release_nodes(created.release.id)
    events_before = await store.release_events(created.release.id)

    written = await store.record(
        old,
        [NodeChange(rows[0].id, NodeStatus.FAILED, "late", finished=True)],
        Outcome(ReleaseStatus.FAILED, "late"),
    )

    assert written is False
    assert await store.release_nodes(created.release.id) == rows
    release = await store.get_release(created.release.id)
    assert release is not None
    assert (release.status, release.lease_owner, release.failed_nodes) == (
        ReleaseStatus.RUNNING,
        "daemon-b",
        0,
    )
    assert await store.release_events(created.release.id) == events_before


async def test_record_outcome_ends_nodes_and_recomputes_counters(store: Store) -> None:
    await add_nodes(store, 4)
    created = await store.create_release(ReleaseSpec(plan=(2,)))
    lease = await claim_one(store)
    rows = await store.release_nodes(created.release.id)
    await store.record(
        lease,
        [
            NodeChange(rows[0].id, NodeStatus.RUNNING, started=True),
            NodeChange(rows[1].id, NodeStatus.RUNNING, started=True),
        ],
    )

    written = await store.record(
        lease,
        [NodeChange(rows[0].id, NodeStatus.FAILED, "agent unreachable", finished=True)],
        Outcome(ReleaseStatus.FAILED, "node edge-1 failed"),
        daemon_id="daemon-a",
    )

    assert written is True
    after = await store.release_nodes(created.release.id)
    assert [row.status for row in after] == [
        NodeStatus.FAILED,
        NodeStatus.CANCELLED,
        NodeStatus.SKIPPED,
        NodeStatus.SKIPPED,
    ]
    assert all(row.finished_at is not None for row in after)
    release = await store.get_release(created.release.id)
    assert release is not None
    assert release.status is ReleaseStatus.FAILED
    assert release.error == "node edge-1 failed"
    assert (release.success_nodes, release.failed_nodes) == (0, 1)
    assert (release.skipped_nodes, release.cancelled_nodes, release.current_batch) == (2, 1, 1)
    assert release.finished_at is not None
    assert (release.lease_owner, release.lease_expires_at) == (None, None)
    events = await store.release_events(release.id)
    tail = [(e.node_id, e.from_status, e.to_status, e.message) for e in events[-4:]]
    assert tail[:3] == [
        (rows[1].node_id, "running", "cancelled", "cancelled: release failed"),
        (rows[2].node_id, "pending", "skipped", "skipped: release failed"),
        (rows[3].node_id, "pending", "skipped", "skipped: release failed"),
    ]
    assert tail[3][:3] == (None, "running", "failed")
    assert await store.record(lease, [], None) is False


async def test_record_success_leaves_no_node_open(store: Store) -> None:
    await add_nodes(store, 3)
    created = await store.create_release(ReleaseSpec())
    lease = await claim_one(store)
    rows = await store.release_nodes(created.release.id)

    await store.record(
        lease,
        [NodeChange(row.id, NodeStatus.SUCCESS, started=True, finished=True) for row in rows],
        Outcome(ReleaseStatus.SUCCESS),
    )

    release = await store.get_release(created.release.id)
    assert release is not None
    assert release.status is ReleaseStatus.SUCCESS
    assert (release.success_nodes, release.failed_nodes, release.skipped_nodes) == (3, 0, 0)
    assert release.current_batch == 0


async def test_record_ignores_rows_of_other_releases(store: Store) -> None:
    nodes = await add_nodes(store, 2)
    first = await store.create_release(ReleaseSpec(selection=on(nodes[0])))
    other = await store.create_release(ReleaseSpec(selection=on(nodes[1])))
    leases = {claim.release.id: claim.lease for claim in await store.claim("d", 5, TTL)}
    [foreign] = await store.release_nodes(other.release.id)

    await store.record(leases[first.release.id], [NodeChange(foreign.id, NodeStatus.FAILED)])

    [after] = await store.release_nodes(other.release.id)
    assert after.status is NodeStatus.PENDING


# --- releases written by other programs --------------------------------------------------------


async def test_release_with_original_columns_only_is_claimed_and_run(
    store: Store, seed_release: SeedRelease
) -> None:
    nodes = await add_nodes(store, 3)
    release_id = await seed_release(7, [[nodes[0].id], [nodes[1].id, nodes[2].id]])

    [claim] = await store.claim("daemon-a", 5, TTL)

    assert claim.release.id == release_id
    assert (claim.release.version, claim.release.scope, claim.release.selection) == (7, None, None)
    assert claim.release.plan == DEFAULT_PLAN
    assert (claim.release.max_parallel, claim.release.max_failures) == (None, 0)
    rows = await store.release_nodes(release_id)
    assert [(row.node_name, row.main_ip, row.agent_port, row.batch) for row in rows] == [
        ("edge-1", "127.0.0.2", 8443, 1),
        ("edge-2", "127.0.0.3", 8443, 2),
        ("edge-3", "127.0.0.4", 8443, 2),
    ]
    assert all((row.task_id, row.attempts) == (None, 0) for row in rows)
    await store.record(
        claim.lease,
        [NodeChange(rows[0].id, NodeStatus.SUCCESS, started=True, finished=True)],
        Outcome(ReleaseStatus.SUCCESS),
    )
    release = await store.get_release(release_id)
    assert release is not None
    assert (release.success_nodes, release.skipped_nodes) == (1, 2)
    assert (await store.create_release(ReleaseSpec())).release.version == 8


# --- reading -------------------------------------------------------------------------------------


async def test_list_releases_pages_newest_first_with_a_total(store: Store) -> None:
    await add_nodes(store, 1)
    ids = [(await store.create_release(ReleaseSpec(scope=f"s{i}"))).release.id for i in range(5)]

    page, total = await store.list_releases(offset=1, limit=2)

    assert total == 5
    assert [release.id for release in page] == [ids[3], ids[2]]
    assert await store.list_releases(offset=10) == ([], 5)


async def test_list_releases_filters_by_status(store: Store) -> None:
    await add_nodes(store, 1)
    for scope in ("a", "b", "c"):
        await store.create_release(ReleaseSpec(scope=scope))
    [claim] = await store.claim("daemon-a", 1, TTL)

    running, running_total = await store.list_releases(status=ReleaseStatus.RUNNING)
    pending, pending_total = await store.list_releases(status=ReleaseStatus.PENDING)

    assert ([r.id for r in running], running_total) == ([claim.release.id], 1)
    assert pending_total == 2 and all(r.status is ReleaseStatus.PENDING for r in pending)
    assert await store.list_releases(status=ReleaseStatus.FAILED) == ([], 0)


async def test_get_release_of_an_unknown_id_is_none(store: Store) -> None:
    assert await store.get_release(424242) is None
    assert await store.release_nodes(424242) == []
    assert await store.release_events(424242) == []


async def test_release_events_page_after_an_id(store: Store) -> None:
    await add_nodes(store, 1)
    created = await store.create_release(ReleaseSpec())
    await claim_one(store)
    everything = await store.release_events(created.release.id)

    assert len(everything) == 2
    assert everything[0].id < everything[1].id
    assert await store.release_events(created.release.id, after_id=everything[0].id) == [
        everything[1]
    ]
    assert await store.release_events(created.release.id, limit=1) == [everything[0]]


async def test_waits_name_the_active_release_then_the_next_older_pending_one(
    store: Store,
) -> None:
    nodes = await add_nodes(store, 3)
    first = (await store.create_release(ReleaseSpec(scope="eu", selection=on(nodes[0])))).release
    second = (await store.create_release(ReleaseSpec(scope="eu", selection=on(nodes[1])))).release
    third = (await store.create_release(ReleaseSpec(scope="eu", selection=on(nodes[2])))).release
    other = (await store.create_release(ReleaseSpec(scope="us", selection=on(nodes[2])))).release
    before_claim = await store.waits([first.id, second.id, other.id])
    await store.claim("daemon-a", 1, TTL)  # first, the oldest

    waits = await store.waits([first.id, second.id, third.id, other.id, 424242])

    assert before_claim[first.id] == Wait(first.id, "eu", None, None)
    assert before_claim[second.id] == Wait(second.id, "eu", first.id, ReleaseStatus.PENDING)
    assert set(waits) == {second.id, third.id, other.id}
    assert waits[second.id] == Wait(second.id, "eu", first.id, ReleaseStatus.RUNNING)
    assert waits[third.id] == Wait(third.id, "eu", first.id, ReleaseStatus.RUNNING)
    # Another scope, but third's node: behind third, on that node.
    assert waits[other.id] == Wait(
        other.id, "us", third.id, ReleaseStatus.PENDING, (nodes[2].name,), 1
    )
    assert waits[second.id].describe() == f"behind release {first.id} of scope eu (running)"
    assert waits[other.id].describe() == f"behind release {third.id} (pending) on nodes edge-3"
    assert await store.waits([]) == {}


async def test_a_release_without_scope_waits_behind_the_release_holding_its_nodes(
    store: Store,
) -> None:
    nodes = await add_nodes(store, 6)
    first = (await store.create_release(ReleaseSpec(selection=on(*nodes[:5])))).release
    await claim_one(store)
    second = (await store.create_release(ReleaseSpec())).release
    free = (await store.create_release(ReleaseSpec(selection=on(nodes[5])))).release

    waits = await store.waits([second.id, free.id])

    names = tuple(node.name for node in nodes[:5])
    assert waits[second.id] == Wait(second.id, None, first.id, ReleaseStatus.RUNNING, names, 5)
    assert waits[second.id].describe() == (
        f"behind release {first.id} (running) on nodes edge-1, edge-2, edge-3 and 2 more"
    )
    # The free one shares a node with the pending second: it waits behind it (version order).
    assert waits[free.id] == Wait(
        free.id, None, second.id, ReleaseStatus.PENDING, (nodes[5].name,), 1
    )


async def test_a_wait_names_at_most_a_few_shared_nodes_and_counts_them(store: Store) -> None:
    nodes = await add_nodes(store, WAIT_NODES_SHOWN + 5)
    first = (await store.create_release(ReleaseSpec())).release
    second = (await store.create_release(ReleaseSpec())).release

    [wait] = (await store.waits([second.id])).values()

    assert wait.ahead_id == first.id
    assert wait.shared == tuple(node.name for node in nodes[:WAIT_NODES_SHOWN])
    assert wait.shared_count == len(nodes)


# --- nodes -------------------------------------------------------------------------------------


async def test_upsert_node_registers_then_updates_by_name(store: Store) -> None:
    first = await store.upsert_node("edge-a", "127.0.0.2", 8443)

    again = await store.upsert_node(
        "edge-a", "127.0.0.9", 9443, enabled=False, status=NodeHealth.MAINTENANCE
    )

    assert again.id == first.id
    assert (again.main_ip, again.agent_port, again.enabled, again.status) == (
        "127.0.0.9",
        9443,
        False,
        NodeHealth.MAINTENANCE,
    )
    assert await store.list_nodes() == [again]


async def test_update_node_changes_only_what_is_given(store: Store) -> None:
    node = await store.upsert_node("edge-a", "127.0.0.2", 8443)

    offline = await store.update_node(node.id, status=NodeHealth.OFFLINE)
    disabled = await store.update_node(node.id, enabled=False)

    assert (offline.status, offline.enabled) == (NodeHealth.OFFLINE, True)
    assert (disabled.status, disabled.enabled) == (NodeHealth.OFFLINE, False)
    with pytest.raises(NotFound):
        await store.update_node(424242, enabled=True)


async def test_upsert_node_without_replace_refuses_an_existing_name(store: Store) -> None:
    first = await store.upsert_node("edge-a", "127.0.0.2", 8443, replace=False)

    with pytest.raises(AlreadyExists, match="edge-a"):
        await store.upsert_node("edge-a", "127.0.0.9", 9443, replace=False)

    assert await store.list_nodes() == [first]


async def test_get_node_by_id(store: Store) -> None:
    node = await store.upsert_node("edge-a", "127.0.0.2", 8443)

    assert await store.get_node(node.id) == node
    assert await store.get_node(424242) is None


async def test_node_runs_are_the_nodes_latest_releases_newest_first(store: Store) -> None:
    nodes = await add_nodes(store, 2)
    first = (await store.create_release(ReleaseSpec())).release
    lease = await claim_one(store)
    [canary, _] = await store.release_nodes(first.id)
    await store.record(
        lease,
        [NodeChange(canary.id, NodeStatus.FAILED, error_msg="boom", started=True, finished=True)],
        Outcome(ReleaseStatus.FAILED),
    )
    second = (await store.create_release(ReleaseSpec())).release
    third = (await store.create_release(ReleaseSpec())).release

    runs = await store.node_runs(nodes[0].id)
    latest = await store.node_runs(nodes[0].id, limit=1)

    assert [(run.release_id, run.version, run.batch) for run in runs] == [
        (third.id, third.version, 1),
        (second.id, second.version, 1),
        (first.id, first.version, 1),
    ]
    assert (runs[2].status, runs[2].error_msg) == (NodeStatus.FAILED, "boom")
    assert runs[2].started_at is not None and runs[2].finished_at is not None
    assert (runs[0].status, runs[0].started_at) == (NodeStatus.PENDING, None)
    assert latest == runs[:1]
    assert [run.status for run in await store.node_runs(nodes[1].id)] == [
        NodeStatus.PENDING,
        NodeStatus.PENDING,
        NodeStatus.SKIPPED,
    ]
    assert await store.node_runs(424242) == []


async def test_list_nodes_orders_by_id(store: Store) -> None:
    nodes = await add_nodes(store, 3)

    assert [node.id for node in await store.list_nodes()] == sorted(node.id for node in nodes)


# --- labels and node selection -------------------------------------------------------------------


async def test_labels_are_merged_and_removed_with_none(store: Store) -> None:
    [node] = await add_nodes(store, 1)
    assert node.labels == ()

    labelled = await store.update_node(node.id, labels={"region": "eu", "pop": "fra1"})
    assert labelled.labels == (("pop", "fra1"), ("region", "eu"))
    changed = await store.update_node(node.id, labels={"pop": "ams1", "region": None})

    assert changed.labels == (("pop", "ams1"),)
    assert (await store.list_nodes())[0].labels == (("pop", "ams1"),)
    # Re-registering a node by name keeps its labels.
    again = await store.upsert_node(node.name, "127.0.0.9", 8443)
    assert again.labels == (("pop", "ams1"),)


@pytest.mark.parametrize(
    "labels",
    [{"": "x"}, {"region": ""}, {"bad key": "x"}, {"region": "e u"}, {"region": 1}],
    ids=["empty-key", "empty-value", "space-in-key", "space-in-value", "number"],
)
async def test_bad_labels_are_rejected_and_change_nothing(
    store: Store, labels: dict[str, object]
) -> None:
    [node] = await add_nodes(store, 1)
    await store.update_node(node.id, labels={"region": "eu"})

    with pytest.raises(InvalidInput, match="label"):
        await store.update_node(node.id, labels=labels, enabled=False)  # type: ignore[arg-type]

    [after] = await store.list_nodes()
    assert (after.labels, after.enabled) == ((("region", "eu"),), True)


async def test_labels_beyond_the_limit_are_rejected(store: Store) -> None:
    [node] = await add_nodes(store, 1)
    await store.update_node(node.id, labels={f"k{i}": "v" for i in range(MAX_LABELS)})

    with pytest.raises(InvalidInput, match=f"at most {MAX_LABELS}"):
        await store.update_node(node.id, labels={"one-more": "v"})


async def test_labelling_an_unknown_node_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.update_node(424242, labels={"region": "eu"})


async def test_a_selector_takes_the_enabled_online_nodes_carrying_all_its_labels(
    store: Store,
) -> None:
    nodes = await add_nodes(store, 5)
    for node, labels in zip(
        nodes,
        [
            {"region": "eu", "pop": "fra1"},
            {"region": "eu", "pop": "ams1"},
            {"region": "us", "pop": "fra1"},
            {"region": "eu", "pop": "fra1"},
            {"region": "eu", "pop": "fra1"},
        ],
        strict=True,
    ):
        await store.update_node(node.id, labels=labels)
    await store.update_node(nodes[4].id, status=NodeHealth.OFFLINE)
    selection = NodeSelection.by_selector({"region": "eu", "pop": "fra1"})

    created = await store.create_release(ReleaseSpec(selection=selection))

    assert created.batches == ((1, (nodes[0].id,)), (2, (nodes[3].id,)))
    assert created.release.selection == selection
    release = await store.get_release(created.release.id)
    assert release is not None and release.selection == selection


async def test_nodes_selected_by_id_or_name_are_exactly_those(store: Store) -> None:
    nodes = await add_nodes(store, 4)

    by_ids = await store.create_release(
        ReleaseSpec(selection=NodeSelection.by_ids([nodes[3].id, nodes[1].id]))
    )
    by_names = await store.create_release(
        ReleaseSpec(selection=NodeSelection.by_names([nodes[2].name]))
    )

    assert by_ids.batches == ((1, (nodes[1].id,)), (2, (nodes[3].id,)))
    assert by_names.batches == ((1, (nodes[2].id,)),)
    assert by_names.release.selection == NodeSelection(node_names=(nodes[2].name,))


async def test_an_unknown_node_in_a_selection_is_invalid_and_writes_nothing(store: Store) -> None:
    nodes = await add_nodes(store, 2)

    with pytest.raises(InvalidInput, match=r"nodeIds: no such node.*424242"):
        await store.create_release(
            ReleaseSpec(selection=NodeSelection.by_ids([nodes[0].id, 424242]))
        )
    with pytest.raises(InvalidInput, match=r"nodeNames: no such node.*edge-9"):
        await store.create_release(ReleaseSpec(selection=NodeSelection.by_names(["edge-9"])))

    assert await store.list_releases() == ([], 0)


async def test_a_named_node_that_is_not_online_is_a_conflict(store: Store) -> None:
    nodes = await add_nodes(store, 3)
    await store.update_node(nodes[1].id, enabled=False)
    await store.update_node(nodes[2].id, status=NodeHealth.MAINTENANCE)

    with pytest.raises(Conflict, match=r"no online nodes.*edge-2 \(disabled\), edge-3 \(maint"):
        await store.create_release(
            ReleaseSpec(selection=NodeSelection.by_ids([n.id for n in nodes]))
        )

    assert await store.list_releases() == ([], 0)


async def test_a_selector_matching_no_online_node_is_no_online_nodes(store: Store) -> None:
    [node] = await add_nodes(store, 1)
    await store.update_node(node.id, labels={"region": "eu"})

    with pytest.raises(Conflict, match="no online nodes matching selector region=us"):
        await store.create_release(
            ReleaseSpec(selection=NodeSelection.by_selector({"region": "us"}))
        )

    assert await store.list_releases() == ([], 0)


async def test_releases_sharing_a_node_run_one_after_the_other_in_version_order(
    store: Store,
) -> None:
    nodes = await add_nodes(store, 5)
    # Three releases in three scopes over the same five nodes.
    ids = [
        (await store.create_release(ReleaseSpec(scope=scope))).release.id
        for scope in ("eu", "us", "asia")
    ]

    [first] = await store.claim("daemon-a", 10, TTL)
    assert first.release.id == ids[0]
    assert await store.claim("daemon-b", 10, TTL) == []
    assert await store.record(first.lease, [], Outcome(ReleaseStatus.SUCCESS)) is True

    [second] = await store.claim("daemon-b", 10, TTL)
    assert second.release.id == ids[1]
    assert await store.claim("daemon-a", 10, TTL) == []
    assert await store.record(second.lease, [], Outcome(ReleaseStatus.FAILED)) is True

    [third] = await store.claim("daemon-a", 10, TTL)
    assert third.release.id == ids[2]
    assert third.release.total_nodes == len(nodes)


async def test_one_shared_node_is_enough_to_wait(store: Store) -> None:
    nodes = await add_nodes(store, 3)
    first = await store.create_release(ReleaseSpec(selection=on(nodes[0], nodes[1])))
    await store.create_release(ReleaseSpec(selection=on(nodes[1], nodes[2])))

    [claim] = await store.claim("daemon-a", 10, TTL)

    assert claim.release.id == first.release.id
    assert await store.claim("daemon-a", 10, TTL) == []


async def test_disjoint_releases_are_claimed_at_once(store: Store) -> None:
    nodes = await add_nodes(store, 4)
    first = await store.create_release(ReleaseSpec(selection=on(nodes[0], nodes[1])))
    second = await store.create_release(ReleaseSpec(selection=on(nodes[2], nodes[3])))

    claims = await store.claim("daemon-a", 10, TTL)

    assert [c.release.id for c in claims] == [first.release.id, second.release.id]


async def test_an_older_pending_release_blocks_a_newer_one_over_its_nodes(store: Store) -> None:
    # Release 1 holds node A; release 2 (A, B) waits behind it; release 3 (B) is newer than
    # the waiting release 2 and shares B with it, so it waits too: version order per node.
    nodes = await add_nodes(store, 3)
    await store.create_release(ReleaseSpec(selection=on(nodes[0])))
    lease = await claim_one(store)
    second = await store.create_release(ReleaseSpec(selection=on(nodes[0], nodes[1])))
    third = await store.create_release(ReleaseSpec(selection=on(nodes[1])))
    free = await store.create_release(ReleaseSpec(selection=on(nodes[2])))

    assert [c.release.id for c in await store.claim("daemon-a", 10, TTL)] == [free.release.id]

    await store.record(lease, [], Outcome(ReleaseStatus.SUCCESS))
    assert [c.release.id for c in await store.claim("daemon-a", 10, TTL)] == [second.release.id]
    assert third.release.id not in [c.release.id for c in await store.claim("daemon-a", 10, TTL)]


async def test_a_paused_release_keeps_its_nodes(
    store: Store, store_database_url: str | None
) -> None:
    nodes = await add_nodes(store, 1)
    paused = await store.create_release(ReleaseSpec(selection=on(*nodes)))
    await store.create_release(ReleaseSpec(selection=on(*nodes)))
    await claim_one(store)
    if isinstance(store, MemoryStore):
        store._releases[paused.release.id].status = ReleaseStatus.PAUSED
    else:
        assert store_database_url is not None
        await run_sql(
            store_database_url,
            f"UPDATE release_tasks SET status = 'paused' WHERE id = {paused.release.id}",
        )

    assert await store.claim("daemon-a", 10, TTL) == []


async def test_a_release_taken_over_is_claimed_whatever_waits_on_its_nodes(store: Store) -> None:
    nodes = await add_nodes(store, 1)
    await store.create_release(ReleaseSpec(selection=on(*nodes)))
    await store.create_release(ReleaseSpec(selection=on(*nodes)))
    old = await claim_one(store, "daemon-a", ttl=0.2)

    await trio.sleep(0.5)
    [claim] = await store.claim("daemon-b", 10, TTL)

    assert claim.lease == Lease(old.release_id, old.epoch + 1)


# --- tokens and health ---------------------------------------------------------------------------


async def test_tokens_are_found_by_hash_prefix_and_unique(store: Store) -> None:
    # Two hashes that share their lookup prefix, and one that does not.
    first, twin, other = "ab" * 8 + "0" * 48, "ab" * 8 + "1" * 48, "cd" * 32
    prefix = first[:TOKEN_LOOKUP_CHARS]
    await store.create_token("ci", first)
    await store.create_token("twin", twin)

    found = await store.tokens_by_hash_prefix(prefix)
    assert sorted((token.info.name, token.token_hash) for token in found) == [
        ("ci", first),
        ("twin", twin),
    ]
    assert await store.tokens_by_hash_prefix(other[:TOKEN_LOOKUP_CHARS]) == []
    with pytest.raises(AlreadyExists):
        await store.create_token("ci", other)
    with pytest.raises(AlreadyExists):
        await store.create_token("ops", first)
    assert await store.tokens_by_hash_prefix(other[:TOKEN_LOOKUP_CHARS]) == []


async def test_ping_answers_true_when_healthy(store: Store) -> None:
    assert await store.ping() is True


async def test_listen_releases_wakes_on_creation(store: Store) -> None:
    await add_nodes(store, 1)
    woken = trio.Event()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(store.listen_releases, woken.set)
            await store.create_release(ReleaseSpec())
            await woken.wait()
            nursery.cancel_scope.cancel()


# --- the event stream ------------------------------------------------------------------------


async def test_events_since_reads_every_release_after_an_id_and_asked_ids(store: Store) -> None:
    assert await store.last_event_id() == 0
    await add_nodes(store, 2)
    first = await store.create_release(ReleaseSpec(scope="a"))
    second = await store.create_release(ReleaseSpec(scope="b"))
    await store.claim("daemon-a", 2, TTL)

    everything = await store.events_since(0)
    # The second release shares the first one's nodes: it waits, unclaimed.
    assert [event.release_id for event in everything] == [
        first.release.id,
        second.release.id,
        first.release.id,
    ]
    ids = [event.id for event in everything]
    assert ids == sorted(ids)
    assert await store.last_event_id() == ids[-1]
    assert [e.id for e in await store.events_since(ids[0])] == ids[1:]
    assert [e.id for e in await store.events_since(ids[1], missing=[ids[0]])] == [ids[0], ids[2]]
    assert [e.id for e in await store.events_since(0, limit=2)] == ids[:2]


async def test_listen_events_wakes_when_events_are_appended(store: Store) -> None:
    await add_nodes(store, 1)
    created = await store.create_release(ReleaseSpec())
    lease = await claim_one(store)
    [row] = await store.release_nodes(created.release.id)
    woken = trio.Event()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(store.listen_events, woken.set)
            await store.record(lease, [NodeChange(row.id, NodeStatus.RUNNING, started=True)])
            await woken.wait()
            nursery.cancel_scope.cancel()


# --- webhooks ----------------------------------------------------------------------------------

SECRET = "s3cret-s3cret-s3cret"


async def test_webhooks_are_registered_listed_and_removed(store: Store) -> None:
    hook = await store.create_webhook(
        WebhookSpec("https://chat.example/hook", ("release.failed", "node.failed"), SECRET, "ops")
    )
    assert (hook.url, hook.events, hook.description) == (
        "https://chat.example/hook",
        ("release.failed", "node.failed"),
        "ops",
    )
    assert await store.list_webhooks() == [hook]
    assert await store.webhook_deliveries(hook.id) == []
    await store.delete_webhook(hook.id)
    assert await store.list_webhooks() == []
    with pytest.raises(NotFound):
        await store.delete_webhook(hook.id)
    with pytest.raises(NotFound):
        await store.webhook_deliveries(hook.id)


@pytest.mark.parametrize(
    ("url", "events", "secret", "problem"),
    [
        ("ftp://x/y", ("node.failed",), SECRET, "http"),
        ("https://user:pw@x/y", ("node.failed",), SECRET, "credentials"),
        ("https://x/y", (), SECRET, "at least one"),
        ("https://x/y", ("node.exploded",), SECRET, "unknown kind"),
        ("https://x/y", ("node.failed", "node.failed"), SECRET, "repeat"),
        ("https://x/y", ("node.failed",), "short", "secret"),
    ],
)
async def test_bad_webhooks_are_refused_and_nothing_is_written(
    store: Store, url: str, events: tuple[str, ...], secret: str, problem: str
) -> None:
    with pytest.raises(InvalidInput, match=problem):
        await store.create_webhook(WebhookSpec(url, events, secret))
    assert await store.list_webhooks() == []


async def _fail_canary(store: Store) -> tuple[int, list[int]]:
    """A release of 3 nodes whose canary fails, ending the release failed."""
    await add_nodes(store, 3)
    created = await store.create_release(ReleaseSpec())
    lease = await claim_one(store)
    rows = await store.release_nodes(created.release.id)
    await store.record(lease, [NodeChange(rows[0].id, NodeStatus.RUNNING, started=True)])
    await store.record(
        lease,
        [NodeChange(rows[0].id, NodeStatus.FAILED, error_msg="disk full", finished=True)],
        Outcome(ReleaseStatus.FAILED, "canary failed"),
        daemon_id="daemon-a",
    )
    return created.release.id, [row.node_id for row in rows]


async def test_events_queue_the_deliveries_their_hooks_asked_for(store: Store) -> None:
    everything = await store.create_webhook(
        WebhookSpec("http://127.0.0.1:9/all", WEBHOOK_KINDS, SECRET)
    )
    failures = await store.create_webhook(
        WebhookSpec("http://127.0.0.1:9/failed", ("release.failed",), SECRET)
    )
    release_id, node_ids = await _fail_canary(store)

    all_kinds = [d.kind for d in reversed(await store.webhook_deliveries(everything.id))]
    assert all_kinds == [
        "release.started",
        "batch.finished",
        "node.failed",
        "release.finished",
        "release.failed",
    ]
    [failed] = await store.webhook_deliveries(failures.id)
    assert failed.kind == "release.failed"
    assert failed.status is DeliveryStatus.PENDING and failed.attempts == 0
    assert failed.idempotency_key == f"fleetwave-{failures.id}-{failed.event_id}-release.failed"
    payload = dict(failed.payload)
    assert payload["idempotencyKey"] == failed.idempotency_key
    assert (payload["releaseId"], payload["releaseStatus"], payload["toStatus"]) == (
        release_id,
        "failed",
        "failed",
    )
    assert payload["message"] == "canary failed"
    assert str(payload["createdAt"]).endswith("Z")
    [batch] = [
        d for d in await store.webhook_deliveries(everything.id) if d.kind == "batch.finished"
    ]
    assert batch.payload["batch"] == 1 and batch.payload["batchCounts"] == {"failed": 1}
    [node] = [d for d in await store.webhook_deliveries(everything.id) if d.kind == "node.failed"]
    assert node.payload["node"] == {"id": node_ids[0], "name": "edge-1", "mainIp": "127.0.0.2"}
    assert node.payload["message"] == "disk full"


async def test_deliveries_are_taken_once_retried_later_and_finished(store: Store) -> None:
    hook = await store.create_webhook(
        WebhookSpec("http://127.0.0.1:9/h", ("release.failed", "node.failed"), SECRET)
    )
    await _fail_canary(store)

    taken = await store.claim_deliveries("daemon-a", 10, lock=60)
    assert [d.delivery.kind for d in taken] == ["node.failed", "release.failed"]
    assert all((d.url, d.secret, d.delivery.attempts) == (hook.url, SECRET, 1) for d in taken)
    assert await store.claim_deliveries("daemon-b", 10, lock=60) == []  # locked by daemon-a
    first, second = taken
    assert not await store.finish_delivery(first.delivery.id, "daemon-b", delivered=True)
    assert await store.finish_delivery(first.delivery.id, "daemon-a", delivered=True, status=200)
    assert await store.finish_delivery(
        second.delivery.id, "daemon-a", delivered=False, status=503, error="HTTP 503", retry_in=3600
    )
    assert await store.claim_deliveries("daemon-b", 10, lock=60) == []  # not due for an hour
    by_id = {d.id: d for d in await store.webhook_deliveries(hook.id)}
    assert by_id[first.delivery.id].status is DeliveryStatus.DELIVERED
    assert by_id[first.delivery.id].delivered_at is not None
    retried = by_id[second.delivery.id]
    assert (retried.status, retried.last_status, retried.last_error) == (
        DeliveryStatus.PENDING,
        503,
        "HTTP 503",
    )
    assert retried.next_attempt_at > by_id[first.delivery.id].created_at


async def test_a_delivery_whose_lock_expired_is_taken_by_another_daemon(store: Store) -> None:
    await store.create_webhook(WebhookSpec("http://127.0.0.1:9/h", ("release.failed",), SECRET))
    await _fail_canary(store)
    [taken] = await store.claim_deliveries("daemon-a", 10, lock=0.05)
    await trio.sleep(0.2)
    [again] = await store.claim_deliveries("daemon-b", 10, lock=60)
    assert again.delivery.id == taken.delivery.id and again.delivery.attempts == 2
    # The first daemon's late result changes nothing; the second one's counts.
    assert not await store.finish_delivery(taken.delivery.id, "daemon-a", delivered=True)
    assert await store.finish_delivery(again.delivery.id, "daemon-b", delivered=False)
    [gave_up] = await store.webhook_deliveries(again.delivery.webhook_id)
    assert gave_up.status is DeliveryStatus.FAILED


async def test_without_hooks_events_queue_nothing(store: Store) -> None:
    await _fail_canary(store)
    assert await store.claim_deliveries("daemon-a", 10, lock=60) == []


# --- PostgreSQL only -----------------------------------------------------------------------------


async def test_concurrent_claimers_never_share_a_release(pg_store: PostgresStore) -> None:
    for node in await add_nodes(pg_store, 12):
        await pg_store.create_release(ReleaseSpec(selection=on(node)))
    claimed: list[tuple[str, int]] = []

    async def claimer(owner: str) -> None:
        while claims := await pg_store.claim(owner, 2, TTL):
            claimed.extend((owner, claim.release.id) for claim in claims)

    async with trio.open_nursery() as nursery:
        for index in range(4):
            nursery.start_soon(claimer, f"daemon-{index}")

    ids = [release_id for _, release_id in claimed]
    assert len(ids) == 12 and len(set(ids)) == 12


async def test_claim_skips_a_release_locked_by_another_transaction(
    pg_store: PostgresStore, database_url: str
) -> None:
    nodes = await add_nodes(pg_store, 2)
    locked = (await pg_store.create_release(ReleaseSpec(selection=on(nodes[0])))).release
    free = (await pg_store.create_release(ReleaseSpec(selection=on(nodes[1])))).release

    async def hold_lock(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # psql keeps the row locked for a second inside an open transaction.
        async with trio.open_nursery() as inner:
            inner.start_soon(
                run_sql,
                database_url,
                f"BEGIN; SELECT id FROM release_tasks WHERE id = {locked.id} FOR UPDATE;"
                " SELECT pg_sleep(1.5); COMMIT;",
            )
            for _ in range(100):
                output = await run_sql(
                    database_url,
                    "SELECT count(*) FROM pg_locks WHERE mode = 'RowShareLock'"
                    " AND relation = 'release_tasks'::regclass AND pid <> pg_backend_pid()",
                )
                if int(output.strip()) > 0:
                    break
                await trio.sleep(0.02)
            task_status.started()

    async with trio.open_nursery() as nursery:
        await nursery.start(hold_lock)
        with trio.fail_after(1):
            claims = await pg_store.claim("daemon-a", 5, TTL)

    assert [claim.release.id for claim in claims] == [free.id]


async def test_operations_fail_as_unavailable_and_ping_is_false_when_the_database_is_gone(
    pg_store: PostgresStore, database_url: str, postgres_server: EmbeddedPostgres
) -> None:
    name = database_url.rsplit("/", 1)[1]
    await trio.to_thread.run_sync(postgres_server.drop_database, name)

    assert await pg_store.ping() is False
    with pytest.raises(StoreUnavailable):
        await pg_store.list_nodes()


async def test_opening_an_unreachable_database_raises_unavailable() -> None:
    async with trio_asyncio.open_loop():
        with pytest.raises(StoreUnavailable, match="database unavailable"):
            async with open_postgres_store(
                "postgresql://postgres@127.0.0.1:1/none", connect_timeout=2
            ):
                pass


async def test_memory_store_is_a_store() -> None:
    store: Store = MemoryStore()
    assert await store.ping() is True


# --- token roles, expiry, listing, revocation and last use ------------------------------------


async def test_a_token_keeps_its_role_and_expiry_and_lists_without_its_hash(store: Store) -> None:
    admin = await store.create_token("root", "a" * 64)
    viewer = await store.create_token(
        "dash", "b" * 64, role=Role.VIEWER, expires_in=timedelta(days=30)
    )

    listed = await store.list_tokens()

    assert listed == [admin, viewer]
    assert (admin.role, admin.expires_at) == (Role.ADMIN, None)
    assert viewer.role is Role.VIEWER and viewer.expires_at is not None
    assert timedelta(days=30) - timedelta(seconds=5) < viewer.expires_at - viewer.created_at
    assert viewer.expires_at - viewer.created_at <= timedelta(days=30) + timedelta(seconds=5)
    assert viewer.last_used_at is None
    [found] = await store.tokens_by_hash_prefix("b" * TOKEN_LOOKUP_CHARS)
    assert (found.info, found.token_hash, found.expired) == (viewer, "b" * 64, False)


async def test_a_token_past_its_expiry_is_found_expired(store: Store) -> None:
    await store.create_token("brief", "c" * 64, expires_in=timedelta(milliseconds=20))
    await trio.sleep(0.1)

    [found] = await store.tokens_by_hash_prefix("c" * TOKEN_LOOKUP_CHARS)

    assert found.expired is True


async def test_revoke_token_by_id_or_name_deletes_it(store: Store) -> None:
    first = await store.create_token("first", "d" * 64)
    second = await store.create_token("second", "e" * 64, role=Role.OPERATOR)

    assert await store.revoke_token(first.id) == first
    assert await store.revoke_token("second") == second

    assert await store.list_tokens() == []
    assert await store.tokens_by_hash_prefix("d" * TOKEN_LOOKUP_CHARS) == []
    with pytest.raises(NotFound, match="no token id"):
        await store.revoke_token(first.id)
    with pytest.raises(NotFound, match="no token named 'second'"):
        await store.revoke_token("second")
    # The name is free again.
    await store.create_token("second", "f" * 64)


async def test_touch_tokens_stamps_last_use_of_those_tokens_only(store: Store) -> None:
    used = await store.create_token("used", "1" * 64)
    unused = await store.create_token("unused", "2" * 64)

    await store.touch_tokens([used.id, 424242])

    by_name = {token.name: token for token in await store.list_tokens()}
    assert by_name["used"].last_used_at is not None
    assert by_name["used"].last_used_at >= used.created_at
    assert by_name["unused"].last_used_at is None
    assert unused.id in {token.id for token in by_name.values()}


async def test_a_release_created_for_a_token_names_it_on_its_created_event(store: Store) -> None:
    await add_nodes(store, 1)
    actor = Actor("deployer", Role.OPERATOR)

    created = await store.create_release(ReleaseSpec(reason="r", requested_by=actor))
    anonymous = await store.create_release(ReleaseSpec(reason="r", scope="other"))

    [event] = await store.release_events(created.release.id)
    assert event.actor == actor
    [other] = await store.release_events(anonymous.release.id)
    assert other.actor is None
