"""The provisioning API: what the management-room commands do, over HTTP, for web pages and
integrations. Documented in docs/provisioning.yaml.

Every route runs the same code as its command (:mod:`bridge.actions`) under the same
permission level. A caller is a Matrix user, proved one of two ways:

- an OpenID token from the user's homeserver, as ``Authorization: Bearer <token>``: a web page
  acts for the user who gave it the token, no secret shared;
- the configured shared secret, as ``Authorization: Bearer <secret>`` with ``?user_id=``: a
  trusted integration names the user.

Errors are JSON ``{errcode, error}``. Bad input is a 4xx saying what is wrong; a homeserver
failure is a 502. Responses carry CORS headers so a page on another origin can call the API
(the credentials are tokens, not cookies).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..actions import LoginView, Refused, UserActions, allowed
from ..config import ProvisioningConfig
from ..connector import ConnectorError, MatrixUser, NetworkConnector
from ..connector.capabilities import (
    Backfilling,
    DirectMessaging,
    ExtraCommands,
    LoginCapable,
    Plumbing,
    ThirdPartyLookup,
)
from ..db import Portal
from ..matrix.homeserver import MatrixError
from .openid import OpenIDVerifier, TokenUnknown, VerifierUnavailable

if TYPE_CHECKING:
    from ..bridge import Bridge

LOGIN_FLOW_SECONDS = 600.0
MAX_LOGIN_FLOWS = 1000
MAX_ID_LENGTH = 255
MAX_ARGUMENTS = 32
_USER_ID = re.compile(r"^@[\x21-\x39\x3b-\x7e]+:[A-Za-z0-9.\-\[\]:]+$")
_ROOM_ID = re.compile(r"^![\x21-\x7e]+$")
_ALIAS = re.compile(r"^#[\x21-\x39\x3b-\x7e]+:[A-Za-z0-9.\-\[\]:]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
CAPABILITIES: dict[str, type] = {
    "login": LoginCapable,
    "direct_messages": DirectMessaging,
    "plumbing": Plumbing,
    "backfill": Backfilling,
    "thirdparty_lookup": ThirdPartyLookup,
    "commands": ExtraCommands,
}
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}


class ApiError(Exception):
    def __init__(self, status: int, errcode: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.errcode = errcode


def _error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status, headers=CORS)


_REFUSAL_STATUS = {
    "forbidden": (403, "M_FORBIDDEN"),
    "not_found": (404, "M_NOT_FOUND"),
    "conflict": (409, "M_CONFLICT"),
    "invalid": (400, "M_INVALID_PARAM"),
}


@dataclass(slots=True)
class Call:
    user: MatrixUser
    body: dict[str, Any]


Handler = Callable[[Call], Awaitable[dict[str, Any]]]


@dataclass(slots=True)
class LoginFlow:
    flow_id: str
    user_id: str
    connector: str
    step: str
    expires: float


@dataclass(slots=True)
class LoginFlows:
    """Logins started and not finished yet, per user; they expire."""

    flows: dict[str, LoginFlow] = field(default_factory=dict)

    def start(self, user_id: str, connector: str) -> LoginFlow:
        now = time.monotonic()
        for fid in [f for f, flow in self.flows.items() if flow.expires <= now]:
            del self.flows[fid]
        if len(self.flows) >= MAX_LOGIN_FLOWS:
            oldest = min(self.flows.values(), key=lambda f: f.expires)
            del self.flows[oldest.flow_id]
        flow = LoginFlow(
            secrets.token_urlsafe(18), user_id, connector, "arguments", now + LOGIN_FLOW_SECONDS
        )
        self.flows[flow.flow_id] = flow
        return flow

    def get(self, flow_id: str, user_id: str) -> LoginFlow | None:
        flow = self.flows.get(flow_id)
        if flow is None or flow.user_id != user_id or flow.expires <= time.monotonic():
            return None
        return flow

    def finish(self, flow: LoginFlow) -> None:
        self.flows.pop(flow.flow_id, None)


# --- request bodies -----------------------------------------------------------------------


def _string(body: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError(400, "M_MISSING_PARAM", f"{key} is missing")
        return None
    if not isinstance(value, str):
        raise ApiError(400, "M_BAD_JSON", f"{key} must be a string")
    if not value or len(value) > MAX_ID_LENGTH or _CONTROL.search(value):
        raise ApiError(
            400,
            "M_INVALID_PARAM",
            f"{key} must be 1 to {MAX_ID_LENGTH} characters without control characters",
        )
    return value


def _required(body: dict[str, Any], key: str) -> str:
    value = _string(body, key)
    assert value is not None
    return value


def _room(body: dict[str, Any], key: str) -> str:
    value = _required(body, key)
    if not (_ROOM_ID.match(value) or _ALIAS.match(value)):
        raise ApiError(
            400, "M_INVALID_PARAM", f"{key} must be a room id (!...) or an alias (#...:server)"
        )
    return value


def _arguments(body: dict[str, Any]) -> list[str]:
    value = body.get("arguments", [])
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise ApiError(400, "M_BAD_JSON", "arguments must be a list of strings")
    if len(value) > MAX_ARGUMENTS or any(len(a) > 4096 for a in value):
        raise ApiError(400, "M_INVALID_PARAM", "too many or too long arguments")
    if any("\x00" in a for a in value):
        raise ApiError(400, "M_INVALID_PARAM", "arguments must not hold NUL characters")
    return list(value)


# --- the API ------------------------------------------------------------------------------


class ProvisioningAPI:
    def __init__(self, bridge: Bridge, cfg: ProvisioningConfig, log: logging.Logger) -> None:
        self.bridge = bridge
        self.cfg = cfg
        self.log = log
        self.actions = UserActions(bridge)
        self.flows = LoginFlows()
        self.secret = cfg.secret.encode() if cfg.secret else None
        self.openid = OpenIDVerifier(
            bridge.cfg.hs_address, bridge.cfg.domain, bridge.hs.session, log.getChild("openid")
        )

    def add_routes(self, app: web.Application) -> None:
        base = self.cfg.prefix + "/v1"
        routes: list[tuple[str, str, Handler, str]] = [
            ("GET", "/whoami", self.whoami, "ping"),
            ("GET", "/networks", self.networks, "help"),
            ("GET", "/logins", self.logins, "list"),
            ("POST", "/logins/start", self.login_start, "login"),
            ("POST", "/logins/finish", self.login_finish, "login"),
            ("POST", "/logout", self.logout, "logout"),
            ("GET", "/portals", self.portals, "list"),
            ("POST", "/portals/join", self.join, "join"),
            ("POST", "/portals/link", self.link, "link"),
            ("POST", "/portals/unlink", self.unlink, "unlink"),
        ]
        for method, path, handler, command in routes:
            app.router.add_route(method, base + path, self._endpoint(handler, command))
        app.router.add_route("OPTIONS", base + "/{tail:.*}", self.preflight)
        if self.secret is None:
            self.log.info("provisioning API on %s: OpenID tokens only (no shared secret)", base)
        else:
            self.log.info("provisioning API on %s", base)

    async def preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=CORS)

    def _endpoint(self, handler: Handler, command: str) -> Any:
        level = self.bridge.commands.commands[command].level

        async def serve(request: web.Request) -> web.Response:
            try:
                user = await self._caller(request)
                if not allowed(user, level):
                    raise ApiError(
                        403,
                        "M_FORBIDDEN",
                        f"`{command}` needs the `{level}` permission; you have"
                        f" `{user.permission}`.",
                    )
                body = await self._body(request)
                result = await handler(Call(user, body))
            except ApiError as e:
                return _error(e.status, e.errcode, str(e))
            except Refused as e:
                status, errcode = _REFUSAL_STATUS[e.kind]
                return _error(status, errcode, str(e))
            except MatrixError as e:
                return _matrix_error(e)
            except ConnectorError as e:
                return _error(400, "M_INVALID_PARAM", str(e))
            return web.json_response(result, headers=CORS)

        return serve

    # --- who is calling ---

    async def _caller(self, request: web.Request) -> MatrixUser:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401, "M_MISSING_TOKEN", "Send Authorization: Bearer <OpenID token or secret>"
            )
        named = request.query.get("user_id")
        if self.secret is not None and hmac.compare_digest(token.encode(), self.secret):
            if named is None:
                raise ApiError(400, "M_MISSING_PARAM", "user_id is missing")
            user_id = named
        else:
            try:
                user_id = await self.openid.user_of(token)
            except TokenUnknown:
                raise ApiError(403, "M_UNKNOWN_TOKEN", "Unknown or expired token") from None
            except VerifierUnavailable as e:
                self.log.warning("OpenID token not checked: %s", e)
                raise ApiError(502, "M_UNKNOWN", f"The token could not be checked: {e}") from e
            if named is not None and named != user_id:
                raise ApiError(403, "M_FORBIDDEN", "The token belongs to another user")
        if len(user_id) > MAX_ID_LENGTH or not _USER_ID.match(user_id):
            raise ApiError(400, "M_INVALID_PARAM", "user_id must be a Matrix user id")
        if self.bridge.is_bridge_user(user_id):
            raise ApiError(403, "M_FORBIDDEN", "The bridge's own users cannot be provisioned")
        if self.bridge.permission_of(user_id) is None:
            raise ApiError(403, "M_FORBIDDEN", "You may not use this bridge.")
        try:
            return await self.bridge.matrix_user(user_id)
        except ConnectorError as e:
            raise ApiError(404, "M_NOT_FOUND", str(e)) from e

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if request.method != "POST":
            return {}
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "M_NOT_JSON", "The body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "M_BAD_JSON", "The body must be a JSON object")
        return body

    # --- lookups shared by routes ---

    def _network(self, name: str) -> str:
        try:
            return self.actions.network_id(name)
        except ConnectorError as e:
            known = name in self.bridge.networks or name in self.bridge.connectors
            raise ApiError(
                400 if known else 404, "M_INVALID_PARAM" if known else "M_NOT_FOUND", str(e)
            ) from e

    async def _room_id(self, room: str) -> str:
        try:
            return await self.actions.room_id(room)
        except ConnectorError as e:
            raise ApiError(404, "M_NOT_FOUND", str(e)) from e

    def _portal(self, portal: Portal) -> dict[str, Any]:
        return {
            "network": portal.key.network,
            "remote_id": portal.key.remote_id,
            "room_id": portal.room_id,
            "alias": None if portal.is_direct else self.bridge.alias_of(portal.key),
            "name": portal.name,
            "plumbed": portal.plumbed,
        }

    @staticmethod
    def _login(view: LoginView, connection: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "network": view.network,
            "login_id": view.login_id,
            "remote_name": view.remote_name,
            "state": view.state,
        }
        if connection:
            st = view.connection
            # Unix time in milliseconds the connection came up, went down or failed.
            out["since"] = int(st.since * 1000) if st is not None else None
            out["reason"] = (st.reason or None) if st is not None else None
        return out

    def _network_info(self, connector: NetworkConnector, network: str, desc: str) -> dict[str, Any]:
        caps = [name for name, proto in CAPABILITIES.items() if isinstance(connector, proto)]
        return {
            "id": network,
            "connector": connector.name,
            "display_name": connector.display_name,
            "description": desc,
            "capabilities": caps,
            "login_help": connector.login_help if isinstance(connector, LoginCapable) else None,
        }

    # --- routes ---

    async def whoami(self, call: Call) -> dict[str, Any]:
        return {"user_id": call.user.user_id, "permission": call.user.permission}

    async def networks(self, call: Call) -> dict[str, Any]:
        return {
            "networks": [
                self._network_info(connector, network, ns.description)
                for network, (connector, ns) in sorted(self.bridge.networks.items())
            ]
        }

    async def logins(self, call: Call) -> dict[str, Any]:
        return {"logins": [self._login(v) for v in await self.actions.login_views(call.user)]}

    async def login_start(self, call: Call) -> dict[str, Any]:
        connector = self.actions.login_connector(_required(call.body, "network"))
        assert isinstance(connector, LoginCapable)
        flow = self.flows.start(call.user.user_id, connector.name)
        return {
            "flow_id": flow.flow_id,
            "network": connector.name,
            "expires_in_ms": int(LOGIN_FLOW_SECONDS * 1000),
            "step": {
                "id": flow.step,
                "type": "arguments",
                "instructions": connector.login_help,
            },
        }

    async def login_finish(self, call: Call) -> dict[str, Any]:
        flow_id = _required(call.body, "flow_id")
        step = _string(call.body, "step_id", required=False)
        args = _arguments(call.body)
        flow = self.flows.get(flow_id, call.user.user_id)
        if flow is None:
            raise ApiError(404, "M_NOT_FOUND", "No such login flow (it may have expired)")
        if step is not None and step != flow.step:
            raise ApiError(400, "M_INVALID_PARAM", f"This flow is at step {flow.step!r}")
        connector = self.actions.login_connector(flow.connector)
        try:
            result = await self.actions.login(call.user, connector, args)
        except ConnectorError as e:
            # The flow stays open: the user may correct the arguments.
            raise ApiError(400, "M_INVALID_PARAM", str(e)) from e
        self.flows.finish(flow)
        # The login as stored; its connection's state is for ``GET /logins``.
        view = LoginView(connector.name, result.login_id, result.remote_name, "ok", None)
        return {
            "login": self._login(view, connection=False),
            "message": result.message
            or f"Logged in to {connector.display_name} as {result.login_id}.",
        }

    async def logout(self, call: Call) -> dict[str, Any]:
        connector = self.actions.connector_named(_required(call.body, "network"))
        login_id = _string(call.body, "login_id", required=False)
        gone = await self.actions.logout(call.user, connector, login_id)
        return {"network": connector.name, "logged_out": gone}

    async def portals(self, call: Call) -> dict[str, Any]:
        return {"portals": [self._portal(p) for p in await self.actions.portals(call.user)]}

    async def join(self, call: Call) -> dict[str, Any]:
        network = self._network(_required(call.body, "network"))
        remote_id = _required(call.body, "remote_id")
        portal = await self.actions.join(call.user, network, remote_id)
        return {"portal": self._portal(portal)}

    async def link(self, call: Call) -> dict[str, Any]:
        network = self._network(_required(call.body, "network"))
        remote_id = _required(call.body, "remote_id")
        room_id = await self._room_id(_room(call.body, "room"))
        try:
            linked = await self.actions.link(call.user, network, remote_id, room_id)
        except ConnectorError as e:
            # The network refused this user the link (Plumbing.link).
            raise ApiError(403, "M_FORBIDDEN", str(e)) from e
        return {"portal": self._portal(linked.portal), "note": linked.note or None}

    async def unlink(self, call: Call) -> dict[str, Any]:
        room_id = await self._room_id(_room(call.body, "room"))
        portal = await self.actions.unlink(call.user, room_id)
        return {"portal": self._portal(portal)}


def _matrix_error(e: MatrixError) -> web.Response:
    if e.status == 403 or e.errcode == "M_FORBIDDEN":
        return _error(403, "M_FORBIDDEN", f"The homeserver refused: {e}")
    if e.status == 404 or e.errcode == "M_NOT_FOUND":
        return _error(404, "M_NOT_FOUND", f"The homeserver found nothing: {e}")
    if e.status == 400:
        return _error(400, "M_INVALID_PARAM", f"The homeserver refused the request: {e}")
    return _error(502, "M_UNKNOWN", f"The homeserver failed: {e}")
