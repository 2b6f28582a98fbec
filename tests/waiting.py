"""Bounded waits on a store's state, shared by simulations and tests on real processes."""

from __future__ import annotations

import trio

from fleetwave.store.base import Store
from fleetwave.store.models import Release


async def wait_terminal(store: Store, release_id: int, *, limit: float, step: float) -> Release:
    """The release once it is terminal, read every ``step`` seconds, for at most ``limit``."""
    with trio.fail_after(limit):
        while True:
            release = await store.get_release(release_id)
            assert release is not None, f"release {release_id} does not exist"
            if release.status.terminal:
                return release
            await trio.sleep(step)
