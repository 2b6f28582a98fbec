"""The store contract of scope default strategies, on PostgresStore and MemoryStore alike (the
``store`` fixture runs both): set, read, list and clear a scope's default, and releases created
from a request without strategy fields of their own taking it."""

from __future__ import annotations

import attrs
import pytest
import trio

from fleetwave.store.base import Store
from fleetwave.store.errors import Conflict, InvalidInput, NotFound
from fleetwave.store.models import Actor, ReleaseSpec, Role
from fleetwave.store.postgres import PostgresStore
from fleetwave.store.strategy import FIELDS, validate_strategy
from tests.integration.conftest import run_sql
from tests.integration.test_store_contract import add_nodes

pytestmark = pytest.mark.postgres

ALICE = Actor("alice", Role.OPERATOR)
CHECK = {"name": "edge", "http": {"url": "http://127.0.0.1:9/health?release={release}"}}
BAKED = {
    "plan": [1, {"pause": 300}, "100%"],
    "maxFailurePercent": 10,
    "onFailure": "pause",
    "healthChecks": [CHECK],
}
"""A default as an operator sends it: the canary, a five-minute bake, then the rest."""
BAKED_STORED = validate_strategy(
    BAKED["plan"], None, BAKED["maxFailurePercent"], BAKED["onFailure"], BAKED["healthChecks"]
).to_json()


def request(*given: str, spec: ReleaseSpec | None = None) -> ReleaseSpec:
    """A spec as the API makes it from a request giving the strategy fields ``given``."""
    return attrs.evolve(spec or ReleaseSpec(), strategy_fields=given)


async def test_a_scope_default_is_stored_validated_with_who_set_it_listed_and_cleared(
    store: Store,
) -> None:
    assert await store.scope_strategy("cdn") is None
    assert await store.list_scope_strategies() == []

    first = await store.set_scope_strategy("cdn", BAKED, by=ALICE)
    await store.set_scope_strategy("eu", {"plan": ["50%"]})

    assert first.scope == "cdn"
    assert first.strategy == BAKED_STORED
    assert first.set_by == ALICE
    assert first.problem is None
    assert await store.scope_strategy("cdn") == first
    assert [row.scope for row in await store.list_scope_strategies()] == ["cdn", "eu"]
    eu = await store.scope_strategy("eu")
    assert eu is not None and eu.set_by is None
    assert eu.strategy["plan"] == ["50%"] and eu.strategy["maxFailures"] == 0

    await trio.sleep(0.01)
    bob = Actor("bob", Role.ADMIN)
    replaced = await store.set_scope_strategy("cdn", {"plan": [2, "100%"]}, by=bob)
    assert replaced.set_by == bob
    assert replaced.strategy["plan"] == [2, "100%"]
    assert replaced.created_at == first.created_at
    assert replaced.updated_at > first.updated_at

    cleared = await store.clear_scope_strategy("cdn")
    assert cleared == replaced
    assert await store.scope_strategy("cdn") is None
    assert [row.scope for row in await store.list_scope_strategies()] == ["eu"]
    with pytest.raises(NotFound, match="scope cdn has no default strategy"):
        await store.clear_scope_strategy("cdn")


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ({"plan": [1, {"pause": None}]}, r"plan\[1\]: a gate cannot be the last step"),
        ({"plan": [1, {"bake": 5}]}, r"plan\[1\]: unknown step kind"),
        ({"maxFailurePercent": 101}, "maxFailurePercent: must be from 0 to 100"),
        ({"healthChecks": [{"name": "x", "http": {"url": "ftp://h"}}]}, r"http\.url: must be"),
        ({"batchSize": 3}, r"strategy: unknown field\(s\) batchSize"),
    ],
)
async def test_a_bad_default_is_refused_naming_the_field_and_nothing_is_written(
    store: Store, strategy: dict[str, object], message: str
) -> None:
    await store.set_scope_strategy("cdn", {"plan": [1, "100%"]})

    with pytest.raises(InvalidInput, match=message):
        await store.set_scope_strategy("cdn", strategy, by=ALICE)

    kept = await store.scope_strategy("cdn")
    assert kept is not None and kept.strategy["plan"] == [1, "100%"] and kept.set_by is None


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        ("", "scope: must not be empty"),
        ("   ", "scope: must not be empty"),
        ("eu\x00", "scope: contains NUL"),
        ("eu\nwest", "scope: contains a control character"),
        ("\ud800", "scope: contains a lone surrogate"),
        ("e" * 256, "scope: must be at most 255 characters, got 256"),
        ("eu/west", 'scope: must not hold "/"'),
    ],
)
async def test_a_bad_scope_name_is_refused_by_every_method(
    store: Store, scope: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        await store.set_scope_strategy(scope, {"plan": [1]})
    with pytest.raises(InvalidInput, match=message):
        await store.scope_strategy(scope)
    with pytest.raises(InvalidInput, match=message):
        await store.clear_scope_strategy(scope)
    assert await store.list_scope_strategies() == []


async def test_a_request_without_strategy_fields_copies_its_targets_default(
    store: Store,
) -> None:
    await add_nodes(store, 4)
    await store.set_scope_strategy("cdn", BAKED, by=ALICE)

    created = await store.create_release(request(spec=ReleaseSpec(reason="tls")))

    assert created.default_scope == "cdn"
    release = created.release
    assert release.strategy == BAKED_STORED
    assert release.plan == (1, "100%")
    assert [len(ids) for _, ids in created.batches] == [1, 3]
    [event] = await store.release_events(release.id)
    assert event.message == (
        "created: version 1, 4 nodes in 2 batches; reason: tls; strategy: the default of scope cdn"
    )

    # Changed or cleared later, the default changes no release already made.
    await store.set_scope_strategy("cdn", {"plan": ["100%"]})
    await store.clear_scope_strategy("cdn")
    again = await store.get_release(release.id)
    assert again is not None and again.strategy == BAKED_STORED


async def test_a_named_scope_takes_its_own_default_else_its_targets(store: Store) -> None:
    await add_nodes(store, 4)
    await store.set_scope_strategy("cdn", BAKED)
    await store.set_scope_strategy("eu", {"plan": [2, "100%"], "maxFailures": 1})

    own = await store.create_release(request(spec=ReleaseSpec(scope="eu")))
    inherited = await store.create_release(request(spec=ReleaseSpec(scope="us")))

    assert own.default_scope == "eu"
    assert own.release.plan == (2, "100%") and own.release.max_failures == 1
    assert inherited.default_scope == "cdn"
    assert inherited.release.strategy == BAKED_STORED
    events = [(await store.release_events(r.release.id))[0] for r in (own, inherited)]
    assert [event.message.rsplit("; ", 1)[1] for event in events if event.message] == [
        "strategy: the default of scope eu",
        "strategy: the default of scope cdn",
    ]


async def test_fields_of_the_request_win_whole_and_the_budget_counts_as_one(
    store: Store,
) -> None:
    await add_nodes(store, 4)
    await store.set_scope_strategy("cdn", BAKED)
    explicit = validate_strategy(["100%"], 2)

    created = await store.create_release(
        request("plan", "maxFailures", spec=ReleaseSpec(plan=explicit.plan, max_failures=2))
    )

    strategy = created.release.strategy
    assert strategy is not None
    # The request's plan replaces the default's (no bake left) and its maxFailures the whole
    # budget (the default's maxFailurePercent is gone); the rest is the default's.
    assert strategy["plan"] == ["100%"]
    assert (strategy["maxFailures"], strategy["maxFailurePercent"]) == (2, None)
    assert strategy["onFailure"] == "pause"
    assert strategy["healthChecks"] == BAKED_STORED["healthChecks"]
    assert created.release.plan == ("100%",) and created.release.max_failures == 2
    [event] = await store.release_events(created.release.id)
    assert event.message is not None and event.message.endswith(
        "strategy: the default of scope cdn, with plan, maxFailures from the request"
    )


async def test_a_request_giving_every_field_or_a_spec_not_from_a_request_ignores_defaults(
    store: Store,
) -> None:
    await add_nodes(store, 2)
    await store.set_scope_strategy("cdn", BAKED)
    full = validate_strategy([1, "100%"], 0, None, "stop", [])
    every = FIELDS

    given_all = await store.create_release(
        request(*every, spec=ReleaseSpec(plan=full.plan, strategy=full.to_json()))
    )
    internal = await store.create_release(ReleaseSpec())

    for created in (given_all, internal):
        assert created.default_scope is None
        assert created.release.plan == (1, "100%")
        assert created.release.strategy in (None, full.to_json())
        [event] = await store.release_events(created.release.id)
        assert event.message is not None and "strategy:" not in event.message


async def test_without_a_default_a_request_runs_as_the_original(store: Store) -> None:
    await add_nodes(store, 3)
    await store.set_scope_strategy("eu", BAKED)

    created = await store.create_release(request())

    assert created.default_scope is None
    assert (created.release.plan, created.release.strategy) == ((1, "100%"), None)
    assert [len(ids) for _, ids in created.batches] == [1, 2]


async def test_the_preview_takes_the_default_as_creation_does_and_writes_nothing(
    store: Store,
) -> None:
    await add_nodes(store, 4)
    await store.set_scope_strategy("cdn", BAKED)

    preview = await store.preview_release(request())
    plain = await store.preview_release(ReleaseSpec())

    assert preview.default_scope == "cdn"
    assert [(step.kind, step.batch) for step in preview.steps] == [
        ("batch", 1),
        ("bake", 1),
        ("batch", 2),
    ]
    assert preview.bake_seconds == 300
    assert plain.default_scope is None
    assert [step.kind for step in plain.steps] == ["batch", "batch"]
    assert await store.list_releases() == ([], 0)


async def test_a_default_row_that_is_not_a_strategy_refuses_creation_naming_it(
    pg_store: PostgresStore, database_url: str
) -> None:
    """A row another program wrote: listed with its problem, and a release that would take
    it is refused (409) rather than run on a guess; a release giving every field is not."""
    await add_nodes(pg_store, 2)
    await run_sql(
        database_url,
        "INSERT INTO scope_strategies (scope, strategy) VALUES"
        """ ('cdn', '{"plan": [1, {"pause": null}]}'), ('eu', DEFAULT)""",
    )

    [cdn, eu] = await pg_store.list_scope_strategies()

    assert cdn.problem == "plan[1]: a gate cannot be the last step: nothing would follow it"
    assert (eu.problem, eu.set_by, eu.parsed().plan) == (None, None, (1, "100%"))
    with pytest.raises(Conflict, match=r"the default strategy of scope cdn is not valid \(plan"):
        await pg_store.create_release(request())
    assert (await pg_store.list_releases())[1] == 0
    every = FIELDS
    created = await pg_store.create_release(request(*every))
    assert created.default_scope is None


async def test_a_default_row_nested_deeper_than_json_reads_is_listed_with_its_problem(
    pg_store: PostgresStore, database_url: str
) -> None:
    """PostgreSQL stores jsonb nested far deeper than Python's parser reads: such a row is a
    default with a problem, not an error of every read of the defaults."""
    await run_sql(
        database_url,
        "INSERT INTO scope_strategies (scope, strategy) VALUES ('deep', "
        "('{\"plan\": ' || repeat('[', 5000) || repeat(']', 5000) || '}')::jsonb)",
    )

    [deep] = await pg_store.list_scope_strategies()

    assert deep.scope == "deep"
    assert deep.problem is not None and "unreadable" in deep.problem
    assert await pg_store.scope_strategy("deep") == deep


async def test_a_label_of_the_default_no_node_carries_is_refused_naming_the_default(
    store: Store,
) -> None:
    await add_nodes(store, 2)
    await store.set_scope_strategy("cdn", {"batchBy": "pop", "maxInFlightPer": {"rack": 1}})
    taken = "batchBy: no node of the release has the label 'pop' (their labels: none)"

    for ask in (store.create_release, store.preview_release):
        with pytest.raises(InvalidInput) as refused:
            await ask(request("plan", spec=ReleaseSpec(plan=(1, "100%"))))
        assert str(refused.value) == f"{taken} (batchBy from the default strategy of scope cdn)"
        # The request's own field is its own: refused as it would be without a default.
        with pytest.raises(InvalidInput) as refused:
            await ask(request("batchBy", spec=ReleaseSpec(strategy={"batchBy": "pop"})))
        assert str(refused.value) == taken
    with pytest.raises(InvalidInput, match=r"\(maxInFlightPer from the default strategy of"):
        await store.create_release(request("batchBy"))
    assert (await store.list_releases())[1] == 0


async def test_an_empty_list_of_checks_in_the_request_drops_the_defaults_checks(
    store: Store,
) -> None:
    await add_nodes(store, 2)
    await store.set_scope_strategy("cdn", BAKED)

    created = await store.create_release(request("healthChecks"))

    strategy = created.release.strategy
    assert strategy is not None
    assert strategy["healthChecks"] == []
    assert strategy["plan"] == BAKED_STORED["plan"]
    assert strategy["onFailure"] == "pause"


async def test_topology_fields_of_a_default_apply_beside_a_requests_plan(store: Store) -> None:
    nodes = await add_nodes(store, 4)
    pops = dict(zip([node.id for node in nodes], ("fra1", "fra1", "ams1", "ams1"), strict=True))
    for node_id, pop in pops.items():
        await store.update_node(node_id, labels={"pop": pop})
    await store.set_scope_strategy("cdn", {"batchBy": "pop", "maxInFlightPer": {"pop": 1}})
    plan = validate_strategy([1, "100%"]).plan

    created = await store.create_release(request("plan", spec=ReleaseSpec(plan=plan)))

    strategy = created.release.strategy
    assert strategy is not None
    assert (strategy["batchBy"], strategy["maxInFlightPer"]) == ("pop", {"pop": 1})
    # After the canary, one PoP per batch (without batchBy: the canary, then the other 3).
    per_batch = [{pops[i] for i in ids} for _, ids in created.batches]
    assert len(per_batch) == 3
    assert all(len(found) == 1 for found in per_batch[1:])
    assert set().union(*per_batch[1:]) == {"fra1", "ams1"}
