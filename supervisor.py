"""The Supervisor actor: claims releases, keeps their leases, runs a ReleaseActor for each.

One per daemon process. The claim loop wakes on a NOTIFY hint or every interval (the truth);
the lease keeper renews all owned leases in one statement every ttl/3 and cancels the actor
of any lease it lost. On stop it stops claiming, cancels its actors and hands their leases
back so another daemon continues at once.
"""

from __future__ import annotations

import attrs
import structlog
import trio

from fleetwave.actors.release import LeaseLost, ReleaseActor, ReleaseConfig
from fleetwave.actors.steering import Steering
from fleetwave.actors.timing import NodeTiming, PollPacer
from fleetwave.agent.client import AgentClient
from fleetwave.config import Settings
from fleetwave.store.base import Store
from fleetwave.store.errors import StoreUnavailable
from fleetwave.store.models import Claim, Lease, LeaseState

log = structlog.get_logger("fleetwave.supervisor")

HAND_BACK_TIMEOUT = 5.0
STORE_RETRY_MAX = 30.0


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

    def __attrs_post_init__(self) -> None:
        if not self.owner:
            self.owner = self.settings.daemon_id
        self._pacer = PollPacer(rate=self.settings.poll_rate)

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
            node=NodeTiming.from_settings(self.settings),
            pacer=self._pacer,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with structlog.contextvars.bound_contextvars(daemon=self.owner):
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as services:
                    services.start_soon(self._listen)
                    services.start_soon(self._keep_leases, services)
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
                    await nursery.start(self._run_release, claim)
            if self._stopping:
                break
            with trio.move_on_after(delay):
                await self._wake.wait()

    async def _run_release(
        self, claim: Claim, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        release_id = claim.release.id
        self.claimed += 1
        with trio.CancelScope() as scope:
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
                owned.lost = True
            except StoreUnavailable as error:
                # The lease will expire and any daemon, this one included, resumes the release.
                log.error("release.abandoned", release_id=release_id, error=str(error))
                owned.lost = True
        del self._owned[release_id]
        if scope.cancelled_caught and self._stopping and not owned.lost:
            await self._hand_back([claim.lease])
        self.poke()

    async def _hand_back(self, leases: list[Lease]) -> None:
        with trio.move_on_after(HAND_BACK_TIMEOUT, shield=True):
            try:
                await self.store.hand_back(self.owner, leases)
                log.info("release.handed_back", releases=[lease.release_id for lease in leases])
            except StoreUnavailable as error:
                log.warning("release.hand_back_failed", error=str(error))

    async def _keep_leases(self, nursery: trio.Nursery) -> None:
        ttl = self.settings.lease_ttl_sec
        last_renewed = trio.current_time()
        while True:
            with trio.move_on_after(ttl / 3):
                await self._renew.wait()
            self._renew = trio.Event()
            leases = [owned.lease for owned in self._owned.values() if not owned.lost]
            if not leases:
                last_renewed = trio.current_time()
                continue
            try:
                held = await self.store.heartbeat(self.owner, leases, ttl)
            except StoreUnavailable as error:
                log.warning("supervisor.heartbeat_failed", error=str(error))
                if trio.current_time() - last_renewed >= ttl:
                    # Our leases have expired by now; another daemon may hold them.
                    self._drop({lease.release_id for lease in leases}, "lease expired unrenewed")
                continue
            last_renewed = trio.current_time()
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
