"""The state ``release watch`` rebuilds from a release's events: counts, step, ETA, summary."""

from __future__ import annotations

from datetime import datetime

from fleetwave.api.watch import WatchState, plain_line

T0 = "2026-12-03T08:00:00.000000Z"


def _at(seconds: float) -> str:
    return f"2026-12-03T08:00:{seconds:09.6f}Z"


def _event(
    event_id: int, at: float, to: str, *, node: int | None = None, batch: int | None = None,
    came: str | None = None, message: str | None = None,
) -> dict[str, object]:  # fmt: skip
    return {
        "id": event_id, "releaseId": 7, "nodeId": node, "batch": batch, "fromStatus": came,
        "toStatus": to, "message": message, "daemonId": "d", "createdAt": _at(at),
    }  # fmt: skip


def _state(max_parallel: int | None = None) -> WatchState:
    detail = {
        "release": {"id": 7, "version": 3, "maxParallel": max_parallel},
        "batches": [
            {"batch": 1, "nodes": [{"nodeId": 1, "nodeName": "edge-1"}]},
            {"batch": 2, "nodes": [{"nodeId": k, "nodeName": f"edge-{k}"} for k in (2, 3, 4, 5)]},
        ],
    }
    return WatchState.from_detail(detail)


def test_events_move_counts_step_and_give_an_eta_from_apply_times() -> None:
    state = _state(max_parallel=2)
    assert state.step() == "waiting for a daemon to claim it"
    assert state.eta(datetime.fromisoformat("2026-12-03T08:00:00+00:00")) is None
    state.apply(_event(1, 0, "running", came="pending"))
    state.apply(_event(2, 1, "running", node=1, batch=1, came="pending"))
    assert state.step() == "batch 1 of 2: applying"
    state.apply(_event(3, 11, "success", node=1, batch=1, came="running"))
    assert state.apply_times == [10.0]
    assert state.counts(1)["success"] == 1 and state.current_batch == 2
    assert state.step() == "batch 2 of 2: dispatching"
    # Batch 2 has 4 nodes, 2 at a time: two waves of the 10 s mean.
    assert state.eta(datetime.fromisoformat("2026-12-03T08:00:11+00:00")) == 20.0
    state.apply(_event(4, 12, "running", node=2, batch=2, came="pending"))
    # One node applying for 4 s, a free slot for the next, then one more wave of the last two.
    assert state.eta(datetime.fromisoformat("2026-12-03T08:00:16+00:00")) == 20.0
    for node in (3, 4, 5):
        state.apply(_event(2 + node, 16, "success", node=node, batch=2, came="pending"))
    # Only the node applying for 4 s of a 10 s mean is left.
    assert state.eta(datetime.fromisoformat("2026-12-03T08:00:16+00:00")) == 6.0


def test_failures_arrive_with_their_reasons_and_end_in_the_summary() -> None:
    state = _state()
    state.apply(_event(1, 0, "running", came="pending"))
    state.apply(_event(2, 1, "running", node=1, batch=1, came="pending"))
    failed = _event(3, 4, "failed", node=1, batch=1, came="running", message="disk full")
    state.apply(failed)
    for k, node in enumerate((2, 3, 4, 5), start=4):
        state.apply(_event(k, 4, "skipped", node=node, batch=2, came="pending"))
    state.apply(_event(9, 4.5, "failed", came="running", message="node edge-1 failed: disk full"))

    assert state.ended and state.status == "failed"
    assert [(f.node, f.batch, f.reason) for f in state.failures] == [("edge-1", 1, "disk full")]
    assert plain_line(state, failed) == "08:00:04 batch 1 edge-1: running -> failed: disk full"
    assert state.summary().splitlines() == [
        "release 7 (version 3) failed in 4.5s: 0 succeeded, 1 failed, 4 skipped, 0 cancelled",
        "error: node edge-1 failed: disk full",
        "  failed: edge-1 (batch 1): disk full",
    ]


def _gated(step: dict[str, object] | None, updated: float) -> WatchState:
    plan = [1, {"pause": 300}, "100%"]
    detail = {
        "release": {"id": 7, "version": 3, "strategy": {"plan": plan}, "step": step,
                    "updatedAt": _at(updated)},
        "batches": [
            {"batch": 1, "nodes": [{"nodeId": 1, "nodeName": "edge-1"}]},
            {"batch": 2, "nodes": [{"nodeId": 2, "nodeName": "edge-2"}]},
        ],
    }  # fmt: skip
    return WatchState.from_detail(detail)


def test_a_bake_shows_its_time_left_and_a_gate_the_promote_it_waits_for() -> None:
    bake = {"position": 1, "kind": "bake", "batch": 1, "until": _at(50), "promoted": False}
    state = _gated(bake, 5)
    state.apply(_event(1, 0, "running", came="pending"))
    state.apply(_event(2, 1, "running", node=1, batch=1, came="pending"))
    state.apply(_event(3, 4, "success", node=1, batch=1, came="running"))
    wall = datetime.fromisoformat("2026-12-03T08:00:10+00:00")
    assert state.holding() == "bake" and state.bake_left(wall) == 40.0
    assert state.step(wall) == "bake after batch 1: 40s left"
    assert state.step(datetime.fromisoformat("2026-12-03T07:58:00+00:00")) == (
        "bake after batch 1: 2m 50s left"
    )
    assert state.step(datetime.fromisoformat("2026-12-03T08:00:51+00:00")) == (
        "bake after batch 1: ending"
    )
    bake_event = _event(4, 5, "running", came="running", message="step 1: bake 300s")
    assert plain_line(state, bake_event) == (
        "08:00:05 release 7: running -> running: step 1: bake 300s (until 08:00:50)"
    )
    state.take_detail({"release": {"step": {**bake, "promoted": True}, "updatedAt": _at(6)}}, wall)
    assert state.holding() is None and state.step(wall) == "batch 2 of 2: dispatching"
    gate = {"position": 1, "kind": "gate", "batch": 1, "until": None, "promoted": False}
    state.take_detail({"release": {"step": gate, "updatedAt": _at(7)}}, wall)
    assert (
        state.step(wall) == "gate after batch 1: waiting for promote (fleetwave release promote 7)"
    )
    # Paused there: it takes no promote before a resume.
    state.apply(_event(5, 8, "paused", came="running", message="pause by sre: lunch"))
    assert state.holding() is None and state.step(wall) == "paused (fleetwave release resume 7)"


def test_only_release_events_newer_than_the_detail_read_make_it_worth_reading_again() -> None:
    state = _gated({"position": 0, "kind": "batch", "batch": 1, "until": None}, 5)
    wall = datetime.fromisoformat("2026-12-03T08:00:10+00:00")
    state.apply(_event(1, 0, "running", came="pending"))  # replayed: in the detail read at 5 s
    state.apply(_event(2, 6, "running", node=1, batch=1, came="pending"))  # a node's
    assert not state.detail_stale and not state.worth_reading(wall)
    state.apply(_event(3, 8, "running", came="running", message="step 1: bake 300s"))
    assert state.detail_stale and state.worth_reading(wall)
    state.take_detail({"release": {"step": None, "updatedAt": _at(8)}}, wall)
    assert not state.detail_stale
    # The release's end is in its events: nothing more to read.
    state.apply(_event(4, 9, "success", came="running"))
    assert not state.detail_stale


def test_a_time_the_api_gives_that_is_no_time_is_left_out_not_a_crash() -> None:
    bake = {"position": 1, "kind": "bake", "batch": 1, "until": "soon", "promoted": False}
    state = _gated(bake, 5)
    state.apply(_event(1, 0, "running", came="pending"))
    hostile = {**_event(2, 1, "running", node=1, batch=1, came="pending"), "createdAt": "x"}
    state.apply(hostile)
    wall = datetime.fromisoformat("2026-12-03T08:00:10+00:00")

    assert state.counts(1)["running"] == 1
    assert state.last_at == datetime.fromisoformat("2026-12-03T08:00:00+00:00")
    assert state.bake_left(wall) is None
    assert plain_line(state, hostile).startswith("--:--:-- batch 1 edge-1: pending -> running")
    state.take_detail({"release": {"updatedAt": 12345}, "liveness": {"leaseExpiresAt": "?"}}, wall)
    assert state.read_at is None and state.liveness.lease_expires_at is None
