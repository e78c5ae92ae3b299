"""Per-Matrix-user IRC connections (puppets) of one network: creation with a nick from the
display name, nick collisions, credentials, the connection limit (least recently active idle
puppet quits), idle disconnect, and the index nick -> puppet the listener uses to recognise
its own puppets.

Every connection of a network shares one :class:`ConnectPacer`, so a bridge restart or a
netsplit reconnects at most ``connects_per_second`` puppets per second, after the bot, the
users who sent a message most recently first. With ``bind_prefix`` each puppet connects from
its user's own address (:mod:`.addresses`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .addresses import user_address
from .client import (
    ConnectionHandler,
    ConnectPacer,
    ConnParams,
    IRCConnection,
    NickRefused,
    NotConnected,
)
from .config import NetworkConfig
from .identd import IdentTable
from .ids import alternative_nick, fallback_nick, nick_for
from .protocol import Line, casefold

log = logging.getLogger("mimi.irc.puppets")


class LiveNicks(Protocol):
    """Where a network's puppets' current nicks are kept for the other instances."""

    def publish(self, user_id: str, nick: str) -> asyncio.Future[None]: ...

    def withdraw(self, user_id: str) -> asyncio.Future[None]: ...


class Puppet(ConnectionHandler):
    """A Matrix user's connection. Lines reach it only when they concern it (a private
    message, its own JOIN/NICK/KICK, errors): channel traffic is filtered in the client."""

    def __init__(self, pool: PuppetPool, user_id: str, display_name: str) -> None:
        self.pool = pool
        self.user_id = user_id
        self.display_name = display_name
        self.last_active = time.monotonic()
        # Wall-clock time of the user's last message through the bridge (0: none known):
        # the most recent reconnect first after a restart or an outage.
        self.last_message = pool.activity.get(user_id, 0.0)
        self.saved_message = self.last_message  # the time the database has
        self.custom_nick: str | None = None
        # The connector's client of this puppet, made once: the core tells clients apart by
        # identity (a presence change goes once per client, not once per channel).
        self.client: Any = None
        # A login in progress reports failures itself (the command's answer): no notice.
        self.quiet = False
        # The services account the server says this connection is logged into (900).
        self.account: str | None = None
        cfg = pool.cfg
        localpart = user_id[1:].split(":", 1)[0]
        username = nick_for(cfg.username_template, localpart, user_id, 10).lower()
        nick = nick_for(cfg.nick_template, display_name, user_id, 30)
        self.wanted_nick = nick
        params = ConnParams(
            host=cfg.host,
            port=cfg.port,
            ssl=cfg.ssl_context(),
            nick=nick,
            username=username.replace("[", "").replace("]", "") or "matrix",
            realname=cfg.realname_template.format(
                user_id=user_id, displayname=display_name, localpart=localpart
            ),
            flood_burst=cfg.flood_burst,
            flood_rate=cfg.flood_rate,
            reconnect_min=cfg.reconnect_min,
            reconnect_max=cfg.reconnect_max,
            queue_timeout=cfg.queue_timeout,
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout,
            register_timeout=cfg.register_timeout,
            bind_address=user_address(cfg.bind_prefix, user_id, cfg.bind_key)
            if cfg.bind_prefix is not None
            else cfg.bind_address,
            freebind=cfg.bind_prefix is not None,
            ident=pool.ident,
            auth=cfg.auth,
            nickserv=cfg.nickserv_nick,
            identify_template=cfg.nickserv_identify,
        )
        pool.apply_credentials(user_id, params)
        self.conn = IRCConnection(
            params, self, pacer=pool.pacer, listen_channels=False, name=f"{cfg.netid}/{nick}"
        )

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def sent_message(self) -> float:
        """The user sent a message through the bridge now; returns the time to keep."""
        self.touch()
        self.last_message = self.pool.activity[self.user_id] = time.time()
        return self.last_message

    def set_nick(self, nick: str) -> None:
        self.conn.params.nick = nick
        self.wanted_nick = nick

    async def follow_display_name(self, display_name: str) -> str | None:
        """The Matrix user's new display name: NICK to the nick template applied to it, a taken
        nick resolved as at connect (``alice[m]1``, ...). Nothing to do when the user chose a
        nick with ``irc nick``, or when the template gives the nick the puppet already wants
        (the core reports one change once per portal). Returns the nick asked for, or None."""
        self.display_name = display_name
        if self.pool.custom_nicks.get(self.user_id):
            return None
        conn = self.conn
        maxlen = min(30, conn.params.nicklen)
        nick = nick_for(self.pool.cfg.nick_template, display_name, self.user_id, maxlen)
        if self.pool.fold(nick) == self.pool.fold(self.wanted_nick):
            return None
        self.set_nick(nick)
        if not conn.registered:
            return nick  # taken at the next (re)connect
        attempt = 0
        while attempt <= 11 and self.wanted_nick == nick:  # else a newer change took over
            if attempt == 0:
                candidate = nick
            elif attempt <= 10:
                candidate = alternative_nick(nick, attempt, maxlen)
            else:
                candidate = fallback_nick(self.user_id)[:maxlen]
            if conn.fold(candidate) == conn.fold(conn.nick):
                break
            try:
                await conn.change_nick(candidate)
                break
            except NickRefused as e:
                if e.code in ("433", "436", "437"):
                    attempt += 1  # taken: the next alternative
                elif e.code == "432" and attempt < 11:
                    attempt = 11  # erroneous: the fallback nick
                else:
                    self.pool.on_notice(self, f"IRC refused your new nick {candidate}: {e}")
                    break
            except (NotConnected, ValueError):
                break  # disconnected or no answer: the next connect uses the new nick
        if self.wanted_nick == nick:
            conn.params.nick = nick  # a reconnect asks for it first again
        return nick

    # --- ConnectionHandler ---------------------------------------------------------------------

    def irc_registered(self, conn: IRCConnection) -> None:
        self.pool.index_nick(self, conn.nick)

    def irc_welcomed(self, conn: IRCConnection) -> Awaitable[None] | None:
        # Split across workers: the bot elsewhere must know the nick before it sees a line.
        live = self.pool.live
        return live.publish(self.user_id, conn.nick) if live is not None else None

    def irc_connect_rank(self, conn: IRCConnection) -> tuple[float, bool]:
        return -self.last_message, True  # after the bot, most recently active first

    def irc_casemapping(self, conn: IRCConnection) -> None:
        self.pool.set_casemapping(conn.casemapping)

    def irc_disconnected(self, conn: IRCConnection, reason: str) -> None:
        self.account = None
        if self.pool.live is not None:
            self.pool.live.withdraw(self.user_id)

    def irc_state(self, conn: IRCConnection, old: str, new: str) -> None:
        # Drops, refused logins and recoveries reach the user as state changes.
        self.pool.on_state(self, old, new)

    def irc_identify_failed(self, conn: IRCConnection, reason: str) -> None:
        # The connection stays up without the account: no state change says it.
        if not self.quiet:
            self.pool.on_identify_failed(self, reason)

    def irc_nick_taken(self, conn: IRCConnection, nick: str, attempt: int) -> str | None:
        if attempt > 10:
            return fallback_nick(self.user_id) + str(attempt)
        return alternative_nick(self.wanted_nick, attempt, conn.params.nicklen)

    def irc_line(self, conn: IRCConnection, line: Line) -> None:
        cmd = line.command
        if cmd == "900" and len(line.params) >= 3:  # RPL_LOGGEDIN <nick> <mask> <account>
            self.account = line.param(2)
        elif cmd == "901":  # RPL_LOGGEDOUT
            self.account = None
        if cmd in ("PRIVMSG", "NOTICE"):
            if len(line.params) < 2 or not line.params[1]:
                return  # broken line
            if conn.fold(line.nick) == conn.fold(conn.nick):
                return  # echo-message of our own line
            if not conn.is_channel(line.param(0).lstrip("".join(conn.prefixes))):
                self.pool.on_private(self, line)
        elif cmd == "NICK":
            self.pool.index_nick(self, conn.nick)  # the client has already updated conn.nick
            if self.pool.live is not None:
                self.pool.live.publish(self.user_id, conn.nick)
        elif cmd == "KICK" and conn.fold(line.param(1)) == conn.fold(conn.nick):
            self.pool.on_notice(
                self, f"You were kicked from {line.param(0)} by {line.nick}: {line.param(2)}"
            )
        elif cmd in ("404", "482", "442", "401", "406", "478", "489"):
            self.pool.on_notice(self, f"IRC: {line.param(1)}: {line.param(-1)}")


class PuppetPool:
    def __init__(
        self,
        cfg: NetworkConfig,
        pacer: ConnectPacer,
        *,
        on_private: Callable[[Puppet, Line], None],
        on_notice: Callable[[Puppet, str], None],
        on_state: Callable[[Puppet, str, str], None] | None = None,
        on_identify_failed: Callable[[Puppet, str], None] | None = None,
        ident: IdentTable | None = None,
    ) -> None:
        self.cfg = cfg
        self.pacer = pacer
        self.ident = ident
        self.puppets: dict[str, Puppet] = {}
        self.by_nick: dict[str, Puppet] = {}
        self.credentials: dict[str, dict[str, Any]] = {}
        # TLS contexts presenting the client certificate of a certfp login, by user id.
        self.client_contexts: dict[str, ssl.SSLContext] = {}
        self.autocmds: dict[str, list[tuple[str, ...]]] = {}
        self.custom_nicks: dict[str, str] = {}
        self.activity: dict[str, float] = {}  # user id -> time of their last message
        self.on_private = on_private
        self.on_notice = on_notice
        self.on_state = on_state or (lambda puppet, old, new: None)
        self.on_identify_failed = on_identify_failed or (lambda puppet, reason: None)
        self._idle_task: asyncio.Task[None] | None = None
        # The server's mapping (its ISUPPORT), not the config's form of ids: the listener
        # looks nicks up folded the server's way.
        self.casemapping = "rfc1459"
        # Split across scale-out workers: the users whose puppets are this instance's, and
        # where their nicks are told to the other instances.
        self.owns: Callable[[str], bool] = lambda user_id: True
        self.live: LiveNicks | None = None

    def fold(self, nick: str) -> str:
        return casefold(nick, self.casemapping)

    def set_casemapping(self, mapping: str) -> None:
        """The server announced ``mapping``: the nick index is re-folded with it."""
        if mapping == self.casemapping:
            return
        self.casemapping = mapping
        by_nick = {}
        for puppet in self.by_nick.values():
            by_nick[self.fold(puppet.conn.nick)] = puppet
        self.by_nick = by_nick

    def index_nick(self, puppet: Puppet, nick: str) -> None:
        for key, value in list(self.by_nick.items()):
            if value is puppet:
                del self.by_nick[key]
        self.by_nick[self.fold(nick)] = puppet

    def user_of_nick(self, canon_nick: str) -> str | None:
        puppet = self.by_nick.get(canon_nick)
        return puppet.user_id if puppet is not None else None

    def user_of_account(self, account: str) -> str | None:
        """The Matrix user whose puppet is logged into services ``account`` (an IRCv3
        ``account`` tag): another connection on it is that user's own IRC client."""
        wanted = self.fold(account)
        for puppet in self.puppets.values():
            if puppet.account is not None and self.fold(puppet.account) == wanted:
                return puppet.user_id
        return None

    def get(self, user_id: str) -> Puppet | None:
        return self.puppets.get(user_id)

    def obtain(self, user_id: str, display_name: str) -> Puppet | None:
        """The user's puppet, created (and connecting) if needed; None when the connection limit
        is reached and no idle puppet can make room."""
        puppet = self.puppets.get(user_id)
        if puppet is not None:
            puppet.touch()
            if puppet.conn.state in ("idle", "closed", "failed") and not puppet.conn.fatal:
                puppet.conn.start()
            return puppet
        if not self.owns(user_id):
            return None  # another worker's instance holds this user's connection
        if len(self.puppets) >= self.cfg.max_connections and not self._evict():
            return None
        puppet = Puppet(self, user_id, display_name)
        custom = self.custom_nicks.get(user_id)
        if custom:
            puppet.set_nick(custom)
        self.puppets[user_id] = puppet
        self.by_nick[self.fold(puppet.conn.nick)] = puppet
        puppet.conn.start()
        self._ensure_idle_task()
        return puppet

    def _evict(self) -> bool:
        candidates = [p for p in self.puppets.values() if not p.conn.pending]
        if not candidates:
            return False
        victim = min(candidates, key=lambda p: p.last_active)
        log.info("%s: connection limit reached, disconnecting %s", self.cfg.netid, victim.user_id)
        asyncio.get_running_loop().create_task(self.remove(victim.user_id, "connection limit"))
        return True

    async def remove(self, user_id: str, reason: str = "") -> None:
        puppet = self.puppets.pop(user_id, None)
        if puppet is None:
            return
        for key, value in list(self.by_nick.items()):
            if value is puppet:
                del self.by_nick[key]
        await puppet.conn.quit(reason)
        if self.live is not None:
            self.live.withdraw(user_id)

    async def restart(self, user_id: str) -> Puppet | None:
        """Reconnect a puppet with new credentials (after login/logout)."""
        puppet = self.puppets.get(user_id)
        if puppet is None:
            return None
        await puppet.conn.quit("reconnecting")
        self.apply_credentials(user_id, puppet.conn.params)
        puppet.conn.forget_refusal()
        puppet.conn.start()
        return puppet

    def apply_credentials(self, user_id: str, p: ConnParams) -> None:
        """The user's login (password, account, certificate) and auto-commands on ``p``."""
        creds = self.credentials.get(user_id, {})
        p.password = creds.get("password") or self.cfg.password
        p.sasl_account = creds.get("sasl_account")
        p.sasl_password = creds.get("sasl_password")
        p.sasl_mechanism = str(creds.get("sasl_mechanism") or "PLAIN")
        p.ssl = self.client_contexts.get(user_id) or self.cfg.ssl_context()
        p.after_connect = list(self.autocmds.get(user_id, ()))

    def _ensure_idle_task(self) -> None:
        if self.cfg.idle_timeout > 0 and (self._idle_task is None or self._idle_task.done()):
            self._idle_task = asyncio.get_running_loop().create_task(self._idle_loop())

    async def _idle_loop(self) -> None:
        timeout = self.cfg.idle_timeout
        while self.puppets:
            await asyncio.sleep(min(60.0, max(0.05, timeout / 4)))
            limit = time.monotonic() - timeout
            for user_id, puppet in list(self.puppets.items()):
                if puppet.last_active < limit and not puppet.conn.pending:
                    log.info("%s: %s idle, disconnecting", self.cfg.netid, user_id)
                    await self.remove(user_id, "idle")

    async def close(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
        await asyncio.gather(
            *(self.remove(uid, "bridge shutting down") for uid in list(self.puppets)),
            return_exceptions=True,
        )
