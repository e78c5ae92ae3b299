"""Double puppeting: what a Matrix user does from another client of their remote account
shows in Matrix as theirs, sent by the bridge acting as that Matrix user.

The bridge can act as a user of its own homeserver with the token of a second registration
(``bridge.double_puppet.as_token``), and as any user who gave it their access token with
``login matrix`` (kept encrypted, like network credentials). What it sends as a user carries
:data:`PUPPET_SOURCE` and, read receipts and typing having no content, is remembered here, so
that when the homeserver hands it back it is known as the bridge's own and never bridged back."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import aiohttp

from .db import LoginRow
from .matrix.homeserver import PUPPET_SOURCE, MatrixError

if TYPE_CHECKING:
    from .bridge import Bridge

NETWORK = "matrix"  # the login rows of access tokens given with ``login matrix``
_ECHO_SECONDS = 60.0  # how long a receipt or typing change the bridge made waits for its echo


class DoublePuppets:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.cfg = bridge.cfg.double_puppet
        self.log = bridge.log.getChild("double_puppet")
        self._known: dict[str, bool] = {}  # user id -> can act as them (checked once)
        self._receipts: dict[tuple[str, str, str], float] = {}
        self._typing: dict[tuple[str, str], tuple[bool, float]] = {}

    # --- who the bridge can act as ------------------------------------------------------

    def _local(self, user_id: str) -> bool:
        return user_id.split(":", 1)[-1] == self.bridge.cfg.domain

    async def can_act_as(self, user_id: str) -> bool:
        known = self._known.get(user_id)
        if known is not None:
            return known
        hs = self.bridge.hs
        able = False
        rows = await self.bridge.users.logins(user_id=user_id, network=NETWORK)
        if rows and self.cfg.allow_login:
            creds = self.bridge.credentials.open(rows[0].credentials)
            hs.set_puppet(
                user_id,
                str(creds["access_token"]),
                as_token=False,
                address=str(creds.get("homeserver") or hs.address),
            )
            able = True
        elif self.cfg.as_token and self._local(user_id):
            hs.set_puppet(user_id, self.cfg.as_token, as_token=True)
            able = True
        self._known[user_id] = able
        return able

    async def puppet(self, user_id: str, room_id: str | None) -> str | None:
        """``user_id`` when the bridge can speak as them in ``room_id`` (where they are):
        the bridge never joins a user to a room on its own."""
        if room_id is None or not await self.can_act_as(user_id):
            return None
        hs = self.bridge.hs
        if hs.is_joined(room_id, user_id):
            return user_id
        try:
            # Asked as the user: the bot is not in every portal (DMs opened by inviting a ghost).
            member = await hs.get_state(room_id, "m.room.member", user_id, as_user=user_id)
        except MatrixError as e:
            if e.errcode != "M_FORBIDDEN":
                raise
            return None  # not in the room
        if member and member.get("membership") == "join":
            hs.note_membership(room_id, user_id, "join")
            return user_id
        return None

    async def refused(self, user_id: str) -> bool:
        """The homeserver no longer takes the token the bridge acts as ``user_id`` with (the
        token was logged out, the second registration is gone): from now on the user's events
        are marked by the bot again, and the user (or the admin, in the log) is told. True when
        the bridge was acting as them, so the event can be shown again that way."""
        hs = self.bridge.hs
        if not hs.is_puppet(user_id):
            return False
        hs.drop_puppet(user_id)
        self._known[user_id] = False
        rows = await self.bridge.users.logins(user_id=user_id, network=NETWORK)
        for row in rows:
            await self.bridge.users.delete_login(row.network, row.login_id)
        if rows:
            await self.bridge.notify(
                user_id,
                "Your Matrix access token no longer works (was it logged out?): the bridge "
                "forgot it, and what you write from your other clients is shown by the bot, "
                "marked as yours. `login matrix <access token>` gives it a new one.",
            )
        else:
            self.log.error(
                "the homeserver refuses bridge.double_puppet.as_token for %s: is the "
                "double-puppet registration loaded? Shown by the bot instead",
                user_id,
            )
        return True

    # --- echoes -------------------------------------------------------------------------

    @staticmethod
    def is_echo(content: dict[str, Any]) -> bool:
        """An event the bridge sent as its user (only it marks them)."""
        return content.get(PUPPET_SOURCE) == "remote"

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, t in self._receipts.items() if now - t > _ECHO_SECONDS]:
            del self._receipts[key]
        for tkey in [k for k, (_, t) in self._typing.items() if now - t > _ECHO_SECONDS]:
            del self._typing[tkey]

    def sent_receipt(self, room_id: str, user_id: str, event_id: str) -> None:
        self._expire()
        self._receipts[(room_id, user_id, event_id)] = time.monotonic()

    def receipt_echo(self, room_id: str, user_id: str, event_id: str) -> bool:
        """A read receipt the bridge set for the user, seen once."""
        return self._receipts.pop((room_id, user_id, event_id), None) is not None

    def sent_typing(self, room_id: str, user_id: str, typing: bool) -> None:
        self._expire()
        self._typing[(room_id, user_id)] = (typing, time.monotonic())

    def typing_echo(self, room_id: str, user_id: str, typing: bool) -> bool:
        """A change of the user's typing state that the bridge made, seen once."""
        sent = self._typing.get((room_id, user_id))
        if sent is None or sent[0] != typing:
            return False
        del self._typing[(room_id, user_id)]
        return True

    # --- login matrix -------------------------------------------------------------------

    async def login(self, user_id: str, args: list[str]) -> str:
        if not self.cfg.allow_login:
            return "This bridge does not take Matrix access tokens (double puppeting is off)."
        if not args:
            return (
                "usage: login matrix <access token> [homeserver address]: the bridge then "
                "shows what you write from your other clients as yours."
            )
        token = args[0]
        address = args[1] if len(args) > 1 else await self._homeserver_of(user_id)
        if address is None:
            return (
                "Your homeserver's address could not be found: give it after the token, "
                "as in `login matrix <access token> https://matrix.example.org`."
            )
        whoami = await self._whoami(address, token)
        if whoami is None:
            return f"{address} did not accept this access token: nothing was stored."
        if whoami != user_id:
            return f"This access token is {whoami}'s, not yours: nothing was stored."
        await self.bridge.users.save_login(
            LoginRow(
                network=NETWORK,
                login_id=user_id,
                user_id=user_id,
                credentials=self.bridge.credentials.seal(
                    {"access_token": token, "homeserver": address}
                ),
                remote_name=user_id,
            )
        )
        self._known.pop(user_id, None)
        self.bridge.hs.drop_puppet(user_id)
        return (
            "Logged in to Matrix: what you write from your other clients now shows as yours. "
            "You may redact your command message: the token is stored encrypted."
        )

    async def logout(self, user_id: str) -> str:
        rows = await self.bridge.users.logins(user_id=user_id, network=NETWORK)
        for row in rows:
            await self.bridge.users.delete_login(row.network, row.login_id)
        self._known.pop(user_id, None)
        self.bridge.hs.drop_puppet(user_id)
        if not rows:
            return "You have no Matrix login."
        return "Logged out of Matrix: the bridge no longer acts as you with your token."

    async def _homeserver_of(self, user_id: str) -> str | None:
        server = user_id.split(":", 1)[-1]
        if server == self.bridge.cfg.domain:
            return self.bridge.hs.address
        try:
            async with self.bridge.hs.session.get(
                f"https://{server}/.well-known/matrix/client",
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                body = await resp.json(content_type=None) if resp.status == 200 else None
        except (aiohttp.ClientError, ValueError, TimeoutError):
            return None
        base = (
            (body or {}).get("m.homeserver", {}).get("base_url") if isinstance(body, dict) else None
        )
        return str(base).rstrip("/") if isinstance(base, str) else None

    async def _whoami(self, address: str, token: str) -> str | None:
        try:
            async with self.bridge.hs.session.get(
                f"{address.rstrip('/')}/_matrix/client/v3/account/whoami",
                headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                body = await resp.json(content_type=None) if resp.status == 200 else None
        except (aiohttp.ClientError, ValueError, TimeoutError):
            return None
        user = body.get("user_id") if isinstance(body, dict) else None
        return user if isinstance(user, str) else None
