"""The simulated fleet: a real implementation of the agent protocol for many edge nodes.

One ``SimulatedFleet`` holds ``count`` agents on consecutive loopback addresses (127.0.0.2,
127.0.0.3, ...). One ASGI app serves both endpoints for all of them and picks the agent from
the address the request reached (``scope["server"]``). It runs in two forms:

- in process: ``fleet.transport()`` is an httpx transport that routes by request host, for
  the simulation tests, where trio's autojump clock runs whole releases in simulated time;
- on real sockets: ``await nursery.start(fleet.serve, certs_dir)`` runs HTTPS servers with
  mutual TLS (hypercorn, trio worker), one listening socket per agent.

Trio-flavored. Each agent's behaviour (apply time, failure, hang, refusal, HTTP errors,
garbage, any raw answer, unknown status, delay, answers dripped byte by byte or cut short)
is set per agent and may change while the fleet runs.
"""

from __future__ import annotations

import collections
import errno
import json
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from fleetwave.agent.protocol import (
    CODE_INTERNAL,
    CODE_NOT_FOUND,
    CODE_OK,
    CODE_PARAMETER_INVALID,
    DISPATCH_PATH,
    TASKS_PATH,
    AgentAddress,
    DispatchAck,
    DispatchRequest,
    PayloadError,
    TaskState,
    TaskStatus,
    agent_hosts,
    envelope,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PENDING_FRACTION = 0.1
"""Share of a task's apply time spent ``pending`` before it turns ``running``."""

UNKNOWN_STATUS_WORD = "exploded"
MAX_BODY_BYTES = 1 << 20
AGENT_KEEP_ALIVE_SEC = 75.0
GARBAGE = b'{"code": 0, "message": "ok", "data": {"taskId": '


def _valid_apply_time(
    instance: object, attribute: attrs.Attribute[tuple[float, float]], value: tuple[float, float]
) -> None:
    low, high = value
    if not 0 <= low <= high:
        raise ValueError(f"apply_time must be (low, high) with 0 <= low <= high, got {value!r}")


def _valid_status(
    instance: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and not (100 <= value <= 599 and value != 200):
        raise ValueError(f"http_status must be an HTTP status other than 200, got {value!r}")


def _valid_delay(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"delay must be >= 0, got {value!r}")


@attrs.frozen
class Behaviour:
    """How one simulated agent behaves.

    ``apply_time`` and ``fail`` are read when a task is created (the agent decides how the
    apply goes); the others are read at every request.
    """

    apply_time: tuple[float, float] = attrs.field(default=(1.0, 3.0), validator=_valid_apply_time)
    """Seconds a task takes, uniform in [low, high]: pending briefly, running, then terminal."""
    fail: str | None = None
    """Tasks end ``failed`` with this lastError."""
    hang: bool = False
    """Accepts connections and requests but never answers."""
    refuse: bool = False
    """Connections are refused."""
    http_status: int | None = attrs.field(default=None, validator=_valid_status)
    """Every request is answered with this HTTP status and an error envelope."""
    garbage: bool = False
    """Every request is answered 200 with a body that is not JSON."""
    unknown_status: bool = False
    """Queries answer a status word outside the protocol."""
    delay: float = attrs.field(default=0.0, validator=_valid_delay)
    """Seconds before every answer."""
    body: bytes | None = None
    """Every request is answered 200 with exactly these bytes (any JSON or none at all); a
    dispatch so answered creates no task."""
    drip: float = attrs.field(default=0.0, validator=_valid_delay)
    """Seconds between the bytes of every answer: the body arrives one byte at a time."""
    reset: bool = False
    """Every answer stops half way through its body and the connection is closed."""

    @property
    def plain(self) -> bool:
        """Answers by the protocol alone, at once and whole (apply time and failure aside)."""
        return self == Behaviour(apply_time=self.apply_time, fail=self.fail)


@attrs.define
class _Task:
    request: DispatchRequest
    created: float
    started: float
    finished: float
    last_error: str | None


@attrs.frozen
class TaskTimes:
    """When a task reached its agent and the apply time the agent drew for it."""

    host: str
    task_id: str
    dispatched_at: float
    """trio.current_time() of the first dispatch request."""
    apply_time: float


@attrs.define
class _Agent:
    host: str
    behaviour: Behaviour
    seed: int
    generation: int = 0
    tasks: dict[str, _Task] = attrs.field(factory=dict)
    dispatches: collections.Counter[str] = attrs.field(factory=collections.Counter)
    dispatch_log: list[tuple[float, str]] = attrs.field(factory=list)
    """(trio time, task id) of every dispatch request that reached the agent."""


class SimulatedFleet:
    """``count`` agents on ``first_host``, ``first_host`` + 1, ... all on ``port``.

    ``port=0`` (served form only) gives each agent its own free port; ``address(k)`` then
    tells it once ``serve`` has started.
    """

    def __init__(
        self,
        count: int,
        *,
        behaviour: Behaviour = Behaviour(),
        seed: int = 0,
        first_host: str = "127.0.0.2",
        port: int = 8443,
    ) -> None:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self.port = port
        self.seed = seed
        self.hosts: list[str] = agent_hosts(count, first_host)
        rng = random.Random(seed)
        # One seed per agent, drawn up front: a task's duration then depends on the agent, the
        # task and the agent's restarts only, never on the order trio happens to run requests.
        self._agents: dict[str, _Agent] = {
            host: _Agent(host=host, behaviour=behaviour, seed=rng.getrandbits(64))
            for host in self.hosts
        }
        self._ports: dict[str, int] = {}
        self._served_refusing: frozenset[str] | None = None
        self._anchor: tuple[datetime, float] | None = None
        self.requests = 0
        """Requests answered."""

    # --- control and inspection ---

    def __len__(self) -> int:
        return len(self.hosts)

    def address(self, k: int) -> AgentAddress:
        """Agent k (1-based)."""
        host = self._agent(k).host
        return AgentAddress(host, self._ports.get(host, self.port))

    def behaviour(self, k: int) -> Behaviour:
        return self._agent(k).behaviour

    def set_behaviour(self, k: int, behaviour: Behaviour) -> None:
        agent = self._agent(k)
        if self._served_refusing is not None and behaviour.refuse != (
            agent.host in self._served_refusing
        ):
            raise ValueError(
                f"agent {agent.host}: refuse is fixed while serving on real sockets "
                "(refusing agents are not bound); set it before serve()"
            )
        agent.behaviour = behaviour

    def restart(self, k: int) -> None:
        """Agent k forgets every task, as a restarted agent process does."""
        agent = self._agent(k)
        agent.tasks.clear()
        agent.generation += 1

    def dispatch_count(self, host: str, task_id: str) -> int:
        """How many dispatch requests for ``task_id`` reached ``host``, answered or not."""
        return self._agent_at(host).dispatches[task_id]

    def task_ids(self, host: str) -> set[str]:
        """Every task id ever dispatched to ``host`` (restarts do not erase this history)."""
        return set(self._agent_at(host).dispatches)

    def dispatch_log(self) -> list[tuple[float, str, str]]:
        """(trio time, host, task id) of every dispatch request that reached an agent, in
        time order (restarts do not erase it)."""
        entries = [
            (at, agent.host, task_id)
            for agent in self._agents.values()
            for at, task_id in agent.dispatch_log
        ]
        return sorted(entries)

    def task_version(self, host: str, task_id: str) -> int | None:
        """The config version the agent was told to apply for ``task_id`` (None: unknown)."""
        task = self._agent_at(host).tasks.get(task_id)
        return None if task is None else task.request.version

    def task_times(self) -> list[TaskTimes]:
        """Every task the agents hold, with its dispatch time and drawn apply time."""
        return [
            TaskTimes(agent.host, task_id, task.created, task.finished - task.created)
            for agent in self._agents.values()
            for task_id, task in agent.tasks.items()
        ]

    def _agent(self, k: int) -> _Agent:
        if not 1 <= k <= len(self.hosts):
            raise IndexError(f"agent {k} is not in this fleet of {len(self.hosts)}")
        return self._agents[self.hosts[k - 1]]

    def _agent_at(self, host: str) -> _Agent:
        try:
            return self._agents[host]
        except KeyError:
            raise KeyError(f"no simulated agent at {host}") from None

    # --- time ---

    def _iso(self, at: float) -> str:
        """Trio time as ISO-8601 UTC wall time, anchored at the first request."""
        if self._anchor is None:
            self._anchor = (datetime.now(UTC), trio.current_time())
        wall, base = self._anchor
        stamp = wall + timedelta(seconds=at - base)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    # --- the protocol ---

    def _create(self, agent: _Agent, request: DispatchRequest) -> _Task:
        task = agent.tasks.get(request.task_id)
        if task is not None:
            return task
        low, high = agent.behaviour.apply_time
        duration = random.Random(f"{agent.seed}:{agent.generation}:{request.task_id}").uniform(
            low, high
        )
        now = trio.current_time()
        self._iso(now)
        task = _Task(
            request=request,
            created=now,
            started=now + duration * PENDING_FRACTION,
            finished=now + duration,
            last_error=agent.behaviour.fail,
        )
        agent.tasks[request.task_id] = task
        return task

    def _state(self, task: _Task) -> TaskState:
        now = trio.current_time()
        if now < task.started:
            status = TaskStatus.PENDING
        elif now < task.finished:
            status = TaskStatus.RUNNING
        elif task.last_error is not None:
            status = TaskStatus.FAILED
        else:
            status = TaskStatus.SUCCESS
        return TaskState(
            task_id=task.request.task_id,
            type=task.request.type,
            status=status,
            last_error=task.last_error if status is TaskStatus.FAILED else None,
            created_at=self._iso(task.created),
            started_at=self._iso(task.started) if now >= task.started else None,
            finished_at=self._iso(task.finished) if status.terminal else None,
        )

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI: both endpoints of every agent of the fleet."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        server = scope.get("server")
        host = str(server[0]) if server else ""
        body = await _read_body(receive)
        agent = self._agents.get(host)
        if agent is None:
            await self._answer(send, 404, envelope(CODE_NOT_FOUND, f"no agent at {host}"))
            return
        if body is None:
            await self._answer(send, 413, envelope(CODE_PARAMETER_INVALID, "body too large"))
            return

        method, path = scope["method"], scope["path"]
        dispatch, problem = self._received(agent, method, path, body)
        if agent.behaviour.hang:
            await _wait_disconnect(receive)
            return
        if agent.behaviour.delay:
            await trio.sleep(agent.behaviour.delay)
        # The agent may have changed (a restart, a new behaviour) during the delay.
        behaviour = agent.behaviour
        answer = partial(self._answer, send, shape=behaviour)
        answer_raw = partial(self._answer_raw, send, shape=behaviour)

        if behaviour.http_status is not None:
            status = behaviour.http_status
            code = CODE_INTERNAL if status >= 500 else CODE_PARAMETER_INVALID
            await answer(status, envelope(code, f"simulated failure (HTTP {status})"))
        elif behaviour.body is not None:
            await answer_raw(200, behaviour.body)
        elif behaviour.garbage:
            await answer_raw(200, GARBAGE)
        else:
            status, content = self._protocol_answer(agent, method, path, dispatch, problem)
            await answer(status, content)

    def _received(
        self, agent: _Agent, method: str, path: str, body: bytes
    ) -> tuple[DispatchRequest | None, str | None]:
        """A request reaching ``agent``: a dispatch is counted and, unless the agent answers
        something else, creates its task. (the dispatch, or why it is not one)."""
        behaviour = agent.behaviour
        dispatch: DispatchRequest | None = None
        problem: str | None = None
        if path == DISPATCH_PATH and method == "POST":
            try:
                dispatch = DispatchRequest.from_json(json.loads(body))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                problem = f"invalid JSON: {error}"
            except PayloadError as error:
                problem = str(error)
            if dispatch is not None:
                agent.dispatches[dispatch.task_id] += 1
                agent.dispatch_log.append((trio.current_time(), dispatch.task_id))
                if (
                    behaviour.http_status is None
                    and not behaviour.garbage
                    and not behaviour.hang
                    and behaviour.body is None
                ):
                    self._create(agent, dispatch)
        return dispatch, problem

    def _protocol_answer(
        self,
        agent: _Agent,
        method: str,
        path: str,
        dispatch: DispatchRequest | None,
        problem: str | None,
    ) -> tuple[int, dict[str, Any]]:
        """What the agent answers by the protocol (HTTP status, envelope)."""
        if path == DISPATCH_PATH:
            if method != "POST":
                return 405, envelope(CODE_PARAMETER_INVALID, "use POST")
            if dispatch is None:
                return 400, envelope(CODE_PARAMETER_INVALID, problem or "invalid request")
            task = agent.tasks.get(dispatch.task_id) or self._create(agent, dispatch)
            ack = DispatchAck(task_id=dispatch.task_id, status=self._state(task).status)
            return 200, envelope(CODE_OK, "accepted", ack.to_json())
        if path.startswith(TASKS_PATH) and len(path) > len(TASKS_PATH):
            task_id = path[len(TASKS_PATH) :]
            known = agent.tasks.get(task_id)
            if method != "GET":
                return 405, envelope(CODE_PARAMETER_INVALID, "use GET")
            if known is None:
                return 404, envelope(CODE_NOT_FOUND, f"task {task_id} not found")
            data = self._state(known).to_json()
            if agent.behaviour.unknown_status:
                data["status"] = UNKNOWN_STATUS_WORD
            return 200, envelope(CODE_OK, "ok", data)
        return 404, envelope(CODE_NOT_FOUND, f"no endpoint {path}")

    def _answer_directly(
        self, host: str, method: str, path: str, body: bytes
    ) -> tuple[int, bytes] | None:
        """The answer of an agent that answers by the protocol alone, at once and whole (no
        delay, hang, shaped or substituted answer): what the app would send; None when the
        agent's behaviour needs the app."""
        agent = self._agents.get(host)
        if agent is None or not agent.behaviour.plain or len(body) > MAX_BODY_BYTES:
            return None
        dispatch, problem = self._received(agent, method, path, body)
        status, data = self._protocol_answer(agent, method, path, dispatch, problem)
        self.requests += 1
        return status, json.dumps(data).encode()

    async def _answer(
        self, send: Send, status: int, body: dict[str, Any], *, shape: Behaviour | None = None
    ) -> None:
        await self._answer_raw(send, status, json.dumps(body).encode(), shape=shape)

    async def _answer_raw(
        self, send: Send, status: int, content: bytes, *, shape: Behaviour | None = None
    ) -> None:
        """Answer ``content``, shaped (dripped, cut short) as ``shape`` says."""
        self.requests += 1
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                ],
            }
        )
        if shape is not None and shape.reset:
            # Half the body, then the app returns: the server closes the connection with
            # the answer incomplete.
            half = content[: len(content) // 2]
            await send({"type": "http.response.body", "body": half, "more_body": True})
            return
        if shape is not None and shape.drip:
            for offset in range(len(content)):
                await send(
                    {
                        "type": "http.response.body",
                        "body": content[offset : offset + 1],
                        "more_body": True,
                    }
                )
                await trio.sleep(shape.drip)
            content = b""
        await send({"type": "http.response.body", "body": content, "more_body": False})

    # --- the two forms ---

    def transport(self) -> httpx.AsyncBaseTransport:
        """The fleet as an in-process httpx transport (no sockets)."""
        return _FleetTransport(self)

    async def serve(
        self,
        certs_dir: str | Path,
        *,
        task_status: trio.TaskStatus[list[AgentAddress]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve every agent over HTTPS with mutual TLS until cancelled.

        ``certs_dir`` holds ``ca.crt``, ``agent.crt`` and ``agent.key`` (see agent.certs).
        Clients must present a certificate from that CA. Agents whose behaviour is ``refuse``
        are not bound at all, so connecting to them is refused by the kernel. Calls
        ``task_status.started`` with the addresses of the listening agents.
        """
        directory = Path(certs_dir)
        refusing = frozenset(h for h, a in self._agents.items() if a.behaviour.refuse)
        listening = [h for h in self.hosts if h not in refusing]
        if self.port == 0:
            for host in refusing:
                self._ports[host] = _closed_port(host)
        config = _AgentServerConfig(
            ca=str(directory / "ca.crt"),
            cert=str(directory / "agent.crt"),
            key=str(directory / "agent.key"),
        )
        config.bind = [_bind(host, self.port) for host in listening]
        self._served_refusing = refusing
        try:
            if not listening:  # every agent refuses: nothing to serve, nothing to bind
                task_status.started([])
                await trio.sleep_forever()
            # hypercorn types scopes as TypedDicts; the app reads them as plain mappings.
            app: Any = self.app
            async with trio.open_nursery() as nursery:
                binds: list[str] = await nursery.start(
                    partial(hypercorn_serve, app, config, mode="asgi")
                )
                for bind in binds:
                    host, _, port = bind.removeprefix("https://").rpartition(":")
                    self._ports[host.strip("[]")] = int(port)
                task_status.started([AgentAddress(h, self._ports[h]) for h in listening])
        finally:
            self._served_refusing = None


class _AgentServerConfig(HypercornConfig):
    """Hypercorn settings for the agents: client certificates verified against our CA only."""

    def __init__(self, *, ca: str, cert: str, key: str) -> None:
        super().__init__()
        self.certfile = cert
        self.keyfile = key
        self.ca_certs = ca
        self._agent_files = (cert, key, ca)
        self.verify_mode = ssl.CERT_REQUIRED
        self.loglevel = "WARNING"
        self.accesslog = None
        self.graceful_timeout = 1.0
        # Hypercorn closes a connection idle for this long, counted from the TLS handshake
        # too; its default of 5 s equals the daemon's keep-alive and, with thousands of
        # agents in this one process, is shorter than a busy moment between handshake and
        # request. Edge web servers keep connections longer (nginx: 75 s).
        self.keep_alive_timeout = AGENT_KEEP_ALIVE_SEC

    def create_ssl_context(self) -> ssl.SSLContext:
        # Hypercorn's default context also trusts the system's CAs for client certificates;
        # an agent accepts only certificates issued by the fleet's private CA.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_COMPRESSION
        context.set_alpn_protocols(["http/1.1"])
        cert, key, ca = self._agent_files
        context.load_cert_chain(certfile=cert, keyfile=key)
        context.load_verify_locations(cafile=ca)
        context.verify_mode = ssl.CERT_REQUIRED
        return context


class _FleetTransport(httpx.AsyncBaseTransport):
    """Routes each request to the agent its URL names; the fleet's app answers it."""

    def __init__(self, fleet: SimulatedFleet) -> None:
        self._fleet = fleet
        self._asgi = httpx.ASGITransport(app=fleet.app, client=("127.0.0.1", 40000))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        agent = self._fleet._agents.get(host)
        if agent is None or agent.behaviour.refuse or port != self._fleet.port:
            raise httpx.ConnectError(
                "[Errno 111] Connection refused", request=request
            ) from ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        if agent.behaviour.plain:
            # The app's answer without the ASGI round trip (a sixth of a large simulation's
            # CPU); like that round trip, it does not yield to other tasks.
            answered = self._fleet._answer_directly(
                host, request.method, request.url.path, await request.aread()
            )
            if answered is not None:
                status, content = answered
                return httpx.Response(
                    status,
                    headers=[
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(content)).encode()),
                    ],
                    stream=_Body(content),
                )
        return await self._asgi.handle_async_request(request)


class _Body(httpx.AsyncByteStream):
    """An answer's body in one piece, read as the app's would be (given as ``content``,
    httpx would also encode and read it once more up front)."""

    def __init__(self, content: bytes) -> None:
        self._content = content

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._content


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None when it exceeds MAX_BODY_BYTES."""
    chunks = bytearray()
    too_large = False
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        if not too_large:
            chunks += message.get("body", b"")
            too_large = len(chunks) > MAX_BODY_BYTES
        if not message.get("more_body", False):
            break
    return None if too_large else bytes(chunks)


async def _wait_disconnect(receive: Receive) -> None:
    """Never answer; return only once the client has gone (real sockets)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


FIXED_PORTS = (20000, 32767)
"""Where ``free_agent_port`` looks: below Linux's ephemeral range (32768-60999), so no
server bound to port 0 later takes a port the agents were given."""


def free_agent_port(count: int, first_host: str = "127.0.0.2") -> int:
    """A TCP port free on every one of ``count`` agent addresses from ``first_host``."""
    hosts = agent_hosts(count, first_host)
    for _ in range(100):
        port = random.randint(*FIXED_PORTS)
        try:
            for host in hosts:
                with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
                    probe.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {hosts[0]} ... {hosts[-1]}")


def _closed_port(host: str) -> int:
    """A port on ``host`` that nothing listens on: bound once by the kernel, then closed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port
