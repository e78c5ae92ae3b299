"""Client-server calls to the homeserver, as the bot or as any ghost (identity assertion).

Plain aiohttp requests (the appservice API's identity assertion is a query parameter), with
the few caches the bridge needs (registered ghosts, joined members) and explicit transaction
ids. mautrix's client API is not loaded for this: it is a few MiB of memory the bridge does
not need unless end-to-bridge encryption is on."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from ..crypto.base import RoomCrypto
from ..deferred import load_deferred_certificates

# Marks what the bridge sends as a Matrix user themselves (double puppeting): when the event
# comes back from the homeserver it is known as the bridge's, not the user's, and not bridged.
PUPPET_SOURCE = "org.mimi.source"


# Answers retried (with the request's retries) as a homeserver restarting or behind a proxy.
_RETRY_STATUS = frozenset((502, 503, 504))
_FIRST_BACKOFF_S = 4.0


class MatrixError(Exception):
    def __init__(self, errcode: str, message: str, status: int = 0) -> None:
        super().__init__(f"{errcode}: {message}")
        self.errcode = errcode
        self.status = status


class HomeserverUnreachable(ConnectionError):
    """No answer from the homeserver (refused, reset, timed out), retries included."""


def quote_segment(segment: str) -> str:
    """One path segment of a client-server API URL, percent-encoded."""
    return quote(segment, safe="")


_q = quote_segment


@lru_cache(maxsize=1024)
def _send_prefix(room_id: str, event_type: str) -> str:
    """The path of a send up to its transaction id: the same few rooms and types every
    message, quoted once rather than per message."""
    return f"/_matrix/client/v3/rooms/{_q(room_id)}/send/{_q(event_type)}/"


def _error(status: int, body: Any) -> MatrixError:
    if isinstance(body, dict):
        errcode = body.get("errcode")
        message = body.get("error")
        return MatrixError(
            errcode if isinstance(errcode, str) and errcode else "M_UNKNOWN",
            message if isinstance(message, str) else json.dumps(body)[:200],
            status,
        )
    return MatrixError("M_UNKNOWN", f"HTTP {status}", status)


class Homeserver:
    def __init__(
        self,
        address: str,
        domain: str,
        as_token: str,
        bot_mxid: str,
        log: logging.Logger,
    ) -> None:
        self.address = address
        self.domain = domain
        self.bot_mxid = bot_mxid
        self.as_token = as_token
        self.log = log
        self._session: aiohttp.ClientSession | None = None
        self._registered: set[str] = set()
        self._joined: set[tuple[str, str]] = set()
        # Called after each request: (HTTP method, seconds, errcode or None); for metrics.
        self.observe: Callable[[str, float, str | None], None] = lambda m, s, e: None
        # Matrix users the bridge acts as (double puppeting): user id -> (token, whether it is
        # an appservice token that needs ?user_id= or the user's own access token, the
        # address of the user's homeserver).
        self._puppets: dict[str, tuple[str, bool, str]] = {}
        # Set when end-to-bridge encryption is on: sends into encrypted rooms go through it.
        self.crypto: RoomCrypto | None = None
        self._json_headers = {
            "Authorization": f"Bearer {as_token}",
            "Content-Type": "application/json",
        }

    async def open(self) -> None:
        if self.address.startswith("https:"):
            # The CA certificates aiohttp's contexts left for their first use (bridge/deferred.py),
            # read now in a thread rather than at the first request on the event loop.
            await asyncio.to_thread(load_deferred_certificates)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100),
            headers={"User-Agent": "mimi-bridge"},
        )

    async def close(self) -> None:
        if self._session:
            await self._session.close()
        self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Homeserver.open() first"
        return self._session

    def set_puppet(
        self, user_id: str, token: str, *, as_token: bool, address: str | None = None
    ) -> None:
        """Requests ``as_user=user_id`` go with ``token`` from now on (double puppeting), to
        ``address`` (the user's homeserver; default: the bridge's)."""
        self._puppets[user_id] = (token, as_token, (address or self.address).rstrip("/"))

    def _base(self, user: str | None) -> str:
        puppet = self._puppets.get(user) if user else None
        return puppet[2] if puppet else self.address.rstrip("/")

    def drop_puppet(self, user_id: str) -> None:
        self._puppets.pop(user_id, None)

    def is_puppet(self, user_id: str | None) -> bool:
        return user_id is not None and user_id in self._puppets

    def _auth(self, user: str | None) -> tuple[dict[str, str], dict[str, str]]:
        """Headers and query parameters of a raw request as ``user``."""
        puppet = self._puppets.get(user) if user else None
        if puppet is None:
            return {"Authorization": f"Bearer {self.as_token}"}, {"user_id": user or self.bot_mxid}
        token, as_token, _ = puppet
        return {"Authorization": f"Bearer {token}"}, ({"user_id": str(user)} if as_token else {})

    async def request(
        self,
        method: Any,
        path: Any,
        content: Any = None,
        *,
        as_user: str | None = None,
        timestamp: int | None = None,
        query: dict[str, Any] | None = None,
        retries: int | None = None,
    ) -> dict[str, Any]:
        """One client-server API call as ``as_user`` (the bot by default): the answer's JSON
        object. ``path`` is quoted already (a string, or a mautrix path builder); connection
        failures and 502-504 answers are retried ``retries`` times (3), backing off from 4 s.
        Raises :class:`MatrixError` for an error answer, :class:`HomeserverUnreachable`."""
        verb = str(getattr(method, "value", method))
        route = str(path)
        url = URL(
            self._base(as_user) + (route if route.startswith("/") else "/" + route), encoded=True
        )
        headers, params = self._auth(as_user)
        if timestamp is not None and (not self.is_puppet(as_user) or "user_id" in params):
            params["ts"] = str(timestamp)
        for key, value in (query or {}).items():
            params[key] = str(value)
        data = None
        if content is not None:
            data = json.dumps(content)
            headers["Content-Type"] = "application/json"
        left = 3 if retries is None else retries
        backoff = _FIRST_BACKOFF_S
        while True:
            t0, errcode = time.monotonic(), None
            try:
                async with self.session.request(
                    verb, url, data=data, params=params, headers=headers
                ) as resp:
                    status = resp.status
                    try:
                        body = await resp.json(content_type=None)
                    except ValueError:
                        body = None
                if 200 <= status < 300:
                    return body if isinstance(body, dict) else {}
                err = _error(status, body)
                errcode = err.errcode
                if status not in _RETRY_STATUS or left <= 0:
                    raise err
                self.log.warning("%s %s: HTTP %d, retrying in %.0f s", verb, route, status, backoff)
            except (aiohttp.ClientError, TimeoutError) as e:
                errcode = "connection_error"
                if left <= 0:
                    raise HomeserverUnreachable(f"{verb} {route}: {e or type(e).__name__}") from e
                self.log.warning("%s %s failed (%s), retrying in %.0f s", verb, route, e, backoff)
            finally:
                self.observe(verb, time.monotonic() - t0, errcode)
            await asyncio.sleep(backoff)
            backoff *= 2
            left -= 1

    # --- server and appservice ----------------------------------------------------------

    async def versions(self) -> dict[str, Any]:
        return await self.request("GET", "/_matrix/client/versions", retries=0)

    async def ping(self, appservice_id: str, txn_id: str) -> int:
        resp = await self.request(
            "POST",
            f"/_matrix/client/v1/appservice/{_q(appservice_id)}/ping",
            {"transaction_id": txn_id},
            retries=0,
        )
        return int(resp.get("duration_ms", 0))

    # --- users --------------------------------------------------------------------------

    async def ensure_registered(self, user_id: str) -> None:
        if user_id in self._registered or user_id == self.bot_mxid or user_id in self._puppets:
            return
        localpart = user_id[1:].split(":", 1)[0]
        try:
            await self.request(
                "POST",
                "/_matrix/client/v3/register",
                {
                    "type": "m.login.application_service",
                    "username": localpart,
                    "inhibit_login": True,
                },
                query={"kind": "user"},
            )
        except MatrixError as e:
            if e.errcode != "M_USER_IN_USE":
                raise
        self._registered.add(user_id)

    async def set_displayname(self, user_id: str, name: str) -> None:
        await self.ensure_registered(user_id)
        await self.request(
            "PUT",
            f"/_matrix/client/v3/profile/{_q(user_id)}/displayname",
            {"displayname": name},
            as_user=user_id,
        )

    async def set_avatar(self, user_id: str, mxc: str) -> None:
        await self.ensure_registered(user_id)
        await self.request(
            "PUT",
            f"/_matrix/client/v3/profile/{_q(user_id)}/avatar_url",
            {"avatar_url": mxc},
            as_user=user_id,
        )

    async def profile(self, user_id: str) -> dict[str, Any] | None:
        """The user's profile; None when the homeserver knows no such user."""
        try:
            return await self.request("GET", f"/_matrix/client/v3/profile/{_q(user_id)}", retries=0)
        except MatrixError as e:
            if e.errcode == "M_NOT_FOUND" or e.status == 404:
                return None
            raise

    async def set_presence(self, user_id: str, presence: str, status: str | None) -> None:
        body: dict[str, Any] = {"presence": presence}
        if status:
            body["status_msg"] = status
        await self.request(
            "PUT", f"/_matrix/client/v3/presence/{_q(user_id)}/status", body, as_user=user_id
        )

    # --- rooms --------------------------------------------------------------------------

    async def create_room(self, body: dict[str, Any], as_user: str | None = None) -> str:
        if as_user:
            await self.ensure_registered(as_user)
        resp = await self.request("POST", "/_matrix/client/v3/createRoom", body, as_user=as_user)
        room_id = str(resp["room_id"])
        self._joined.add((room_id, as_user or self.bot_mxid))
        return room_id

    async def resolve_alias(self, alias: str) -> str | None:
        try:
            resp = await self.request("GET", f"/_matrix/client/v3/directory/room/{_q(alias)}")
        except MatrixError as e:
            if e.errcode == "M_NOT_FOUND":
                return None
            raise
        return str(resp["room_id"])

    async def set_listed(self, room_id: str, listed: bool) -> None:
        """Show the room in the homeserver's room directory, or take it out."""
        visibility = "public" if listed else "private"
        await self.request(
            "PUT",
            f"/_matrix/client/v3/directory/list/room/{_q(room_id)}",
            {"visibility": visibility},
        )

    async def create_alias(self, alias: str, room_id: str) -> None:
        await self.request(
            "PUT", f"/_matrix/client/v3/directory/room/{_q(alias)}", {"room_id": room_id}
        )

    def note_membership(self, room_id: str, user_id: str, membership: str) -> None:
        if membership == "join":
            self._joined.add((room_id, user_id))
        else:
            self._joined.discard((room_id, user_id))

    def is_joined(self, room_id: str, user_id: str) -> bool:
        return (room_id, user_id) in self._joined

    async def join(self, room_id: str, user_id: str | None = None) -> str:
        user = user_id or self.bot_mxid
        await self.ensure_registered(user)
        resp = await self.request(
            "POST", f"/_matrix/client/v3/join/{_q(room_id)}", {}, as_user=user
        )
        joined = str(resp.get("room_id", room_id))
        self._joined.add((joined, user))
        return joined

    async def ensure_joined(self, room_id: str, user_id: str) -> None:
        """Join ``user_id`` (a ghost), inviting it with the bot first when the room wants."""
        if (room_id, user_id) in self._joined:
            return
        try:
            await self.join(room_id, user_id)
        except MatrixError as e:
            if e.errcode not in ("M_FORBIDDEN", "M_BAD_STATE"):
                raise
            if e.errcode == "M_BAD_STATE":
                await self.unban(room_id, user_id)
            await self.invite(room_id, user_id)
            await self.join(room_id, user_id)

    async def invite(self, room_id: str, user_id: str, as_user: str | None = None) -> None:
        try:
            await self.request(
                "POST",
                f"/_matrix/client/v3/rooms/{_q(room_id)}/invite",
                {"user_id": user_id},
                as_user=as_user,
            )
        except MatrixError as e:
            # Already joined or invited: the goal is reached.
            if "already in the room" not in str(e) and "is already joined" not in str(e):
                raise

    async def leave(self, room_id: str, user_id: str | None = None, reason: str = "") -> None:
        body = {"reason": reason} if reason else {}
        try:
            await self.request(
                "POST", f"/_matrix/client/v3/rooms/{_q(room_id)}/leave", body, as_user=user_id
            )
        finally:
            self._joined.discard((room_id, user_id or self.bot_mxid))

    async def kick(
        self, room_id: str, user_id: str, reason: str = "", as_user: str | None = None
    ) -> None:
        await self.request(
            "POST",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/kick",
            {"user_id": user_id, "reason": reason},
            as_user=as_user,
        )
        self._joined.discard((room_id, user_id))

    async def ban(
        self, room_id: str, user_id: str, reason: str = "", as_user: str | None = None
    ) -> None:
        await self.request(
            "POST",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/ban",
            {"user_id": user_id, "reason": reason},
            as_user=as_user,
        )
        self._joined.discard((room_id, user_id))

    async def unban(self, room_id: str, user_id: str, as_user: str | None = None) -> None:
        await self.request(
            "POST",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/unban",
            {"user_id": user_id},
            as_user=as_user,
        )

    async def joined_members(self, room_id: str) -> dict[str, str]:
        resp = await self.request("GET", f"/_matrix/client/v3/rooms/{_q(room_id)}/joined_members")
        out = {}
        for uid, info in (resp.get("joined") or {}).items():
            out[uid] = (info or {}).get("display_name") or uid
            self._joined.add((room_id, uid))
        return out

    async def get_state(
        self, room_id: str, event_type: str, state_key: str = "", as_user: str | None = None
    ) -> dict[str, Any] | None:
        try:
            return await self.request(
                "GET",
                f"/_matrix/client/v3/rooms/{_q(room_id)}/state/{_q(event_type)}/{_q(state_key)}",
                as_user=as_user,
            )
        except MatrixError as e:
            if e.errcode == "M_NOT_FOUND":
                return None
            raise

    async def room_creators(self, room_id: str) -> list[str]:
        """Creators with unlimited power (room versions 12 and later), else nobody."""
        create = await self.request(
            "GET",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/state/m.room.create/",
            query={"format": "event"},
        )
        content = create.get("content") or {}
        version = str(content.get("room_version", "1"))
        if not version.isdigit() or int(version) < 12:
            return []
        extra = content.get("additional_creators") or []
        return [str(create.get("sender"))] + [str(u) for u in extra if isinstance(u, str)]

    # --- events -------------------------------------------------------------------------

    async def send(
        self,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        *,
        txn_id: str,
        as_user: str | None = None,
        timestamp: int | None = None,
    ) -> str:
        if self.is_puppet(as_user):
            content = {**content, PUPPET_SOURCE: "remote"}
        if self.crypto is not None and await self.crypto.is_encrypted(room_id, as_user):
            # Every sender's messages, the ghosts' too, are encrypted by the bot's device.
            content = await self.crypto.encrypt(room_id, event_type, content, as_user)
            event_type = "m.room.encrypted"
        path = _send_prefix(room_id, event_type) + _q(txn_id)
        resp = await self._put_once(path, content, as_user, timestamp)
        if resp is None:  # anything but success: the general way, with its retries and errors
            resp = await self.request(
                "PUT",
                f"/_matrix/client/v3/rooms/{_q(room_id)}/send/{_q(event_type)}/{_q(txn_id)}",
                content,
                as_user=as_user,
                timestamp=timestamp,
            )
        return str(resp["event_id"])

    async def _put_once(
        self, path: str, content: dict[str, Any], as_user: str | None, timestamp: int | None
    ) -> dict[str, Any] | None:
        """One PUT straight through aiohttp (the bridged messages' path: mautrix's request
        formats a log line of the whole content even when debug logging is off). None when the
        answer is not a 2xx JSON object; PUTs with a transaction id may be repeated."""
        headers, params = self._auth(as_user)
        if timestamp is not None and (not self.is_puppet(as_user) or "user_id" in params):
            params["ts"] = str(timestamp)
        t0, errcode = time.monotonic(), None
        try:
            async with self.session.put(
                URL(self._base(as_user) + path, encoded=True),
                data=json.dumps(content),
                params=params,
                headers={**self._json_headers, **headers},
            ) as resp:
                if not 200 <= resp.status < 300:
                    errcode = f"http_{resp.status}"
                    return None
                body = await resp.json()
        except (aiohttp.ClientError, ValueError, TimeoutError):
            errcode = "connection_error"
            return None
        finally:
            self.observe("PUT", time.monotonic() - t0, errcode)
        return body if isinstance(body, dict) and "event_id" in body else None

    async def send_state(
        self,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        state_key: str = "",
        as_user: str | None = None,
    ) -> str:
        resp = await self.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/state/{_q(event_type)}/{_q(state_key)}",
            content,
            as_user=as_user,
        )
        return str(resp["event_id"])

    async def redact(
        self,
        room_id: str,
        event_id: str,
        *,
        txn_id: str,
        as_user: str | None = None,
        reason: str | None = None,
    ) -> str:
        body: dict[str, Any] = {"reason": reason} if reason else {}
        if self.is_puppet(as_user):
            body[PUPPET_SOURCE] = "remote"
        resp = await self.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/redact/{_q(event_id)}/{_q(txn_id)}",
            body,
            as_user=as_user,
        )
        return str(resp.get("event_id", ""))

    async def typing(self, room_id: str, user_id: str, typing: bool, timeout_ms: int) -> None:
        body: dict[str, Any] = {"typing": typing}
        if typing:
            body["timeout"] = timeout_ms
        await self.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/typing/{_q(user_id)}",
            body,
            as_user=user_id,
        )

    async def receipt(self, room_id: str, event_id: str, user_id: str) -> None:
        await self.request(
            "POST",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/receipt/m.read/{_q(event_id)}",
            {},
            as_user=user_id,
        )

    async def get_event(self, room_id: str, event_id: str) -> dict[str, Any] | None:
        try:
            return await self.request(
                "GET", f"/_matrix/client/v3/rooms/{_q(room_id)}/event/{_q(event_id)}"
            )
        except MatrixError:
            return None

    # --- media --------------------------------------------------------------------------

    async def upload(
        self, data: bytes, mimetype: str, filename: str, as_user: str | None = None
    ) -> str:
        url = f"{self._base(as_user)}/_matrix/media/v3/upload?filename={quote(filename)}"
        headers, params = self._auth(as_user)
        if not as_user:
            params = {}
        async with self.session.post(
            url,
            data=data,
            params=params,
            headers={**headers, "Content-Type": mimetype},
        ) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200:
                raise MatrixError(body.get("errcode", "M_UNKNOWN"), str(body), resp.status)
            return str(body["content_uri"])

    async def download(self, mxc: str, max_bytes: int = 100 * 1024 * 1024) -> bytes:
        """Authenticated media (spec v1.11), following redirects."""
        if not mxc.startswith("mxc://"):
            raise MatrixError("M_INVALID_PARAM", f"not an mxc URI: {mxc}")
        server, _, media_id = mxc[6:].partition("/")
        url = f"{self.address}/_matrix/client/v1/media/download/{quote(server)}/{quote(media_id)}"
        async with self.session.get(
            url, headers={"Authorization": f"Bearer {self.as_token}"}
        ) as resp:
            if resp.status != 200:
                raise MatrixError("M_NOT_FOUND", f"media download failed: {resp.status}")
            data = await resp.content.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise MatrixError("M_TOO_LARGE", "media is larger than the bridge accepts")
            return data
