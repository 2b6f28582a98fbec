"""Hypothesis strategies for what an agent may answer: any bytes, any JSON (NaN, Infinity,
huge numbers, deep nesting, wrong types), envelopes almost right, and the classic poisons.

``check_outcome`` states the property: a call gives a typed answer or an AgentError whose
reason is short, printable, valid UTF-8 text; never any other exception.
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

from fleetwave.agent.client import MAX_ANSWER_BYTES, AgentClient
from fleetwave.agent.errors import AgentError
from fleetwave.agent.protocol import AgentAddress, DispatchAck, DispatchRequest, TaskState
from fleetwave.store.models import ERROR_MSG_MAX, clip_error, task_id_for

STATUS_WORDS = ["pending", "running", "success", "failed", "exploded", ""]

POISONS = [
    b"[" * 200_000,
    b'{"code": 0, "message": "ok", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"code": ' + b"9" * 5000 + b', "message": "ok", "data": null}',
    b'{"code": 0, "message": "ok", "data": {"taskId": "t", "status": "success", "x": -'
    + b"1" * 5000
    + b"}}",
    b'{"code": NaN, "message": "ok", "data": null}',
    b'{"code": 0, "message": Infinity, "data": null}',
    b'{"code": 1e999, "message": "ok"}',
    b'{"code": true, "message": "ok"}',
    b'{"code": 0, "message": ["not", "text"], "data": {}}',
    b'{"code": 7, "message": "\\ud800\\u0000\\u001b[31m' + b"x" * 10_000 + b'"}',
    b'{"code": 0, "message": "ok", "data": {"taskId": "\\u0000", "status": "success"}}',
    b"",
    b"\xff\xfe\x00",
    b"null",
    b"[]",
    b"0",
    b'"text"',
    b" " * (MAX_ANSWER_BYTES + 1),
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**60, max_value=10**4000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)


def _state_data(task_id: str) -> st.SearchStrategy[object]:
    return st.fixed_dictionaries(
        {
            "taskId": st.one_of(st.just(task_id), json_values),
            "type": st.one_of(st.just("apply_config"), json_values),
            "status": st.one_of(st.sampled_from(STATUS_WORDS), json_values),
        },
        optional={
            "lastError": st.one_of(st.text(), json_values),
            "createdAt": json_values,
            "startedAt": json_values,
            "finishedAt": json_values,
        },
    )


def _envelopes(task_id: str) -> st.SearchStrategy[object]:
    return st.fixed_dictionaries(
        {"code": st.one_of(st.just(0), json_values)},
        optional={
            "message": st.one_of(st.text(), json_values),
            "data": st.one_of(_state_data(task_id), json_values),
        },
    )


def answer_bodies(task_id: str) -> st.SearchStrategy[bytes]:
    """Bodies an agent may send for ``task_id``: mostly near the protocol, some far."""
    return st.one_of(
        _envelopes(task_id).map(lambda value: json.dumps(value).encode()),
        json_values.map(lambda value: json.dumps(value).encode()),
        st.binary(max_size=300),
        st.sampled_from(POISONS),
    )


TASK_ID = task_id_for("127.0.0.2", 1)


async def call_both(agents: AgentClient, address: AgentAddress) -> list[object]:
    """Dispatch, then query, the way a NodeActor does; each outcome or AgentError."""
    outcomes: list[object] = []
    task_id = task_id_for(address.host, 1)
    for call in ("dispatch", "query"):
        try:
            if call == "dispatch":
                outcomes.append(
                    await agents.dispatch(address, DispatchRequest(task_id=task_id, version=1))
                )
            else:
                outcomes.append(await agents.query(address, task_id))
        except AgentError as error:
            outcomes.append(error)
    return outcomes


def check_outcome(outcome: object) -> None:
    """The property: a typed answer, or an AgentError that reads well and stores."""
    if isinstance(outcome, AgentError):
        reason = str(outcome)
        assert reason and reason.isprintable(), repr(reason)
        reason.encode("utf-8")  # no lone surrogate
        assert "\x00" not in reason
        assert len(reason) < 1000, len(reason)
        assert len(clip_error(reason) or "") <= ERROR_MSG_MAX
        return
    assert outcome is None or isinstance(outcome, DispatchAck | TaskState), repr(outcome)
