"""Batch plans: a list of sizes, each a count or a percentage, the last repeating.

Ansible ``serial`` semantics: with 10 nodes, ``[1, "30%"]`` gives batches of 1, 3, 3, 3.
A percentage is of all nodes, rounded down but never below one node.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from fleetwave.store.errors import InvalidInput
from fleetwave.store.models import PlanStep

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
MAX_PLAN_STEPS = 1000
MAX_STEP = 2**31 - 1
"""A count beyond any fleet; also what the integer columns of a release hold."""
_STEP_TEXT_MAX = 32


def _shown(step: object) -> str:
    try:
        text = repr(step)
    except ValueError:  # an int beyond 4,300 digits
        return "a number too long to show"
    return text if len(text) <= 40 else text[:37] + "..."


def validate_plan(plan: object) -> tuple[PlanStep, ...]:
    """Check a plan from outside; raise InvalidInput saying what is wrong."""
    if not isinstance(plan, list | tuple) or not plan:
        raise InvalidInput("plan must be a non-empty list of sizes (counts or percentages)")
    if len(plan) > MAX_PLAN_STEPS:
        raise InvalidInput(f"plan has {len(plan)} steps; at most {MAX_PLAN_STEPS} are allowed")
    steps: list[PlanStep] = []
    for index, step in enumerate(plan):
        if isinstance(step, bool):
            raise InvalidInput(f"plan[{index}] must be a count or a percentage, got {step!r}")
        if isinstance(step, int):
            if step < 1:
                raise InvalidInput(f"plan[{index}] must be at least 1, got {_shown(step)}")
            if step > MAX_STEP:
                raise InvalidInput(f"plan[{index}] must be at most {MAX_STEP}")
            steps.append(step)
        elif isinstance(step, str):
            match = _PERCENT.match(step) if len(step) <= _STEP_TEXT_MAX else None
            if match is None:
                raise InvalidInput(
                    f'plan[{index}] must be a count or a percentage like "25%", got {_shown(step)}'
                )
            percent = float(match.group(1))
            if not 0 < percent <= 100:
                raise InvalidInput(f"plan[{index}] must be above 0% and at most 100%")
            steps.append(f"{match.group(1)}%")
        else:
            raise InvalidInput(f"plan[{index}] must be a count or a percentage, got {_shown(step)}")
    return tuple(steps)


def step_size(step: PlanStep, total: int) -> int:
    if isinstance(step, int):
        return step
    percent = float(step.rstrip("%"))
    return max(1, int(total * percent / 100))


def split(plan: Sequence[PlanStep], count: int) -> list[int]:
    """Batch sizes for ``count`` nodes: [1, "100%"] over 3 gives [1, 2]."""
    sizes: list[int] = []
    placed = 0
    index = 0
    while placed < count:
        size = min(step_size(plan[min(index, len(plan) - 1)], count), count - placed)
        sizes.append(size)
        placed += size
        index += 1
    return sizes


def assign_batches(plan: Sequence[PlanStep], node_ids: Sequence[int]) -> list[tuple[int, int]]:
    """(node id, batch number from 1) for nodes in the given order."""
    result: list[tuple[int, int]] = []
    position = 0
    for batch, size in enumerate(split(plan, len(node_ids)), start=1):
        result.extend((node_id, batch) for node_id in node_ids[position : position + size])
        position += size
    return result
