"""LabelCaps (actors/topology.py): slots per label value, handed on in order, counting nodes
already in flight, and given back by a waiter that is cancelled."""

from __future__ import annotations

import trio
import trio.testing

from fleetwave.actors.topology import LabelCaps
from fleetwave.store.selection import Labels

FRA: Labels = (("pop", "fra1"), ("region", "eu"))
AMS: Labels = (("pop", "ams1"), ("region", "eu"))
IAD: Labels = (("pop", "iad1"), ("region", "us"))


async def test_a_cap_of_one_lets_one_node_of_a_pop_through_at_a_time_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    caps = LabelCaps((("pop", 1),))
    running: list[str] = []
    peak = {"fra1": 0, "ams1": 0}
    order: list[int] = []

    async def node(index: int, labels: Labels) -> None:
        await caps.acquire(labels)
        try:
            pop = dict(labels)["pop"]
            order.append(index)
            running.append(pop)
            peak[pop] = max(peak[pop], running.count(pop))
            await trio.sleep(10)
            running.remove(pop)
        finally:
            caps.release(labels)

    async with trio.open_nursery() as nursery:
        for index in range(5):
            nursery.start_soon(node, index, FRA)
            await trio.sleep(0.01)  # they queue in this order
        nursery.start_soon(node, 9, AMS)

    assert peak == {"fra1": 1, "ams1": 1}
    assert [i for i in order if i != 9] == [0, 1, 2, 3, 4]
    # ams1 did not wait behind fra1: both pops ran side by side, five fra1 in a row.
    assert order.index(9) == 1
    assert trio.current_time() < 51
    assert caps.in_flight(("pop", "fra1")) == caps.in_flight(("pop", "ams1")) == 0


async def test_nodes_in_flight_hold_their_slots_even_beyond_the_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    caps = LabelCaps((("pop", 1),))
    caps.hold_nowait(FRA)
    caps.hold_nowait(FRA)  # two running already (a cap lowered, a foreign row)
    started: list[float] = []

    async def newcomer() -> None:
        await caps.acquire(FRA)
        started.append(trio.current_time())
        caps.release(FRA)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(newcomer)
        await trio.sleep(5)
        caps.release(FRA)
        await trio.sleep(5)
        assert started == []  # one still in flight: at the cap
        caps.release(FRA)

    assert started == [10]


async def test_a_waiter_cancelled_holds_nothing_and_the_next_one_goes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    caps = LabelCaps((("pop", 1), ("region", 1)))
    await caps.acquire(FRA)
    went: list[str] = []

    async def wait_for(labels: Labels, name: str) -> None:
        await caps.acquire(labels)
        went.append(name)
        caps.release(labels)

    async def doomed_wait() -> None:
        with doomed:
            await wait_for(AMS, "ams")

    doomed = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        # AMS takes its pop slot, then waits for the eu slot FRA holds.
        nursery.start_soon(doomed_wait)
        await trio.sleep(1)
        assert caps.in_flight(("pop", "ams1")) == 1
        doomed.cancel()
        await trio.sleep(1)
        assert caps.in_flight(("pop", "ams1")) == 0
        nursery.start_soon(wait_for, IAD, "iad")  # another region: not held up
        await trio.sleep(1)
        nursery.start_soon(wait_for, AMS, "ams again")
        await trio.sleep(1)
        caps.release(FRA)

    assert went == ["iad", "ams again"]
    assert caps.in_flight(("region", "eu")) == 0


async def test_nodes_over_crossing_caps_all_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    caps = LabelCaps((("pop", 1), ("region", 2)))
    finished = 0
    pool = trio.CapacityLimiter(2)

    async def node(labels: Labels) -> None:
        nonlocal finished
        await caps.acquire(labels)
        try:
            async with pool:
                await trio.sleep(3)
        finally:
            caps.release(labels)
        finished += 1

    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            for labels in [FRA, AMS, IAD, (), (("pop", "fra1"),), AMS, IAD, FRA] * 5:
                nursery.start_soon(node, labels)

    assert finished == 40
