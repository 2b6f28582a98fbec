"""The store interface: everything the actors, the API and the CLI ask of the database.

Two implementations keep one contract (tests/integration/test_store_contract.py):
PostgresStore (production) and MemoryStore (simulations). All methods are Trio-flavored.
Times (created_at, lease expiry, ...) come from the store's clock, never the caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Protocol

import trio

from fleetwave.store.fleet import Expectation, FleetState
from fleetwave.store.models import (
    Actor,
    Claim,
    CreatedRelease,
    Event,
    Lease,
    LeaseState,
    Node,
    NodeChange,
    NodeHealth,
    NodeRun,
    Outcome,
    Release,
    ReleaseNode,
    ReleaseSpec,
    ReleaseStatus,
    Role,
    StoredToken,
    TokenInfo,
    Wait,
)
from fleetwave.store.preview import ReleasePreview
from fleetwave.store.scopes import ScopeStrategy
from fleetwave.store.verbs import Verb, VerbEffect, VerbResult
from fleetwave.store.webhooks import Delivery, DueDelivery, Webhook, WebhookSpec


class Store(Protocol):
    # --- executor side -------------------------------------------------------------------

    async def claim(self, owner: str, limit: int, ttl: float) -> list[Claim]:
        """Claim up to ``limit`` releases for ``owner`` with a lease of ``ttl`` seconds.

        Claimable: a pending release none of whose nodes belongs to a running or paused
        release or to an older (lower version) pending one, and, when it names a scope, with
        no release of that scope running, paused or pending before it; or a running release
        whose lease expired (or has none) and whose crash backoff (``not_before``) has passed.
        Each claim sets status running, lease_owner, lease_epoch+1 and the expiry. Returned in
        version order.
        """
        ...

    async def heartbeat(
        self, owner: str, leases: Sequence[Lease], ttl: float
    ) -> dict[int, LeaseState]:
        """Renew all given leases in one statement; return the releases still held (running
        or paused), each with its status and latest verb as the row holds them."""
        ...

    async def acknowledge(self, lease: Lease, seq: int) -> bool:
        """Record (fenced) that the owner has put verb number ``seq`` in effect."""
        ...

    async def park(self, lease: Lease) -> LeaseState | None:
        """Give up the lease of a paused release (fenced): while paused no daemon holds it.

        Returns the row's state: paused (parked), or running when a resume came first (the
        lease is kept); None when the lease is no longer this holder's."""
        ...

    async def hand_back(self, owner: str, leases: Sequence[Lease]) -> None:
        """Expire the given leases now and notify, so another daemon claims them at once."""
        ...

    async def record_crash(
        self, owner: str, lease: Lease, error: str, backoff: float
    ) -> int | None:
        """The release's actors crashed: count it, keep ``error`` as its last crash, give
        the lease up, and let no daemon claim the release for ``backoff`` seconds. Appends a
        ``release.crashed`` event.

        Fenced like ``record``: returns None, changing nothing, when ``lease`` is no longer
        current; otherwise the release's crash count now.
        """
        ...

    async def record(
        self,
        lease: Lease,
        changes: Sequence[NodeChange],
        outcome: Outcome | None = None,
        *,
        daemon_id: str | None = None,
    ) -> bool:
        """Persist node transitions (and the release's end) in one fenced transaction.

        Returns False, changing nothing, when ``lease`` is no longer current (stale holder).
        Counters are recomputed from node rows. An outcome also marks every node still
        pending ``skipped`` and every node still running ``cancelled``, clears the lease, and
        stamps finished_at. Each transition appends a release_events row.
        """
        ...

    async def listen_releases(
        self,
        wake: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``wake()`` whenever a release is created or handed back (a hint; polling is
        the truth).

        Runs until cancelled; reconnects by itself when the notification channel drops.
        """
        ...

    # --- verbs ------------------------------------------------------------------------------

    async def steer(
        self,
        release_id: int,
        verb: Verb,
        *,
        by: Actor,
        reason: str = "",
        to_version: int | None = None,
    ) -> VerbResult:
        """Apply an operator verb as one compare-and-set transaction on the release row, with
        an event naming who (``by``: the API token's name and role) and why, then notify
        daemons.

        ``promote`` is ``promote(release_id)`` (its full form has its own method).

        Raises NotFound, or Conflict (a verb not allowed in the state, naming it and the
        verbs allowed; a retry superseded by a newer release; a rollback without a good
        version). A verb already in effect changes nothing (``changed`` False)."""
        ...

    async def promote(
        self, release_id: int, *, by: Actor, reason: str = "", full: bool = False
    ) -> VerbResult:
        """Pass the pause (bake or gate) a running release is at, or with ``full`` every
        pause left in its schedule (also of a pending release): one compare-and-set of the
        row's ``promoted_to`` with a ``promote`` verb and its event, then notify daemons.

        Raises NotFound, or Conflict (not running, or not at a pause without ``full``). A
        promote that passes nothing new changes nothing (``changed`` False)."""
        ...

    async def record_step(
        self,
        lease: Lease,
        step: int,
        message: str | None,
        *,
        bake: float | None = None,
        daemon_id: str | None = None,
    ) -> bool:
        """The owner reached position ``step`` of its release's schedule (fenced), with an
        event of ``message`` (None: none). ``bake``: the seconds of the bake it starts there
        (``step_ends_at`` = the database's now + bake); without, step_ends_at is cleared.
        False when ``lease`` is not current (nothing changed)."""
        ...

    async def verb_effect(self, release_id: int, seq: int) -> VerbEffect:
        """Whether verb number ``seq`` of the release holds (by the database's clock)."""
        ...

    # --- releases --------------------------------------------------------------------------

    async def create_release(self, spec: ReleaseSpec) -> CreatedRelease:
        """Create a release over the nodes of spec.selection (ordered by id), split by
        spec.plan. Without a selection: every enabled, online node; with a label selector: the
        enabled, online nodes carrying all its labels; with ids or names: exactly those nodes,
        each of which must exist (else InvalidInput) and be enabled and online (else Conflict).

        Version = previous maximum + 1, race-safe. One transaction. Raises Conflict("no online
        nodes ...") when nothing is selected, InvalidInput for a bad plan or tolerance.

        With ``spec.strategy_fields`` (an operator's request), the strategy fields it does not
        give come from the default of the release's scope, read in the same transaction
        (store/scopes.py); the "created" event says so and ``default_scope`` names it.
        """
        ...

    async def get_release(self, release_id: int) -> Release | None: ...

    async def list_releases(
        self, *, status: ReleaseStatus | None = None, offset: int = 0, limit: int = 20
    ) -> tuple[list[Release], int]:
        """A page of releases, newest first, and the total count matching ``status``."""
        ...

    async def release_nodes(self, release_id: int) -> list[ReleaseNode]:
        """All nodes of a release ordered by batch then row id, with their addresses."""
        ...

    async def release_events(
        self, release_id: int, *, after_id: int = 0, limit: int = 1000
    ) -> list[Event]:
        """The audit trail of a release, oldest first, from after ``after_id``."""
        ...

    async def first_events(self, release_ids: Sequence[int]) -> dict[int, Event]:
        """The first event ("created") of each of ``release_ids`` that has one, in one read."""
        ...

    async def preview_release(self, spec: ReleaseSpec) -> ReleasePreview:
        """What create_release(spec) would create, writing nothing: the same checks and errors,
        the same nodes in the same batches, with each node's recent apply times (store/
        preview.py). A bounded number of reads whatever the fleet's size."""
        ...

    # --- scope default strategies -----------------------------------------------------------

    async def scope_strategy(self, scope: str) -> ScopeStrategy | None:
        """The default strategy of ``scope``, or None (store/scopes.py)."""
        ...

    async def list_scope_strategies(self) -> list[ScopeStrategy]:
        """Every scope's default, by scope name."""
        ...

    async def set_scope_strategy(
        self, scope: str, strategy: Mapping[str, object], *, by: Actor | None = None
    ) -> ScopeStrategy:
        """Set or replace the default of ``scope``: ``strategy`` (the strategy fields) is
        validated as a release's are and stored in its validated form, with who set it (the
        API token) and when (the store's clock; a replaced default keeps its created_at).
        Raises InvalidInput naming the field at fault (a bad scope name: ``scope``)."""
        ...

    async def clear_scope_strategy(self, scope: str) -> ScopeStrategy:
        """Remove the default of ``scope`` and return what it was; raises NotFound. Releases
        already created keep the strategy they copied."""
        ...

    # --- nodes -----------------------------------------------------------------------------

    async def list_nodes(self) -> list[Node]: ...

    async def upsert_node(
        self,
        name: str,
        main_ip: str,
        agent_port: int,
        *,
        enabled: bool = True,
        status: NodeHealth = NodeHealth.ONLINE,
        replace: bool = True,
    ) -> Node:
        """Register a node by name, or update its address, enabled flag and status.

        With ``replace`` False an existing node of that name is left as it is: AlreadyExists.
        """
        ...

    async def update_node(
        self,
        node_id: int,
        *,
        status: NodeHealth | None = None,
        enabled: bool | None = None,
        labels: Mapping[str, str | None] | None = None,
    ) -> Node:
        """Change a node's status, enabled flag or labels, in one write; raises NotFound.

        ``labels`` is merged into the node's labels: a value sets a label, None removes it.
        Raises InvalidInput for a malformed key or value, or beyond MAX_LABELS labels."""
        ...

    async def get_node(self, node_id: int) -> Node | None: ...

    async def node_runs(self, node_id: int, *, limit: int = 10) -> list[NodeRun]:
        """The node's part in its latest ``limit`` releases, newest release first."""
        ...

    async def fleet_state(self) -> FleetState:
        """Every node with the config the record expects it to run, and every scope's newest
        release that succeeded (store/fleet.py), as of one moment. A fixed number of reads
        whatever the fleet's size."""
        ...

    async def node_expectation(self, node_id: int) -> Expectation | None:
        """The release that sets what the node should run (store/fleet.py's rule), in one
        read; None when no successful release included it (or there is no such node)."""
        ...

    async def waits(self, release_ids: Sequence[int]) -> dict[int, Wait]:
        """What each of the given releases that is pending waits for, in one query (ids of
        releases that are not pending, or do not exist, are left out)."""
        ...

    # --- API tokens --------------------------------------------------------------------------

    async def create_token(
        self,
        name: str,
        token_hash: str,
        *,
        role: Role = Role.ADMIN,
        expires_in: timedelta | None = None,
    ) -> TokenInfo:
        """Store a token's hash under a unique name with its role, expiring ``expires_in``
        from now (the store's clock) or never; raises AlreadyExists."""
        ...

    async def tokens_by_hash_prefix(self, prefix: str) -> list[StoredToken]:
        """The tokens whose hash starts with ``prefix`` (TOKEN_LOOKUP_CHARS hex characters).

        Usually none or one; the caller compares the whole hash in constant time."""
        ...

    async def list_tokens(self) -> list[TokenInfo]:
        """Every token, by id."""
        ...

    async def revoke_token(self, key: int | str) -> TokenInfo:
        """Delete the token with id ``key`` (an int) or name ``key`` (a str) and return what it
        was; raises NotFound. A revoked token is unknown from then on."""
        ...

    async def touch_tokens(self, token_ids: Sequence[int]) -> None:
        """Set last_used_at to now for these tokens, in one statement (ids gone are ignored)."""
        ...

    # --- the event stream ------------------------------------------------------------------

    async def events_since(
        self, after_id: int, *, missing: Sequence[int] = (), limit: int = 1000
    ) -> list[Event]:
        """Events of every release with an id above ``after_id`` or in ``missing`` (ids an
        earlier read skipped, whose transactions may have committed since), by id."""
        ...

    async def last_event_id(self) -> int:
        """The highest event id committed so far (0 when there is none)."""
        ...

    async def listen_events(
        self,
        wake: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``wake()`` whenever events were appended (a hint: read them with
        events_since). Runs until cancelled; reconnects by itself, calling ``wake()`` once
        on reconnecting."""
        ...

    # --- webhooks ----------------------------------------------------------------------------

    async def create_webhook(self, spec: WebhookSpec) -> Webhook:
        """Register a hook; InvalidInput for an unknown event kind or a URL not http(s)."""
        ...

    async def list_webhooks(self) -> list[Webhook]: ...

    async def delete_webhook(self, webhook_id: int) -> None:
        """Remove a hook and its queued deliveries; raises NotFound."""
        ...

    async def webhook_deliveries(self, webhook_id: int, *, limit: int = 20) -> list[Delivery]:
        """A hook's latest deliveries, newest first; raises NotFound for an unknown hook."""
        ...

    async def claim_deliveries(self, owner: str, limit: int, lock: float) -> list[DueDelivery]:
        """Take up to ``limit`` due deliveries (pending, next attempt reached, not held by a
        live lock) for ``lock`` seconds, oldest first, skipping rows another daemon is taking
        (SKIP LOCKED). Each taken delivery counts one more attempt."""
        ...

    async def finish_delivery(
        self,
        delivery_id: int,
        owner: str,
        *,
        delivered: bool,
        status: int | None = None,
        error: str | None = None,
        retry_in: float | None = None,
    ) -> bool:
        """Record an attempt's result: delivered; or pending again in ``retry_in`` seconds;
        or, with neither, failed for good. False, changing nothing, when ``owner`` no longer
        holds the delivery (its lock expired and another daemon took it)."""
        ...

    # --- health ----------------------------------------------------------------------------

    async def ping(self) -> bool:
        """True when the database answers and its migrations are current."""
        ...
