"""The demo's summary of its health-check act says UNEXPECTED whenever the record differs from
the story: the release did not fail naming its check, went past its canary, was not rolled
back, or the rollback left a node on another config."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from fleetwave.demo import HEALTH_LIMIT, HealthAct, Outcome

ERROR = "health check edge failed: HTTP 503: edge-001 serves 5xx"


def outcome(release_id: int, status: str, total: int, success: int, **fields: Any) -> Outcome:
    values: dict[str, Any] = {
        "release_id": release_id,
        "version": release_id,
        "status": status,
        "total": total,
        "success": success,
        "failed": 0,
        "skipped": total - success,
        "cancelled": 0,
        "seconds": 1.0,
        "error": None,
    }
    values.update(fields)
    return Outcome(**values)


def fleet(*versions: tuple[int, int], differing: int = 0) -> dict[str, Any]:
    return {
        "versions": [{"configVersion": v, "nodes": n} for v, n in versions],
        "differing": [{"nodeId": k} for k in range(differing)],
    }


AS_TOLD = HealthAct(
    failed=outcome(6, "failed", 4, 1, error=ERROR),
    expected_error=ERROR,
    applied=("edge-001",),
    healthy=3,
    unhealthy=HEALTH_LIMIT,
    watched=1.0,
    previous=3,
    rollback=outcome(7, "success", 1, 1),
    rollback_config=3,
    rolled=("edge-001",),
    restored=(("edge-001", 3),),
    fleet_data=fleet((3, 4)),
)


def test_the_act_as_told_has_no_problem_and_names_its_releases() -> None:
    assert AS_TOLD.problems(4) == []
    assert "the sixth baked its canary" in AS_TOLD.expected()
    assert "rolled itself back (release 7)" in AS_TOLD.expected()
    lines = "\n".join(AS_TOLD.lines())
    assert "now edge-001 runs config 3" in lines
    assert "fleet after the rollback: config 3: 4 nodes; 0 differ" in lines


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"failed": outcome(6, "success", 4, 4)}, "should have failed with: health check edge"),
        (
            {"failed": outcome(6, "failed", 4, 1, error="node edge-001 failed")},
            "should have failed with",
        ),
        ({"failed": outcome(6, "failed", 4, 3, error=ERROR)}, "no further than its canary"),
        ({"unhealthy": HEALTH_LIMIT + 1}, f"failed {HEALTH_LIMIT} times"),
        ({"rollback": None}, "should have rolled itself back"),
        ({"rollback": outcome(7, "failed", 1, 0)}, "rollback of release 6 should have succeeded"),
        ({"rolled": ("edge-001", "edge-002")}, "on the nodes that applied release 6"),
        ({"restored": (("edge-001", 6),)}, "should run config 3"),
        ({"rollback_config": 1}, "should run config 3"),
        ({"fleet_data": fleet((3, 3), (6, 1), differing=1)}, "every node should run config 3"),
    ],
)
def test_every_departure_from_the_story_is_a_problem(changes: dict[str, Any], problem: str) -> None:
    problems = attrs.evolve(AS_TOLD, **changes).problems(4)

    assert any(problem in text for text in problems), problems
