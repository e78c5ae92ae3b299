"""IRCConnector (the NetworkConnector) and IRCClient (a Matrix user's puppet, or the relay bot).

One :class:`Network` per configured IRC network: the bot connection (the only listener of
channel traffic), the puppet pool, the channel state and an ordered emit queue.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from bridge.connector import (
    BridgeAPI,
    ChatInfo,
    ConnectionChange,
    ConnectionState,
    ConnectorCommand,
    ConnectorError,
    GhostInfo,
    LinkRequest,
    Login,
    LoginResult,
    MatrixAccess,
    MatrixEdit,
    MatrixMembership,
    MatrixMessage,
    MatrixPowerLevel,
    MatrixProfile,
    MatrixReaction,
    MatrixReactionRemove,
    MatrixRedaction,
    MatrixRoomMeta,
    MatrixUser,
    Membership,
    MessageKind,
    Namespace,
    NetworkClient,
    NetworkConnector,
    NotSupported,
    PortalKey,
    RemoteChatInfo,
    RemoteConnection,
    RemoteEvent,
    Sender,
    SentMessage,
    ShardScope,
    ThirdPartyProtocol,
)
from bridge.connector.ids import escape_localpart

from . import ids
from .activity import ActivityStore
from .autocmds import MAX_COMMANDS, AutoCmdError, AutoCmdStore, parse_autocmd, show_autocmd
from .certs import CertificateError, client_context, fingerprint, make_certificate
from .client import (
    CommandRefused,
    ConnectionHandler,
    ConnectPacer,
    ConnParams,
    IRCConnection,
    NotConnected,
)
from .config import NetworkConfig, parse_config, parse_identd
from .consent import OP_MODES, ConsentDesk, exclusion, refusal
from .formatting import strip_formatting
from .identd import IdentServer, IdentTable
from .irc_to_matrix import IrcToMatrix, key_change
from .matrix_to_irc import (
    Outgoing,
    content_to_irc,
    payload_budget,
    reaction_text,
    render,
    strip_reply_fallback,
)
from .protocol import Line, UnsafeLine, ctcp, serialize
from .puppet_nicks import LiveNickStore, OtherPuppets
from .puppets import Puppet, PuppetPool
from .ranks import MODE_ERRORS, mode_change, mode_params
from .seats import SeatStore
from .table_store import TableStore
from .tables import MIGRATIONS

log = logging.getLogger("mimi.irc")

# A certificate fingerprint in a services answer ("Added fingerprint 3f0a... to ...").
_FINGERPRINT = re.compile(r"\b[0-9A-Fa-f:]{32,}\b")

# Gains of shards are applied together once none came for this long (seconds).
RESCOPE_SETTLE_S = 0.5
DM_NICKS = 1000  # private-message partners whose nick spelling is remembered
# How often a puppet's last-message time is written while it keeps talking (seconds).
ACTIVITY_SAVE_EVERY_S = 60.0


class _NetworkNicks:
    """One network's side of the live-nick table, for its puppet pool."""

    def __init__(self, store: LiveNickStore, netid: str) -> None:
        self.store = store
        self.netid = netid

    def publish(self, user_id: str, nick: str) -> asyncio.Future[None]:
        return self.store.publish(self.netid, user_id, nick)

    def withdraw(self, user_id: str) -> asyncio.Future[None]:
        return self.store.withdraw(self.netid, user_id)


class Network(ConnectionHandler):
    """Everything of one configured IRC network."""

    def __init__(self, connector: IRCConnector, cfg: NetworkConfig) -> None:
        self.connector = connector
        self.bridge = connector.bridge
        self.cfg = cfg
        self.network = ids.network_of(cfg.netid)
        self.prefix = self.network + "_"
        # Puppets reconnect once the bot is back (or gave up for good): it goes first.
        # An instance without the network's main part (split across workers) has no bot.
        self.pacer = ConnectPacer(
            cfg.connects_per_second,
            gate=lambda: not self.main or self.bot.state in ("registered", "failed"),
        )
        self.pool = PuppetPool(
            cfg,
            self.pacer,
            on_private=self._on_private,
            on_notice=self._on_puppet_notice,
            on_state=self._on_puppet_state,
            on_identify_failed=self._on_identify_failed,
            ident=connector.ident_table,
        )
        self.translator = IrcToMatrix(
            self.network,
            puppet_user=self.puppet_user,
            account_user=self.pool.user_of_account,
            ghost_user_id=lambda nick: self.bridge.ghost_user_id(self.network, nick),
            id_of=self.id_of,
            power_levels=cfg.power_levels,
            netsplit_window=cfg.netsplit_window,
            publish=cfg.publish,
        )
        bot = cfg.bot
        self.bot = IRCConnection(
            ConnParams(
                host=cfg.host,
                port=cfg.port,
                ssl=cfg.ssl_context(),
                nick=bot.nick,
                username=bot.username,
                realname=bot.realname,
                password=cfg.password,
                sasl_account=bot.sasl_account,
                sasl_password=bot.sasl_password,
                flood_burst=cfg.flood_burst,
                flood_rate=cfg.flood_rate,
                reconnect_min=cfg.reconnect_min,
                reconnect_max=cfg.reconnect_max,
                queue_timeout=cfg.queue_timeout,
                ping_interval=cfg.ping_interval,
                ping_timeout=cfg.ping_timeout,
                register_timeout=cfg.register_timeout,
                bind_address=cfg.bind_address,
                ident=connector.ident_table,
                auth=cfg.auth,
                nickserv=cfg.nickserv_nick,
                identify_template=cfg.nickserv_identify,
            ),
            self,
            pacer=self.pacer,
            listen_channels=True,
            name=f"{cfg.netid}/bot",
        )
        self.relay = IRCClient(self, None)
        self._queue: asyncio.Queue[RemoteEvent] = asyncio.Queue()
        self._emitter: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._split_timer: asyncio.TimerHandle | None = None
        # Channel keys operators changed (MODE +k/-k), on their way to the core.
        self._unsaved_keys: dict[PortalKey, str | None] = {}
        self._key_saver: asyncio.Task[None] | None = None
        # How private-message partners spell their nicks, by remote id: the id may fold more
        # than the server (alice{m} for alice[m] on an ascii server), and a partner who shares
        # no channel with the bot is known nowhere else. The most recent DM_NICKS.
        self._dm_nicks: dict[str, str] = {}
        # Users whose ``login`` is connecting: its failure is the command's answer.
        self.logging_in: set[str] = set()
        self.consent = ConsentDesk()
        # Split across scale-out workers (``set_scope``): the other instances' puppets, as
        # the bot here sees them; None in one process, or without the main part.
        self.others: OtherPuppets | None = None

    # --- split across workers (ShardedConnector) ----------------------------------------------

    @property
    def main(self) -> bool:
        """Whether this instance runs the network's own part: the bot, the relay, links."""
        scope = self.connector.scope
        return scope is None or scope.main(self.network)

    def owns(self, user_id: str) -> bool:
        """Whether this instance holds the Matrix user's puppet."""
        scope = self.connector.scope
        return scope is None or scope.owns(self.network, user_id)

    def puppet_user(self, canon: str) -> str | None:
        """The Matrix user of a puppet by its nick folded the server's way, this instance's
        or (split across workers) another's."""
        user = self.pool.user_of_nick(canon)
        if user is None and self.others is not None:
            user = self.others.user_of_nick(canon)
        return user

    def _split(self) -> None:
        """Running split: nicks are shared, and the bot knows the others' puppets."""
        store, netid = self.connector.live_nicks, self.cfg.netid
        self.pool.owns = self.owns
        self.pool.live = _NetworkNicks(store, netid)
        if self.main and self.others is None:
            self.others = OtherPuppets(store, netid, self.pool.user_of_nick, self._bot_line)

    async def rescope(self, before: ShardScope, after: ShardScope) -> None:
        """The worker gained or lost shards of this network: what left goes now (another
        worker's instance takes it), what came is connected."""
        network = self.network
        for user_id in [u for u in self.pool.puppets if not after.owns(network, u)]:
            await self.pool.remove(user_id, "reconnecting")
        was, now = before.main(network), after.main(network)
        if was and not now:
            others, self.others = self.others, None
            if others is not None:
                await others.close()
            await self.bot.quit("reconnecting")
        elif now and not was:
            self._split()
            await self._bot_channels()  # portals opened since this instance started
            self.bot.start()
        gained = [
            n for n in range(after.shard_count)
            if f"{network}.{n}" in after.shards and f"{network}.{n}" not in before.shards
        ]  # fmt: skip
        if gained:
            await self._load_users()
            if self.cfg.puppets:
                await self._reconnect_members()
            await self._forget_dead_nicks()

    async def _forget_dead_nicks(self) -> None:
        """Rows a crashed worker left for users now this instance's and not connected here:
        an IRC user taking such a nick must not be taken for a puppet."""
        store = self.connector.live_nicks
        try:
            users = await store.users(self.cfg.netid)
        except Exception as e:
            log.warning("%s: the puppet nicks cannot be read: %s", self.cfg.netid, e)
            return
        for user_id in users:
            if self.owns(user_id) and user_id not in self.pool.puppets:
                store.forget(self.cfg.netid, user_id)

    # --- plumbing -----------------------------------------------------------------------------

    def id_of(self, name: str) -> str:
        """A nick or channel name as it is known in Matrix (remote ids, ghosts, aliases):
        folded with the configured ``casemapping``, whatever the server announces. Nicks and
        channels are compared at run time with the server's mapping (``conn.fold``)."""
        return ids.canonical_nick(name, self.cfg.casemapping)

    def irc_connect_rank(self, conn: IRCConnection) -> tuple[float, bool]:
        return float("-inf"), False  # the bot before every puppet

    def irc_registered(self, conn: IRCConnection) -> None:
        self.pacer.poke()  # the puppets waiting for the bot may go

    def irc_failed(self, conn: IRCConnection, reason: str) -> None:
        log.error("%s: the bot cannot connect: %s (fix bot.sasl_account/sasl_password or the "
                  "password in the config)", self.cfg.netid, reason)  # fmt: skip

    def irc_identify_failed(self, conn: IRCConnection, reason: str) -> None:
        log.error("%s: NickServ refused the bot's IDENTIFY: %s", self.cfg.netid, reason)

    def irc_casemapping(self, conn: IRCConnection) -> None:
        """The bot learnt the server's mapping: what the network keeps is re-folded with it."""
        self.pool.set_casemapping(conn.casemapping)
        self.translator.rekey(conn.fold)
        if self.others is not None:
            self.others.clear()

    def channel_name(self, remote_id: str) -> str:
        """A channel's name as IRC spells it, for a portal's remote id. The id form may fold
        more than the server (``#a{b}`` for ``#a[b]`` on an ascii server): the names the bot
        knows are searched; an unknown channel is its remote id."""
        bot = self.bot
        known = bot.channel_names.get(bot.fold(remote_id))
        if known is not None and self.id_of(known) == remote_id:
            return known
        state = self.translator.channels.get(bot.fold(remote_id))
        if state is not None and self.id_of(state.name) == remote_id:
            return state.name
        if not ids.folded_specials(remote_id):
            return remote_id
        names = [*bot.channel_names.values(), *(s.name for s in self.translator.channels.values())]
        return next((name for name in names if self.id_of(name) == remote_id), remote_id)

    def key_of(self, channel: str) -> str | None:
        return self.connector.keys.get(PortalKey(self.network, self.id_of(channel)))

    def excluded(self, channel: str, user: MatrixUser | None) -> str | None:
        """Why ``user`` may not bridge the channel (``exclude``), or None."""
        return refusal(exclusion(self.cfg.exclude, self.bot.fold, channel), channel, user)

    def operators(self, channel: str) -> list[str]:
        """Nicks of the channel's operators the bot sees, but the bridge's own."""
        state = self.translator.channels.get(self.bot.fold(channel))
        if state is None:
            return []
        me = self.bot.fold(self.bot.nick)
        return [
            m.nick
            for canon, m in state.members.items()
            if m.modes & OP_MODES and canon != me and self.puppet_user(canon) is None
        ]

    def is_operator(self, channel: str, nick: str) -> bool:
        modes = self.translator.member_modes(self.bot.fold(channel), self.bot.fold(nick))
        return bool(modes and modes & OP_MODES)

    async def save_activity(self) -> None:
        """Store the last-message times not stored yet."""
        store = self.connector.activity_store
        for puppet in list(self.pool.puppets.values()):
            if puppet.last_message > puppet.saved_message:
                puppet.saved_message = puppet.last_message
                await store.save(self.cfg.netid, puppet.user_id, puppet.last_message)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def emit(self, event: RemoteEvent) -> None:
        self._queue.put_nowait(event)

    async def _emit_loop(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self.bridge.emit(event)
            except Exception:
                log.exception("%s: emitting %s failed", self.cfg.netid, type(event).__name__)
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        """Wait until every queued RemoteEvent went to the core (for tests and shutdown)."""
        await self._queue.join()

    def notify(self, user_id: str, text: str, portal: PortalKey | None = None) -> None:
        self.spawn(self.bridge.notify(user_id, text, portal))

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._emitter = asyncio.get_running_loop().create_task(self._emit_loop())
        if self.connector.scope is not None:
            self._split()
        await self._load_users()
        seats = self.connector.seat_store
        if self.cfg.require_matrix_membership and seats.users(self.cfg.netid) and self.main:
            # Seats kept under ``require_matrix_membership: false``: membership counts again.
            await seats.drop(self.cfg.netid, None, None)
        await self._bot_channels()
        if self.main:
            self.bot.start()
        if self.cfg.puppets:
            self.spawn(self._reconnect_members())
        if self.connector.scope is not None:
            self.spawn(self._forget_dead_nicks())

    async def _bot_channels(self) -> None:
        """The channels the bot joins: the configured ones and those of bridged portals."""
        for channel in self.cfg.channels:
            self.bot.channels[self.bot.fold(channel)] = self.key_of(channel)
            self.bot.channel_names[self.bot.fold(channel)] = channel
        try:
            portals = await self.bridge.portals(self.network)
        except Exception:
            log.exception("%s: listing portals failed", self.cfg.netid)
            portals = []
        for portal in portals:
            if portal.receiver or not ids.valid_channel(portal.remote_id):
                continue
            # Spelled as in the config when it is there (the id may have lost the spelling).
            channel = self.channel_name(portal.remote_id)
            rule = exclusion(self.cfg.exclude, self.bot.fold, channel)
            if rule is not None and rule.mode == "never":
                log.warning("%s: %s is excluded: not rejoined", self.cfg.netid, channel)
                continue
            self.bot.channels.setdefault(self.bot.fold(channel), self.key_of(channel))
            self.bot.channel_names.setdefault(self.bot.fold(channel), channel)

    async def _load_users(self) -> None:
        """What the users' puppets need: logins, certificates, custom nicks, last activity,
        auto-commands, kept seats (again when the instance takes users over from another)."""
        try:
            for login in await self._logins():
                self.pool.credentials[login.user_id] = dict(login.credentials)
        except Exception:
            log.exception("%s: loading logins failed", self.cfg.netid)
        await self._load_certificates()
        await self.connector.nick_store.load(self)
        self.pool.activity.update(await self.connector.activity_store.load(self.cfg.netid))
        await self.connector.autocmd_store.load(self)
        await self.connector.seat_store.load(self.cfg.netid)

    async def _load_certificates(self) -> None:
        """TLS contexts for the certfp logins, before any puppet connects."""
        for user_id, creds in self.pool.credentials.items():
            cert, key = creds.get("cert"), creds.get("key")
            if not (isinstance(cert, str) and isinstance(key, str)):
                continue
            try:
                self.pool.client_contexts[user_id] = await client_context(
                    self.cfg.ssl_context, cert, key
                )
            except CertificateError as e:
                log.error("%s: certificate of %s: %s", self.cfg.netid, user_id, e)
                self.notify(
                    user_id,
                    f"Your client certificate for {self.cfg.display_name} cannot be used ({e}). "
                    f"Log in again: login irc {self.cfg.netid} certfp <account> <password>",
                )

    async def _logins(self) -> list[Login]:
        found: dict[str, Login] = {}
        for name in (self.network, IRCConnector.name):
            try:
                logins = await self.bridge.logins(name)
            except Exception:
                continue
            for login in logins:
                if login.credentials.get("network", self.cfg.netid) == self.cfg.netid:
                    found[login.user_id] = login
        return list(found.values())

    async def _reconnect_members(self) -> None:
        """Bring back the puppets of portal members after a restart, the users who sent a
        message most recently first, paced by the pacer (after the bot)."""
        try:
            portals = await self.bridge.portals(self.network)
        except Exception:
            return
        wanted: dict[str, tuple[MatrixUser, list[str]]] = {}
        for portal in portals:
            if portal.receiver:
                continue
            try:
                members = await self.bridge.portal_members(portal)
            except Exception:
                continue
            channel = self.channel_name(portal.remote_id)
            for user in members:
                wanted.setdefault(user.user_id, (user, []))[1].append(channel)
        if not self.cfg.require_matrix_membership:
            # Seats kept after their users left the rooms, of the portals still bridged.
            bridged = {p.remote_id for p in portals if not p.receiver}
            for user_id, kept in self.connector.seat_store.users(self.cfg.netid).items():
                for remote_id in sorted(kept & bridged):
                    if user_id not in wanted:
                        try:
                            user = await self.bridge.matrix_user(user_id)
                        except Exception:
                            continue
                        wanted[user_id] = (user, [])
                    channel = self.channel_name(remote_id)
                    if channel not in wanted[user_id][1]:
                        wanted[user_id][1].append(channel)
        activity = self.pool.activity
        order = sorted(wanted.values(), key=lambda uc: -activity.get(uc[0].user_id, 0.0))
        for user, channels in order:
            if not self.owns(user.user_id) or user.user_id in self.pool.puppets:
                continue  # another instance's, or connected already
            puppet = self.pool.obtain(user.user_id, user.display_name)
            if puppet is not None:
                for channel in channels:
                    puppet.conn.channels.setdefault(puppet.conn.fold(channel), self.key_of(channel))
                    puppet.conn.channel_names[puppet.conn.fold(channel)] = channel

    async def stop(self) -> None:
        await self.save_activity()
        if self.others is not None:
            await self.others.close()
        await self.pool.close()
        await self.bot.quit("bridge shutting down")
        self.pacer.close()
        if self._split_timer is not None:
            self._split_timer.cancel()
            self._split_timer = None
        for event in self.translator.expire_splits(everyone=True):
            self.emit(event)  # nobody will see them come back
        await self.drain()
        if self._key_saver is not None:
            await asyncio.wait([self._key_saver], timeout=10)  # changed keys: kept first
        if self._emitter is not None:
            self._emitter.cancel()
        for task in list(self._tasks):
            task.cancel()

    # --- bot: listener ------------------------------------------------------------------------

    def irc_line(self, conn: IRCConnection, line: Line) -> None:
        if self.others is not None:
            self.others.line(conn, line)  # after the lookup of nicks it sees first
        else:
            self._bot_line(conn, line)

    def _bot_line(self, conn: IRCConnection, line: Line) -> None:
        if (
            line.command == "PRIVMSG"
            and line.nick
            and conn.fold(line.param(0)) == conn.fold(conn.nick)
        ):
            self._private_to_bot(conn, line)
        elif line.command == "JOIN" and conn.fold(line.nick) == conn.fold(conn.nick):
            conn.send("MODE", line.param(0))  # +i, +m, +s... for the portal's room
        elif line.command == "MODE" and conn.is_channel(line.param(0)):
            self._follow_key(conn, line)
        try:
            events = self.translator.handle(conn, line)
        except Exception:
            log.exception("%s: cannot translate %s", self.cfg.netid, line.command)
            return
        for event in events:
            self.emit(event)
        if self.translator.splits and self._split_timer is None:
            self._arm_split_timer()
        if line.command == "KICK" and conn.fold(line.param(1)) == conn.fold(conn.nick):
            channel = line.param(0)
            log.warning("%s: bot kicked from %s, rejoining", self.cfg.netid, channel)
            self.spawn(self._rejoin_later(channel))

    def _follow_key(self, conn: IRCConnection, line: Line) -> None:
        """An operator changed the channel's key (+k) or took it off (-k): the bridge's
        connections rejoin with the new one, and so they do after a restart (the core
        keeps it, as the key given with ``join``)."""
        channel = line.param(0)
        changed = key_change(conn, line)
        if changed is None or conn.fold(channel) not in conn.channels:
            return
        key = changed or None
        portal = PortalKey(self.network, self.id_of(channel))
        if self.connector.keys.get(portal) == key:
            return
        self.connector.set_room_key(portal, key)
        self._unsaved_keys[portal] = key
        if self._key_saver is None or self._key_saver.done():
            self._key_saver = asyncio.get_running_loop().create_task(self._save_keys())
            self._tasks.add(self._key_saver)
            self._key_saver.add_done_callback(self._tasks.discard)

    async def _save_keys(self) -> None:
        """Each changed key to the core, the latest of a channel only, one after another."""
        while self._unsaved_keys:
            portal = next(iter(self._unsaved_keys))
            key = self._unsaved_keys.pop(portal)
            try:
                await self.bridge.save_room_key(portal, key)
            except Exception as e:
                log.warning(
                    "%s: the new key of %s is not kept for restarts: %s",
                    self.cfg.netid,
                    portal.remote_id,
                    e,
                )

    def _arm_split_timer(self) -> None:
        due = self.translator.next_split_expiry()
        if due is None:
            return
        loop = asyncio.get_running_loop()
        self._split_timer = loop.call_at(
            loop.time() + max(0.0, due - time.monotonic()), self._splits_due
        )

    def _splits_due(self) -> None:
        """Netsplit QUITs whose users did not come back in time: their ghosts leave now."""
        self._split_timer = None
        for event in self.translator.expire_splits():
            self.emit(event)
        self._arm_split_timer()

    def _private_to_bot(self, conn: IRCConnection, line: Line) -> None:
        """An operator answering a link request (``yes`` / ``no [#channel]``)."""
        nick = line.nick
        reply = self.consent.answer(
            nick,
            line.param(1),
            conn.fold,
            lambda channel: self.is_operator(channel, nick),
        )
        if reply is not None:
            conn.send("NOTICE", nick, reply)

    async def _rejoin_later(self, channel: str) -> None:
        await asyncio.sleep(5)
        try:
            await self.bot.join(channel, self.key_of(channel))
        except Exception as e:
            log.warning("%s: rejoining %s failed: %s", self.cfg.netid, channel, e)

    def _on_private(self, puppet: Puppet, line: Line) -> None:
        event = self.translator.private_message(puppet.conn, line, puppet.user_id)
        if event is not None:
            remote_id = event.portal.remote_id
            self._dm_nicks.pop(remote_id, None)
            self._dm_nicks[remote_id] = line.nick
            if len(self._dm_nicks) > DM_NICKS:
                del self._dm_nicks[next(iter(self._dm_nicks))]
            self.emit(event)

    def _on_puppet_notice(self, puppet: Puppet, text: str) -> None:
        self.notify(puppet.user_id, text)

    def _on_identify_failed(self, puppet: Puppet, reason: str) -> None:
        """NickServ refused IDENTIFY; the connection stays up (no state change says so)."""
        advice = self.advice(puppet.conn)
        self.notify(
            puppet.user_id,
            f"NickServ on {self.cfg.display_name} did not log you in: {reason}. "
            "You stay connected without your account; the password is not tried again "
            f"until you log in again. {advice}",
        )

    def advice(self, conn: IRCConnection) -> str:
        """What the user can do about a failed login, as a command to type."""
        net, p = self.cfg.netid, conn.params
        way = "sasl" if self.cfg.auth == "sasl" else "nickserv"
        if conn.fatal_kind == "password":
            return f"Log in again with the right server password: login irc {net} password <pw>"
        if conn.fatal_kind == "mechanism":
            return (
                f"The network's services may be down: try again later with `irc reconnect {net}`,"
                f" or log in another way: login irc {net} {way} <account> <password>"
            )
        if p.sasl_mechanism == "EXTERNAL":
            return (
                "The services did not accept your client certificate (was it removed from the "
                f"account, or the account dropped?). Log in again: login irc {net} certfp "
                "<account> <password>"
            )
        return (
            "Check the account name and password (a wrong password or an unknown account), "
            f"then log in again: login irc {net} {way} <account> <password>"
        )

    def login_id(self, user_id: str) -> str:
        """The id of a user's login on this network; the puppet's connection goes by it too."""
        return f"{self.cfg.netid}/{user_id}"

    def _on_puppet_state(self, puppet: Puppet, old: str, new: str) -> None:
        """Every state change of a puppet's connection, for the core to tell the user."""
        if new == "idle" and old not in ("connecting", "registering", "registered"):
            return  # (re)started after a quit: nothing was lost
        if puppet.user_id in self.logging_in and new != "registered":
            return  # the login command answers for this attempt
        conn = puppet.conn
        state = self.connector._STATES.get(new)  # "closed": on purpose, forgotten
        reason = advice = ""
        if new in ("idle", "failed"):
            reason = conn.fatal or conn.stats.last_error or ""
        if new == "failed" and conn.fatal:
            advice = self.advice(conn)
        self.bridge.connection_changed(
            ConnectionChange(
                puppet.user_id,
                self.network,
                self.login_id(puppet.user_id),
                state,
                reason,
                auth_failed=new == "failed" and bool(conn.fatal),
                remote_name=conn.nick,
                advice=advice,
            )
        )

    # --- helpers for clients --------------------------------------------------------------------

    def nick_of_user(self, user_id: str) -> str | None:
        """IRC nick for a Matrix user id: a ghost's nick or a puppet's nick."""
        domain = self.bridge.domain
        if user_id.startswith("@" + self.prefix) and user_id.endswith(":" + domain):
            local = user_id[1 + len(self.prefix) : -len(domain) - 1]
            canon = ids.parse_ghost_localpart(local, self.cfg.casemapping)
            if canon is None:
                return None
            return self.display_nick(canon)
        puppet = self.pool.get(user_id)
        if puppet is not None:
            return puppet.conn.nick
        if self.others is not None:  # another instance's puppet the bot sees
            canon = next((c for c, u in self.others.known.items() if u == user_id), None)
            for state in self.translator.channels.values() if canon else ():
                member = state.members.get(canon or "")
                if member is not None:
                    return member.nick
        return None

    def display_nick(self, canon: str | None) -> str | None:
        """The nick, as IRC spells it, of a remote user id (a ghost's or a DM partner's)."""
        if not canon:
            return None
        puppet = self.pool.by_nick.get(self.pool.fold(canon))
        if puppet is not None and self.id_of(puppet.conn.nick) == canon:
            return puppet.conn.nick
        if ids.folded_specials(canon):  # the fast path may have missed the spelling
            for puppet in self.pool.puppets.values():
                if self.id_of(puppet.conn.nick) == canon:
                    return puppet.conn.nick
        return (
            self.translator.nick_of_id(canon, self.bot.fold) or self._dm_nicks.get(canon) or canon
        )


class IRCClient(NetworkClient):
    """A Matrix user's puppet (``puppet`` set) or the relay bot (``puppet`` None)."""

    _seq = itertools.count()

    def __init__(self, net: Network, puppet: Puppet | None) -> None:
        self.net = net
        self.puppet = puppet

    @property
    def conn(self) -> IRCConnection:
        return self.puppet.conn if self.puppet is not None else self.net.bot

    def _target(self, portal: PortalKey) -> str:
        if portal.receiver:
            return self.net.display_nick(portal.remote_id) or portal.remote_id
        return self.net.channel_name(portal.remote_id)

    async def _prepare(self, portal: PortalKey, user_id: str) -> str:
        if self.puppet is not None:
            self.puppet.touch()
        conn = self.conn
        target = self._target(portal)
        if conn.state in ("idle", "closed", "failed"):
            if conn.fatal:
                raise ConnectorError(f"Not connected to {self.net.cfg.display_name}: {conn.fatal}")
            conn.start()
        if not conn.registered and conn.stats.connects <= 1 and conn.state != "failed":
            # A new puppet: wait for the first registration so that a refused join can be
            # reported now. Later outages do not wait: the message is queued.
            await conn.wait_registered(min(10.0, conn.params.register_timeout))
        if not portal.receiver and conn.registered:
            try:
                await conn.join(target, self.net.key_of(target))
            except ConnectionError as e:
                raise ConnectorError(str(e)) from e
        return target

    def _new_id(self) -> str:
        return f"m{int(time.time() * 1000)}.{next(self._seq)}"

    async def _send(
        self, portal: PortalKey, user_id: str, target: str, out: Outgoing
    ) -> SentMessage:
        lines = []
        for text in out.lines:
            payload = ctcp("ACTION", text) if out.action else text
            try:
                lines.append(serialize(out.command, target, payload))
            except UnsafeLine as e:  # cannot happen after clean_text; never send it anyway
                raise ConnectorError(f"message refused: {e}") from e
        if out.truncated:
            self.net.notify(
                user_id, "Your message was too long for IRC and was cut (upload failed).", portal
            )
        net = self.net

        def failed(reason: str) -> None:
            net.notify(user_id, f"Your message was not delivered to {target}: {reason}", portal)

        if lines:
            self.conn.queue_message(target, lines, failed)
        return SentMessage(self._new_id(), int(time.time() * 1000))

    def _budget(self, target: str):
        conn = self.conn
        user = conn.user or "~" + conn.params.username

        def budget(command: str, action: bool) -> int:
            return payload_budget(conn.nick, user, conn.host, command, target, action)

        return budget

    async def _render(self, msg_text: str, kind: MessageKind, target: str, prefix: str = ""):
        return await render(
            msg_text,
            kind=kind,
            budget=self._budget(target),
            line_limit=self.net.cfg.line_limit,
            upload=self.net.bridge.upload_text,
            prefix=prefix,
        )

    # --- NetworkClient ------------------------------------------------------------------------

    def _sent_message(self) -> None:
        puppet = self.puppet
        if puppet is not None:
            when = puppet.sent_message()
            # The time only orders reconnects after a restart: a write per message would
            # cost a database trip each; one a minute (and at stop) orders them as well.
            if when - puppet.saved_message >= ACTIVITY_SAVE_EVERY_S:
                puppet.saved_message = when
                store = self.net.connector.activity_store
                self.net.spawn(store.save(self.net.cfg.netid, puppet.user_id, when))

    async def handle_matrix_message(self, msg: MatrixMessage) -> SentMessage:
        self._sent_message()
        target = await self._prepare(msg.portal, msg.sender.user_id)
        text = content_to_irc(msg.content, self.net.nick_of_user)
        prefix = ""
        if msg.reply_to is not None:
            text = strip_reply_fallback(text)
            if self.net.cfg.replies == "nick":
                nick = self.net.display_nick(msg.reply_to.sender_remote_id)
                if nick:
                    prefix = f"{nick}: "
        if self.puppet is None:  # relay: say who speaks
            prefix = f"<{msg.sender.display_name}> " + prefix
        out = await self._render(text, msg.content.kind, target, prefix)
        return await self._send(msg.portal, msg.sender.user_id, target, out)

    async def handle_matrix_edit(self, edit: MatrixEdit) -> SentMessage | None:
        if self.net.cfg.edits == "off":
            raise NotSupported("Edits are not sent to IRC; the IRC side still sees the original.")
        self._sent_message()
        target = await self._prepare(edit.portal, edit.sender.user_id)
        text = content_to_irc(edit.content, self.net.nick_of_user)
        prefix = "* " if self.puppet is not None else f"<{edit.sender.display_name}> * "
        out = await self._render(text, edit.content.kind, target, prefix)
        await self._send(edit.portal, edit.sender.user_id, target, out)
        return None

    async def handle_matrix_redaction(self, redaction: MatrixRedaction) -> None:
        raise NotSupported("IRC cannot delete messages: the message stays visible to IRC users.")

    async def handle_matrix_reaction(self, reaction: MatrixReaction) -> SentMessage:
        if self.net.cfg.reactions == "off":
            raise NotSupported("Reactions are not sent to IRC.")
        target = await self._prepare(reaction.portal, reaction.sender.user_id)
        text = reaction_text(reaction.key, reaction.target.text)
        prefix = "" if self.puppet is not None else f"{reaction.sender.display_name} "
        out = await self._render(prefix + text, MessageKind.EMOTE, target)
        if self.puppet is None:
            out.action = False
        return await self._send(reaction.portal, reaction.sender.user_id, target, out)

    async def handle_matrix_reaction_remove(self, removal: MatrixReactionRemove) -> None:
        raise NotSupported("IRC cannot take back a reaction.")

    async def handle_matrix_membership(self, change: MatrixMembership) -> None:
        if self.puppet is None:
            raise NotSupported("The relay bot does not act for Matrix users on IRC.")
        portal = change.portal
        conn = self.conn
        if portal.receiver:
            return  # DMs have no membership on IRC
        channel = self._target(portal)
        seats, netid = self.net.connector.seat_store, self.net.cfg.netid
        if change.target is None and change.target_matrix_user is None:
            user_id = self.puppet.user_id
            if change.membership == Membership.JOIN:
                await seats.drop(netid, user_id, portal.remote_id)  # a member again
                self.puppet.touch()
                if conn.registered:
                    try:
                        await conn.join(channel, self.net.key_of(channel))
                    except ConnectionError as e:
                        raise ConnectorError(str(e)) from e
                else:
                    conn.channels.setdefault(conn.fold(channel), self.net.key_of(channel))
                    conn.channel_names[conn.fold(channel)] = channel
                    conn.start()
            elif (
                change.membership == Membership.LEAVE and not self.net.cfg.require_matrix_membership
            ):
                # The seat on IRC stays (until logout or unbridging), after restarts too.
                if conn.fold(channel) in conn.channels:
                    await seats.keep(netid, user_id, portal.remote_id)
            elif change.membership in (Membership.LEAVE, Membership.KICK, Membership.BAN):
                await seats.drop(netid, user_id, portal.remote_id)
                conn.part(channel, change.reason or "")
            return
        if change.target is None:
            # A Matrix user acted on another Matrix user: their puppet leaves the channel.
            other_id = change.target_matrix_user or ""
            if change.membership in (Membership.KICK, Membership.BAN):
                await seats.drop(netid, other_id, portal.remote_id)
                other = self.net.pool.get(other_id)
                if other is not None:
                    other.conn.part(channel, change.reason or "")
            return
        nick = self.net.display_nick(change.target.remote_id) or change.target.remote_id
        if not conn.registered:
            raise ConnectorError("Not connected to IRC right now; try again in a moment.")
        if change.membership in (Membership.KICK, Membership.BAN, Membership.UNBAN):
            modes = self.net.translator.member_modes(conn.fold(channel), conn.fold(conn.nick))
            if modes is not None and not modes & {"o", "h", "a", "q"}:
                raise NotSupported(
                    f"You are not a channel operator in {channel} on IRC, so {nick} stays there."
                )
        if change.membership == Membership.KICK:
            self.net.translator.expected_kicks.add((conn.fold(channel), conn.fold(nick)))
            conn.send("KICK", channel, nick, change.reason or "kicked from Matrix")
        elif change.membership == Membership.BAN:
            self.net.translator.expected_kicks.add((conn.fold(channel), conn.fold(nick)))
            conn.send("MODE", channel, "+b", f"{nick}!*@*")
            conn.send("KICK", channel, nick, change.reason or "banned from Matrix")
        elif change.membership == Membership.UNBAN:
            conn.send("MODE", channel, "-b", f"{nick}!*@*")
        elif change.membership == Membership.INVITE:
            conn.send("INVITE", nick, channel)
        else:
            raise NotSupported(f"Cannot carry {change.membership} of {nick} to IRC.")

    async def handle_matrix_power_level(self, change: MatrixPowerLevel) -> None:
        """A member's new power level becomes channel modes (see :mod:`.ranks`), set by the
        Matrix user's own connection; the server's refusal is the Matrix user's answer."""
        if change.portal.receiver:
            raise NotSupported("IRC private chats have no ranks")
        if self.puppet is None:
            raise NotSupported("The relay bot does not change ranks on IRC.")
        channel = await self._prepare(change.portal, change.sender.user_id)
        conn, net = self.conn, self.net
        if change.target is not None:
            nick = net.display_nick(change.target.remote_id) or change.target.remote_id
        else:
            user_id = change.target_matrix_user or ""
            other = net.pool.get(user_id)
            if other is None or conn.fold(channel) not in other.conn.joined:
                raise ConnectorError(
                    f"{user_id} has no IRC connection in {channel}, so there is no one to give "
                    "the rank to on IRC"
                )
            nick = other.conn.nick
        if not conn.registered:
            raise ConnectorError("Not connected to IRC right now; try again in a moment.")
        key = (conn.fold(channel), conn.fold(nick))
        member = net.translator.member(*key)
        add, take = mode_change(change.level, change.previous, member.modes if member else None)
        if member is not None:
            member.matrix_level, member.level_pending = change.level, True
        try:
            if add or take:
                await self._mode(conn, channel, nick, add, take)
        except ConnectorError:
            member = net.translator.member(*key)
            if member is not None:
                member.matrix_level, member.level_pending = None, False
            raise
        if member is not None:
            try:
                await net.bot.sync()  # the listener has seen the MODE come back
            except (ConnectionError, NotConnected, TimeoutError):
                pass
            member = net.translator.member(*key)
            if member is not None:
                member.level_pending = False

    async def _mode(
        self, conn: IRCConnection, channel: str, nick: str, add: str, take: str
    ) -> None:
        try:
            await conn.command("MODE", *mode_params(channel, nick, add, take), errors=MODE_ERRORS)
        except CommandRefused as e:
            if e.code == "482":
                why = f"you are not a channel operator in {channel} on IRC"
            elif e.code in ("401", "441"):
                why = f"{nick} is not in {channel} on IRC"
            elif e.code in ("403", "442"):
                why = f"you are not in {channel} on IRC"
            else:
                why = f"IRC refused the mode change ({e})"
            raise ConnectorError(why) from e
        except TimeoutError as e:
            raise ConnectorError("IRC did not answer the mode change") from e
        except (ConnectionError, NotConnected) as e:
            raise ConnectorError(
                "the IRC connection dropped before the mode change was confirmed"
            ) from e

    async def handle_matrix_access(self, change: MatrixAccess) -> None:
        """A join rule becomes +i or -i, set by the Matrix user's own connection when it is
        a channel operator, else by the bot when it is one."""
        if change.portal.receiver:
            raise NotSupported("IRC private chats have no join rules.")
        net = self.net
        if self.puppet is not None:
            channel = await self._prepare(change.portal, change.sender.user_id)
        else:
            channel = self._target(change.portal)
        state = net.translator.channels.get(net.bot.fold(channel))
        if state is not None and state.modes is not None:
            if ("i" in state.modes) == change.invite_only:
                return  # already so on IRC (this may be the echo of a +i from IRC)
        mode = "+i" if change.invite_only else "-i"
        conns = [self.conn] if self.puppet is not None else []
        conns.append(net.bot)
        for conn in conns:
            if conn.registered and net.is_operator(channel, conn.nick):
                await self._channel_mode(conn, channel, mode)
                return
        now = "open to anyone" if change.invite_only else "invite-only"
        raise NotSupported(
            f"{channel} stays {now} on IRC: neither your IRC connection nor the bridge's "
            f"bot is a channel operator there, so the bridge cannot set {mode}"
        )

    async def _channel_mode(self, conn: IRCConnection, channel: str, mode: str) -> None:
        try:
            await conn.command("MODE", channel, mode, errors=MODE_ERRORS)
        except CommandRefused as e:
            raise ConnectorError(f"IRC refused {mode} on {channel} ({e})") from e
        except TimeoutError as e:
            raise ConnectorError("IRC did not answer the mode change") from e
        except (ConnectionError, NotConnected) as e:
            raise ConnectorError("the IRC connection dropped before the mode change") from e

    async def handle_matrix_profile(self, change: MatrixProfile) -> None:
        """A new display name becomes the puppet's nick (IRC has no avatars). The core calls
        this once per portal the change shows in: the second call finds the nick wanted."""
        if self.puppet is None or not change.display_name:
            return
        await self.puppet.follow_display_name(change.display_name)

    async def handle_matrix_room_meta(self, change: MatrixRoomMeta) -> None:
        if change.portal.receiver:
            raise NotSupported("IRC private chats have no topic or name.")
        if change.topic is None:
            raise NotSupported("IRC channels have no name or avatar; only the topic is synced.")
        if self.puppet is None:
            raise NotSupported("The relay bot does not change topics.")
        channel = await self._prepare(change.portal, change.sender.user_id)
        topic = " ".join(change.topic.replace("\0", "").split())
        if not self.conn.registered:
            raise ConnectorError("Not connected to IRC right now; try again in a moment.")
        self.conn.send("TOPIC", channel, topic)


class NickStore(TableStore):
    """Custom nicks (``irc nick``) in the bridge database, or in memory without one."""

    table = "irc_puppet_nick"

    async def load(self, net: Network) -> None:
        db = await self._db()
        if db is None:
            return
        try:
            rows = await db.fetch(
                "SELECT user_id, nick FROM irc_puppet_nick WHERE network=$1", net.cfg.netid
            )
            for row in rows:
                net.pool.custom_nicks[row["user_id"]] = row["nick"]
        except Exception:
            log.exception("loading custom nicks failed")

    async def save(self, net: Network, user_id: str, nick: str) -> None:
        net.pool.custom_nicks[user_id] = nick
        db = await self._db()
        if db is None:
            return
        try:
            await db.execute(
                "INSERT INTO irc_puppet_nick (network, user_id, nick) VALUES ($1, $2, $3) "
                "ON CONFLICT (network, user_id) DO UPDATE SET nick=excluded.nick",
                net.cfg.netid,
                user_id,
                nick,
            )
        except Exception:
            log.exception("saving a custom nick failed")


class IRCConnector(NetworkConnector):
    name: ClassVar[str] = "irc"
    display_name: ClassVar[str] = "IRC"
    example_config: ClassVar[str] = "connectors/irc/config.py"
    migrations = MIGRATIONS
    login_help = (
        "<network> password <server password> | <network> sasl <account> <password> | "
        "<network> nickserv <account> <password> | <network> certfp <account> <password>"
    )

    def __init__(self, bridge: BridgeAPI, config: Mapping[str, Any]) -> None:
        super().__init__(bridge, config)
        self.configs = parse_config(config)
        self.identd_config = parse_identd(config.get("identd"))
        # One table for every network: the ident server cannot tell networks apart by port.
        self.ident_table = IdentTable() if self.identd_config.enabled else None
        self.identd: IdentServer | None = None
        self.networks: dict[str, Network] = {}
        self.nick_store = NickStore(bridge)
        self.activity_store = ActivityStore(bridge)
        self.autocmd_store = AutoCmdStore(bridge)
        self.seat_store = SeatStore(bridge)
        self.live_nicks = LiveNickStore(bridge)
        # Scale-out workers running the connector split (ShardedConnector): the shards this
        # instance holds. None in one process: everything is this instance's.
        self.scope: ShardScope | None = None
        self._applied: ShardScope | None = None
        self._rescoping: asyncio.Task[None] | None = None
        self._started = False
        # Channel keys (+k) given with ``join``, by portal; the core keeps them sealed.
        self.keys: dict[PortalKey, str] = {}

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> None:
        parse_config(config)
        parse_identd(config.get("identd"))

    def _net(self, network: str) -> Network:
        netid = ids.netid_of(network)
        net = self.networks.get(netid or "")
        if net is None:
            raise ConnectorError(f"unknown IRC network {network!r}")
        return net

    def _net_arg(self, args: list[str]) -> tuple[Network, list[str]]:
        """``[<network>] rest...``: the network may be left out when there is only one."""
        if args and args[0] in self.networks:
            return self.networks[args[0]], args[1:]
        if args and ids.netid_of(args[0]) in self.networks:
            return self.networks[ids.netid_of(args[0]) or ""], args[1:]
        if len(self.networks) == 1:
            return next(iter(self.networks.values())), args
        raise ConnectorError("Say which network: " + ", ".join(sorted(self.networks)))

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        idc = self.identd_config
        if self.ident_table is not None and self.identd is None:
            server = IdentServer(self.ident_table, idc.listen, idc.port)
            try:
                await server.start()
            except OSError as e:
                # IRC works without ident (users show as ~user): say why, and go on.
                log.error("identd cannot listen on %s port %d: %s", idc.listen, idc.port, e)
            else:
                self.identd = server
        for netid, cfg in self.configs.items():
            if netid not in self.networks:
                self.networks[netid] = Network(self, cfg)
        self._applied = self.scope
        await asyncio.gather(*(net.start() for net in self.networks.values()))
        self._started = True
        if self.scope != self._applied:  # changed while starting
            self._rescope_soon()

    # ShardedConnector: split across scale-out workers by Matrix user.
    async def set_scope(self, scope: ShardScope) -> None:
        self.scope = scope
        if self._started:
            self._rescope_soon()

    def _rescope_soon(self) -> None:
        if self._rescoping is None or self._rescoping.done():
            self._rescoping = asyncio.get_running_loop().create_task(self._rescope())

    async def _rescope(self) -> None:
        """Bring the networks to the latest scope. Losses go at once (another worker takes
        them within the lease margin); gains come in bursts while the workers balance, so
        they are taken together, once the scope stopped growing for a moment."""
        while self.scope is not None and self.scope != self._applied:
            before, after = self._applied, self.scope
            assert before is not None
            if after.shards >= before.shards:
                await asyncio.sleep(RESCOPE_SETTLE_S)
                if self.scope is not after:
                    continue  # changed again: look again
            self._applied = after
            for net in self.networks.values():
                try:
                    await net.rescope(before, after)
                except Exception:
                    log.exception("%s: taking the new shards failed", net.cfg.netid)

    async def stop(self) -> None:
        task, self._rescoping = self._rescoping, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(
            *(net.stop() for net in self.networks.values()), return_exceptions=True
        )
        server, self.identd = self.identd, None
        if server is not None:
            await server.stop()

    # ConnectionReporting: the bot's connection and every puppet's, per network.
    _STATES: ClassVar[dict[str, ConnectionState]] = {
        "registered": ConnectionState.CONNECTED,
        "connecting": ConnectionState.CONNECTING,
        "registering": ConnectionState.CONNECTING,
        "idle": ConnectionState.DISCONNECTED,  # between a loss and the next attempt
        "failed": ConnectionState.FAILED,
    }

    async def connection_states(self) -> list[RemoteConnection]:
        out = []
        for net in self.networks.values():
            bot = (net.bot,) if net.main else ()  # split: the main part's instance's
            for conn in (*bot, *(p.conn for p in net.pool.puppets.values())):
                state = self._STATES.get(conn.state)  # "closed": stopped, not counted
                if state is not None:
                    out.append(RemoteConnection(net.network, state))
        return out

    # --- identifiers --------------------------------------------------------------------------

    def namespaces(self) -> list[Namespace]:
        return [
            Namespace(
                network=ids.network_of(netid),
                prefix=ids.network_of(netid) + "_",
                description=f"IRC: {cfg.display_name} ({cfg.host})",
            )
            for netid, cfg in self.configs.items()
        ]

    def _casemapping(self, network: str) -> str:
        cfg = self.configs.get(ids.netid_of(network) or "")
        return cfg.casemapping if cfg else "rfc1459"

    def ghost_localpart(self, network: str, remote_user_id: str) -> str:
        return ids.ghost_localpart(remote_user_id, self._casemapping(network))

    def parse_ghost_localpart(self, network: str, localpart: str) -> str | None:
        return ids.parse_ghost_localpart(localpart, self._casemapping(network))

    def alias_localpart(self, network: str, remote_room_id: str) -> str:
        if ids.is_channel(remote_room_id):
            return ids.alias_localpart(remote_room_id, self._casemapping(network))
        return escape_localpart(remote_room_id)

    def parse_alias_localpart(self, network: str, localpart: str) -> str | None:
        return ids.parse_alias_localpart(localpart, self._casemapping(network))

    # --- portals and ghosts ----------------------------------------------------------------------

    async def resolve_portal(self, portal: PortalKey, user: MatrixUser | None) -> ChatInfo | None:
        net = self._net(portal.network)
        if portal.receiver:
            if not ids.valid_nick(portal.remote_id, 64):
                return None
            nick = net.display_nick(portal.remote_id) or portal.remote_id
            return ChatInfo(name=nick, is_direct=True, members=[portal.remote_id],
                            relay_allowed=False)  # fmt: skip
        if not ids.valid_channel(portal.remote_id, net.bot.chantypes):
            return None
        channel = net.channel_name(portal.remote_id)
        why = net.excluded(channel, user)
        if why is not None:
            if user is None:  # an alias: the homeserver only hears "no such room"
                log.info("%s: %s not opened: %s", net.cfg.netid, channel, why)
                return None
            raise ConnectorError(why)
        canon = net.bot.fold(channel)
        if net.bot.registered and canon not in net.bot.joined:
            try:
                await net.bot.join(channel, net.key_of(channel))
            except ConnectionError as e:
                raise ConnectorError(str(e)) from e
            await asyncio.sleep(0.2)  # let NAMES and TOPIC arrive
        else:
            net.bot.channels.setdefault(canon, net.key_of(channel))
            net.bot.channel_names.setdefault(canon, channel)
            net.bot.start()
        state = net.translator.channels.get(net.bot.fold(channel))
        members = (
            [c.sender.remote_id for c in net.translator.snapshot(net.bot, state, puppets=False)]
            if state
            else []
        )
        return ChatInfo(
            name=state.name if state else channel,
            topic=state.topic if state else None,
            members=members,
        )

    async def resolve_ghost(self, network: str, remote_user_id: str) -> GhostInfo | None:
        net = self._net(network)
        if not ids.valid_nick(remote_user_id, 64):
            return None
        return GhostInfo(display_name=net.display_nick(net.id_of(remote_user_id)))

    async def portal_opened(self, portal: PortalKey) -> None:
        net = self._net(portal.network)
        if portal.receiver or not ids.valid_channel(portal.remote_id):
            return
        channel = net.channel_name(portal.remote_id)
        try:
            await net.bot.join(channel, net.key_of(channel))
        except ConnectionError as e:
            log.warning("%s: bot cannot join %s: %s", net.cfg.netid, channel, e)
            return
        # The member list the bot saw before the room existed had nowhere to go: send it now,
        # so that the room gets the IRC users' power levels (ops, voice).
        state = net.translator.channels.get(net.bot.fold(channel))
        if state is not None and state.names_buffer is None:
            net.emit(
                RemoteChatInfo(
                    portal=portal,
                    sender=Sender(net.id_of(net.bot.nick), net.bot.nick, is_from_me=True),
                    members=net.translator.snapshot(net.bot, state),
                )
            )
        access = net.translator.access(net.bot, state) if state is not None else None
        if access is not None:  # the modes came before the room existed
            net.emit(access)

    async def portal_closed(self, portal: PortalKey) -> None:
        net = self._net(portal.network)
        if portal.receiver:
            return
        channel = net.channel_name(portal.remote_id)
        # Split across workers, every instance is told: each parts its own puppets, the main
        # one the bot too, and forgets the channel's seats.
        for puppet in net.pool.puppets.values():
            puppet.conn.part(channel, "unbridged")
        if net.main:
            net.bot.part(channel, "unbridged")
            await self.seat_store.drop(net.cfg.netid, None, portal.remote_id)

    # --- ThirdPartyLookup ------------------------------------------------------------------------

    def thirdparty_protocol(self) -> ThirdPartyProtocol:
        return ThirdPartyProtocol(
            user_fields=["network", "user"],
            location_fields=["network", "room"],
            field_types={
                "network": {"regexp": ".+", "placeholder": "network id (irc_libera)"},
                "user": {"regexp": ".+", "placeholder": "nick"},
                "room": {"regexp": "[#&+!].+", "placeholder": "#channel"},
            },
        )

    async def thirdparty_locations(self, fields: dict[str, str]) -> list[PortalKey]:
        """A channel, unless it is secret or private (+s, +p) as far as the bot can tell:
        those are never shown to someone looking around."""
        network, room = fields.get("network", ""), fields.get("room", "")
        net = self.networks.get(ids.netid_of(network) or "")
        if net is None or not ids.valid_channel(room, net.bot.chantypes):
            return []
        canon = self.canonical_room_id(network, room)
        if canon is None:
            return []
        channel = net.channel_name(canon)
        if net.excluded(channel, None) is not None:
            return []
        state = net.translator.channels.get(net.bot.fold(channel))
        if state is not None and state.modes is not None and state.modes & {"s", "p"}:
            return []
        return [PortalKey(net.network, canon)]

    async def thirdparty_users(self, fields: dict[str, str]) -> list[tuple[str, str]]:
        network, nick = fields.get("network", ""), fields.get("user", "")
        net = self.networks.get(ids.netid_of(network) or "")
        if net is None or not ids.valid_nick(nick, 64):
            return []
        return [(net.network, net.id_of(nick))]

    # --- LinkConsent and RoomKeys -----------------------------------------------------------

    def set_room_key(self, portal: PortalKey, key: str | None) -> None:
        # Called before start() too, with the keys the core kept.
        if key:
            self.keys[portal] = key
        else:
            self.keys.pop(portal, None)
        net = self.networks.get(ids.netid_of(portal.network) or "")
        if net is None:
            return
        channel = net.channel_name(portal.remote_id)
        for conn in (net.bot, *(p.conn for p in net.pool.puppets.values())):
            if conn.fold(channel) in conn.channels:
                conn.channels[conn.fold(channel)] = key or None

    async def request_link(self, request: LinkRequest) -> ChatInfo | None:
        """The channel consents when the user's own connection is one of its operators, or
        when an operator answers the bot's private request in time."""
        portal, user = request.portal, request.user
        net = self._net(portal.network)
        if portal.receiver:
            raise ConnectorError("IRC private chats cannot be linked to a room")
        if not ids.valid_channel(portal.remote_id, net.bot.chantypes):
            return None
        channel = net.channel_name(portal.remote_id)
        why = net.excluded(channel, user)
        if why is not None:
            raise ConnectorError(why)
        if not await net.bot.wait_registered(min(15.0, net.cfg.register_timeout)):
            raise ConnectorError(f"the bridge is not connected to {net.cfg.display_name} now")
        puppet_nick, joined_for_check = await self._join_own_puppet(net, user, channel)
        try:
            info = await self.resolve_portal(portal, user)
            if info is None:
                return None
            try:
                await net.bot.sync()  # the channel's member list is in
            except (ConnectionError, NotConnected, TimeoutError) as e:
                raise ConnectorError(f"IRC did not answer: {e}") from e
            if puppet_nick is not None and net.is_operator(channel, puppet_nick):
                joined_for_check = None
                return info
            await self._ask_operators(net, request, channel)
            joined_for_check = None
            return info
        finally:
            if joined_for_check is not None:
                joined_for_check.part(channel, "")

    async def _join_own_puppet(
        self, net: Network, user: MatrixUser, channel: str
    ) -> tuple[str | None, IRCConnection | None]:
        """The user's own connection in the channel, to see whether it is an operator there:
        (its nick, the connection when it joined only for this). Before the bot: a channel
        nobody is in yet is its creator's, the user's."""
        if not net.cfg.puppets:
            return None, None
        puppet = net.pool.obtain(user.user_id, user.display_name)
        if puppet is None:
            return None, None
        conn = puppet.conn
        conn.start()
        if not await conn.wait_registered(min(15.0, net.cfg.register_timeout)):
            return None, None
        was_in = conn.fold(channel) in conn.joined
        try:
            await conn.join(channel, net.key_of(channel))
        except ConnectionError:
            return None, None
        return conn.nick, None if was_in else conn

    async def _ask_operators(self, net: Network, request: LinkRequest, channel: str) -> None:
        ops = net.operators(channel)
        if not ops:
            raise ConnectorError(
                f"you are not a channel operator in {channel} on IRC, and no operator is "
                "there to ask"
            )
        timeout = net.cfg.link_request_timeout
        label = " ".join(request.room_label.split())
        who = " ".join(request.user.user_id.split())
        ask = net.consent.open(net.bot.fold(channel), channel)
        for nick in ops:
            net.bot.send(
                "NOTICE",
                nick,
                f"{who} asks to bridge {channel} with the Matrix room {label}. Answer me "
                f"`yes {channel}` or `no {channel}` within {timeout:.0f} seconds.",
            )
        try:
            await request.tell(
                f"You are not a channel operator in {channel} on IRC: asked its operators "
                f"({', '.join(ops)}) to agree; waiting up to {timeout:.0f} seconds for an "
                "answer."
            )
        except Exception as e:  # the answer still counts: the user hears the outcome
            log.warning("%s: telling of the link request failed: %s", net.cfg.netid, e)
        answer = await net.consent.wait(ask, timeout)
        if answer is None:
            raise ConnectorError(
                f"no operator of {channel} answered within {timeout:.0f} seconds, so the "
                "room stays unbridged"
            )
        agreed, nick = answer
        if not agreed:
            raise ConnectorError(f"{nick}, an operator of {channel}, said no")

    # --- who speaks ------------------------------------------------------------------------------

    async def client_for(self, user: MatrixUser, portal: PortalKey) -> NetworkClient | None:
        net = self._net(portal.network)
        if not net.cfg.puppets:
            return None
        puppet = net.pool.obtain(user.user_id, user.display_name)
        if puppet is None:
            return None
        if puppet.client is None:
            puppet.client = IRCClient(net, puppet)
        client: IRCClient = puppet.client
        return client

    async def relay_client(self, portal: PortalKey) -> NetworkClient | None:
        return self._net(portal.network).relay

    # --- DirectMessaging ----------------------------------------------------------------------

    async def open_dm(self, user: MatrixUser, network: str, remote_user_id: str) -> PortalKey:
        net = self._net(network)
        if not ids.valid_nick(remote_user_id, 64):
            raise ConnectorError(f"{remote_user_id!r} is not an IRC nick")
        return PortalKey(net.network, net.id_of(remote_user_id), receiver=user.user_id)

    # --- LoginCapable -------------------------------------------------------------------------

    async def login(self, user: MatrixUser, args: list[str]) -> LoginResult:
        net, rest = self._net_arg(args)
        creds: dict[str, object] = {"network": net.cfg.netid}
        if len(rest) == 2 and rest[0].lower() in ("password", "pass"):
            creds["password"] = rest[1]
            remote_name = ""
        elif len(rest) == 3 and rest[0].lower() in ("sasl", "nickserv"):
            creds["sasl_account"] = rest[1]
            creds["sasl_password"] = rest[2]
            remote_name = rest[1]
        elif len(rest) == 3 and rest[0].lower() == "certfp":
            return await self._login_certfp(net, user, rest[1], rest[2])
        else:
            raise ConnectorError("Usage: login irc " + self.login_help)
        puppet = await self._connect_with(net, user, creds, None)
        return LoginResult(
            # One login per Matrix user and IRC network (the core keys logins by connector
            # name and login id). DM portals use the Matrix user id as receiver.
            login_id=net.login_id(user.user_id),
            credentials=creds,
            remote_name=remote_name or puppet.conn.nick,
            message=f"Connected to {net.cfg.display_name} as {puppet.conn.nick}.",
        )

    async def _connect_with(
        self,
        net: Network,
        user: MatrixUser,
        creds: dict[str, object],
        context: Any,
    ) -> Puppet:
        """(Re)connect the user's puppet with ``creds`` (and the certificate's TLS context);
        on failure the previous login is back in place and ``ConnectorError`` says why."""
        pool = net.pool
        old, old_ctx = pool.credentials.get(user.user_id), pool.client_contexts.get(user.user_id)
        pool.credentials[user.user_id] = dict(creds)
        if context is not None:
            pool.client_contexts[user.user_id] = context
        else:
            pool.client_contexts.pop(user.user_id, None)
        # While the command is logging in, its answer says what went wrong: no notices.
        net.logging_in.add(user.user_id)
        puppet = pool.get(user.user_id)
        if puppet is None:
            puppet = pool.obtain(user.user_id, user.display_name)
            if puppet is not None:
                puppet.quiet = True
        else:
            puppet.quiet = True
            await pool.restart(user.user_id)
        if puppet is None:
            net.logging_in.discard(user.user_id)
            raise ConnectorError("The bridge has no free IRC connection right now.")

        async def restore(reason: str, refused: bool = False) -> None:
            if old is None:
                pool.credentials.pop(user.user_id, None)
            else:
                pool.credentials[user.user_id] = old
            if old_ctx is None:
                pool.client_contexts.pop(user.user_id, None)
            else:
                pool.client_contexts[user.user_id] = old_ctx
            await pool.remove(user.user_id, "login failed")
            # What to do, when the credentials were the trouble (not a network error).
            advice = net.advice(puppet.conn) if puppet.conn.fatal_kind or refused else ""
            raise ConnectorError(
                f"Login to {net.cfg.display_name} failed: {reason}"
                + (f". {advice}" if advice else "")
            )

        try:
            try:
                await puppet.conn.connect()
            except NotConnected as e:
                await restore(str(e))
            conn = puppet.conn
            if conn.params.auth == "nickserv" and conn.identify_state == "sent":
                # The answer to IDENTIFY decides: a refused password is not stored.
                try:
                    await asyncio.wait_for(conn.identify_answered.wait(), 20)
                except TimeoutError:
                    pass  # services may be slow or silent: the login stands
                if conn.identify_state == "refused":
                    await restore(f"NickServ refused the login: {conn.identify_error}", True)
            return puppet
        finally:
            puppet.quiet = False
            net.logging_in.discard(user.user_id)

    async def _login_certfp(
        self, net: Network, user: MatrixUser, account: str, password: str
    ) -> LoginResult:
        """Log in once with the password over TLS with a new client certificate, add the
        certificate to the account (NickServ CERT ADD), then connect with the certificate
        alone (SASL EXTERNAL); only the certificate is stored."""
        cfg = net.cfg
        if not cfg.tls:
            raise ConnectorError(
                f"certfp needs TLS to {cfg.display_name}: the bridge's admin must set tls: true "
                "for the network; until then use login irc "
                f"{cfg.netid} {'sasl' if cfg.auth == 'sasl' else 'nickserv'} <account> <password>"
            )
        pool, uid = net.pool, user.user_id
        before, before_ctx = pool.credentials.get(uid), pool.client_contexts.get(uid)

        async def forget() -> None:
            """Back to the login the user had before (the password is not kept)."""
            await pool.remove(uid, "login failed")
            if before is None:
                pool.credentials.pop(uid, None)
            else:
                pool.credentials[uid] = before
            if before_ctx is None:
                pool.client_contexts.pop(uid, None)
            else:
                pool.client_contexts[uid] = before_ctx

        cert, key = await asyncio.to_thread(make_certificate, f"{account} via Matrix")
        try:
            context = await client_context(cfg.ssl_context, cert, key)
        except CertificateError as e:
            raise ConnectorError(str(e)) from e
        first: dict[str, object] = {
            "network": cfg.netid,
            "sasl_account": account,
            "sasl_password": password,
        }
        puppet = await self._connect_with(net, user, first, context)
        conn = puppet.conn
        fp = fingerprint(cert)
        services = cfg.nickserv_nick

        def answer(line: Line) -> bool:
            return line.command == "NOTICE" and conn.fold(line.nick) == conn.fold(services)

        waiting = conn.expect_line(answer)
        try:
            # Without a fingerprint: the services take the one the server saw on this
            # connection, in the server's own hash.
            conn.send("PRIVMSG", services, "CERT ADD")
            reply = strip_formatting((await asyncio.wait_for(waiting, 20)).param(-1))
        except (TimeoutError, NotConnected, ValueError) as e:
            waiting.cancel()
            await forget()
            why = "no answer" if isinstance(e, TimeoutError) else str(e)
            raise ConnectorError(
                f"{services} did not take the certificate ({why}); nothing was stored. Try "
                f"again, or log in with login irc {cfg.netid} sasl <account> <password>"
            ) from e
        low = reply.lower()
        if not ("added" in low or "already" in low) or "not " in low:
            await forget()
            raise ConnectorError(
                f"{services} did not add the certificate: {reply}. Nothing was stored."
            )
        final: dict[str, object] = {
            "network": cfg.netid,
            "sasl_account": account,
            "cert": cert,
            "key": key,
        }
        # As the services keep it (the server's hash), for CERT DEL at logout.
        if added := _FINGERPRINT.search(reply):
            final["certfp"] = added.group(0)
        if cfg.auth == "sasl":
            final["sasl_mechanism"] = "EXTERNAL"
        try:
            # Once more, with the certificate alone: a login that works is what is stored.
            puppet = await self._connect_with(net, user, final, context)
        except ConnectorError as e:
            await forget()
            raise ConnectorError(
                f"{services} added the certificate, but logging in with it failed: {e}"
            ) from e
        conn = puppet.conn
        if conn.account is None:
            # Without SASL the services log the connection in when they see the certificate,
            # a moment after registration (900).
            logged_in = conn.expect_line(lambda line: line.command == "900")
            try:
                await asyncio.wait_for(logged_in, 15)
            except TimeoutError:
                pass
        if conn.account is None:
            how = (
                f"the services have not said yet that the certificate logged you in as "
                f"{account} (irc status shows it once they do)"
            )
        else:
            how = f"logged in as {conn.account} with a client certificate"
        return LoginResult(
            login_id=f"{cfg.netid}/{user.user_id}",
            credentials=final,
            remote_name=account,
            message=(
                f"Connected to {cfg.display_name} as {conn.nick}, {how} (SHA-256 "
                f"fingerprint {fp}). Your password is not stored: later connections use the "
                "certificate."
            ),
        )

    async def logout(self, login: Login) -> None:
        netid = str(login.credentials.get("network") or ids.netid_of(login.network) or "")
        net = self.networks.get(netid)
        if net is None:
            return
        dropped = False
        if isinstance(login.credentials.get("cert"), str):
            dropped = await self._drop_certificate(net, login)
        net.pool.credentials.pop(login.user_id, None)
        net.pool.client_contexts.pop(login.user_id, None)
        try:
            await self.autocmd_store.save(net, login.user_id, [])  # they belong to the login
        except Exception:
            log.exception("%s: forgetting auto-commands failed", netid)
        # Seats kept without Matrix membership end with the login.
        kept = self.seat_store.of(netid, login.user_id)
        await self.seat_store.drop(netid, login.user_id, None)
        puppet = net.pool.get(login.user_id)
        if puppet is not None:
            for remote_id in kept:
                puppet.conn.part(net.channel_name(remote_id), "logged out")
        if dropped:
            await net.pool.remove(login.user_id, "logged out")  # connected only for CERT DEL
        else:
            await net.pool.restart(login.user_id)

    async def _drop_certificate(self, net: Network, login: Login) -> bool:
        """Take a certfp login's fingerprint off the services account (NickServ CERT DEL)
        through its connection while that is still logged in, connected for the purpose if
        it was not (True then); the user is told when that fails. The certificate itself
        goes with the login's credentials."""
        creds, uid, services = login.credentials, login.user_id, net.cfg.nickserv_nick
        cert = str(creds.get("cert"))
        stored = creds.get("certfp")
        try:
            fp = stored if isinstance(stored, str) and stored else fingerprint(cert)
        except ValueError:
            fp = ""
        account = str(creds.get("sasl_account") or "")
        puppet, connected = net.pool.get(uid), False
        if puppet is None or not puppet.conn.registered:
            connected = puppet is None
            try:
                name = (await self.bridge.matrix_user(uid)).display_name
            except ConnectorError:
                name = uid[1:].split(":", 1)[0]
            puppet = net.pool.obtain(uid, name)
        reply, why = "", ""
        if puppet is None:
            why = "the bridge has no free IRC connection right now"
        elif not fp:
            why = "the stored certificate is damaged"
        else:
            conn = puppet.conn
            if not conn.fatal and await conn.wait_registered(20) and conn.account is None:
                logged_in = conn.expect_line(lambda line: line.command == "900")
                try:  # without SASL, the services log the certificate in after registration
                    await asyncio.wait_for(logged_in, 10)
                except TimeoutError:
                    pass
            if not conn.registered or conn.account is None:
                why = "your connection is not logged in with it"
            else:

                def answer(line: Line) -> bool:
                    return line.command == "NOTICE" and conn.fold(line.nick) == conn.fold(services)

                waiting = conn.expect_line(answer)
                try:
                    conn.send("PRIVMSG", services, f"CERT DEL {fp}")
                    reply = strip_formatting((await asyncio.wait_for(waiting, 20)).param(-1))
                except (TimeoutError, NotConnected, ValueError) as e:
                    waiting.cancel()
                    why = f"{services} did not answer" if isinstance(e, TimeoutError) else str(e)
                else:
                    low = reply.lower()
                    if ("deleted" not in low and "removed" not in low) or "not " in low:
                        why = f"{services} said: {reply}"
        if why:
            where = f"your account {account}" if account else "your account"
            log.info("%s: fingerprint of %s not removed: %s", net.cfg.netid, uid, why)
            await self.bridge.notify(
                uid,
                f"The client certificate of your login to {net.cfg.display_name} may still "
                f"log in to {where}: removing its fingerprint failed ({why}). Remove it "
                f"yourself: /msg {services} CERT DEL {fp or '<fingerprint>'}",
            )
        return connected

    # --- ExtraCommands ------------------------------------------------------------------------

    def commands(self) -> list[ConnectorCommand]:
        return [
            ConnectorCommand(
                "nick", "Change your IRC nick", self._cmd_nick, args="[network] <nick>"
            ),
            ConnectorCommand(
                "raw",
                "Send a raw IRC line through your own connection",
                self._cmd_raw,
                admin_only=True,
                args="[network] <line>",
            ),
            ConnectorCommand(
                "reconnect", "Reconnect your IRC connection", self._cmd_reconnect, args="[network]"
            ),
            ConnectorCommand("status", "Show your IRC connections", self._cmd_status),
            ConnectorCommand(
                "autocmd",
                "Commands your connection sends after connecting: msg <nick> <text>, mode <+modes>",
                self._cmd_autocmd,
                args="[network] add <command> | list | del <number> | clear",
            ),
        ]

    async def _cmd_autocmd(self, user: MatrixUser, args: list[str]) -> str:
        net, rest = self._net_arg(args)
        cmds = list(net.pool.autocmds.get(user.user_id, ()))
        name = net.cfg.display_name
        sub = rest[0].lower() if rest else "list"
        if sub == "list":
            if not cmds:
                return f"No auto-commands on {name}."
            lines = [f"{i}. {show_autocmd(c)}" for i, c in enumerate(cmds, 1)]
            return f"Auto-commands on {name}, sent after each connect:\n" + "\n".join(lines)
        if sub == "add":
            if len(cmds) >= MAX_COMMANDS:
                return f"You have {MAX_COMMANDS} auto-commands on {name}, the most there may be."
            try:
                cmd = parse_autocmd(rest[1:], net.cfg.nickserv_nick)
            except AutoCmdError as e:
                return f"Not added: {e}."
            cmds.append(cmd)
        elif sub in ("del", "delete", "remove"):
            if len(rest) != 2 or not rest[1].isdigit() or not 1 <= int(rest[1]) <= len(cmds):
                return f"Usage: irc autocmd {net.cfg.netid} del <number> (see irc autocmd list)"
            cmds.pop(int(rest[1]) - 1)
        elif sub == "clear":
            cmds = []
        else:
            return "Usage: irc autocmd [network] add <command> | list | del <number> | clear"
        try:
            await self.autocmd_store.save(net, user.user_id, cmds)
        except Exception:
            log.exception("%s: saving auto-commands failed", net.cfg.netid)
            return "The auto-commands could not be saved; nothing changed. Try again later."
        puppet = net.pool.get(user.user_id)
        if puppet is not None:
            puppet.conn.params.after_connect = list(cmds)
        return (
            f"Saved: {len(cmds)} auto-command(s) on {name}, sent from your next connection on "
            f"(irc reconnect {net.cfg.netid} to apply them now)."
        )

    async def _cmd_nick(self, user: MatrixUser, args: list[str]) -> str:
        net, rest = self._net_arg(args)
        if len(rest) != 1:
            return "Usage: nick [network] <nick>"
        nick = rest[0]
        if not ids.valid_nick(nick, 30):
            return f"{nick!r} is not a valid IRC nick."
        await self.nick_store.save(net, user.user_id, nick)
        puppet = net.pool.obtain(user.user_id, user.display_name)
        if puppet is None:
            return "Saved; it will be used when you connect."
        puppet.set_nick(nick)
        if not puppet.conn.registered:
            return f"Your nick on {net.cfg.display_name} will be {nick}."
        try:
            new = await puppet.conn.change_nick(nick)
        except ValueError as e:
            return f"The server refused the nick: {e}"
        except NotConnected:
            return f"Your nick on {net.cfg.display_name} will be {nick}."
        return f"You are now {new} on {net.cfg.display_name}."

    async def _cmd_raw(self, user: MatrixUser, args: list[str]) -> str:
        if user.permission != "admin":
            return "Only bridge admins may send raw IRC commands."
        net, rest = self._net_arg(args)
        raw = " ".join(rest)
        if not raw:
            return "Usage: raw [network] <line>"
        puppet = net.pool.obtain(user.user_id, user.display_name)
        if puppet is None or not await puppet.conn.wait_registered(15):
            return "Your IRC connection is not up."
        try:
            puppet.conn.send_raw(raw)
        except (ValueError, NotConnected) as e:
            return f"Not sent: {e}"
        return "Sent."

    async def _cmd_reconnect(self, user: MatrixUser, args: list[str]) -> str:
        net, _ = self._net_arg(args)
        if net.pool.get(user.user_id) is None:
            return "You have no connection on that network."
        await net.pool.restart(user.user_id)
        return "Reconnecting."

    async def _cmd_status(self, user: MatrixUser, args: list[str]) -> str:
        lines = []
        for netid, net in sorted(self.networks.items()):
            puppet = net.pool.get(user.user_id)
            if puppet is None:
                lines.append(f"{netid}: not connected")
            else:
                c = puppet.conn
                chans = ", ".join(sorted(c.channel_names.values())) or "no channels"
                account = f", logged in as {c.account}" if c.account else ""
                lines.append(f"{netid}: {c.state} as {c.nick}{account} ({chans})")
        return "\n".join(lines)
