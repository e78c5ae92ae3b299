"""The core's connectors in scale-out mode: proxies that implement the connector contract by
asking the worker that holds the shard.

The real connector class is instantiated on the core too, never started: the contract's
synchronous parts (namespaces, localparts, the third-party protocol, command names) are pure
functions of the config and are answered locally. Every asynchronous call crosses the bus.
A proxy has exactly the capabilities the real connector declares, and a client proxy those
the worker's real client declares, so the core tells users what a network cannot carry just
as in single-process mode."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.connector import (
    ChatInfo,
    ConnectorCommand,
    ConnectorError,
    GhostInfo,
    Login,
    MatrixEvent,
    MatrixUser,
    Namespace,
    NetworkClient,
    NetworkConnector,
    PortalKey,
    RemoteConnection,
)
from bridge.connector import capabilities as caps
from bridge.connector.capabilities import CommandRoom

from .op_requests import OpRequests, Policy, Unreachable
from .shards import all_shards, shard_of
from .subjects import closed_subject, event_op_id, keys_subject, states_subject

# capability name -> (protocol, its async methods)
CLIENT_CAPS: dict[str, tuple[type, tuple[str, ...]]] = {
    "EditHandling": (caps.EditHandling, ("handle_matrix_edit",)),
    "RedactionHandling": (caps.RedactionHandling, ("handle_matrix_redaction",)),
    "ReactionHandling": (
        caps.ReactionHandling,
        ("handle_matrix_reaction", "handle_matrix_reaction_remove"),
    ),
    "TypingHandling": (caps.TypingHandling, ("handle_matrix_typing",)),
    "ReceiptHandling": (caps.ReceiptHandling, ("handle_matrix_receipt",)),
    "MembershipHandling": (caps.MembershipHandling, ("handle_matrix_membership",)),
    "PowerLevelHandling": (caps.PowerLevelHandling, ("handle_matrix_power_level",)),
    "RoomMetaHandling": (caps.RoomMetaHandling, ("handle_matrix_room_meta",)),
    "AccessHandling": (caps.AccessHandling, ("handle_matrix_access",)),
    "ProfileHandling": (caps.ProfileHandling, ("handle_matrix_profile",)),
    "PresenceHandling": (caps.PresenceHandling, ("handle_matrix_presence",)),
}

# Connector capabilities forwarded as they are (their synchronous parts answered locally).
CONNECTOR_CAPS: dict[str, tuple[type, tuple[str, ...]]] = {
    "LoginCapable": (caps.LoginCapable, ("login", "logout")),
    "DirectMessaging": (caps.DirectMessaging, ("open_dm",)),
    "Plumbing": (caps.Plumbing, ("link",)),
    "LinkConsent": (caps.LinkConsent, ("request_link",)),
    "Backfilling": (caps.Backfilling, ("fetch_history",)),
    "ThirdPartyLookup": (caps.ThirdPartyLookup, ("thirdparty_locations", "thirdparty_users")),
    "ConnectionReporting": (caps.ConnectionReporting, ("connection_states",)),
}

# Best effort: one try, never holding a queue (the MIMI requirements let these fail).
ONCE = {"handle_matrix_typing", "handle_matrix_receipt", "handle_matrix_presence"}
ONCE |= {"connection_states"}
# Someone waits for the answer (the homeserver's query, a user's command): bounded.
BOUNDED = {"resolve_portal", "resolve_ghost", "login", "logout", "fetch_history"}
BOUNDED |= {"thirdparty_locations", "thirdparty_users", "open_dm", "link", "command", "http"}
BOUNDED |= {"set_room_key"}

# Connector calls about one Matrix user: asked on the user's shard (where a ShardedConnector's
# instance holding the user runs; a connector run whole answers every shard of its network).
# A connector command is a user's too: it acts on their own connection.
USER_SCOPED = {"login", "logout", "open_dm", "command"}

# How long a metrics scrape waits for the instances of a split connector to say what they
# hold (less when every shard was answered for).
STATES_WAIT_S = 1.0

DELAY_NOTICE = (
    "The bridge's connection to {network} is not available right now; your message waits and"
    " goes out as soon as it is back."
)


def _policy(method: str) -> Policy:
    if method in ONCE:
        return Policy.ONCE
    if method in BOUNDED:
        return Policy.BOUNDED
    return Policy.DURABLE


class ClientProxy(NetworkClient):
    """A worker's client for one Matrix user (or the relay bot) in one portal."""

    def __init__(
        self, connector: ConnectorProxy, user: MatrixUser | None, portal: PortalKey
    ) -> None:
        self._connector = connector
        self._user = user  # None: the relay client
        self._portal = portal

    async def _call(self, method: str, args: list[Any]) -> Any:
        return await self._connector.client_call(self._user, self._portal, method, args)

    async def handle_matrix_message(self, msg: Any) -> Any:
        return await self._call("handle_matrix_message", [msg])


def _forwarding_method(method: str) -> Any:
    async def forward(self: ClientProxy, *args: Any) -> Any:
        return await self._call(method, list(args))

    forward.__name__ = method
    return forward


def _connector_method(method: str) -> Any:
    async def forward(self: ConnectorProxy, *args: Any) -> Any:
        return await self.connector_call(method, list(args))

    forward.__name__ = method
    return forward


_client_classes: dict[frozenset[str], type[ClientProxy]] = {}


def client_class(names: frozenset[str]) -> type[ClientProxy]:
    """A ClientProxy subclass with exactly these capabilities (one class per set, cached: a
    class is no mutable state)."""
    cls = _client_classes.get(names)
    if cls is None:
        methods = {m: _forwarding_method(m) for n in names for m in CLIENT_CAPS[n][1]}
        cls = type("ClientProxy[" + ",".join(sorted(names)) + "]", (ClientProxy,), methods)
        _client_classes[names] = cls
    return cls


class ConnectorProxy(NetworkConnector):
    """Built by :func:`proxy_for`, per connector."""

    name = "proxy"
    display_name = "proxy"

    def __init__(self, local: NetworkConnector, requests: OpRequests) -> None:
        super().__init__(local.bridge, local.config)
        self.local = local
        self.requests = requests
        # A worker's client handle, with whom and where it was asked for -> its proxy: the
        # core tells clients apart by identity (presence goes once per client), so one real
        # client has one proxy per portal. The handle alone is not enough: it names an object
        # by its address, which a client made per call may share with an earlier, freed one
        # (another user's, or the same user's in another portal).
        self._clients: dict[tuple[str, str | None, PortalKey, frozenset[str]], ClientProxy] = {}
        # Keys given with ``join``, on their way to the worker (RoomKeys), per portal.
        self._key_sends: dict[PortalKey, asyncio.Task[None]] = {}

    # --- the bus --------------------------------------------------------------------------

    def _network(self, portal: PortalKey | None) -> str:
        if portal is not None:
            return portal.network
        return self.local.namespaces()[0].network

    async def _ask(
        self,
        shard: str,
        request: dict[str, Any],
        method: str,
        args: list[Any],
        notify_user: str | None,
        portal: PortalKey | None,
    ) -> Any:
        event = next((a for a in args if isinstance(a, MatrixEvent)), None)
        op_id = event_op_id(method, event.event_id) if event is not None else None

        async def notify() -> None:
            if notify_user is not None:
                network = self.local.display_name
                await self.bridge.notify(notify_user, DELAY_NOTICE.format(network=network), portal)

        return await self.requests.call(
            shard,
            {**request, "connector": self.name, "method": method, "args": args},
            op_id=op_id,
            policy=_policy(method),
            notify=notify if notify_user else None,
        )

    async def connector_call(self, method: str, args: list[Any]) -> Any:
        portal = next((a for a in args if isinstance(a, PortalKey)), None)
        network = next((a for a in args if isinstance(a, str)), None) if portal is None else None
        net = portal.network if portal else (network or self._network(None))
        if net not in {ns.network for ns in self.local.namespaces()}:
            net = self._network(None)
        user = next((a for a in args if isinstance(a, MatrixUser)), None)
        await self._key_sent(portal)
        owner: str | None = None
        if method in USER_SCOPED:
            login = next((a for a in args if isinstance(a, Login)), None)
            owner = user.user_id if user else (login.user_id if login else None)
            if login is not None and login.network in {ns.network for ns in self.namespaces()}:
                net = login.network
        return await self._ask(
            shard_of(net, owner),
            {"target": "connector"},
            method,
            args,
            user.user_id if user else None,
            portal,
        )

    async def client_call(
        self, user: MatrixUser | None, portal: PortalKey, method: str, args: list[Any]
    ) -> Any:
        event = next((a for a in args if isinstance(a, MatrixEvent)), None)
        tell = event.sender.user_id if event is not None else (user.user_id if user else None)
        await self._key_sent(portal)
        return await self._ask(
            shard_of(portal.network, user.user_id if user else None),
            {"target": "client" if user else "relay", "user": user, "portal": portal},
            method,
            args,
            tell,
            portal,
        )

    def _client(self, answer: Any, user: MatrixUser | None, portal: PortalKey) -> Any:
        if answer is None:
            return None
        names = frozenset(n for n in answer["caps"] if n in CLIENT_CAPS)
        key = (str(answer["handle"]), user.user_id if user else None, portal, names)
        proxy = self._clients.get(key)
        if proxy is None:
            proxy = self._clients[key] = client_class(names)(self, user, portal)
        return proxy

    async def _split_connection_states(self) -> list[RemoteConnection]:
        """A split connector's connections, every instance's (each answers with its own):
        until every shard of each network was answered for, or STATES_WAIT_S."""
        networks = [ns.network for ns in self.local.namespaces()]
        answers = await asyncio.gather(*(self._states_of(net) for net in networks))
        return [c for found in answers for c in found]

    async def _states_of(self, network: str) -> list[RemoteConnection]:
        wanted = set(all_shards(network))

        def held(answers: list[Any]) -> set[str]:
            return {s for a in answers if isinstance(a, dict) for s in a.get("shards", ())}

        answers = await self.requests.gather(
            states_subject(network),
            {"network": network},
            lambda answers: wanted <= held(answers),
            STATES_WAIT_S,
        )
        return [
            c
            for a in answers
            if isinstance(a, dict) and isinstance(a.get("states"), list)
            for c in a["states"]
            if isinstance(c, RemoteConnection) and c.network == network
        ]

    # --- lifecycle: the workers' business --------------------------------------------------

    async def start(self) -> None:
        """Nothing runs here: the workers hold the connections."""

    async def stop(self) -> None:
        """The workers keep their connections through a core restart."""
        for task in self._key_sends.values():
            task.cancel()
        await asyncio.gather(*self._key_sends.values(), return_exceptions=True)
        self._key_sends.clear()

    # --- RoomKeys: the key goes to the worker before anything else about its portal -----

    def set_room_key(self, portal: PortalKey, key: str | None) -> None:
        """Sent at once (a ``join`` of an open portal makes no other call), in order after
        the portal's previous key; the portal's next operation waits for it, so that the
        worker's connector joins with it. The core stores the key too: a worker that takes
        the network over later reads it from the database."""
        previous = self._key_sends.get(portal)
        task = asyncio.create_task(self._send_room_key(previous, portal, key))
        self._key_sends[portal] = task
        task.add_done_callback(lambda t: self._key_done(portal, t))

    async def _send_room_key(
        self, previous: asyncio.Task[None] | None, portal: PortalKey, key: str | None
    ) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        # Every instance of a split connector first (the bus keeps this order towards each
        # worker), then the main shard's, which the portal's next operation waits for.
        await self.requests.publish(keys_subject(portal.network), {"portal": portal, "key": key})
        await self._ask(
            shard_of(portal.network, None),
            {"target": "connector"},
            "set_room_key",
            [portal, key],
            None,
            portal,
        )

    def _key_done(self, portal: PortalKey, task: asyncio.Task[None]) -> None:
        if self._key_sends.get(portal) is task:
            del self._key_sends[portal]
        if not task.cancelled() and (e := task.exception()) is not None:
            self.bridge.log.warning("the key of %s did not reach a worker: %s", portal, e)

    async def _key_sent(self, portal: PortalKey | None) -> None:
        """Wait until the portal's key, if one is on its way, reached the worker (or could
        not: the operation then goes as it would have without a key)."""
        task = self._key_sends.get(portal) if portal is not None else None
        if task is not None:
            await asyncio.gather(asyncio.shield(task), return_exceptions=True)

    # --- identifiers: pure, answered by the local instance ---------------------------------

    def namespaces(self) -> list[Namespace]:
        return self.local.namespaces()

    def ghost_localpart(self, network: str, remote_user_id: str) -> str:
        return self.local.ghost_localpart(network, remote_user_id)

    def parse_ghost_localpart(self, network: str, localpart: str) -> str | None:
        return self.local.parse_ghost_localpart(network, localpart)

    def alias_localpart(self, network: str, remote_room_id: str) -> str:
        return self.local.alias_localpart(network, remote_room_id)

    def parse_alias_localpart(self, network: str, localpart: str) -> str | None:
        return self.local.parse_alias_localpart(network, localpart)

    def canonical_room_id(self, network: str, remote_room_id: str) -> str | None:
        return self.local.canonical_room_id(network, remote_room_id)

    # --- the required async part ------------------------------------------------------------

    async def resolve_portal(self, portal: PortalKey, user: MatrixUser | None) -> ChatInfo | None:
        result: ChatInfo | None = await self.connector_call("resolve_portal", [portal, user])
        return result

    async def resolve_ghost(self, network: str, remote_user_id: str) -> GhostInfo | None:
        result: GhostInfo | None = await self.connector_call(
            "resolve_ghost", [network, remote_user_id]
        )
        return result

    async def portal_opened(self, portal: PortalKey) -> None:
        await self.connector_call("portal_opened", [portal])

    async def portal_closed(self, portal: PortalKey) -> None:
        # A split connector's other instances hold puppets in the portal too.
        await self.requests.publish(closed_subject(portal.network), {"portal": portal})
        await self.connector_call("portal_closed", [portal])

    async def client_for(self, user: MatrixUser, portal: PortalKey) -> NetworkClient | None:
        await self._key_sent(portal)
        answer = await self._ask(
            shard_of(portal.network, user.user_id),
            {"target": "connector"},
            "client_for",
            [user, portal],
            user.user_id,
            portal,
        )
        client: NetworkClient | None = self._client(answer, user, portal)
        return client

    async def relay_client(self, portal: PortalKey) -> NetworkClient | None:
        answer = await self.connector_call("relay_client", [portal])
        client: NetworkClient | None = self._client(answer, None, portal)
        return client

    # --- synchronous parts of capabilities --------------------------------------------------

    def thirdparty_protocol(self) -> caps.ThirdPartyProtocol:
        assert isinstance(self.local, caps.ThirdPartyLookup)
        return self.local.thirdparty_protocol()

    def commands(self) -> list[ConnectorCommand]:
        """The local instance's commands, each run by the worker."""
        assert isinstance(self.local, caps.ExtraCommands)
        out = []
        for command in self.local.commands():
            out.append(
                ConnectorCommand(
                    name=command.name,
                    help=command.help,
                    admin_only=command.admin_only,
                    args=command.args,
                    handler=self._command_handler(command.name)
                    if command.handler is not None and command.room_handler is None
                    else None,
                    room_handler=self._room_command_handler(command.name)
                    if command.room_handler is not None
                    else None,
                )
            )
        return out

    def http_routes(self) -> list[caps.HttpRoute]:
        """The local instance's routes (served by the core), each answered by the worker."""
        assert isinstance(self.local, caps.HttpRoutes)
        return [
            caps.HttpRoute(r.method, r.path, self._http_handler(r.method, r.path), r.max_body)
            for r in self.local.http_routes()
        ]

    def _http_handler(self, method: str, path: str) -> Any:
        async def run(request: caps.HttpRequest) -> caps.HttpResponse:
            try:
                response = await self.connector_call("http", [method, path, request])
            except Unreachable as e:
                return caps.HttpResponse(503, {"error": str(e)})
            except ConnectorError as e:
                return caps.HttpResponse(502, {"error": str(e)})
            if not isinstance(response, caps.HttpResponse):
                return caps.HttpResponse(502, {"error": "the worker gave no HTTP answer"})
            return response

        return run

    def _command_handler(self, name: str) -> Any:
        async def run(user: MatrixUser, args: list[str]) -> str:
            return str(await self.connector_call("command", [name, user, args, None]))

        return run

    def _room_command_handler(self, name: str) -> Any:
        async def run(user: MatrixUser, args: list[str], room: CommandRoom) -> str:
            return str(await self.connector_call("command", [name, user, args, room]))

        return run


def proxy_for(local: NetworkConnector, requests: OpRequests) -> ConnectorProxy:
    """A proxy of ``local``'s class: its name, tables and capabilities."""
    cls = type(local)
    bases: list[type] = [ConnectorProxy]
    attrs: dict[str, Any] = {
        "name": cls.name,
        "display_name": cls.display_name,
        "example_config": cls.example_config,
        "migrations": cls.migrations,
    }
    for _name, (protocol, methods) in CONNECTOR_CAPS.items():
        if isinstance(local, protocol):
            attrs.update({m: _connector_method(m) for m in methods})
    if isinstance(local, caps.LoginCapable):
        attrs["login_help"] = property(lambda self: self.local.login_help)
    if isinstance(local, caps.ConnectionReporting) and isinstance(local, caps.ShardedConnector):
        attrs["connection_states"] = ConnectorProxy._split_connection_states
    if not isinstance(local, caps.RoomKeys):
        attrs["set_room_key"] = None
    if not isinstance(local, caps.ThirdPartyLookup):
        attrs["thirdparty_protocol"] = None
    if not isinstance(local, caps.ExtraCommands):
        attrs["commands"] = None
    if not isinstance(local, caps.HttpRoutes):
        attrs["http_routes"] = None
    proxy_cls = type(f"{cls.__name__}Proxy", tuple(bases), attrs)
    proxy: ConnectorProxy = proxy_cls(local, requests)
    return proxy


__all__ = ["ClientProxy", "ConnectorProxy", "Unreachable", "client_class", "proxy_for"]
