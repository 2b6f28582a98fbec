"""When each API token was last used: noted in memory per request, written once a minute.

A request only notes its token's id in a set (no I/O); ``run`` writes the tokens noted since
the last write in one statement every ``interval`` seconds, so a token's ``last_used_at`` is
written at most once per interval however busy it is, and is at most one interval behind.
"""

from __future__ import annotations

import attrs
import structlog
import trio

from fleetwave.store.base import Store
from fleetwave.store.errors import StoreError

log = structlog.get_logger("fleetwave.api")

INTERVAL = 60.0
FINAL_WRITE_TIMEOUT = 5.0


@attrs.define
class TokenUse:
    store: Store
    interval: float = INTERVAL
    _noted: set[int] = attrs.field(factory=set)

    def note(self, token_id: int) -> None:
        self._noted.add(token_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write noted uses every ``interval`` until cancelled, then once more (bounded)."""
        task_status.started()
        try:
            while True:
                await trio.sleep(self.interval)
                await self.write()
        finally:
            with trio.move_on_after(FINAL_WRITE_TIMEOUT, shield=True):
                await self.write()

    async def write(self) -> None:
        """Write the uses noted so far; on a database error they are kept for the next try."""
        if not self._noted:
            return
        token_ids, self._noted = sorted(self._noted), set()
        try:
            await self.store.touch_tokens(token_ids)
        except StoreError as error:
            self._noted.update(token_ids)
            log.warning("api.token_use_not_written", error=str(error), tokens=len(token_ids))
