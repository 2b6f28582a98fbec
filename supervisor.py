"""The Supervisor actor: claims releases, keeps their leases, runs a ReleaseActor for each.

One per daemon process. The claim loop wakes on a NOTIFY hint or every interval (the truth);
the lease keeper renews all owned leases in one statement every ttl/3 and cancels the actor
of any lease it lost. On stop it stops claiming, cancels its actors and hands their leases
back so another daemon continues at once.

Each release's actors run under a watchdog: a cancel scope whose deadline is the moment its
lease can no longer be proven held (the last renewal sent + TTL - margin). It fires whether or
not the database answers, so a daemon cut off from PostgreSQL stops dispatching before any
other daemon can claim the release.

``_run_release`` is the one place of the daemon that catches ``Exception``: a defect in a
release's actors ends that release's actors only. The crash is logged with its traceback,
counted on the release (with a ``release.crashed`` event), and the lease handed back with a
backoff; the daemon that claims it after ``max_crashes`` crashes ends it failed.
"""

from __future__ import annotations

import attrs
import httpx
import structlog
import trio

from fleetwave.actors.release import LeaseLost, ReleaseActor, ReleaseConfig
from fleetwave.actors.steering import Steering
from fleetwave.actors.timing import NodeTiming, PollPacer
from fleetwave.agent.client import AgentClient
from fleetwave.config import Settings, metrics
from fleetwave.store.base import Store
from fleetwave.store.errors import StoreUnavailable
from fleetwave.store.models import Claim, Lease, LeaseState
from fleetwave.webhooks.delivery import DeliveryService

log = structlog.get_logger("fleetwave.supervisor")

HAND_BACK_TIMEOUT = 5.0
STORE_RETRY_MAX = 30.0
LEASE_MARGIN_FRACTION = 0.1
"""The watchdog stops a release this fraction of the TTL before its lease may expire: time
for cancelled requests to stop before another daemon may claim it."""
CRASH_BACKOFF_MAX = 600.0
CRASH_TEXT_MAX = 500


def describe_crash(error: BaseException) -> str:
    """``Type: message`` of the first real error in ``error`` (groups unwrapped), clipped."""
    while isinstance(error, BaseExceptionGroup):
        leaves = [e for e in error.exceptions if not isinstance(e, trio.Cancelled)]
        error = (leaves or list(error.exceptions))[0]
    text = f"{type(error).__name__}: {error}".strip().rstrip(":")
    return text if len(text) <= CRASH_TEXT_MAX else text[: CRASH_TEXT_MAX - 1] + "…"


@attrs.define
class _Owned:
    lease: Lease
    scope: trio.CancelScope
    lost: bool = False
    steering: Steering = attrs.field(factory=Steering)
    acked: int = 0
    """The latest verb number acknowledged in the store."""


@attrs.define
class Supervisor:
    store: Store
    agents: AgentClient
    settings: Settings
    owner: str = ""
    _owned: dict[int, _Owned] = attrs.field(factory=dict)
    _wake: trio.Event = attrs.field(factory=trio.Event)
    _renew: trio.Event = attrs.field(factory=trio.Event)
    _stopping: bool = False
    _scope: trio.CancelScope | None = None
    _pacer: PollPacer = attrs.field(init=False)
    claimed: int = 0
    """Releases claimed by this supervisor since it started."""
    webhooks: DeliveryService | None = None
    """Sends the webhook outbox while the daemon runs (any daemon may send any delivery)."""
    checks_http: httpx.AsyncClient | None = None
    """The client of releases' HTTP health checks (plain HTTP(S), the system's CAs)."""

    def __attrs_post_init__(self) -> None:
        if not self.owner:
            self.owner = self.settings.daemon_id
        self._pacer = PollPacer(rate=self.settings.poll_rate)
        metrics.watch_poll_budget(lambda: self._pacer.watching, self._pacer.rate)

    @property
    def owned(self) -> set[int]:
        return set(self._owned)

    def poke(self) -> None:
        """Wake the claim loop now (a new release, or a free slot)."""
        self._wake.set()

    def _notified(self) -> None:
        """A NOTIFY: a release was created, handed back or steered. Look now, and renew the
        leases now, since the renewal reads each owned release's verbs."""
        self.poke()
        self._renew.set()

    def stop(self) -> None:
        """Stop claiming, cancel running actors and hand their leases back."""
        if self._stopping:
            return
        log.info("supervisor.stopping", releases=sorted(self._owned))
        self._stopping = True
        for owned in self._owned.values():
            owned.scope.cancel(reason="daemon stopping")
        self.poke()

    def crash(self) -> None:
        """Vanish at once, as a killed process would: no hand-back, no final writes."""
        self._stopping = True
        if self._scope is not None:
            self._scope.cancel(reason="daemon crashed")

    @property
    def _release_config(self) -> ReleaseConfig:
        return ReleaseConfig(
            daemon_id=self.owner,
            max_parallel=self.settings.max_parallel,
            flush_interval=self.settings.flush_interval_sec,
            reconcile_timeout=self.settings.reconcile_timeout_sec,
            store_patience=self.settings.lease_ttl_sec,
            max_crashes=self.settings.max_crashes,
            node=NodeTiming.from_settings(self.settings),
            pacer=self._pacer,
            checks_http=self.checks_http,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with structlog.contextvars.bound_contextvars(daemon=self.owner):
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as services:
                    services.start_soon(self._listen)
                    services.start_soon(self._keep_leases, services)
                    if self.webhooks is not None:
                        await services.start(self.webhooks.run)
                    log.info("supervisor.started", executor_enabled=self.settings.executor_enabled)
                    # Actors get a nursery of their own: on stop it drains (each actor hands its
                    # lease back) while the lease keeper still runs.
                    async with trio.open_nursery() as actors:
                        task_status.started()
                        await self._claim_loop(actors)
                    services.cancel_scope.cancel()
            log.info("supervisor.stopped")

    async def _claim_loop(self, nursery: trio.Nursery) -> None:
        failures = 0
        while not self._stopping:
            self._wake = trio.Event()
            free = self.settings.max_releases - len(self._owned)
            delay = self.settings.interval_sec
            if self.settings.executor_enabled and free > 0:
                sent = trio.current_time()
                try:
                    claims = await self.store.claim(self.owner, free, self.settings.lease_ttl_sec)
                except StoreUnavailable as error:
                    failures += 1
                    delay = min(STORE_RETRY_MAX, self.settings.interval_sec * 2 ** min(failures, 5))
                    log.warning("supervisor.claim_failed", error=str(error), retry_in=delay)
                    claims = []
                else:
                    failures = 0
                for claim in claims:
                    if self._stopping:
                        await self._hand_back([claim.lease])
                        continue
                    await nursery.start(self._run_release, claim, sent)
            if self._stopping:
                break
            with trio.move_on_after(delay):
                await self._wake.wait()

    def _proven_until(self, sent: float) -> float:
        """Until when a lease claimed or renewed by a statement sent at ``sent`` (trio time)
        is surely still ours: the database stamped its expiry after ``sent``."""
        ttl = self.settings.lease_ttl_sec
        return sent + ttl * (1 - LEASE_MARGIN_FRACTION)

    async def _run_release(
        self,
        claim: Claim,
        sent: float,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        release_id = claim.release.id
        self.claimed += 1
        metrics.CLAIMS.inc()
        if claim.lease.epoch > 1:
            metrics.TAKEOVERS.inc()
        crash: Exception | None = None
        # The watchdog: the heartbeat moves this deadline on at every renewal.
        with trio.CancelScope(deadline=self._proven_until(sent)) as scope:
            owned = _Owned(claim.lease, scope, acked=claim.release.verb_acked)
            owned.steering.apply(LeaseState.of(claim.release))
            self._owned[release_id] = owned
            task_status.started()
            log.info(
                "release.claimed",
                release_id=release_id,
                version=claim.release.version,
                epoch=claim.lease.epoch,
            )
            try:
                if owned.steering.seq > owned.acked:
                    # Claimed with a verb no owner acknowledged (a cancel to complete).
                    await self._acknowledge(owned)
                actor = ReleaseActor(
                    claim, self.store, self.agents, self._release_config, owned.steering
                )
                await actor.run()
            except LeaseLost:
                if not owned.lost:
                    metrics.LEASE_LOSSES.inc()
                owned.lost = True
            except StoreUnavailable as error:
                # The lease will expire and any daemon, this one included, resumes the release.
                owned.lost = True
                if trio.current_time() >= scope.deadline:
                    # The lease was unproven already (this daemon stalled, or the database
                    # stayed away past it): the watchdog's stop, whichever came first.
                    log.warning("release.lease_unproven", release_id=release_id, error=str(error))
                else:
                    log.error("release.abandoned", release_id=release_id, error=str(error))
            except Exception as error:
                # The daemon's one broad except: a defect in this release's actors (any
                # exception trio propagated out of its tree) ends this release's actors only.
                log.exception(
                    "release.crashed",
                    release_id=release_id,
                    crashes=claim.release.crash_count + 1,
                    error=describe_crash(error),
                )
                metrics.CRASHES.inc()
                crash = error
        if self._owned.get(release_id) is owned:
            # Not when a later claim of the release by this daemon (its lease ran out while
            # this actor was held up) owns it now: that one removes its own entry.
            del self._owned[release_id]
        if crash is not None and not owned.lost:
            await self._record_crash(claim, crash)
        elif scope.cancelled_caught and not owned.lost:
            if self._stopping:
                await self._hand_back([claim.lease])
            elif trio.current_time() >= scope.deadline:
                # Cut off from the database: the lease may be another daemon's any moment.
                log.warning("release.lease_unproven", release_id=release_id)
        self.poke()

    async def _record_crash(self, claim: Claim, error: Exception) -> None:
        crashes = claim.release.crash_count + 1
        backoff = min(CRASH_BACKOFF_MAX, self.settings.crash_backoff_sec * 2 ** (crashes - 1))
        if crashes >= self.settings.max_crashes:
            backoff = 0.0  # the next claim only reconciles and ends it: nothing to wait for
        text = describe_crash(error)
        with trio.move_on_after(HAND_BACK_TIMEOUT, shield=True):
            try:
                count = await self.store.record_crash(self.owner, claim.lease, text, backoff)
            except StoreUnavailable as failure:
                # Not counted: the lease expires unrenewed and the release is claimed again.
                log.warning("release.crash_unrecorded", error=str(failure))
                return
            if count is None:
                log.warning("release.crash_unrecorded", error="lease no longer held")
            else:
                log.info(
                    "release.crash_recorded",
                    release_id=claim.release.id,
                    crashes=count,
                    max_crashes=self.settings.max_crashes,
                    backoff=backoff,
                )

    async def _hand_back(self, leases: list[Lease]) -> None:
        with trio.move_on_after(HAND_BACK_TIMEOUT, shield=True):
            try:
                await self.store.hand_back(self.owner, leases)
                log.info("release.handed_back", releases=[lease.release_id for lease in leases])
            except StoreUnavailable as error:
                log.warning("release.hand_back_failed", error=str(error))

    async def _keep_leases(self, nursery: trio.Nursery) -> None:
        """Renew every ttl/3 (sooner when a NOTIFY asks), each renewal bounded by ttl/3: a
        renewal that hangs is a failed one, and the next is sent on time. A release whose
        lease goes unrenewed is stopped by its watchdog, not here."""
        ttl = self.settings.lease_ttl_sec
        sent = trio.current_time()
        while True:
            with trio.move_on_at(sent + ttl / 3):
                await self._renew.wait()
            self._renew = trio.Event()
            sent = trio.current_time()
            owned = [owned for owned in self._owned.values() if not owned.lost]
            if not owned:
                continue
            leases = [entry.lease for entry in owned]
            held: dict[int, LeaseState] | None = None
            with trio.move_on_after(ttl / 3):
                try:
                    held = await self.store.heartbeat(self.owner, leases, ttl)
                except StoreUnavailable as error:
                    log.warning("supervisor.heartbeat_failed", error=str(error))
                    continue
            if held is None:
                log.warning("supervisor.heartbeat_failed", error=f"no answer within {ttl / 3:g}s")
                continue
            for entry in owned:
                if entry.lease.release_id in held:
                    entry.scope.deadline = max(entry.scope.deadline, self._proven_until(sent))
            self._drop({lease.release_id for lease in leases} - held.keys(), "lease lost")
            for release_id, state in held.items():
                self._steer(nursery, release_id, state)

    def _steer(self, nursery: trio.Nursery, release_id: int, state: LeaseState) -> None:
        """Apply a release's verbs to its actor now; acknowledge them once in effect."""
        owned = self._owned.get(release_id)
        if owned is None or owned.lost:
            return
        owned.steering.apply(state)
        if state.verb_seq > max(owned.acked, state.verb_acked):
            owned.acked = state.verb_seq
            log.info(
                "release.steered",
                release_id=release_id,
                verb=state.verb,
                status=str(state.status),
                seq=state.verb_seq,
            )
            nursery.start_soon(self._acknowledge, owned)

    async def _acknowledge(self, owned: _Owned) -> None:
        """Once no dispatch the verb forbids is still being sent, say so in the store."""
        seq = owned.steering.seq
        await owned.steering.quiet()
        try:
            acknowledged = await self.store.acknowledge(owned.lease, seq)
        except StoreUnavailable as error:
            # The next renewal finds it unacknowledged and tries again.
            log.warning("release.acknowledge_failed", error=str(error))
            owned.acked = min(owned.acked, seq - 1)
            return
        # Not acknowledged: the release ended or was parked meanwhile, or the lease is lost
        # (which the next renewal finds); either way the verb needs no owner any more.
        log.info(
            "release.acknowledged",
            release_id=owned.lease.release_id,
            seq=seq,
            recorded=acknowledged,
        )

    def _drop(self, release_ids: set[int], reason: str) -> None:
        for release_id in release_ids:
            owned = self._owned.get(release_id)
            if owned is not None and not owned.lost:
                log.warning("release.lease_lost", release_id=release_id, reason=reason)
                metrics.LEASE_LOSSES.inc()
                owned.lost = True
                owned.scope.cancel(reason=reason)

    async def _listen(self) -> None:
        delay = 1.0
        while True:
            try:
                await self.store.listen_releases(self._notified)
            except StoreUnavailable as error:
                log.warning("supervisor.listen_failed", error=str(error), retry_in=delay)
                await trio.sleep(delay)
                delay = min(STORE_RETRY_MAX, delay * 2)
            else:
                return
