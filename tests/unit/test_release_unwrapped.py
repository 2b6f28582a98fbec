"""A batch's nursery hands the supervisor a plain LeaseLost or StoreUnavailable, even when a
scope further out is cancelled at the same moment."""

from __future__ import annotations

import pytest
import trio

from fleetwave.actors.release import LeaseLost, _unwrapped
from fleetwave.store.errors import StoreUnavailable


async def test_a_lone_lease_loss_comes_out_plain() -> None:
    async def lose() -> None:
        raise LeaseLost("release 1: lease epoch 1 lost")

    with pytest.raises(LeaseLost, match="epoch 1 lost"), _unwrapped(LeaseLost, StoreUnavailable):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(lose)


async def test_a_lease_loss_while_an_outer_scope_is_cancelled_comes_out_plain() -> None:
    """The lease keeper cancels the release's scope as the fenced write is refused: the
    nursery's group then holds LeaseLost and Cancelled together."""
    caught: list[BaseException] = []
    with trio.CancelScope() as release_scope:
        try:
            with _unwrapped(LeaseLost, StoreUnavailable):
                async with trio.open_nursery() as nursery:

                    async def lose() -> None:
                        release_scope.cancel()
                        raise LeaseLost("release 1: lease epoch 1 lost")

                    nursery.start_soon(trio.sleep_forever)
                    nursery.start_soon(lose)
                    await trio.sleep_forever()
        except LeaseLost as error:
            caught.append(error)
        # Still inside the cancelled scope: the next checkpoint is cancelled again.
        with pytest.raises(trio.Cancelled):
            await trio.lowlevel.checkpoint()

    assert [type(error) for error in caught] == [LeaseLost]


async def test_a_defect_beside_a_lease_loss_is_not_hidden() -> None:
    async def lose() -> None:
        raise LeaseLost("lost")

    async def defect() -> None:
        raise ZeroDivisionError

    with (
        pytest.RaisesGroup(LeaseLost, ZeroDivisionError),
        _unwrapped(LeaseLost, StoreUnavailable),
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lose)
            nursery.start_soon(defect)
