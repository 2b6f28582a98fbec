"""Operator verbs on a release: which apply in which state, and what a rollback restores.

Pure decisions shared by both stores; each store applies them as one compare-and-set
transaction on the release row (DESIGN.md, "Verbs are row state, not messages").
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import attrs

from fleetwave.store.errors import Conflict
from fleetwave.store.models import NodeStatus, Release, ReleaseNode


class Verb(enum.StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    RETRY = "retry"
    ROLLBACK = "rollback"
    PROMOTE = "promote"


CANCELLING = "cancelling"
"""The phase of a release whose cancel was asked while its owner still reconciles."""

ALLOWED: Mapping[str, tuple[Verb, ...]] = {
    "pending": (Verb.PAUSE, Verb.CANCEL),
    "running": (Verb.PAUSE, Verb.CANCEL, Verb.ROLLBACK),
    "paused": (Verb.RESUME, Verb.CANCEL, Verb.ROLLBACK),
    CANCELLING: (Verb.ROLLBACK,),
    "success": (Verb.ROLLBACK,),
    "failed": (Verb.RETRY, Verb.ROLLBACK),
    "cancelled": (Verb.RETRY, Verb.ROLLBACK),
}
"""Per phase, the verbs that change it or are already in effect in it."""

IN_EFFECT: Mapping[Verb, frozenset[str]] = {
    Verb.PAUSE: frozenset({"paused"}),
    Verb.RESUME: frozenset({"running"}),
    Verb.CANCEL: frozenset({CANCELLING, "cancelled"}),
    Verb.RETRY: frozenset({"running"}),
    Verb.ROLLBACK: frozenset(),
    Verb.PROMOTE: frozenset(),
}
"""Per verb, the phases in which repeating it is a 200 that changes nothing."""


def parse_verb(text: str) -> Verb:
    try:
        return Verb(text)
    except ValueError:
        raise Conflict(f"unknown verb {text!r}") from None


def phase(release: Release) -> str:
    return CANCELLING if release.cancelling else release.status.value


def allowed_in(state: str) -> tuple[Verb, ...]:
    verbs = set(ALLOWED[state]) | {verb for verb, states in IN_EFFECT.items() if state in states}
    return tuple(verb for verb in Verb if verb in verbs)


def decide(verb: Verb, release: Release) -> bool:
    """True when ``verb`` changes ``release``; False when it is already in effect (a no-op).

    Raises Conflict (409, code 3003) naming the state and the verbs allowed in it."""
    state = phase(release)
    if state in IN_EFFECT[verb]:
        return False
    if verb not in ALLOWED[state]:
        allowed = ", ".join(allowed_in(state)) or "none"
        raise Conflict(
            f"release {release.id} (version {release.version}) is {state}: {verb} is not "
            f"allowed; allowed in {state}: {allowed}"
        )
    return True


def verb_message(verb: Verb, by: str, reason: str, detail: str = "") -> str:
    """The event text of a verb: what, who and why."""
    text = f"{verb} by {by}"
    if detail:
        text += f" ({detail})"
    return f"{text}: {reason}" if reason else text


def cancel_message(by: str | None, reason: str | None) -> str:
    """The error of a cancelled release and of each node it never dispatched."""
    if reason:
        return f"release cancelled: {reason}"
    return f"release cancelled by {by or 'an operator'}"


def dispatched(node: ReleaseNode) -> bool:
    """The node's agent may have received a task of this release."""
    return node.started_at is not None or node.status not in (
        NodeStatus.PENDING,
        NodeStatus.SKIPPED,
    )


def retry_rows(nodes: Sequence[ReleaseNode]) -> list[ReleaseNode]:
    """The nodes a retry runs again: every one that did not succeed."""
    return [node for node in nodes if node.status is not NodeStatus.SUCCESS]


@attrs.frozen
class RollbackPlan:
    config_version: int
    node_ids: tuple[int, ...]
    """In the rolled-back release's order (batch, then row): its plan applies to them."""


def rollback_plan(
    release: Release,
    nodes: Sequence[ReleaseNode],
    applied: Mapping[int, int | None],
    good_versions: set[int],
    to_version: int | None,
) -> RollbackPlan:
    """What a rollback of ``release`` applies, and to which of its nodes.

    ``applied`` is each node's current applied_version; ``good_versions`` the config versions
    that succeeded somewhere. By default the config the nodes ran before the release; where
    they ran different ones the operator must choose. Raises Conflict."""
    if to_version is None:
        seen = [node for node in nodes if dispatched(node)] or list(nodes)
        before = {node.previous_version for node in seen}
        known = sorted(version for version in before if version is not None)
        if not known:
            raise Conflict(
                f"no good version known for release {release.id}: its nodes ran no recorded "
                "config before it; give toVersion (CLI: --to VERSION)"
            )
        if len(before) > 1:
            shown = ", ".join(str(version) for version in known)
            if None in before:
                shown += ", none recorded"
            raise Conflict(
                f"the nodes of release {release.id} ran different configs before it ({shown}): "
                "choose one with toVersion (CLI: --to VERSION)"
            )
        target = known[0]
    else:
        target = to_version
        if target == release.config_version:
            raise Conflict(
                f"config version {target} is the one release {release.id} applies: "
                "choose an earlier good version"
            )
        if target not in good_versions:
            raise Conflict(
                f"config version {target} never succeeded on any node: no good version to restore"
            )
    node_ids = tuple(
        node.node_id for node in nodes if dispatched(node) or applied.get(node.node_id) != target
    )
    if not node_ids:
        raise Conflict(f"every node of release {release.id} runs config version {target} already")
    return RollbackPlan(target, node_ids)


def rollback_reason(release: Release, target: int, by: str, reason: str) -> str:
    text = f"rollback of version {release.version} to config {target} by {by}"
    return f"{text}: {reason}" if reason else text


def superseded(version: int) -> Conflict:
    return Conflict(f"superseded by version {version}")


@attrs.frozen
class VerbResult:
    """What a verb did. ``wait`` tells the caller that a live lease's owner must put it in
    effect (acknowledge ``release.verb_seq``) before it holds."""

    verb: Verb
    release: Release
    changed: bool
    wait: bool = False
    rollback: Release | None = None
    held: tuple[Release, ...] = ()


@attrs.frozen
class VerbEffect:
    """Whether verb number ``seq`` of a release holds: its owner acknowledged it, or no live
    lease exists (none, expired, or the release ended)."""

    in_effect: bool
    acknowledged: bool
    owner: str | None
    lease_left: float | None
    """Seconds until the owner's lease expires (None without a live lease)."""
