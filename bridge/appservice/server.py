"""The homeserver -> appservice HTTP API (Matrix spec, "Application Service API").

Routes: transactions, user and room-alias queries, third-party lookups, ping, on both the
``/_matrix/app/v1`` paths and the legacy ones. Authentication follows the spec: no token is
401, a wrong token (or a header and query parameter that disagree) is 403 ``M_FORBIDDEN``,
compared in constant time. A transaction is acknowledged once its events are durably recorded.

Path parameters come decoded from aiohttp's router and are used as they are: decoding them
again would turn ``%2541`` (an alias's literal ``%41``) into ``A``. Requests that aiohttp
cannot parse get their 400 from it and one rate-limited line in the log, never a traceback:
anyone who reaches the port could otherwise fill the log.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

from ..crypto.base import RoomCrypto
from ..db import PendingEvent, TransactionStore
from ..matrix.txn import transaction_extras
from .request_log import RequestErrorLog


class AppserviceHandler(Protocol):
    async def handle_pending(self, events: list[PendingEvent]) -> None: ...

    def is_own_event(self, event: dict[str, Any]) -> bool: ...

    async def handle_own_events(self, events: list[dict[str, Any]]) -> None: ...

    async def handle_ephemeral(self, events: list[dict[str, Any]]) -> None: ...

    async def query_user(self, user_id: str) -> bool: ...

    async def query_alias(self, alias: str) -> bool: ...

    async def thirdparty_protocol(self, protocol: str) -> dict[str, Any] | None: ...

    async def thirdparty_location(
        self, protocol: str | None, fields: dict[str, str]
    ) -> list[dict[str, Any]]: ...

    async def thirdparty_user(
        self, protocol: str | None, fields: dict[str, str]
    ) -> list[dict[str, Any]]: ...


def _error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status)


class AppserviceServer:
    def __init__(
        self,
        hs_token: str,
        transactions: TransactionStore,
        handler: AppserviceHandler,
        log: logging.Logger,
    ) -> None:
        self.hs_token = hs_token.encode()
        self.transactions = transactions
        self.handler = handler
        self.log = log
        self.app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024 * 1024)
        self._runner: web.AppRunner | None = None
        # Called once per transaction accepted, True when it was a repeat (for metrics).
        self.on_transaction: Callable[[bool], None] = lambda replayed: None
        # Set when end-to-bridge encryption is on.
        self.crypto: RoomCrypto | None = None
        self._add_routes()

    def _add_routes(self) -> None:
        r = self.app.router
        # Every path parameter is the path's last part and takes all of it: aiohttp's default
        # pattern, ``[^{}/]+``, refuses the braces of an IRC channel's alias, and Synapse
        # leaves the ``/`` of an alias or user id unencoded.
        for prefix in ("/_matrix/app/v1", ""):
            r.add_put(prefix + "/transactions/{txn_id:.+}", self.put_transaction)
            r.add_get(prefix + "/users/{user_id:.+}", self.get_user)
            r.add_get(prefix + "/rooms/{alias:.+}", self.get_room)
        for prefix in ("/_matrix/app/v1", "/_matrix/app/unstable"):
            r.add_get(prefix + "/thirdparty/protocol/{protocol:.+}", self.get_protocol)
            r.add_get(prefix + "/thirdparty/location", self.get_location_reverse)
            r.add_get(prefix + "/thirdparty/location/{protocol:.+}", self.get_location)
            r.add_get(prefix + "/thirdparty/user", self.get_user_reverse)
            r.add_get(prefix + "/thirdparty/user/{protocol:.+}", self.get_tp_user)
        r.add_post("/_matrix/app/v1/ping", self.post_ping)
        r.add_get("/_matrix/mau/live", self.health)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPMethodNotAllowed:
            return _error(405, "M_UNRECOGNIZED", "Unsupported method")
        except web.HTTPNotFound:
            return _error(404, "M_UNRECOGNIZED", "Unrecognized request")
        except web.HTTPException:
            raise
        except Exception:
            self.log.exception("error handling %s %s", request.method, request.path)
            return _error(500, "M_UNKNOWN", "Internal error")

    # --- authentication ---

    def _check_auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        header_token = header[7:].strip() if header.lower().startswith("bearer ") else None
        query_token = request.query.get("access_token")
        if header_token is None and query_token is None:
            return _error(401, "M_UNAUTHORIZED", "Missing access token")
        given = [t for t in (header_token, query_token) if t is not None]
        if len(given) == 2 and not hmac.compare_digest(given[0].encode(), given[1].encode()):
            return _error(403, "M_FORBIDDEN", "Header and query access tokens differ")
        if not hmac.compare_digest(given[0].encode(), self.hs_token):
            return _error(403, "M_FORBIDDEN", "Invalid access token")
        return None

    async def _json_body(self, request: web.Request) -> tuple[Any, web.Response | None]:
        raw = await request.read()
        try:
            return json.loads(raw), None
        except (ValueError, UnicodeDecodeError):
            return None, _error(400, "M_NOT_JSON", "Body is not valid JSON")

    # --- routes ---

    async def put_transaction(self, request: web.Request) -> web.Response:
        if err := self._check_auth(request):
            return err
        body, err = await self._json_body(request)
        if err:
            return err
        if not isinstance(body, dict) or not isinstance(body.get("events", []), list):
            return _error(400, "M_BAD_JSON", "Body must be an object with an 'events' list")
        events = body.get("events", [])
        if any(not isinstance(e, dict) for e in events):
            return _error(400, "M_BAD_JSON", "Every event must be an object")
        ephemeral = body.get("ephemeral", body.get("de.sorunome.msc2409.ephemeral", []))
        if not isinstance(ephemeral, list):
            return _error(400, "M_BAD_JSON", "'ephemeral' must be a list")
        txn_id = request.match_info["txn_id"]
        extras = transaction_extras(body) if self.crypto is not None else None
        if extras is not None:
            # To-device messages are not idempotent (an Olm message decrypts once): a
            # transaction already handled is not handled again.
            if extras.to_device and await self.transactions.seen(txn_id):
                self.on_transaction(True)
                return web.json_response({})
            # Room keys arrive once, as to-device messages: stored before the transaction is
            # acknowledged, and before its events (which may need them) are handled. A failure
            # here answers 500, so the homeserver sends the transaction again.
            await self.crypto.handle_extras(extras)  # type: ignore[union-attr]
        # Events of the bridge's own users (echoes of what it sent) only update what it keeps
        # in memory: handled at once, never recorded (that would double the database work of
        # every bridged message).
        own = [e for e in events if self.handler.is_own_event(e)]
        if own:
            await self.handler.handle_own_events(own)
            events = [e for e in events if not self.handler.is_own_event(e)]
        if events:
            recorded = await self.transactions.record(txn_id, events)
            if recorded is None:
                self.log.debug("transaction %s already received", txn_id)
                self.on_transaction(True)
                return web.json_response({})
            # Durably recorded: from here on a crash loses nothing, so answer now and process.
            await self.handler.handle_pending(recorded)
        elif extras is not None and extras.to_device:
            await self.transactions.record(txn_id, [])  # its to-device messages are handled
        ephemeral_dicts = [e for e in ephemeral if isinstance(e, dict)]
        if ephemeral_dicts:
            await self.handler.handle_ephemeral(ephemeral_dicts)
        self.on_transaction(False)
        return web.json_response({})

    async def get_user(self, request: web.Request) -> web.Response:
        if err := self._check_auth(request):
            return err
        user_id = request.match_info["user_id"]
        if await self.handler.query_user(user_id):
            return web.json_response({})
        return _error(404, "M_NOT_FOUND", "No such user")

    async def get_room(self, request: web.Request) -> web.Response:
        if err := self._check_auth(request):
            return err
        alias = request.match_info["alias"]
        if await self.handler.query_alias(alias):
            return web.json_response({})
        return _error(404, "M_NOT_FOUND", "No such room")

    async def post_ping(self, request: web.Request) -> web.Response:
        if err := self._check_auth(request):
            return err
        body, err = await self._json_body(request)
        if err:
            return err
        if not isinstance(body, dict):
            return _error(400, "M_BAD_JSON", "Body must be an object")
        return web.json_response({})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def get_protocol(self, request: web.Request) -> web.Response:
        if err := self._check_auth(request):
            return err
        proto = await self.handler.thirdparty_protocol(request.match_info["protocol"])
        if proto is None:
            return _error(404, "M_NOT_FOUND", "No such protocol")
        return web.json_response(proto)

    def _fields(self, request: web.Request) -> dict[str, str]:
        return {k: v for k, v in request.query.items() if k != "access_token"}

    async def _list(self, items: list[dict[str, Any]], what: str) -> web.Response:
        if not items:
            return _error(404, "M_NOT_FOUND", f"No {what} found")
        return web.json_response(items)

    async def get_location(self, request: web.Request) -> web.Response:
        if err := self._check_auth(request):
            return err
        protocol = request.match_info["protocol"]
        if await self.handler.thirdparty_protocol(protocol) is None:
            return _error(404, "M_NOT_FOUND", "No such protocol")
        found = await self.handler.thirdparty_location(protocol, self._fields(request))
        return await self._list(found, "locations")

    async def get_location_reverse(self, request: web.Request) -> web.Response:
        if err := self._check_auth(request):
            return err
        found = await self.handler.thirdparty_location(None, self._fields(request))
        return await self._list(found, "locations")

    async def get_tp_user(self, request: web.Request) -> web.Response:
        if err := self._check_auth(request):
            return err
        protocol = request.match_info["protocol"]
        if await self.handler.thirdparty_protocol(protocol) is None:
            return _error(404, "M_NOT_FOUND", "No such protocol")
        found = await self.handler.thirdparty_user(protocol, self._fields(request))
        return await self._list(found, "users")

    async def get_user_reverse(self, request: web.Request) -> web.Response:
        if err := self._check_auth(request):
            return err
        found = await self.handler.thirdparty_user(None, self._fields(request))
        return await self._list(found, "users")

    # --- lifecycle ---

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(
            self.app, access_log=None, logger=RequestErrorLog(self.log.getChild("http"))
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.log.info("appservice API listening on %s:%d", host, port)

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
            self._runner = None
