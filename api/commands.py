"""The API's commands of ``fleetwave``: release create|list|show|watch|events, the release
verbs pause|resume|cancel|retry|rollback|promote, nodes
list|show|add|enable|disable|maintenance|label, fleet, webhook add|list|show|remove, scope
list and scope strategy show|set|clear.

Each command makes its calls through ApiClient and writes a table, or JSON with ``--json``.
Exit codes: 0 done; 1 the API refused, could not be reached, or a watched release did not
succeed; 2 a node named on the command line does not exist, or a strategy is not valid
(also when the API refuses it for the nodes it selects; nothing was changed).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO
from urllib.parse import quote

from fleetwave.api import render
from fleetwave.api.client import ApiClient, ApiFailure, ClientError
from fleetwave.api.watch import watch
from fleetwave.store.errors import InvalidInput
from fleetwave.store.scopes import check_scope
from fleetwave.store.strategy import FIELDS as STRATEGY_FIELDS
from fleetwave.store.strategy import validate_strategy

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
ALREADY_EXISTS = 3002


def parse_plan(text: str) -> list[object]:
    """``1,pause=300,25%,gate,100%`` -> ``[1, {"pause": 300}, "25%", {"pause": null},
    "100%"]``; the sizes and pauses themselves are checked by validate_strategy."""
    steps: list[object] = []
    for part in text.split(","):
        step = part.strip()
        if not step:
            raise argparse.ArgumentTypeError(
                f"expected steps like 1,pause=300,25%,gate,100%, got {text!r}"
            )
        if step == "gate":
            steps.append({"pause": None})
        elif step.startswith("pause="):
            seconds = step.removeprefix("pause=")
            try:
                steps.append({"pause": float(seconds) if "." in seconds else int(seconds)})
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"pause=SECONDS needs a number of seconds, got {step!r}"
                ) from None
        else:
            steps.append(int(step) if step.isdigit() else step)
    return steps


def strategy_fields(args: argparse.Namespace) -> dict[str, object]:
    """The strategy of ``release create``: ``--strategy FILE`` (a JSON object of the strategy
    fields: plan, maxFailures, maxFailurePercent, onFailure, healthChecks, batchBy,
    maxInFlightPer), then the options, which win. Checked here as the API checks it:
    InvalidInput names the field."""
    fields: dict[str, object] = {}
    if args.strategy is not None:
        fields.update(read_strategy_file(args.strategy))
    for name, value in (
        ("plan", args.plan),
        ("maxFailures", args.max_failures),
        ("maxFailurePercent", args.max_failure_percent),
        ("onFailure", args.on_failure),
        ("batchBy", args.batch_by),
        ("maxInFlightPer", args.max_in_flight_per),
    ):
        if value is not None:
            fields[name] = value
    validate_strategy(*(fields.get(name) for name in STRATEGY_FIELDS))
    return fields


def read_strategy_file(path: str, option: str = "--strategy") -> dict[str, object]:
    """The JSON object of strategy fields in the file at ``path`` (``-``: standard input);
    InvalidInput when it cannot be read or holds anything else (the values are checked by
    validate_strategy)."""
    try:
        if path == "-":
            document = json.load(sys.stdin)
        else:
            with open(path, encoding="utf-8") as source:
                document = json.load(source)
    except (OSError, ValueError) as error:
        raise InvalidInput(f"{option}: cannot read {path}: {error}") from None
    except RecursionError:
        raise InvalidInput(f"{option}: cannot read {path}: JSON nested too deeply") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"{option}: the file must hold a JSON object")
    unknown = sorted(set(document) - set(STRATEGY_FIELDS))
    if unknown:
        raise InvalidInput(
            f"{unknown[0]}: not a strategy field (known: {', '.join(STRATEGY_FIELDS)})"
        )
    return document


def parse_selector(text: str) -> dict[str, str]:
    """``region=eu,pop=fra1`` -> ``{"region": "eu", "pop": "fra1"}``; the API checks them."""
    labels: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not key or not value:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE[,KEY=VALUE], got {text!r}")
        labels[key] = value
    return labels


def parse_caps(text: str) -> dict[str, object]:
    """``pop=1,region=5`` -> ``{"pop": 1, "region": 5}`` (maxInFlightPer); the keys and
    counts themselves are checked by validate_strategy."""
    caps: dict[str, object] = {}
    for part in text.split(","):
        key, sep, count = part.strip().partition("=")
        if not sep or not key or not count.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected LABEL=N[,LABEL=N], got {text!r}")
        caps[key] = int(count)
    return caps


def parse_label_change(text: str) -> tuple[str, str | None]:
    """``region=eu`` sets a label, ``region-`` removes it (as ``kubectl label`` does)."""
    key, sep, value = text.partition("=")
    if sep and key and value:
        return key, value
    if not sep and len(text) > 1 and text.endswith("-"):
        return text[:-1], None
    raise argparse.ArgumentTypeError(f"expected KEY=VALUE or KEY-, got {text!r}")


def _print_json(data: object, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


async def run(args: argparse.Namespace, client: ApiClient, out: TextIO, err: TextIO) -> int:
    """Run the client command named by ``args``; errors go to ``err`` as one line."""
    try:
        match (args.command, getattr(args, "action", None)):
            case ("release", "create" | "plan"):
                return await release_create(client, args, out, err)
            case ("release", "list"):
                data = await client.list_releases(
                    status=args.status, page=args.page, page_size=args.page_size
                )
                _emit(data, render.release_list, args.json, out)
            case ("release", "show"):
                data = await client.release(args.release_id)
                _emit(data, render.release_detail, args.json, out)
            case ("release", "watch"):
                return await watch(
                    client, args.release_id, out, err, as_json=args.json, interactive=out.isatty()
                )
            case (
                "release",
                "pause" | "resume" | "cancel" | "retry" | "rollback" | "promote" as verb,
            ):
                data = await client.steer(
                    args.release_id,
                    verb,
                    reason=args.reason or "",
                    to_version=getattr(args, "to", None),
                    full=getattr(args, "full", False),
                )
                _emit(data, render.verb_done, args.json, out)
            case ("fleet", _):
                _emit(await client.fleet(), render.fleet_view, args.json, out)
            case ("nodes", "list"):
                _emit(await client.list_nodes(), render.node_list, args.json, out)
            case ("release", "events"):
                data = await release_events(client, args.release_id)
                _emit(data, render.events, args.json, out)
            case ("nodes", "show"):
                [node] = await find_nodes(client, [args.node])
                _emit(await client.node(node["id"]), render.node_detail, args.json, out)
            case ("nodes", "add"):
                return await nodes_add(client, args, out, err)
            case ("nodes", "enable" | "disable" | "maintenance"):
                return await nodes_set(client, args, out, err)
            case ("nodes", "label"):
                [node] = await find_nodes(client, [args.name])
                data = await client.update_node(node["id"], {"labels": dict(args.changes)})
                _emit(data, render.node_labelled, args.json, out)
            case ("webhook", "add"):
                body = {"url": args.url, "events": args.events, "description": args.description}
                _emit(
                    await client.call("POST", "/api/v1/webhooks", body=body),
                    render.webhook_added,
                    args.json,
                    out,
                )
            case ("webhook", "list"):
                _emit(
                    await client.call("GET", "/api/v1/webhooks"),
                    render.webhook_list,
                    args.json,
                    out,
                )
            case ("webhook", "show"):
                data = await client.call("GET", f"/api/v1/webhooks/{args.webhook_id}")
                _emit(data, render.webhook_detail, args.json, out)
            case ("webhook", "remove"):
                data = await client.call("DELETE", f"/api/v1/webhooks/{args.webhook_id}")
                _emit(data, render.webhook_removed, args.json, out)
            case ("scope", _):
                return await scope_command(client, args, out, err)
            case other:  # pragma: no cover - argparse only lets known commands through
                raise AssertionError(f"unknown command {other}")
    except UnknownNodes as error:
        err.write(f"fleetwave: {error}\n")
        return EXIT_USAGE
    except ClientError as error:
        err.write(f"fleetwave: {error}\n")
        return EXIT_FAILED
    return EXIT_OK


def _emit(data: Any, text: Any, as_json: bool, out: TextIO) -> None:
    if as_json:
        _print_json(data, out)
    else:
        out.write(text(data) + "\n")


class UnknownNodes(Exception):
    """Names given on the command line that no node has."""


async def find_nodes(client: ApiClient, names: list[str]) -> list[Any]:
    """The nodes named (by name, or else by id), in the order given, each once; raises
    UnknownNodes naming every one that does not exist."""
    items = (await client.list_nodes())["items"]
    by_name = {item["name"]: item for item in items}
    by_id = {str(item["id"]): item for item in items}
    found: dict[int, Any] = {}
    unknown = []
    for name in names:
        node = by_name.get(name) or by_id.get(name)
        if node is None:
            unknown.append(name)
        else:
            found.setdefault(node["id"], node)
    if unknown:
        listed = ", ".join(unknown)
        raise UnknownNodes(f"no node named {listed} (fleetwave nodes list shows them)")
    return list(found.values())


def _changes(action: str, node: Any) -> dict[str, object]:
    match action:
        case "enable":
            # Back in service: out of maintenance too (an offline node stays offline).
            if node["status"] == "maintenance":
                return {"enabled": True, "status": "online"}
            return {"enabled": True}
        case "disable":
            return {"enabled": False}
    return {"status": "maintenance"}


async def nodes_set(client: ApiClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """enable|disable|maintenance NAME...: every name is checked before anything changes."""
    try:
        nodes = await find_nodes(client, args.nodes)
    except UnknownNodes as error:
        raise UnknownNodes(f"{error}; nothing changed") from None
    changed = []
    for index, node in enumerate(nodes):
        try:
            data = await client.update_node(node["id"], _changes(args.action, node))
        except ClientError:
            rest = ", ".join(other["name"] for other in nodes[index:])
            err.write(f"fleetwave: not changed: {rest}\n")
            raise
        changed.append(data)
        if not args.json:
            out.write(render.node_changed(data) + "\n")
    if args.json:
        _print_json({"items": changed}, out)
    return EXIT_OK


async def nodes_add(client: ApiClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        data = await client.add_node(args.name, args.ip, args.port, update=args.update)
    except ApiFailure as error:
        if error.code != ALREADY_EXISTS:
            raise
        err.write(f"fleetwave: {error}; nothing changed (--update replaces it)\n")
        return EXIT_FAILED
    _emit(data, render.node_added, args.json, out)
    return EXIT_OK


async def release_events(client: ApiClient, release_id: int) -> dict[str, list[Any]]:
    """Every event of the release, oldest first, page after page (``{"items": [...]}``)."""
    items: list[Any] = []
    after_id = 0
    while True:
        page = await client.release_events(release_id, after_id=after_id)
        if not page["items"]:
            return {"items": items}
        items.extend(page["items"])
        after_id = page["nextAfterId"]


async def release_create(
    client: ApiClient, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    spec: dict[str, object] = {"target": args.target, "reason": args.reason}
    try:
        spec.update(strategy_fields(args))
    except InvalidInput as error:
        err.write(
            f"fleetwave: {error}; nothing was {'planned' if args.action == 'plan' else 'created'}\n"
        )
        return EXIT_USAGE
    if args.max_parallel is not None:
        spec["maxParallel"] = args.max_parallel
    if args.scope is not None:
        spec["scope"] = args.scope
    if args.node_ids:
        spec["nodeIds"] = args.node_ids
    if args.node_names:
        spec["nodeNames"] = args.node_names
    if args.selector:
        spec["selector"] = args.selector
    try:
        if args.action == "plan":
            _emit(await client.preview_release(spec), render.preview, args.json, out)
            return EXIT_OK
        data = await client.create_release(spec)
    except ApiFailure as error:
        # A strategy the API refuses for the nodes it selects (a label none of them has) is
        # bad input like one refused here.
        field = error.message.partition(":")[0].partition(".")[0].partition("[")[0]
        if error.status != 400 or field not in STRATEGY_FIELDS:
            raise
        err.write(
            f"fleetwave: {error}; nothing was {'planned' if args.action == 'plan' else 'created'}\n"
        )
        return EXIT_USAGE
    _emit(data, render.created, args.json, out)
    return EXIT_OK


async def scope_command(
    client: ApiClient, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    """scope list, scope strategy show|set|clear SCOPE: the scope name and a strategy file are
    checked here as the API checks them (exit 2, nothing sent)."""
    if args.action == "list":
        _emit(await client.call("GET", "/api/v1/scopes"), render.scope_list, args.json, out)
        return EXIT_OK
    try:
        path = f"/api/v1/scopes/{quote(check_scope(args.scope), safe='')}/strategy"
        body = None
        if args.strategy_action == "set":
            body = read_strategy_file(args.file, "FILE")
            if not any(value is not None for value in body.values()):
                raise InvalidInput(
                    f"FILE: give at least one of {', '.join(STRATEGY_FIELDS)} "
                    "(scope strategy clear removes a default)"
                )
            validate_strategy(*(body.get(name) for name in STRATEGY_FIELDS))
    except InvalidInput as error:
        err.write(f"fleetwave: {error}; nothing changed\n")
        return EXIT_USAGE
    match args.strategy_action:
        case "show":
            _emit(await client.call("GET", path), render.scope_strategy, args.json, out)
        case "set":
            data = await client.call("PUT", path, body=body)
            _emit(data, render.scope_strategy_set, args.json, out)
        case "clear":
            data = await client.call("DELETE", path)
            _emit(data, render.scope_strategy_cleared, args.json, out)
    return EXIT_OK
