"""Plain-text tables of API answers, for people at a terminal (``--json`` is for scripts).

Each takes the answer's ``data`` typed by its shape (api/shapes.py, the types the server builds
it with and the OpenAPI document describes), so mypy holds every key read here to the API."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the client's commands need no pydantic to print
    from fleetwave.api import shapes

NODE_STATES = ("success", "failed", "running", "pending", "skipped", "cancelled")
BAR_WIDTH = 20


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    lines = [headers, *cells]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _when(value: object) -> str:
    """An ISO timestamp shortened to the second, still in UTC."""
    if not isinstance(value, str):
        return "-"
    return value[:19].replace("T", " ") + "Z"


def created(data: shapes.ReleaseCreated) -> str:
    batches = ", ".join(
        f"batch {batch['batch']}: {len(batch['nodeIds'])}" for batch in data["batches"]
    )
    selection = data.get("selection")
    chosen = "" if selection is None else f" selected by {_selection(selection)}"
    default = data.get("defaultScope")
    taken = "" if default is None else f"; strategy: the default of scope {default}"
    return (
        f"release {data['releaseId']} (version {data['version']}) created over "
        f"{data['totalNodes']} nodes{chosen}; {batches}{taken}"
    )


def _seconds(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g}s"


def preview(data: shapes.ReleasePreview) -> str:
    """A release plan: each batch's nodes and blast radius, the steps, the predicted time."""
    lines = [
        f"dry run: {data['totalNodes']} nodes in {len(data['batches'])} batches, nothing created"
    ]
    if data.get("defaultScope") is not None:
        lines.append(f"strategy: the default of scope {data['defaultScope']}")
    for batch in data["batches"]:
        radius = batch["blastRadius"]
        lines.append(
            f"batch {batch['batch']}: {radius['nodes']} nodes, "
            f"pops {','.join(radius['pops']) or '-'}, "
            f"regions {','.join(radius['regions']) or '-'}, "
            f"~{_seconds(batch['predictedSeconds'])}"
        )
        lines.extend(
            f"  {node['name']} {_labels(node['labels'])} ~{_seconds(node['applySeconds'])}"
            + ("" if node["fromHistory"] else " (fleet median)")
            for node in batch["nodes"]
        )
    for step in data["steps"]:
        shown = "until promoted" if step["kind"] == "gate" else f"~{_seconds(step['seconds'])}"
        lines.append(f"step {step['position']}: {step['kind']} (batch {step['batch']}) {shown}")
    gates = f" plus {data['gates']} gate(s) waiting for promote" if data["gates"] else ""
    lines.append(
        f"predicted: {_seconds(data['predictedSeconds'])} "
        f"(bakes {_seconds(data['bakeSeconds'])}){gates}"
    )
    return "\n".join(lines)


def _selection(selection: Mapping[str, Any]) -> str:
    if "selector" in selection:
        return "selector " + _labels(selection["selector"])
    if "nodeNames" in selection:
        return "name: " + ", ".join(selection["nodeNames"])
    return "id: " + ", ".join(str(node_id) for node_id in selection.get("nodeIds", []))


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items())) or "-"


def release_list(data: shapes.ReleaseList) -> str:
    rows = [
        (
            item["id"],
            item["version"],
            item["status"],
            item["target"],
            item["scope"],
            f"{item['successNodes']}/{item['totalNodes']}",
            item["failedNodes"],
            item["skippedNodes"],
            item["currentBatch"] or "-",
            _when(item["createdAt"]),
        )
        for item in data["items"]
    ]
    headers = ("ID", "VERSION", "STATUS", "TARGET", "SCOPE", "DONE", "FAILED", "SKIPPED")
    text = table((*headers, "BATCH", "CREATED"), rows)
    pages = max(1, -(-data["total"] // data["pageSize"]))
    return f"{text}\npage {data['page']} of {pages}, {data['total']} releases"


def _summary(release: shapes.ReleaseItem) -> list[str]:
    lines = [
        f"release {release['id']}  version {release['version']}  status {release['status']}",
        f"target {release['target']}  scope {release['scope']}  plan {release['plan']}  "
        f"maxParallel {_cell(release['maxParallel'])}  maxFailures {release['maxFailures']}",
        f"nodes {release['totalNodes']}: success {release['successNodes']}, "
        f"failed {release['failedNodes']}, skipped {release['skippedNodes']}, "
        f"cancelled {release['cancelledNodes']}; current batch {release['currentBatch'] or '-'}",
        f"created {_when(release['createdAt'])}  started {_when(release['startedAt'])}  "
        f"finished {_when(release['finishedAt'])}",
    ]
    waiting = release.get("waitingFor")
    if waiting:
        lines.append(f"waiting: {waiting['reason']}")
    step = release.get("step")
    if step and step["kind"] != "batch":
        held = f"until {_when(step['until'])}" if step["kind"] == "bake" else "waits for promote"
        lines.append(f"step {step['position']}: {step['kind']} after batch {step['batch']}, {held}")
    if release.get("reason"):
        lines.append(f"reason: {release['reason']}")
    if release.get("error"):
        lines.append(f"error: {release['error']}")
    return lines


def release_detail(data: shapes.ReleaseDetail) -> str:
    rows = [
        (
            batch["batch"],
            node["nodeId"],
            node["nodeName"],
            node["status"],
            _when(node["startedAt"]),
            _when(node["finishedAt"]),
            node["errorMsg"] or None,
        )
        for batch in data["batches"]
        for node in batch["nodes"]
    ]
    nodes = table(("BATCH", "NODE", "NAME", "STATUS", "STARTED", "FINISHED", "ERROR"), rows)
    return "\n".join([*_summary(data["release"]), "", nodes])


def batch_counts(batch: shapes.BatchShape) -> dict[str, int]:
    counts = dict.fromkeys(NODE_STATES, 0)
    for node in batch["nodes"]:
        counts[node["status"]] = counts.get(node["status"], 0) + 1
    return counts


def _bar(done: int, total: int) -> str:
    filled = BAR_WIDTH * done // total if total else BAR_WIDTH
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"


def watch_view(data: shapes.ReleaseDetail) -> str:
    """Per batch: a progress bar and its node counts; then the release's status."""
    rows = []
    for batch in data["batches"]:
        counts = batch_counts(batch)
        total = len(batch["nodes"])
        done = total - counts["running"] - counts["pending"]
        rows.append((batch["batch"], _bar(done, total), *(counts[s] for s in NODE_STATES), total))
    headers = ("BATCH", "PROGRESS", *(state.upper() for state in NODE_STATES), "TOTAL")
    release = data["release"]
    status = f"release {release['id']} (version {release['version']}): {release['status']}"
    if release.get("error"):
        status += f": {release['error']}"
    return f"{table(headers, rows)}\n{status}"


def node_list(data: shapes.NodeList) -> str:
    rows = [
        (
            item["id"],
            item["name"],
            item["mainIp"],
            item["agentPort"],
            item["enabled"],
            item["status"],
            _cell(item["appliedVersion"]),
            _when(item["appliedAt"]),
            _when(item["lastSeenAt"]),
            _labels(item.get("labels") or {}),
        )
        for item in data["items"]
    ]
    headers = ("ID", "NAME", "MAIN IP", "PORT", "ENABLED", "STATUS", "APPLIED", "APPLIED AT")
    return table((*headers, "LAST SEEN", "LABELS"), rows)


def node_added(data: shapes.NodeItem) -> str:
    return (
        f"node {data['id']} {data['name']} at {data['mainIp']}:{data['agentPort']} "
        f"({data['status']}, {'enabled' if data['enabled'] else 'disabled'})"
    )


def token_list(data: shapes.TokenList) -> str:
    rows = [
        (
            item["id"],
            item["name"],
            item["role"],
            _when(item["createdAt"]),
            _when(item["expiresAt"]) if item["expiresAt"] else "never",
            _when(item["lastUsedAt"]) if item["lastUsedAt"] else "never",
        )
        for item in data["items"]
    ]
    return table(("ID", "NAME", "ROLE", "CREATED", "EXPIRES", "LAST USED"), rows)


def node_detail(data: shapes.NodeDetail) -> str:
    summary = (
        f"node {data['id']} {data['name']} at {data['mainIp']}:{data['agentPort']}  "
        f"status {data['status']}  {'enabled' if data['enabled'] else 'disabled'}  "
        f"last seen {_when(data['lastSeenAt'])}"
    )
    expected = data.get("expected")
    if expected is None:
        summary += "\nexpects nothing: no successful release included it"
    else:
        scope = "" if expected["scope"] is None else f", scope {expected['scope']}"
        runs = f"DRIFTING, runs {_cell(data['appliedVersion'])}" if data["drifting"] else "runs it"
        summary += (
            f"\nexpected config {expected['configVersion']} (release {expected['releaseId']}"
            f"{scope}): {runs}"
        )
    rows = [
        (
            run["releaseId"],
            run["version"],
            run["batch"],
            run["status"],
            _when(run["startedAt"]),
            _when(run["finishedAt"]),
            run["errorMsg"] or None,
        )
        for run in data["releases"]
    ]
    if not rows:
        return f"{summary}\nin no release yet"
    headers = ("RELEASE", "VERSION", "BATCH", "STATUS", "STARTED", "FINISHED", "ERROR")
    return f"{summary}\nlatest releases:\n{table(headers, rows)}"


def node_changed(data: shapes.NodeItem) -> str:
    return (
        f"node {data['id']} {data['name']}: {'enabled' if data['enabled'] else 'disabled'}, "
        f"{data['status']}"
    )


def events(data: shapes.EventPage) -> str:
    rows = [
        (
            item["id"],
            _when(item["createdAt"]),
            item["batch"],
            item["nodeId"],
            f"{item['fromStatus'] or '-'} -> {item['toStatus']}",
            item["message"],
        )
        for item in data["items"]
    ]
    return table(("EVENT", "TIME", "BATCH", "NODE", "TRANSITION", "MESSAGE"), rows)


def node_labelled(data: shapes.NodeItem) -> str:
    return f"node {data['id']} {data['name']}: labels {_labels(data.get('labels') or {})}"


def verb_done(data: shapes.VerbDone) -> str:
    """A verb's answer: what it did, then the release as it is now."""
    release = data["release"]
    lines = [data["message"], f"release {release['id']} is now {release['status']}"]
    if release.get("cancelling"):
        lines[-1] += " (cancelling)"
    rollback = data.get("rollback")
    if rollback:
        lines.append(
            f"rollback release {rollback['id']} (version {rollback['version']}, config "
            f"{rollback['configVersion']}): {rollback['status']}, {rollback['totalNodes']} node(s)"
        )
    for held in data.get("held") or []:
        lines.append(
            f"paused behind the rollback: release {held['id']} (version {held['version']})"
        )
    return "\n".join(lines)


def fleet_view(data: shapes.FleetSummary) -> str:
    """How many nodes run which config version, each scope's newest success, and the nodes
    that drift from the config their newest successful release set."""
    newest = data["newestSucceeded"]
    rows = [(_cell(item["configVersion"]), item["nodes"]) for item in data["versions"]]
    lines = [table(("CONFIG", "NODES"), rows)]
    labelled = [
        (label["label"], _cell(item["configVersion"]), item["nodes"])
        for label in data.get("byLabel") or []
        for item in label["versions"]
    ]
    if labelled:
        lines.append(table(("LABEL", "CONFIG", "NODES"), labelled))
    scopes = data.get("byScope") or []
    if scopes:
        lines.append(
            table(
                ("SCOPE", "RELEASES", "NEWEST SUCCESS", "CONFIG", "RUNNING IT", "DRIFTING"),
                [
                    (
                        "(no scope)" if group["scope"] is None else group["scope"],
                        group["releases"],
                        "-"
                        if group["newestSucceeded"] is None
                        else f"release {group['newestSucceeded']['releaseId']}",
                        "-"
                        if group["newestSucceeded"] is None
                        else group["newestSucceeded"]["configVersion"],
                        f"{group['runningConfig']}/{group['releaseNodes']}",
                        group["differingNodes"],
                    )
                    for group in scopes
                ],
            )
        )
    if newest is None:
        lines.append("no release has succeeded yet")
    else:
        lines.append(
            f"newest config that succeeded: {newest['configVersion']} (release "
            f"{newest['releaseId']}, version {newest['version']})"
        )
    differing = data["differing"]
    if differing:
        lines.append(f"{len(differing)} node(s) drift from their newest successful release:")
        lines.append(
            table(
                ("NODE", "NAME", "APPLIED", "EXPECTED", "SET BY", "APPLIED AT"),
                [
                    (
                        n["nodeId"],
                        n["nodeName"],
                        _cell(n["appliedVersion"]),
                        n["expectedVersion"],
                        _set_by(n["expectedRelease"]),
                        _when(n["appliedAt"]),
                    )
                    for n in differing
                ],
            )
        )
    elif newest is not None:
        lines.append("no node drifts from its newest successful release")
    return "\n".join(lines)


def _set_by(release: shapes.ExpectedRelease) -> str:
    scope = release["scope"]
    return f"release {release['releaseId']}" + ("" if scope is None else f" ({scope})")


def webhook_added(data: shapes.WebhookCreated) -> str:
    return (
        f"webhook {data['id']} sends {', '.join(data['events'])} to {data['url']}\n"
        f"signing secret (shown once; receivers verify X-Fleetwave-Signature with it):\n"
        f"{data['secret']}"
    )


def webhook_list(data: shapes.WebhookList) -> str:
    rows = [
        (item["id"], item["url"], ",".join(item["events"]), item["description"] or None)
        for item in data["items"]
    ]
    return table(("ID", "URL", "EVENTS", "DESCRIPTION"), rows)


def webhook_detail(data: shapes.WebhookDetail) -> str:
    hook = data["webhook"]
    rows = [
        (
            item["id"],
            item["kind"],
            item["eventId"],
            item["status"],
            item["attempts"],
            item["lastStatus"],
            _when(item["deliveredAt"] or item["nextAttemptAt"]),
            item["lastError"],
        )
        for item in data["deliveries"]
    ]
    deliveries = table(
        ("DELIVERY", "KIND", "EVENT", "STATUS", "ATTEMPTS", "HTTP", "DELIVERED/NEXT", "LAST ERROR"),
        rows,
    )
    head = f"webhook {hook['id']}: {', '.join(hook['events'])} to {hook['url']}"
    failing = len(data["recentFailures"])
    return (
        f"{head}\n{failing} of the last {len(rows)} deliveries had a failed attempt\n\n{deliveries}"
    )


def webhook_removed(data: shapes.WebhookDeleted) -> str:
    return f"webhook {data['id']} removed"


def _step(step: object) -> str:
    """A plan step as ``release create --plan`` spells it (a batch budget in brackets)."""
    if isinstance(step, dict):
        if "pause" in step:
            return "gate" if step["pause"] is None else f"pause={step['pause']:g}"
        budget = ",".join(f"{key} {value:g}" for key, value in step.items() if key != "batch")
        return f"{step.get('batch')}[{budget}]"
    return str(step)


def _budget(strategy: Mapping[str, Any]) -> str:
    parts = []
    if strategy.get("maxFailures") is not None:
        parts.append(f"{strategy['maxFailures']} failures")
    if strategy.get("maxFailurePercent") is not None:
        parts.append(f"{strategy['maxFailurePercent']:g}%")
    return ", ".join(parts) or "-"


def _default_set_by(item: Mapping[str, Any]) -> str:
    by = item.get("setBy")
    return "-" if by is None else f"{by['tokenName']} ({by['role']})"


def _strategy_line(strategy: Mapping[str, Any]) -> str:
    plan = strategy.get("plan")
    steps = ",".join(_step(step) for step in plan) if isinstance(plan, list) else "-"
    checks = strategy.get("healthChecks") or []
    names = ",".join(str(check.get("name")) for check in checks if isinstance(check, dict))
    line = (
        f"plan {steps}; budget {_budget(strategy)}; on failure {strategy.get('onFailure')}; "
        f"checks {names or '-'}"
    )
    if strategy.get("batchBy") is not None:
        line += f"; batch by {strategy['batchBy']}"
    caps = strategy.get("maxInFlightPer")
    if isinstance(caps, dict) and caps:
        line += "; in flight at most " + ",".join(f"{key}={count}" for key, count in caps.items())
    return line


def scope_list(data: Mapping[str, Any]) -> str:
    rows = [
        (
            item["scope"],
            _strategy_line(item["strategy"]) if item["problem"] is None else item["problem"],
            _default_set_by(item),
            _when(item["updatedAt"]),
        )
        for item in data["items"]
    ]
    if not rows:
        return "no scope has a default strategy: releases without one run a canary, then the rest"
    return table(("SCOPE", "DEFAULT STRATEGY", "SET BY", "UPDATED"), rows)


def scope_strategy(data: Mapping[str, Any]) -> str:
    import json

    lines = [
        f"scope {data['scope']}: default strategy set by {_default_set_by(data)} at "
        f"{_when(data['updatedAt'])}",
        _strategy_line(data["strategy"]),
    ]
    if data["problem"] is not None:
        lines.append(f"not a valid strategy: {data['problem']} (releases of it are refused)")
    lines.append(json.dumps(data["strategy"], indent=2, ensure_ascii=False))
    return "\n".join(lines)


def scope_strategy_set(data: Mapping[str, Any]) -> str:
    return (
        f"default strategy of scope {data['scope']} set: {_strategy_line(data['strategy'])}; "
        "releases created without strategy fields take it from now on"
    )


def scope_strategy_cleared(data: Mapping[str, Any]) -> str:
    return (
        f"default strategy of scope {data['scope']} cleared; releases already created keep "
        "the strategy they copied"
    )
