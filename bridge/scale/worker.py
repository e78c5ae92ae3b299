"""``mimi-bridge -c config.yaml worker``: runs connectors and holds their connections.

A worker runs a connector while it holds the lease of the connector's main shard (the main
shard of its first network; see docs/scale-out.md, "Shards and leases"), loaded by the same
plugin loader as in single-process mode, against :class:`~.worker_api.WorkerAPI`. It answers
the operations of every shard of the connector's networks, each once per operation id.

A connector that declares :class:`~bridge.connector.capabilities.ShardedConnector` runs split
instead: every shard of its networks (the numbered ones and ``main``) is leased on its own,
and a worker holding any of them runs an instance told which (``set_scope``), answering the
operations of exactly those shards."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from bridge.config import BridgeConfig
from bridge.connector import (
    ConnectorError,
    MatrixUser,
    NetworkClient,
    NetworkConnector,
    NotSupported,
    PortalKey,
)
from bridge.connector.capabilities import (
    CommandRoom,
    ConnectionReporting,
    ExtraCommands,
    HttpRequest,
    HttpResponse,
    HttpRoute,
    HttpRoutes,
    RoomKeys,
    ShardedConnector,
    ShardScope,
)

from . import bus, codec
from .core_proxy import CLIENT_CAPS, CONNECTOR_CAPS
from .op_dedup import OpDedup, open_ops_bucket
from .op_requests import MOVED, OpRequests
from .shards import all_shards
from .subjects import (
    CLOSED_PREFIX,
    KEYS_PREFIX,
    OPS_PREFIX,
    SHARDS_BUCKET,
    STATES_PREFIX,
    main_shard,
    network_ops,
    op_subject,
)
from .worker_api import Publisher, WorkerAPI

STOP_FLUSH_S = 10.0
# A split connector's instance gaining shards reads the room keys again at most this often
# (seconds), and whenever it gains a main shard.
KEYS_AGAIN_S = 10.0
# An instance's answer to the metrics' question of its connections (the core waits 1 s).
STATES_TIMEOUT_S = 0.8

CONNECTOR_METHODS = {"resolve_portal", "resolve_ghost", "portal_opened", "portal_closed"}
CONNECTOR_METHODS |= {m for _, methods in CONNECTOR_CAPS.values() for m in methods}
CLIENT_METHODS = {"handle_matrix_message"}
CLIENT_METHODS |= {m for _, methods in CLIENT_CAPS.values() for m in methods}
# Reads: answered again on a retry (no effect on the network to guard).
READS = {"client_for", "relay_client", "resolve_portal", "resolve_ghost", "fetch_history"}
READS |= {"thirdparty_locations", "thirdparty_users", "connection_states", "open_dm"}
# Setting a room's key again has no further effect.
READS |= {"set_room_key"}


class Leases(Protocol):
    async def start(self) -> None: ...

    async def stop(self, release: bool = True) -> None: ...

    def owned(self) -> frozenset[str]: ...


LeasesFactory = Callable[..., Leases]


def default_leases(
    js: Any,
    worker_id: str,
    shards: Sequence[str],
    *,
    on_gain: Callable[[str], Awaitable[None]],
    on_lose: Callable[[str], Awaitable[None]],
    ttl: float = 15.0,
    renew_every: float = 5.0,
    claims_per_second: float = 10.0,
) -> Leases:
    from .leases import ShardLeases

    return ShardLeases(
        js,
        worker_id,
        shards,
        on_gain=on_gain,
        on_lose=on_lose,
        bucket=SHARDS_BUCKET,
        ttl=ttl,
        renew_every=renew_every,
        claims_per_second=claims_per_second,
    )


@dataclass
class Running:
    connector: NetworkConnector
    subscriptions: list[Subscription] = field(default_factory=list)
    routes: list[HttpRoute] = field(default_factory=list)
    # A ShardedConnector's instance: the shards it answers for here, each with its
    # subscription. None: the connector runs whole here.
    shards: dict[str, Subscription] | None = None

    @property
    def main(self) -> bool:
        """Whether the network's own part runs here (always, for a connector run whole)."""
        return self.shards is None or any(s.endswith(".main") for s in self.shards)


class Worker:
    def __init__(
        self,
        cfg: BridgeConfig,
        log: logging.Logger | None = None,
        leases_factory: LeasesFactory = default_leases,
    ) -> None:
        from bridge.bridge import Bridge

        assert cfg.scale.nats_url is not None
        self.cfg = cfg
        self.log = log or logging.getLogger("mimi.worker")
        self.worker_id = cfg.scale.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        # Never started: its stores and homeserver client serve the connectors' queries.
        self.helper = Bridge(cfg, self.log.getChild("api"))
        self.helper.scale = None  # its connectors are the real classes, never started
        self.leases_factory = leases_factory
        self.nc: Client | None = None
        self.leases: Leases | None = None
        self.publisher: Publisher | None = None
        scale = cfg.scale
        self.requests = OpRequests(
            None,
            self.log.getChild("core-api"),
            request_timeout_s=scale.request_timeout_s,
            unowned_notice_s=scale.unowned_notice_s,
        )
        self.dedup: OpDedup | None = None
        self.running: dict[str, Running] = {}  # connector name -> running here
        self._shard_to_connector: dict[str, str] = {}
        self._sharded: set[str] = set()  # connectors run split (ShardedConnector)
        self._keys_handed: dict[str, float] = {}  # split connector -> when keys were read
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self.gained_at: dict[str, float] = {}

    async def start(self) -> None:
        from bridge.db import open_database

        assert self.cfg.scale.nats_url is not None
        self.nc = await bus.connect(
            self.cfg.scale.nats_url, f"mimi-worker {self.worker_id}", self.log
        )
        self.helper.load_connectors()  # pure instances: namespaces and ghost ids
        self.helper._db = await open_database(
            self.cfg.database, self.log.getChild("db"), self.helper.connectors.values()
        )
        await self.helper.hs.open()
        self.helper.media_links.session = self.helper.hs.session
        js = self.nc.jetstream()
        await bus.ensure_events_stream(js)
        self.requests.nc = self.nc
        self.publisher = Publisher(js, self.log.getChild("publish"))
        self.publisher.start()
        self.dedup = OpDedup(
            await open_ops_bucket(js, self.cfg.scale.op_dedup_s), self.log.getChild("dedup")
        )
        for name, connector in self.helper.connectors.items():
            if isinstance(connector, ShardedConnector):
                self._sharded.add(name)
                for ns in connector.namespaces():
                    for shard in all_shards(ns.network):
                        self._shard_to_connector[shard] = name
            else:
                self._shard_to_connector[main_shard(connector.namespaces()[0].network)] = name
        if self._sharded:
            await self.nc.subscribe(f"{KEYS_PREFIX}.>", cb=self._on_room_key)
            await self.nc.subscribe(f"{CLOSED_PREFIX}.>", cb=self._on_portal_closed)
            await self.nc.subscribe(f"{STATES_PREFIX}.>", cb=self._on_states)
        scale = self.cfg.scale
        self.leases = self.leases_factory(
            js,
            self.worker_id,
            sorted(self._shard_to_connector),
            on_gain=self._gain,
            on_lose=self._lose,
            ttl=scale.lease_ttl_s,
            renew_every=scale.lease_renew_s,
            claims_per_second=scale.lease_claims_per_s,
        )
        await self.leases.start()
        self.log.info("worker %s started for %s", self.worker_id, ", ".join(self.helper.connectors))

    # --- leases -----------------------------------------------------------------------------

    async def _gain(self, shard: str) -> None:
        name = self._shard_to_connector.get(shard)
        if name is None:
            return
        async with self._lock:
            if name in self._sharded:
                await self._gain_sharded(name, shard)
                return
            if name in self.running:
                return
            assert self.nc is not None
            connector, routes = await self._instance(name)
            began = time.monotonic()
            await connector.start()
            running = Running(connector, routes=routes)
            for ns in connector.namespaces():
                running.subscriptions.append(
                    await self.nc.subscribe(network_ops(ns.network), cb=self._on_op)
                )
            self.running[name] = running
            self.gained_at[name] = time.monotonic()
            self.log.info(
                "connector %s started here (shard %s) in %.1f s",
                name,
                shard,
                time.monotonic() - began,
            )

    async def _instance(self, name: str) -> tuple[NetworkConnector, list[HttpRoute]]:
        """A new instance of the connector, not started, with its routes and room keys."""
        assert self.publisher is not None
        from bridge.connectors_loader import enabled_sections, load_connector_classes

        cls = load_connector_classes(self.cfg)[name]
        api = WorkerAPI(self.helper, self.publisher, self.requests)
        connector = cls(api, enabled_sections(self.cfg)[name])
        # Asked once, before start (the contract's rule).
        routes = connector.http_routes() if isinstance(connector, HttpRoutes) else []
        await self._hand_room_keys(connector)
        return connector, routes

    async def _gain_sharded(self, name: str, shard: str) -> None:
        """One more shard of a split connector: the instance hears of it before it answers
        the shard's operations (started with it, when it is the first shard here)."""
        assert self.nc is not None
        running = self.running.get(name)
        if running is not None and running.shards is not None and shard in running.shards:
            return
        if running is None:
            connector, routes = await self._instance(name)
            assert isinstance(connector, ShardedConnector)
            await connector.set_scope(ShardScope(frozenset({shard})))
            began = time.monotonic()
            await connector.start()
            running = Running(connector, routes=routes, shards={})
            self.running[name] = running
            self.gained_at[name] = time.monotonic()
            self.log.info(
                "connector %s started here (shard %s) in %.1f s",
                name,
                shard,
                time.monotonic() - began,
            )
        else:
            assert running.shards is not None and isinstance(running.connector, ShardedConnector)
            # Keys set since the instance started went to the main shard's instance: what
            # this one takes over joins with the current ones (read once per burst of gains).
            last = self._keys_handed.get(name, 0.0)
            if shard.endswith(".main") or time.monotonic() - last > KEYS_AGAIN_S:
                await self._hand_room_keys(running.connector)
                self._keys_handed[name] = time.monotonic()
            await running.connector.set_scope(ShardScope(frozenset({*running.shards, shard})))
        assert running.shards is not None
        running.shards[shard] = await self.nc.subscribe(op_subject(shard), cb=self._on_op)
        self.log.info("shard %s of %s held here (%d)", shard, name, len(running.shards))

    async def _lose_sharded(self, name: str, shard: str) -> None:
        """A shard of a split connector gone: nothing more is answered for it, then the
        instance lets its users go (and stops, with its last shard)."""
        running = self.running.get(name)
        if running is None or running.shards is None or shard not in running.shards:
            return
        await _unsubscribe(running.shards.pop(shard), self.log)
        self.log.info("shard %s of %s given up here (%d)", shard, name, len(running.shards))
        if self._stopping:  # every shard goes: no new scope for each, one stop
            for sub in running.shards.values():
                await _unsubscribe(sub, self.log)
            running.shards.clear()
        if running.shards:
            assert isinstance(running.connector, ShardedConnector)
            try:
                await running.connector.set_scope(ShardScope(frozenset(running.shards)))
            except Exception:
                self.log.exception("connector %s did not take its new scope", name)
            return
        del self.running[name]
        try:
            await running.connector.stop()
        except Exception:
            self.log.exception("connector %s did not stop cleanly", name)
        self.log.info("connector %s stopped here (shard %s lost)", name, shard)

    async def _hand_room_keys(self, connector: NetworkConnector) -> None:
        """The keys of keyed rooms (``join <network> <room> <key>``) before the connector
        starts, so that it rejoins them, as the core does in one process."""
        from bridge.actions import UserActions

        if not isinstance(connector, RoomKeys):
            return
        actions = UserActions(self.helper)
        networks = {ns.network for ns in connector.namespaces()}
        for portal in await self.helper.portal_store.all():
            if portal.key.network in networks and "room_key" in portal.metadata:
                key = actions.room_key_of(portal)
                if key is not None:
                    connector.set_room_key(portal.key, key)

    async def _on_room_key(self, msg: Msg) -> None:
        """A portal's new key, for the instance of a split connector here (whichever users it
        holds: their puppets join with it)."""
        try:
            told = codec.decode(msg.data)
            portal, key = told["portal"], told["key"]
            if not isinstance(portal, PortalKey) or not (key is None or isinstance(key, str)):
                raise codec.CodecError("not a portal and its key")
        except (codec.CodecError, KeyError, TypeError) as e:
            self.log.error("a malformed room key message on %s: %s", msg.subject, e)
            return
        running = self._split_instance(portal.network)
        if running is not None and isinstance(running.connector, RoomKeys):
            running.connector.set_room_key(portal, key)

    def _split_instance(self, network: str) -> Running | None:
        """The instance here of the split connector serving ``network``, if any."""
        running = self.running.get(self._shard_to_connector.get(main_shard(network)) or "")
        return running if running is not None and running.shards is not None else None

    async def _on_portal_closed(self, msg: Msg) -> None:
        """A portal closed: an instance of a split connector here without the main shard
        parts its own users from it (the main shard's instance is asked by the core)."""
        try:
            portal = codec.decode(msg.data)["portal"]
            if not isinstance(portal, PortalKey):
                raise codec.CodecError("not a portal")
        except (codec.CodecError, KeyError, TypeError) as e:
            self.log.error("a malformed portal message on %s: %s", msg.subject, e)
            return
        running = self._split_instance(portal.network)
        if running is None or main_shard(portal.network) in (running.shards or {}):
            return
        try:
            await running.connector.portal_closed(portal)
        except Exception:
            self.log.exception("connector %s failed closing %s", running.connector.name, portal)

    async def _on_states(self, msg: Msg) -> None:
        """The core's metrics ask a split connector's instances for their connections: this
        one's, with the shards of the network it holds (so the core knows when all answered)."""
        network = msg.subject.rsplit(".", 1)[-1]
        running = self._split_instance(network)
        if running is None or not running.shards or not msg.reply:
            return
        shards = [s for s in running.shards if s.rsplit(".", 1)[0] == network]
        if not shards or not isinstance(running.connector, ConnectionReporting):
            return
        try:
            found = await asyncio.wait_for(running.connector.connection_states(), STATES_TIMEOUT_S)
        except Exception:
            name = running.connector.name
            self.log.exception("connector %s did not report its connections", name)
            return
        states = [c for c in found if c.network == network]
        try:
            await msg.respond(codec.encode({"shards": shards, "states": states}))
        except NatsError as e:
            self.log.info("connections of %s not reported: %s", network, e)

    async def _lose(self, shard: str) -> None:
        name = self._shard_to_connector.get(shard)
        if name is None:
            return
        async with self._lock:
            if name in self._sharded:
                await self._lose_sharded(name, shard)
                return
            running = self.running.pop(name, None)
            if running is None:
                return
            for sub in running.subscriptions:
                await _unsubscribe(sub, self.log)
            try:
                await running.connector.stop()
            except Exception:
                self.log.exception("connector %s did not stop cleanly", name)
            self.log.info("connector %s stopped here (shard %s lost)", name, shard)

    # --- operations -------------------------------------------------------------------------

    async def _on_op(self, msg: Msg) -> None:
        # Each in its own task: a slow send must not hold other portals' operations (the core
        # sends one operation of a portal at a time, so order within a portal holds).
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        try:
            request = codec.decode(msg.data)
            if not isinstance(request, dict):
                raise codec.CodecError("not a request")
        except codec.CodecError as e:
            self.log.error("malformed operation on %s: %s", msg.subject, e)
            await msg.respond(codec.encode({"error": {"type": "internal", "message": str(e)}}))
            return
        shard = msg.subject[len(OPS_PREFIX) + 1 :]
        method = str(request.get("method"))
        op_id = str(request.get("op_id"))
        name = str(request.get("connector"))
        running = self.running.get(name)
        if name in self._sharded and (
            running is None or running.shards is None or shard not in running.shards
        ):
            # Given up since the request came: the worker holding it now answers the retry.
            await _respond(msg, {"error": {"type": MOVED, "message": f"{shard} moved"}}, self.log)
            return

        async def perform() -> bytes:
            return codec.encode(await self._perform(request))

        assert self.dedup is not None
        if method in READS:
            answer = await perform()
        else:
            answer = await self.dedup.run(shard, op_id, perform)
        try:
            await msg.respond(answer)
        except Exception as e:  # the core retries with the same id and gets the stored answer
            self.log.info("answer to %s lost: %s", method, e)

    async def _perform(self, request: dict[str, Any]) -> dict[str, Any]:
        name = str(request.get("connector"))
        method = str(request.get("method"))
        args = list(request.get("args") or [])
        running = self.running.get(name)
        try:
            if running is None:
                raise ConnectorError(f"the {name} connector is not running on this worker")
            if method == "http":
                result = await _http(running, *args)
            else:
                result = await self._dispatch(running.connector, request, method, args)
            return {"ok": result}
        except NotSupported as e:
            return {"error": {"type": "NotSupported", "message": str(e)}}
        except ConnectorError as e:
            return {"error": {"type": "ConnectorError", "message": str(e)}}
        except Exception as e:
            self.log.exception("%s.%s failed", name, method)
            return {"error": {"type": "internal", "message": f"{type(e).__name__} on a worker"}}

    async def _dispatch(
        self, connector: NetworkConnector, request: dict[str, Any], method: str, args: list[Any]
    ) -> Any:
        target = request.get("target")
        if target == "connector":
            if method == "client_for":
                client_for = await connector.client_for(args[0], args[1])
                return _client_answer(client_for, self.worker_id)
            if method == "relay_client":
                return _client_answer(await connector.relay_client(args[0]), self.worker_id)
            if method == "command":
                return await _run_command(connector, *args)
            if method == "set_room_key" and isinstance(connector, RoomKeys):
                connector.set_room_key(*args)  # synchronous in the contract
                return None
            if method not in CONNECTOR_METHODS or not hasattr(connector, method):
                raise ConnectorError(f"{connector.display_name} cannot do {method}")
            return await getattr(connector, method)(*args)
        user, portal = request.get("user"), request.get("portal")
        if not isinstance(portal, PortalKey):
            raise ConnectorError("an operation without its portal")
        client: NetworkClient | None
        if target == "client" and isinstance(user, MatrixUser):
            client = await connector.client_for(user, portal)
        else:
            client = await connector.relay_client(portal)
        if client is None:
            raise ConnectorError(f"nobody speaks for you on {connector.display_name} any more")
        if method not in CLIENT_METHODS or not hasattr(client, method):
            raise NotSupported(f"{connector.display_name} cannot carry this")
        return await getattr(client, method)(*args)

    # --- stop -------------------------------------------------------------------------------

    async def stop(self, release: bool = True) -> None:
        """Stop the connectors and give the leases back (``release``), so that another worker
        takes them over at once."""
        self._stopping = True
        if self.leases is not None:
            await self.leases.stop(release=release)
            self.leases = None
        for shard, name in list(self._shard_to_connector.items()):
            if name in self.running:
                await self._lose(shard)
        for name in list(self.running):  # shards a split connector still had (none, normally)
            running = self.running[name]
            for shard in list(running.shards or ()):
                await self._lose(shard)
        for task in list(self._tasks):
            task.cancel()
        if self.publisher is not None:
            await self.publisher.flush(STOP_FLUSH_S)
            await self.publisher.stop()
        if self.nc is not None:
            try:
                await self.nc.drain()
            except Exception:
                await self.nc.close()
            self.nc = None
        await self.helper.hs.close()
        if self.helper._db is not None:
            await self.helper._db.stop()
            self.helper._db = None


async def _respond(msg: Msg, answer: dict[str, Any], log: logging.Logger) -> None:
    try:
        await msg.respond(codec.encode(answer))
    except Exception as e:
        log.info("answer lost: %s", e)


async def _unsubscribe(sub: Subscription, log: logging.Logger) -> None:
    try:
        await sub.unsubscribe()
    except Exception as e:
        log.debug("unsubscribe: %s", e)


def _client_answer(client: NetworkClient | None, worker_id: str) -> dict[str, Any] | None:
    if client is None:
        return None
    names = [name for name, (protocol, _) in CLIENT_CAPS.items() if isinstance(client, protocol)]
    # Unique among the workers: a split connector's clients live on several.
    return {"handle": f"{worker_id}/{id(client):x}", "caps": names}


async def _http(running: Running, method: str, path: str, request: HttpRequest) -> HttpResponse:
    for route in running.routes:
        if route.method.upper() == method.upper() and route.path == path:
            return await route.handler(request)
    return HttpResponse(404, {"error": f"no route {method} {path} on this worker"})


async def _run_command(
    connector: NetworkConnector,
    name: str,
    user: MatrixUser,
    args: list[str],
    room: CommandRoom | None,
) -> str:
    if not isinstance(connector, ExtraCommands):
        raise ConnectorError(f"{connector.display_name} has no commands")
    for command in connector.commands():
        if command.name != name:
            continue
        if command.room_handler is not None and room is not None:
            return await command.room_handler(user, args, room)
        if command.handler is not None:
            return await command.handler(user, args)
    raise ConnectorError(f"{connector.display_name} has no command {name!r}")


async def run_worker(cfg: BridgeConfig) -> int:
    """The worker process: run until SIGTERM or SIGINT, then hand the shards over."""
    import signal

    log = logging.getLogger("mimi.worker")
    worker = Worker(cfg, log)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    from bridge.db import DatabaseUnavailable

    try:
        await worker.start()
        await stop.wait()
        log.info("stopping")
        return 0
    except (bus.BusUnavailable, DatabaseUnavailable) as e:
        log.error("cannot start: %s", e)
        return 1
    except Exception:
        log.exception("the worker failed")
        return 1
    finally:
        await worker.stop()
