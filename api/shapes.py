"""The shapes of the API's answers: what goes in the ``data`` of each envelope.

The functions that build answers (api/schemas.py, api/preview.py, api/webhooks.py,
api/liveness.py) return these types, so mypy holds every answer to its shape, and the OpenAPI
document (api/openapi.py) derives its response schemas from the same types. Keys are the
original's camelCase; timestamps are ISO-8601 UTC strings ending in ``Z``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import Field
from typing_extensions import TypedDict

from fleetwave.api.failures import KINDS
from fleetwave.api.strategy_schema import StoredStrategy
from fleetwave.api.validation import DescribedBy, OneOf
from fleetwave.store.models import NodeHealth, NodeStatus, ReleaseStatus, Role
from fleetwave.store.webhooks import DeliveryStatus

Timestamp = Annotated[str, Field(description="ISO-8601 in UTC, ending in Z")]
ReleaseState = Annotated[str, OneOf(ReleaseStatus)]
NodeState = Annotated[str, OneOf(NodeStatus)]
Health = Annotated[str, OneOf(NodeHealth)]
RoleName = Annotated[str, OneOf(Role)]
FailureKind = Annotated[str, OneOf(KINDS)]
StepKind = Annotated[str, OneOf(("batch", "bake", "gate"))]
Strategy = Annotated[dict[str, Any], DescribedBy(StoredStrategy)]


class ActorShape(TypedDict):
    """The API token that asked for something."""

    tokenName: str
    role: RoleName


class WaitShape(TypedDict):
    """What a pending release waits for: an older release over some of its nodes."""

    releaseId: int | None
    scope: str | None
    sharedNodes: int
    nodeNames: list[str]
    reason: str


class LastVerb(TypedDict):
    verb: str
    by: str | None
    reason: str | None


class StepShape(TypedDict):
    """Where a release with pauses is in its schedule."""

    position: int
    kind: StepKind
    batch: int
    planIndex: int
    until: Timestamp | None
    promoted: bool


class ByIds(TypedDict):
    nodeIds: list[int]


class ByNames(TypedDict):
    nodeNames: list[str]


class BySelector(TypedDict):
    selector: dict[str, str]


Selection = ByIds | ByNames | BySelector


class ReleaseItem(TypedDict):
    id: int
    type: str
    target: str
    scope: str | None
    version: int
    status: ReleaseState
    totalNodes: int
    successNodes: int
    failedNodes: int
    skippedNodes: int
    cancelledNodes: int
    currentBatch: int
    plan: list[int | str]
    maxParallel: int | None
    maxFailures: int
    reason: str
    error: str | None
    createdAt: Timestamp | None
    updatedAt: Timestamp | None
    startedAt: Timestamp | None
    finishedAt: Timestamp | None
    waitingFor: WaitShape | None
    selection: Selection | None
    configVersion: int | None
    rollbackOf: int | None
    heldFor: int | None
    cancelling: bool
    lastVerb: LastVerb | None
    strategy: Strategy | None
    step: StepShape | None


class ReleaseShown(ReleaseItem):
    """A release in the list and the detail: with who created it (null: no token did)."""

    createdBy: ActorShape | None


class ReleaseList(TypedDict):
    items: list[ReleaseShown]
    total: int
    page: int
    pageSize: int


class CreatedBatch(TypedDict):
    batch: int
    nodeIds: list[int]


class ReleaseCreated(TypedDict):
    releaseId: int
    version: int
    totalNodes: int
    batches: list[CreatedBatch]
    selection: Selection | None
    defaultScope: Annotated[
        str | None,
        Field(description="the scope whose default strategy the release took; null: none"),
    ]


class ReleaseNodeItem(TypedDict):
    nodeId: int
    nodeName: str
    status: NodeState
    errorMsg: str
    errorKind: FailureKind | None
    agent: str
    attempt: int
    taskId: str | None
    startedAt: Timestamp | None
    finishedAt: Timestamp | None


class BatchShape(TypedDict):
    batch: int
    nodes: list[ReleaseNodeItem]


class Liveness(TypedDict):
    """Whether a release is alive: its lease's owner and expiry, and its last progress."""

    owner: str | None
    leaseExpiresAt: Timestamp | None
    leaseLive: bool
    lastProgressAt: Timestamp | None


class ReleaseDetail(TypedDict):
    release: ReleaseShown
    batches: list[BatchShape]
    liveness: Liveness
    verbs: list[str]


class EventItem(TypedDict):
    id: int
    releaseId: int
    nodeId: int | None
    batch: int | None
    fromStatus: str | None
    toStatus: str
    message: str | None
    daemonId: str | None
    actor: ActorShape | None
    createdAt: Timestamp | None


class StreamEnd(TypedDict):
    """The data of a stream's ``end`` event: why the server closes it (the release ended,
    with its ``status``; the server stops; a client too slow, to resume with Last-Event-ID)."""

    reason: str
    status: NotRequired[str]


class EventPage(TypedDict):
    items: list[EventItem]
    nextAfterId: int


class NodeItem(TypedDict):
    id: int
    name: str
    mainIp: str
    agentPort: int
    enabled: bool
    status: Health
    lastSeenAt: Timestamp | None
    labels: dict[str, str]
    appliedVersion: int | None
    appliedAt: Timestamp | None


class NodeRunItem(TypedDict):
    releaseId: int
    version: int
    batch: int
    status: NodeState
    errorMsg: str
    startedAt: Timestamp | None
    finishedAt: Timestamp | None


class NodeExpectation(TypedDict):
    """What the node should run: the config of the newest release, by its end, that
    succeeded and included it (GET /api/v1/fleet has the rule)."""

    configVersion: int
    releaseId: int
    version: int
    scope: str | None


class NodeDetail(NodeItem):
    releases: list[NodeRunItem]
    expected: Annotated[
        NodeExpectation | None,
        Field(description="null: no successful release included the node (it cannot drift)"),
    ]
    drifting: Annotated[bool, Field(description="appliedVersion differs from expected's config")]


class NodeList(TypedDict):
    items: list[NodeItem]
    total: int


class VersionCount(TypedDict):
    configVersion: int | None
    nodes: int


class LabelVersions(TypedDict):
    label: str
    versions: list[VersionCount]


class NewestSucceeded(TypedDict):
    releaseId: int
    version: int
    configVersion: int | None


class ExpectedRelease(TypedDict):
    """The newest release, by its end, that succeeded and included the node."""

    releaseId: int
    version: int
    scope: str | None


class DifferingNode(TypedDict):
    """A node whose applied version is not the config its expected release set."""

    nodeId: int
    nodeName: str
    appliedVersion: int | None
    appliedAt: Timestamp | None
    expectedVersion: int
    expectedRelease: ExpectedRelease


class ScopeFleetShape(TypedDict):
    """One scope's releases (scope null: the releases that name no scope)."""

    scope: str | None
    releases: int
    newestSucceeded: NewestSucceeded | None
    releaseNodes: Annotated[int, Field(description="the nodes of newestSucceeded")]
    runningConfig: Annotated[int, Field(description="of them, those that run its config")]
    expectedNodes: Annotated[
        int, Field(description="nodes whose expected config a release of this scope set")
    ]
    differingNodes: Annotated[int, Field(description="of them, those that drift")]
    differing: Annotated[
        list[DifferingNode],
        Field(description="the first 20 drifting nodes, in id order"),
    ]


class FleetSummary(TypedDict):
    totalNodes: int
    versions: list[VersionCount]
    byLabel: list[LabelVersions]
    newestSucceeded: NewestSucceeded | None
    differing: list[DifferingNode]
    unreleasedNodes: Annotated[
        int,
        Field(description="nodes no successful release included: none expected, not drifting"),
    ]
    byScope: list[ScopeFleetShape]


class TokenItem(TypedDict):
    id: int
    name: str
    role: RoleName
    createdAt: Timestamp | None
    expiresAt: Timestamp | None
    lastUsedAt: Timestamp | None


class TokenList(TypedDict):
    items: list[TokenItem]
    total: int


class VerbDone(TypedDict):
    verb: str
    changed: bool
    inEffect: bool
    acknowledgedBy: str | None
    waitedForLeaseExpiry: bool
    waitedSec: float
    message: str
    release: ReleaseItem
    rollback: ReleaseItem | None
    held: list[ReleaseItem]


class WebhookItem(TypedDict):
    id: int
    url: str
    events: list[str]
    description: str
    createdAt: Timestamp | None


class WebhookCreated(WebhookItem):
    secret: Annotated[str, Field(description="shown in this answer only")]


class DeliveryItem(TypedDict):
    id: int
    eventId: int
    kind: str
    idempotencyKey: str
    status: Annotated[str, OneOf(DeliveryStatus)]
    attempts: int
    lastStatus: int | None
    lastError: str | None
    nextAttemptAt: Timestamp | None
    deliveredAt: Timestamp | None
    createdAt: Timestamp | None
    payload: dict[str, Any]


class WebhookList(TypedDict):
    items: list[WebhookItem]
    total: int


class WebhookDetail(TypedDict):
    webhook: WebhookItem
    deliveries: list[DeliveryItem]
    recentFailures: list[DeliveryItem]


class WebhookDeleted(TypedDict):
    id: int
    deleted: bool


class PreviewNode(TypedDict):
    id: int
    name: str
    labels: dict[str, str]
    applySeconds: float | None
    fromHistory: bool


class BlastRadius(TypedDict):
    nodes: int
    pops: list[str]
    regions: list[str]


class PreviewBatch(TypedDict):
    batch: int
    nodes: list[PreviewNode]
    blastRadius: BlastRadius
    predictedSeconds: float | None


class PreviewStep(TypedDict):
    position: int
    kind: StepKind
    batch: int
    seconds: NotRequired[float | None]


class ReleasePreview(TypedDict):
    dryRun: Literal[True]
    totalNodes: int
    batches: list[PreviewBatch]
    steps: list[PreviewStep]
    fleetMedianApplySeconds: float | None
    bakeSeconds: float
    gates: int
    predictedSeconds: float | None
    defaultScope: Annotated[
        str | None,
        Field(description="the scope whose default strategy it took, as creation would"),
    ]


class ScopeItem(TypedDict):
    """A scope's default strategy, who set it last and when."""

    scope: str
    strategy: Strategy
    problem: Annotated[
        str | None,
        Field(description="why a row another program wrote is not a strategy; null: it is"),
    ]
    setBy: ActorShape | None
    createdAt: Timestamp | None
    updatedAt: Timestamp | None


class ScopeList(TypedDict):
    items: list[ScopeItem]
    total: int


class ScopeCleared(ScopeItem):
    cleared: Literal[True]


class Alive(TypedDict):
    status: Literal["alive"]


class Ready(TypedDict):
    status: Literal["ready"]


class SignedIn(TypedDict):
    name: str
    role: RoleName
    expiresAt: Timestamp | None


class WhoAmI(TypedDict):
    name: str
    role: RoleName


class SignedOut(TypedDict):
    signedOut: bool
