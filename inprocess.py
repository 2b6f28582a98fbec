"""A daemon driving an in-process simulated fleet: the set-up ``bench`` and ``simulate`` share.

``in_process_agents`` gives the AgentClient a daemon talks to the fleet with (no sockets: the
fleet's ASGI app answers each request in this process, on the caller's trio clock).
``DoneWatch`` tells when the releases a Supervisor claimed have left it, reading the
supervisor's owned set: no store call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from fleetwave.agent.client import AgentClient, build_http_client
from fleetwave.agent.sim import SimulatedFleet
from fleetwave.config import Settings
from fleetwave.supervisor import Supervisor

DONE_POLL = 0.005
"""How often a DoneWatch looks at the supervisor's owned releases, by default."""


@asynccontextmanager
async def in_process_agents(
    fleet: SimulatedFleet, settings: Settings
) -> AsyncIterator[AgentClient]:
    """An AgentClient whose requests ``fleet`` answers in process, as ``settings`` bound them."""
    async with build_http_client(settings, transport=fleet.transport()) as http:
        yield AgentClient(http, request_timeout=settings.agent_request_timeout_sec)


@attrs.define
class DoneWatch:
    """Finish times of releases, read from the supervisor's owned set: no SQL."""

    supervisor: Supervisor
    clock: Callable[[], float]
    expected: int
    poll: float = DONE_POLL
    done: dict[int, float] = attrs.field(factory=dict)
    _seen: set[int] = attrs.field(factory=set)

    timed_out: bool = False

    async def run(self, limit: float, release_ids: Callable[[], Sequence[int]]) -> None:
        with trio.move_on_after(limit) as timer:
            await self.wait_all(release_ids)
        self.timed_out = timer.cancelled_caught

    def _look(self) -> None:
        owned = self.supervisor.owned
        now = self.clock()
        self._seen |= owned
        for release_id in self._seen - owned - set(self.done):
            self.done[release_id] = now

    async def wait_all(self, release_ids: Callable[[], Sequence[int]]) -> None:
        """Until the supervisor claimed ``expected`` releases and owns none."""
        while True:
            self._look()
            if self.supervisor.claimed >= self.expected and not self.supervisor.owned:
                now = self.clock()
                for release_id in release_ids():
                    self.done.setdefault(release_id, now)
                return
            await trio.sleep(self.poll)
