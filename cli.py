"""The ``fleetwave`` command line."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path

import trio

from fleetwave.config import Settings, SettingsError, load_settings
from fleetwave.config.api_tls import ApiTls, api_tls
from fleetwave.config.logging import configure_logging
from fleetwave.config.startup import StartupError
from fleetwave.store.embedded import EmbeddedPostgresError
from fleetwave.store.errors import StoreError
from fleetwave.store.models import Role

EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A command-line argument is wrong; the message says which and why."""


CLIENT_ENV: set[str] = set()
"""The FLEETWAVE_* variables the command line reads itself (API clients' options), filled as
the parser is built; load_settings accepts them beside the settings' own."""


def _from_env(name: str, default: str | None = None) -> str | None:
    CLIENT_ENV.add(name)
    return os.environ.get(name, default)


def _apply_time(text: str) -> tuple[float, float]:
    low, sep, high = text.partition("..")
    try:
        bounds = (float(low), float(high if sep else low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN..MAX seconds, got {text!r}") from None
    if not 0 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 0 <= MIN <= MAX, got {text!r}")
    return bounds


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def version() -> str:
    """The installed distribution's version (pyproject.toml's, in the wheel's metadata)."""
    return importlib.metadata.version("fleetwave")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetwave", description="Release executor for CDN control planes."
    )
    parser.add_argument("--version", action="version", version=f"fleetwave {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("serve", help="run the daemon: claim releases and drive them")
    commands.add_parser("migrate", help="apply database migrations and exit")

    sim = commands.add_parser(
        "agent-sim", help="run simulated edge agents over mutual TLS on 127.0.0.2, 127.0.0.3, ..."
    )
    sim.add_argument("--count", type=_positive_int, required=True, help="number of agents")
    sim.add_argument("--certs", type=Path, required=True, help="directory from `certs init`")
    sim.add_argument("--apply-time", type=_apply_time, default=(1.0, 3.0), metavar="MIN..MAX")
    sim.add_argument(
        "--fail",
        type=_positive_int,
        action="append",
        default=[],
        metavar="K",
        help="agent K (1-based) reports every task failed",
    )
    sim.add_argument(
        "--hang",
        type=_positive_int,
        action="append",
        default=[],
        metavar="K",
        help="agent K accepts connections and never answers",
    )
    sim.add_argument(
        "--port",
        type=_port,
        default=None,
        help="port every agent listens on (default: the agent_port setting, 8443 unless changed)",
    )
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--register",
        action="store_true",
        help="upsert the agents into the database as enabled, online nodes",
    )
    sim.add_argument(
        "--metrics-bind",
        type=_loopback_bind,
        default=None,
        metavar="HOST:PORT",
        help="also serve each agent's error ratio for Prometheus (GET /metrics, labelled with "
        "its node name sim-HOST) and set it (PUT /errors), plain HTTP on a loopback address",
    )

    certs = commands.add_parser("certs", help="development certificates")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    init = certs_commands.add_parser(
        "init", help="write a dev CA, control, agent and API server certificates"
    )
    init.add_argument("directory", type=Path)
    init.add_argument(
        "--agents",
        type=_positive_int,
        default=254,
        help="simulated agent addresses the agent certificate covers",
    )
    _add_api_commands(commands)
    _add_bench_command(commands)
    _add_simulate_command(commands)
    _add_demo_command(commands)
    return parser


def _add_demo_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="run everything on this machine: database, agents, daemon, API, two releases",
        description="Start an embedded PostgreSQL, dev certificates, simulated agents over "
        "mutual TLS and the daemon; run a release that succeeds and one whose canary fails; "
        "print a summary. Exit 0 when both end as expected.",
    )
    demo.add_argument("--agents", type=_positive_int, default=20, help="simulated agents (20)")
    demo.add_argument(
        "--keep-running", action="store_true", help="leave everything up until Ctrl-C"
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".fleetwave/demo"),
        metavar="DIR",
        help="database, certificates and logs (./.fleetwave/demo)",
    )


def _add_bench_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure how close releases come to their ideal time on this machine",
        description="Run a benchmark scenario against its own embedded PostgreSQL and "
        "simulated agents; print figures (a table; JSON with --out). Not a test.",
    )
    bench.add_argument(
        "--scenario",
        choices=["a", "b", "c", "d"],
        required=True,
        help="a: 10,000 in-process agents; b: 1,000 agents over mTLS in another process; "
        "c: 100 releases of 100 disjoint nodes at once; d: pick-up latency over 50 releases",
    )
    bench.add_argument("--nodes", type=_positive_int, help="nodes per release")
    bench.add_argument("--releases", type=_positive_int, help="releases (scenarios c and d)")
    bench.add_argument(
        "--apply-time", type=_apply_time, metavar="MIN..MAX", help="agent apply time (5..15)"
    )
    bench.add_argument("--out", type=Path, metavar="FILE", help="also write the figures as JSON")


SIMULATE_SUMMARY = "run a strategy many times against a simulated fleet in virtual time"
SIMULATE_DESCRIPTION = (
    "Compute each run from the daemon's schedule (or, with --engine daemon, run the real "
    "daemon on an in-memory store against simulated agents), in virtual time; print the "
    "distribution of time to finish, nodes touched before a failure is caught and nodes left "
    "on the old version, and how the runs ended. See docs/simulate.md."
)


def _add_simulate_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = commands.add_parser("simulate", help=SIMULATE_SUMMARY, description=SIMULATE_DESCRIPTION)
    sim.add_argument("--strategy", required=True, type=Path, metavar="FILE", help="JSON strategy")
    sim.add_argument("--nodes", required=True, metavar="N", help="nodes in the fleet")
    sim.add_argument(
        "--apply-time", required=True, metavar="MIN..MAX", help="seconds each node applies"
    )
    sim.add_argument(
        "--fail-rate", required=True, metavar="P", help="probability that a node fails (0..1)"
    )
    sim.add_argument("--runs", required=True, metavar="K", help="releases simulated")
    sim.add_argument("--seed", metavar="S", help="seed of every random draw (default: a new one)")
    sim.add_argument(
        "--gate-wait",
        metavar="S",
        help="promote each gate S virtual seconds after it is reached (without it a strategy "
        "with a gate is refused)",
    )
    sim.add_argument(
        "--jobs",
        metavar="J",
        help="processes to share the runs (default: one per CPU, at most one per run)",
    )
    sim.add_argument(
        "--engine",
        default="model",
        metavar="E",
        help="model: compute each run from the daemon's schedule, microseconds a node "
        "(default); daemon: run the real Supervisor, ReleaseActor and NodeActors",
    )
    sim.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=COUNT",
        help="give the nodes label KEY with COUNT values, each on a block of consecutive "
        "nodes (pop=20: twenty PoPs), for batchBy and maxInFlightPer; repeatable",
    )
    sim.add_argument(
        "--verify",
        metavar="N",
        help="with --engine model: also run the first N runs (0 to K) by the daemon and "
        "compare them with the model's (exit 1 when one differs)",
    )
    sim.add_argument("--json", action="store_true", help="print the figures as JSON")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected at least 0, got {value}")
    return value


def _port(text: str) -> int:
    from fleetwave.store.address import InvalidAddress, check_agent_port

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    try:
        return check_agent_port(value)
    except InvalidAddress as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _loopback_bind(text: str) -> str:
    from fleetwave.agent.sim_metrics import check_loopback

    try:
        return check_loopback(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _agent_host(text: str) -> str:
    """The node address check the API and the actors use too."""
    from fleetwave.store.address import InvalidAddress, check_agent_host

    try:
        return check_agent_host(text)
    except InvalidAddress as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _plan(text: str) -> list[object]:
    from fleetwave.api.commands import parse_plan

    return parse_plan(text)


def _expiry(text: str) -> timedelta:
    from fleetwave.api.auth import parse_expiry

    try:
        return parse_expiry(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _selector(text: str) -> dict[str, str]:
    from fleetwave.api.commands import parse_selector

    return parse_selector(text)


def _caps(text: str) -> dict[str, object]:
    from fleetwave.api.commands import parse_caps

    return parse_caps(text)


def _label_change(text: str) -> tuple[str, str | None]:
    from fleetwave.api.commands import parse_label_change

    return parse_label_change(text)


def _kinds(text: str) -> list[str]:
    from fleetwave.store.webhooks import WEBHOOK_KINDS

    kinds = [part.strip() for part in text.split(",") if part.strip()]
    if kinds == ["all"]:
        return list(WEBHOOK_KINDS)
    for kind in kinds:
        if kind not in WEBHOOK_KINDS:
            raise argparse.ArgumentTypeError(
                f"unknown event {kind!r} (known: {', '.join(WEBHOOK_KINDS)}, or all)"
            )
    if not kinds:
        raise argparse.ArgumentTypeError("name at least one event")
    return kinds


def _add_api_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser("token", help="API tokens")
    token_actions = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    token_create = token_actions.add_parser(
        "create", help="create an API token and print it once (only its hash is stored)"
    )
    token_create.add_argument("name", help="who or what the token is for")
    token_create.add_argument(
        "--role",
        required=True,
        choices=[role.value for role in Role],
        help="viewer: reads; operator: also releases and their verbs; admin: also nodes, "
        "tokens, webhooks",
    )
    token_create.add_argument(
        "--expires", type=_expiry, metavar="DURATION", help="e.g. 90m, 12h, 30d, 8w (never)"
    )
    token_list = token_actions.add_parser(
        "list", help="every token: role, creation, expiry and last use (never the token)"
    )
    token_list.add_argument("--json", action="store_true", help="print the tokens as JSON")
    token_revoke = token_actions.add_parser(
        "revoke", help="delete a token: every request with it is refused from then on"
    )
    token_revoke.add_argument("token", metavar="NAME|ID", help="the token's name or id")

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--api",
        default=_from_env("FLEETWAVE_API", "http://127.0.0.1:8080"),
        help="API base URL (FLEETWAVE_API; default http://127.0.0.1:8080)",
    )
    client.add_argument(
        "--token",
        default=_from_env("FLEETWAVE_TOKEN"),
        help="API token (FLEETWAVE_TOKEN)",
    )
    for option, env, text in (
        (
            "--ca",
            "FLEETWAVE_API_CA",
            "CA certificate that signed the API's (default: the system's)",
        ),
        ("--cert", "FLEETWAVE_API_CLIENT_CERT", "client certificate, for an API that asks for one"),
        ("--key", "FLEETWAVE_API_CLIENT_KEY", "the client certificate's key"),
    ):
        client.add_argument(option, default=_from_env(env), metavar="FILE", help=f"{text} ({env})")
    client.add_argument("--json", action="store_true", help="print the API's data as JSON")

    release = commands.add_parser("release", help="create, list, show, watch and steer releases")
    release_actions = release.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = release_actions.add_parser("create", parents=[client], help="create a release")
    create.add_argument("--target", default="cdn", help="what the release applies to (cdn)")
    create.add_argument("--reason", required=True, help="why; recorded with the release")
    create.add_argument(
        "--plan",
        type=_plan,
        help="batch sizes (counts or percentages) and pauses between them: pause=SECONDS "
        "(a bake) or gate (waits for promote), e.g. 1,pause=300,25%%,gate,100%%",
    )
    create.add_argument(
        "--strategy",
        metavar="FILE",
        help="a JSON object of plan, maxFailures, maxFailurePercent, onFailure, healthChecks, "
        "batchBy and maxInFlightPer (docs/strategies.md); the options given beside it win",
    )
    create.add_argument(
        "--max-failure-percent",
        type=float,
        metavar="P",
        help="failed nodes tolerated over the release, as a percentage of its nodes",
    )
    create.add_argument(
        "--on-failure",
        metavar="ACTION",
        help="what a failure beyond the budget does: stop (default), pause or rollback",
    )
    create.add_argument(
        "--batch-by",
        metavar="LABEL",
        help="after the canary, one value of this node label per batch, e.g. pop",
    )
    create.add_argument(
        "--max-in-flight-per",
        type=_caps,
        metavar="LABEL=N[,LABEL=N]",
        help="at most N nodes of one value of the label applying at once, e.g. pop=1",
    )
    create.add_argument("--max-parallel", type=_positive_int, help="nodes at once in a batch")
    create.add_argument(
        "--max-failures", type=_non_negative_int, help="failed nodes tolerated (default 0)"
    )
    create.add_argument(
        "--scope",
        help="releases naming the same scope run one at a time, even over different nodes",
    )
    chosen = create.add_mutually_exclusive_group()
    chosen.add_argument(
        "--node-id",
        type=_positive_int,
        action="append",
        dest="node_ids",
        metavar="ID",
        help="only this node (repeat for more); default: every enabled, online node",
    )
    chosen.add_argument(
        "--node",
        action="append",
        dest="node_names",
        metavar="NAME",
        help="only the node of this name (repeat for more)",
    )
    chosen.add_argument(
        "--selector",
        type=_selector,
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="the enabled, online nodes carrying all these labels",
    )
    release_actions.add_parser(
        "plan",
        parents=[create],
        add_help=False,
        help="show what release create would do with the same options, creating nothing",
    )
    listing = release_actions.add_parser("list", parents=[client], help="list releases")
    listing.add_argument(
        "--status", choices=["pending", "running", "paused", "success", "failed", "cancelled"]
    )
    listing.add_argument("--page", type=_positive_int, default=1)
    listing.add_argument("--page-size", type=_positive_int, default=20)
    show = release_actions.add_parser("show", parents=[client], help="a release and its nodes")
    show.add_argument("release_id", type=_positive_int, metavar="ID")
    watch = release_actions.add_parser(
        "watch", parents=[client], help="follow a release until it ends (exit 0 on success)"
    )
    watch.add_argument("release_id", type=_positive_int, metavar="ID")
    events = release_actions.add_parser(
        "events", parents=[client], help="a release's audit trail: every transition, oldest first"
    )
    events.add_argument("release_id", type=_positive_int, metavar="ID")
    _add_nodes_commands(commands, client)
    verbs = {
        "pause": "stop dispatching; dispatched nodes finish (pending or running)",
        "resume": "go on where a paused release stopped",
        "cancel": "end the release: nothing new is dispatched, dispatched nodes reconciled",
        "retry": "run a failed or cancelled release again for its nodes that did not succeed",
        "rollback": "cancel if active, then restore the last good config in the same plan",
        "promote": "pass the gate or end the bake a release is at (--full: every step left)",
    }
    for name, summary in verbs.items():
        verb = release_actions.add_parser(name, parents=[client], help=summary)
        verb.add_argument("release_id", type=_positive_int, metavar="ID")
        verb.add_argument("--reason", help="why; recorded in the release's events")
        if name == "rollback":
            verb.add_argument(
                "--to",
                type=_positive_int,
                metavar="VERSION",
                help="the config version to restore (default: what the nodes ran before)",
            )
        if name == "promote":
            verb.add_argument(
                "--full", action="store_true", help="skip every remaining pause of the release"
            )
    commands.add_parser(
        "fleet",
        parents=[client],
        help="how many nodes run which config version, and which differ from the newest good",
    )

    webhook = commands.add_parser("webhook", help="register, list and remove webhooks")
    webhook_actions = webhook.add_subparsers(dest="action", required=True, metavar="ACTION")
    hook_add = webhook_actions.add_parser(
        "add", parents=[client], help="register a URL for events; prints its signing secret once"
    )
    hook_add.add_argument("url", metavar="URL")
    hook_add.add_argument(
        "--events",
        type=_kinds,
        required=True,
        help="comma-separated: release.started, release.finished, release.failed, "
        "release.paused, release.gate, batch.finished, node.failed (or all)",
    )
    hook_add.add_argument("--description", default="", help="what the hook is for")
    webhook_actions.add_parser("list", parents=[client], help="list webhooks")
    hook_show = webhook_actions.add_parser(
        "show", parents=[client], help="a webhook's recent deliveries and failures"
    )
    hook_show.add_argument("webhook_id", type=_positive_int, metavar="ID")
    hook_remove = webhook_actions.add_parser("remove", parents=[client], help="remove a webhook")
    hook_remove.add_argument("webhook_id", type=_positive_int, metavar="ID")
    _add_scope_commands(commands, client)


def _add_scope_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], client: argparse.ArgumentParser
) -> None:
    scope = commands.add_parser(
        "scope", help="scopes' default strategies (what releases without strategy fields run)"
    )
    scope_actions = scope.add_subparsers(dest="action", required=True, metavar="ACTION")
    scope_actions.add_parser("list", parents=[client], help="every scope's default strategy")
    strategy = scope_actions.add_parser("strategy", help="show, set or clear a scope's default")
    strategy_actions = strategy.add_subparsers(
        dest="strategy_action", required=True, metavar="ACTION"
    )
    about = "the scope a release names, else its target (cdn: every release without a scope)"
    show = strategy_actions.add_parser("show", parents=[client], help="a scope's default")
    show.add_argument("scope", metavar="SCOPE", help=about)
    set_default = strategy_actions.add_parser(
        "set", parents=[client], help="set or replace a scope's default from a JSON file"
    )
    set_default.add_argument("scope", metavar="SCOPE", help=about)
    set_default.add_argument(
        "file",
        metavar="FILE",
        help="a JSON object of plan, maxFailures, maxFailurePercent, onFailure and "
        "healthChecks (docs/strategies.md); - reads standard input",
    )
    clear = strategy_actions.add_parser("clear", parents=[client], help="remove a default")
    clear.add_argument("scope", metavar="SCOPE", help=about)


def _add_nodes_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], client: argparse.ArgumentParser
) -> None:
    nodes = commands.add_parser("nodes", help="list, show, register and take nodes in or out")
    nodes_actions = nodes.add_subparsers(dest="action", required=True, metavar="ACTION")
    nodes_actions.add_parser("list", parents=[client], help="list nodes")
    show = nodes_actions.add_parser(
        "show", parents=[client], help="a node and its part in its latest releases"
    )
    show.add_argument("node", metavar="NAME", help="node name (or id)")
    for action, help_text in (
        ("enable", "let new releases include the nodes (and take them out of maintenance)"),
        ("disable", "leave the nodes out of new releases"),
        ("maintenance", "mark the nodes in maintenance: new releases leave them out"),
    ):
        changing = nodes_actions.add_parser(action, parents=[client], help=help_text)
        changing.add_argument("nodes", nargs="+", metavar="NAME", help="node names (or ids)")
    add = nodes_actions.add_parser(
        "add", parents=[client], help="register a node (--update to change an existing one)"
    )
    add.add_argument("name")
    add.add_argument("ip", metavar="IP", type=_agent_host)
    add.add_argument(
        "--update", action="store_true", help="replace the address of a node of that name"
    )
    add.add_argument(
        "--port",
        type=_port,
        default=None,
        help="agent port (default: the daemon's agent_port setting, 8443 unless changed)",
    )
    label = nodes_actions.add_parser(
        "label",
        parents=[client],
        help="set (KEY=VALUE) or remove (KEY-) labels of a node",
    )
    label.add_argument("name", help="the node's name")
    label.add_argument(
        "changes", type=_label_change, nargs="+", metavar="KEY=VALUE|KEY-", help="label changes"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        try:
            settings = load_settings(other_env=CLIENT_ENV)
            return _run(args, settings)
        except BaseExceptionGroup as group:
            error = _operational(group)
            if error is group:
                raise
            raise error from group
    except (SettingsError, UsageError) as error:
        print(f"fleetwave: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (StoreError, EmbeddedPostgresError, StartupError) as error:
        print(f"fleetwave: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def _operational(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one operational error (bad setting, database away) inside a task group, if that is
    all there is; otherwise the group itself, a defect to show in full."""
    kinds = (
        SettingsError,
        UsageError,
        StoreError,
        EmbeddedPostgresError,
        StartupError,
        KeyboardInterrupt,
    )
    matched, rest = group.split(kinds)
    if matched is None or rest is not None:
        return group
    leaf: BaseException = matched
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


def _run(args: argparse.Namespace, settings: Settings) -> int:
    match args.command:
        case "serve":
            settings.require_mtls()
            tls = api_tls(settings)
            configure_logging(settings)
            trio.run(_serve, settings, tls)
            return 0
        case "migrate":
            # stdout says what was applied; logs go to stderr.
            configure_logging(settings, stream=sys.stderr)
            print(trio.run(_migrate, settings))
            return 0
        case "agent-sim":
            configure_logging(settings)
            for index in [*args.fail, *args.hang]:
                if index > args.count:
                    raise UsageError(f"--fail/--hang {index}: there are only {args.count} agents")
            trio.run(_agent_sim, settings, args)
            return 0
        case "certs":
            return _certs_init(args)
        case "bench":
            return _bench(args, settings)
        case "simulate":
            return _simulate(args, settings)
        case "demo":
            from fleetwave.demo import MAX_AGENTS, DemoOptions, run_demo

            if args.agents > MAX_AGENTS:
                raise UsageError(f"--agents {args.agents}: at most {MAX_AGENTS}")
            return run_demo(DemoOptions(args.agents, args.keep_running, args.data_dir))
        case "token":
            # stdout carries the command's answer alone (the token, once); logs go to stderr.
            configure_logging(settings, stream=sys.stderr)
            return _token(args, settings)
        case "release" | "nodes" | "fleet" | "webhook" | "scope":
            if not args.token:
                raise UsageError("no API token: set FLEETWAVE_TOKEN or pass --token")
            if (args.cert is None) != (args.key is None):
                raise UsageError(
                    "a client certificate needs its key: give both --cert and --key "
                    "(FLEETWAVE_API_CLIENT_CERT, FLEETWAVE_API_CLIENT_KEY)"
                )
            return trio.run(_api_command, args)
    raise UsageError(f"unknown command {args.command!r}")  # pragma: no cover


async def _serve(settings: Settings, tls: ApiTls | None) -> None:
    import httpx

    from fleetwave.agent.client import AgentClient, build_http_client
    from fleetwave.api.app import create_app
    from fleetwave.api.events import EventHub
    from fleetwave.api.metrics import create_metrics_app
    from fleetwave.api.server import serve_api
    from fleetwave.api.token_use import TokenUse
    from fleetwave.store.factory import open_store
    from fleetwave.store.metered import metered
    from fleetwave.supervisor import Supervisor
    from fleetwave.webhooks.delivery import DeliveryService

    async with open_store(settings) as database, build_http_client(settings) as http:
        store = metered(database)
        agents = AgentClient(http, request_timeout=settings.agent_request_timeout_sec)
        # Hooks and health checks are ordinary HTTP(S) endpoints: a client of their own,
        # without the agents' client certificate, verifying servers against the system's CAs.
        hooks_http = httpx.AsyncClient(timeout=settings.webhook_timeout_sec)
        supervisor = Supervisor(
            store,
            agents,
            settings,
            webhooks=DeliveryService.from_settings(store, hooks_http, settings),
            checks_http=hooks_http,
        )
        events = EventHub(store)
        api_stopping = trio.Event()

        def stop() -> None:
            supervisor.stop()
            events.close()  # open streams end now, so the API stops without waiting on them
            api_stopping.set()

        token_use = TokenUse(store)
        async with hooks_http, trio.open_nursery() as writing_uses:
            await writing_uses.start(token_use.run)
            async with trio.open_nursery() as nursery:
                await nursery.start(events.run)
                await nursery.start(
                    partial(serve_api, shutdown_trigger=api_stopping.wait, tls=tls),
                    create_app(
                        store,
                        default_agent_port=settings.agent_port,
                        token_use=token_use,
                        serve_metrics=settings.metrics_bind is None,
                        events=events,
                    ),
                    settings.api_bind,
                )
                if settings.metrics_bind is not None:
                    # Plain HTTP and no token: a bind only the monitoring network reaches.
                    await nursery.start(
                        partial(serve_api, shutdown_trigger=api_stopping.wait),
                        create_metrics_app(store),
                        settings.metrics_bind,
                    )
                await nursery.start(supervisor.run)
                await _stop_on_signal(stop)
            # The API has stopped: the last uses are written as the writer is cancelled.
            writing_uses.cancel_scope.cancel()


async def _stop_on_signal(stop: object) -> None:
    assert callable(stop)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop()
            return


def _token(args: argparse.Namespace, settings: Settings) -> int:
    match args.action:
        case "create":
            from fleetwave.api.auth import check_token_name

            try:
                name = check_token_name(args.name)
            except ValueError as error:
                raise UsageError(str(error)) from None
            return trio.run(_token_create, settings, name, Role(args.role), args.expires)
        case "list":
            return trio.run(_token_list, settings, args.json)
        case "revoke":
            key: int | str = int(args.token) if args.token.isdigit() else args.token
            return trio.run(_token_revoke, settings, key)
    raise UsageError(f"unknown token action {args.action!r}")  # pragma: no cover


async def _token_create(
    settings: Settings, name: str, role: Role, expires_in: timedelta | None
) -> int:
    import structlog

    from fleetwave.api.auth import create_token
    from fleetwave.store.errors import AlreadyExists
    from fleetwave.store.factory import open_store

    try:
        async with open_store(settings) as store:
            token = await create_token(store, name, role=role, expires_in=expires_in)
    except AlreadyExists as error:
        print(f"fleetwave: {error}", file=sys.stderr)
        return 1
    structlog.get_logger("fleetwave.cli").info(
        "token.created", token_name=name, token_role=role.value, expires_in=str(expires_in)
    )
    print(token)
    return 0


async def _token_list(settings: Settings, as_json: bool) -> int:
    import json

    from fleetwave.api.render import token_list
    from fleetwave.api.schemas import token_item
    from fleetwave.api.shapes import TokenList
    from fleetwave.store.factory import open_store

    async with open_store(settings) as store:
        tokens = await store.list_tokens()
    data: TokenList = {"items": [token_item(token) for token in tokens], "total": len(tokens)}
    print(json.dumps(data, indent=2) if as_json else token_list(data))
    return 0


async def _token_revoke(settings: Settings, key: int | str) -> int:
    import structlog

    from fleetwave.store.errors import NotFound
    from fleetwave.store.factory import open_store

    try:
        async with open_store(settings) as store:
            token = await store.revoke_token(key)
    except NotFound as error:
        print(f"fleetwave: {error}", file=sys.stderr)
        return 1
    structlog.get_logger("fleetwave.cli").info(
        "token.revoked", token_id=token.id, token_name=token.name, token_role=token.role.value
    )
    print(f"revoked token {token.name} (id {token.id}, {token.role})")
    return 0


async def _api_command(args: argparse.Namespace) -> int:
    from fleetwave.api.client import ApiClient, ClientError, ClientTls, open_http
    from fleetwave.api.commands import run

    try:
        http = open_http(args.api, args.token, tls=ClientTls(args.ca, args.cert, args.key))
    except ClientError as error:
        print(f"fleetwave: {error}", file=sys.stderr)
        return EXIT_USAGE
    async with http:
        return await run(args, ApiClient(http), sys.stdout, sys.stderr)


async def _migrate(settings: Settings) -> str:
    """Apply what the database lacks; say what that was and where the schema is now."""
    import trio_asyncio

    from fleetwave.store.factory import database_url
    from fleetwave.store.migrate import MIGRATIONS
    from fleetwave.store.postgres import migrate_and_report

    async with trio_asyncio.open_loop(), database_url(settings) as url:
        applied, schema = await migrate_and_report(url)
    if not applied:
        return f"nothing to apply; schema at {schema}"
    names = {
        migration.version: f"{migration.version:04d}_{migration.name}" for migration in MIGRATIONS
    }
    return f"applied {', '.join(names[version] for version in applied)}; schema at {schema}"


async def _agent_sim(settings: Settings, args: argparse.Namespace) -> None:
    import structlog

    from fleetwave.agent.sim import Behaviour, SimulatedFleet

    port = settings.agent_port if args.port is None else args.port
    fleet = SimulatedFleet(
        args.count, behaviour=Behaviour(apply_time=args.apply_time), seed=args.seed, port=port
    )
    for index in args.fail:
        fleet.set_behaviour(index, Behaviour(apply_time=args.apply_time, fail="simulated failure"))
    for index in args.hang:
        fleet.set_behaviour(index, Behaviour(hang=True))
    log = structlog.get_logger("fleetwave.agent_sim")
    names = [f"sim-{host}" for host in fleet.hosts]
    if args.register:
        from fleetwave.store.factory import open_store

        async with open_store(settings) as store:
            for name, host in zip(names, fleet.hosts, strict=True):
                await store.upsert_node(name, host, port)
        log.info("agent_sim.registered", count=args.count)
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.serve, args.certs)
        log.info("agent_sim.listening", count=args.count, first=fleet.hosts[0], port=port)
        if args.metrics_bind is not None:
            from fleetwave.agent.sim_metrics import SimMetrics

            bound = await nursery.start(SimMetrics(names).serve, args.metrics_bind)
            log.info("agent_sim.metrics", address=bound, metrics=f"http://{bound}/metrics")
        await _stop_on_signal(nursery.cancel_scope.cancel)


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwave import bench

    try:
        scenario = bench.scenario(
            args.scenario, nodes=args.nodes, releases=args.releases, apply_time=args.apply_time
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    command = " ".join(["fleetwave", *(sys.argv[1:] if sys.argv else [])])
    bench.bench(scenario, settings, out=args.out, command=command)
    return 0


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwave import simulate

    try:
        options = simulate.build_options(
            strategy=args.strategy,
            nodes=args.nodes,
            apply_time=args.apply_time,
            fail_rate=args.fail_rate,
            runs=args.runs,
            seed=args.seed,
            gate_wait=args.gate_wait,
            jobs=args.jobs,
            engine=args.engine,
            verify=args.verify,
            labels=args.label,
        )
        summary = simulate.simulate(options, settings, as_json=args.json)
    except simulate.SimulateError as error:
        raise UsageError(str(error)) from None
    except simulate.RunStuck as error:
        print(f"fleetwave: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if summary.get("verified", {}).get("differing"):
        print("fleetwave: the daemon's runs differ from the model's (above)", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _certs_init(args: argparse.Namespace) -> int:
    from fleetwave.agent.certs import api_env_lines, init_certs, mtls_env_lines

    paths = init_certs(args.directory, agents=args.agents)
    for line in [*mtls_env_lines(paths), *api_env_lines(paths)]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
