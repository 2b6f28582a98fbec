"""The ``fleetwave`` command line."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from config import Settings, SettingsError, load_settings
from config.logging import configure_logging

EXIT_USAGE = 2


class UsageError(Exception):
    """A command-line argument is wrong; the message says which and why."""


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetwave", description="Release executor for CDN control planes."
    )
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
    sim.add_argument("--port", type=_positive_int, default=8443)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--register",
        action="store_true",
        help="upsert the agents into the database as enabled, online nodes",
    )

    certs = commands.add_parser("certs", help="development certificates")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    init = certs_commands.add_parser("init", help="write a dev CA, control and agent certificates")
    init.add_argument("directory", type=Path)
    init.add_argument(
        "--agents",
        type=_positive_int,
        default=254,
        help="simulated agent addresses the agent certificate covers",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        return _run(args, settings)
    except (SettingsError, UsageError) as error:
        print(f"fleetwave: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace, settings: Settings) -> int:
    match args.command:
        case "serve":
            settings.require_mtls()
            configure_logging(settings)
            trio.run(_serve, settings)
            return 0
        case "migrate":
            configure_logging(settings)
            trio.run(_migrate, settings)
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
    raise UsageError(f"unknown command {args.command!r}")  # pragma: no cover


async def _serve(settings: Settings) -> None:
    from store.factory import open_store

    from agent.client import AgentClient, build_http_client
    from supervisor import Supervisor

    async with open_store(settings) as store, build_http_client(settings) as http:
        agents = AgentClient(http, request_timeout=settings.agent_request_timeout_sec)
        supervisor = Supervisor(store, agents, settings)
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await _stop_on_signal(supervisor.stop)


async def _stop_on_signal(stop: object) -> None:
    assert callable(stop)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop()
            return


async def _migrate(settings: Settings) -> None:
    from store.factory import open_store

    async with open_store(settings):
        pass


async def _agent_sim(settings: Settings, args: argparse.Namespace) -> None:
    import structlog
    from agent.sim import Behaviour, SimulatedFleet

    fleet = SimulatedFleet(
        args.count, behaviour=Behaviour(apply_time=args.apply_time), seed=args.seed, port=args.port
    )
    for index in args.fail:
        fleet.set_behaviour(index, Behaviour(apply_time=args.apply_time, fail="simulated failure"))
    for index in args.hang:
        fleet.set_behaviour(index, Behaviour(hang=True))
    log = structlog.get_logger("fleetwave.agent_sim")
    if args.register:
        from store.factory import open_store

        async with open_store(settings) as store:
            for host in fleet.hosts:
                await store.upsert_node(f"sim-{host}", host, args.port)
        log.info("agent_sim.registered", count=args.count)
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.serve, args.certs)
        log.info("agent_sim.listening", count=args.count, first=fleet.hosts[0], port=args.port)
        await _stop_on_signal(nursery.cancel_scope.cancel)


def _certs_init(args: argparse.Namespace) -> int:
    from agent.certs import init_certs, mtls_env_lines

    paths = init_certs(args.directory, agents=args.agents)
    for line in mtls_env_lines(paths):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
