"""One IRC connection on plain asyncio (a ``Protocol``, no task while connected).

It does: IRCv3 capability negotiation (``CAP LS 302``), SASL PLAIN and EXTERNAL (a client
certificate in ``ssl``), NickServ IDENTIFY after registration (``auth="nickserv"``), the
user's auto-commands after connect, registration with
nick-collision fallback, ISUPPORT, keep-alive pings, flood control (a token bucket per
connection), a queue for messages sent while disconnected (delivered after reconnect, or
reported failed after ``queue_timeout``), reconnects with exponential backoff and jitter
(paced by a :class:`ConnectPacer` shared by all connections of a network), and channel rejoin.

Connections that do not listen to channels (puppets) set ``listen_channels=False``: channel
traffic (others' JOIN/PART/QUIT/NICK/MODE, channel PRIVMSG/NOTICE, NAMES) is dropped by a few
byte comparisons before any parsing, so 1000 puppets in one channel stay cheap.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import itertools
import logging
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, cast

from .formatting import strip_formatting
from .identd import IdentTable
from .ids import CHANTYPES_DEFAULT
from .protocol import (
    JOIN_ERRORS,
    MAX_INCOMING,
    NICK_ERRORS,
    SASL_FAIL,
    SASL_OK,
    Line,
    casefold,
    parse_line,
    serialize,
    split_source,
)

log = logging.getLogger("mimi.irc.client")

# NickServ's answers to IDENTIFY (Atheme, Anope, OFTC's services), lower case.
IDENTIFIED = ("you are now identified", "successfully identified", "password accepted")
IDENTIFY_REFUSED = ("invalid password", "incorrect password", "password incorrect",
                    "is not registered", "not a registered", "identify failed",
                    "authentication failed", "no such account", "wrong password")  # fmt: skip

WANTED_CAPS = frozenset(
    {
        "server-time",
        "message-tags",
        "echo-message",
        "multi-prefix",
        "away-notify",
        "account-tag",
        "batch",
        "cap-notify",
        "chghost",
    }
)


class NotConnected(Exception):
    pass


class NickRefused(ValueError):
    """The server refused a nick change; ``code`` is its numeric (433: in use)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


class CommandRefused(Exception):
    """The server answered a command with an error numeric (``code``: 482, 441...)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Linux; IPv6 sockets honour it too


def _set_freebind(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    except OSError:
        pass  # not Linux: the address must be on an interface


async def _resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[Any]:
    """getaddrinfo; an address literal without the thread pool (no lookup, so it cannot
    block), which also keeps paced connects in the order the pacer granted them."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)


class ConnectPacer:
    """At most ``rate`` connection attempts per second among the connections sharing it, the
    waiting one of lowest rank first.

    After a restart or an outage everything waits at once: the bot (rank -inf, not gated)
    goes first, then the puppets, most recently active first. Gated waiters (puppets) wait
    until ``gate()`` is true (the bot is back), so they queue up in rank order meanwhile
    instead of racing in on their own timers; :meth:`poke` says the gate may have opened.
    A gate closed for ``gate_timeout`` seconds while puppets wait lets them go anyway: a bot
    that cannot get back (its nick held, a ban on it alone) does not keep every user off.
    """

    def __init__(
        self, rate: float, gate: Callable[[], bool] | None = None, gate_timeout: float = 60.0
    ) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.gate = gate
        self.gate_timeout = gate_timeout
        self._closed_since: float | None = None  # when gated waiters first met a closed gate
        self._next = 0.0
        self._seq = itertools.count()
        self._free: list[tuple[float, int, asyncio.Future[None]]] = []
        self._gated: list[tuple[float, int, asyncio.Future[None]]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def wait(self, rank: float = 0.0, gated: bool = False) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._gated if gated else self._free, (rank, next(self._seq), future))
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._grant_loop())
        await future  # a cancelled waiter is skipped by the grant loop

    def poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def close(self) -> None:
        """Stop granting (the connections are gone)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _pick(self) -> asyncio.Future[None] | None:
        for queue in (self._free, self._gated):
            while queue and queue[0][2].done():
                heapq.heappop(queue)
        gate_open = self.gate is None or self.gate()
        if gate_open or not self._gated:
            self._closed_since = None
        else:
            now = asyncio.get_running_loop().time()
            if self._closed_since is None:
                self._closed_since = now
            gate_open = now - self._closed_since >= self.gate_timeout
        candidates = [q for q in (self._free, self._gated if gate_open else []) if q]
        if not candidates:
            return None
        return heapq.heappop(min(candidates, key=lambda q: q[0][:2]))[2]

    async def _grant_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while self._free or self._gated:
            now = loop.time()
            if self._next > now:
                # Waiters arriving meanwhile are ranked before the slot is given.
                await asyncio.sleep(self._next - now)
                continue
            self._wake.clear()
            future = self._pick()
            if future is None:
                if not (self._free or self._gated):
                    break
                # Only gated waiters, gate closed: poke() or a new waiter wakes us; the
                # timeout catches a gate that opened without a poke (the bot failed for good)
                # and the gate's own time limit.
                try:
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                except TimeoutError:
                    pass
                continue
            future.set_result(None)
            self._next = loop.time() + self.interval


@dataclass(slots=True)
class ConnParams:
    host: str
    port: int
    nick: str
    username: str
    realname: str
    ssl: ssl.SSLContext | None = None
    password: str | None = None
    sasl_account: str | None = None
    sasl_password: str | None = None
    sasl_mechanism: str = "PLAIN"  # EXTERNAL: the client certificate in ``ssl`` logs in
    auth: str = "sasl"  # sasl | nickserv (IDENTIFY after registration, for servers without)
    nickserv: str = "NickServ"
    identify_template: str = "IDENTIFY {account} {password}"
    # Sent after every registration (and IDENTIFY): ("msg", target, text) | ("mode", modes).
    after_connect: list[tuple[str, ...]] = field(default_factory=list)
    caps: frozenset[str] = WANTED_CAPS
    flood_burst: int = 4
    flood_rate: float = 1.0
    reconnect_min: float = 2.0
    reconnect_max: float = 300.0
    queue_timeout: float = 120.0
    ping_interval: float = 90.0
    ping_timeout: float = 180.0
    register_timeout: float = 30.0
    nicklen: int = 30
    bind_address: str | None = None  # local address the connection leaves from
    # Bind even when the address is not on an interface: an address of a prefix routed to
    # this host (``ip -6 route add local <prefix> dev lo``) is bindable only so.
    freebind: bool = False
    ident: IdentTable | None = None  # where the ident server finds this connection's USER


@dataclass(slots=True)
class Pending:
    """A message waiting for the connection (or the channel join)."""

    target: str
    lines: list[bytes]
    created: float
    on_fail: Callable[[str], None] | None = None
    channel: str | None = None  # canonical channel name when the target is a channel


class ConnectionHandler:
    """Callbacks of a connection; the defaults do nothing."""

    def irc_line(self, conn: IRCConnection, line: Line) -> None:
        pass

    def irc_registered(self, conn: IRCConnection) -> None:
        pass

    def irc_disconnected(self, conn: IRCConnection, reason: str) -> None:
        pass

    def irc_failed(self, conn: IRCConnection, reason: str) -> None:
        """Connecting failed for a reason reconnecting cannot fix (``conn.fatal``, with
        ``conn.fatal_kind``); the connection stays down until started again."""

    def irc_identify_failed(self, conn: IRCConnection, reason: str) -> None:
        """NickServ refused IDENTIFY (``auth="nickserv"``); the connection stays up."""

    def irc_state(self, conn: IRCConnection, old: str, new: str) -> None:
        """``conn.state`` changed (``fatal`` and ``stats.last_error`` say why it went down)."""

    def irc_casemapping(self, conn: IRCConnection) -> None:
        """The server announced a case mapping other than the one ``conn`` folded with."""

    def irc_nick_taken(self, conn: IRCConnection, nick: str, attempt: int) -> str | None:
        """An alternative nick during registration (None: give up on this connection)."""
        from .ids import alternative_nick

        return alternative_nick(conn.params.nick, attempt, conn.params.nicklen)

    def irc_connect_rank(self, conn: IRCConnection) -> tuple[float, bool]:
        """Where ``conn`` queues at the pacer: (rank, lower first; gated: waits for the gate)."""
        return 0.0, False

    def irc_welcomed(self, conn: IRCConnection) -> Awaitable[None] | None:
        """The server accepted ``conn.nick`` (001). An awaitable returned holds the connection
        in "registering" (no JOIN, no queued message sent) until it is done: something others
        must know before this connection shows up in a channel (its nick, say)."""
        return None


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[None]
    key: str = ""


@dataclass(slots=True)
class _Barrier:
    """A PING sent after a command: its PONG says the server is done with the command."""

    token: str
    future: asyncio.Future[None]
    errors: frozenset[str] = frozenset()
    subjects: frozenset[str] = frozenset()  # folded parameters an error numeric must name
    refusal: CommandRefused | None = None


@dataclass(slots=True)
class ConnStats:
    connects: int = 0
    lines_in: int = 0
    lines_ignored: int = 0
    bad_lines: int = 0
    lines_out: int = 0
    last_error: str = ""
    extra: dict[str, int] = field(default_factory=dict)


class IRCConnection(asyncio.Protocol):
    # One per puppet, thousands per process: no per-instance dict (about 1 KiB each).
    __slots__ = (
        "_attempt",
        "_barrier_seq",
        "_barriers",
        "_buf",
        "_cap_pending",
        "_expire_handle",
        "_ident_key",
        "_ignore_first",
        "_joins",
        "_last_rx",
        "_line_waiters",
        "_lost",
        "_ls_caps",
        "_me",
        "_me_bang",
        "_nick_attempt",
        "_nick_waiter",
        "_out",
        "_overflow",
        "_ping_handle",
        "_pump_handle",
        "_ready",
        "_sasl_state",
        "_state",
        "_task",
        "_tok_time",
        "_tokens",
        "_welcome_hold",
        "account",
        "caps",
        "casemapping",
        "channel_names",
        "channels",
        "chantypes",
        "fatal",
        "fatal_kind",
        "handler",
        "host",
        "identify_answered",
        "identify_error",
        "identify_state",
        "isupport",
        "joined",
        "listen_channels",
        "name",
        "nick",
        "pacer",
        "params",
        "pending",
        "prefixes",
        "stats",
        "transport",
        "user",
    )

    def __init__(
        self,
        params: ConnParams,
        handler: ConnectionHandler | None = None,
        *,
        pacer: ConnectPacer | None = None,
        listen_channels: bool = True,
        name: str = "",
    ) -> None:
        self.params = params
        self.handler = handler or ConnectionHandler()
        self.pacer = pacer
        self.listen_channels = listen_channels
        self.name = name or params.nick
        self.transport: asyncio.Transport | None = None
        self.nick = params.nick
        self.user = ""
        self.host: str | None = None
        self._state = "idle"  # idle | connecting | registering | registered | closed | failed
        self.caps: set[str] = set()
        self.isupport: dict[str, str] = {}
        self.casemapping = "rfc1459"
        self.chantypes = CHANTYPES_DEFAULT
        self.prefixes: dict[str, str] = {"@": "o", "+": "v"}  # prefix char -> mode letter
        self.channels: dict[str, str | None] = {}  # desired: canonical -> key
        self.channel_names: dict[str, str] = {}  # canonical -> as given
        self.joined: set[str] = set()
        self.pending: deque[Pending] = deque()
        self.stats = ConnStats()
        self.fatal: str | None = None  # set when reconnecting cannot help (bad credentials)
        # What failed: sasl (refused login) | mechanism (not offered) | password (PASS)
        self.fatal_kind = ""
        self.account: str | None = None  # the services account (900), None when not logged in
        # IDENTIFY: "" | sent | done | refused. Refused stays until new credentials come
        # (forget_refusal): the same password is not sent again at each reconnect.
        self.identify_state = ""
        self.identify_error = ""  # NickServ's answer refusing IDENTIFY
        self.identify_answered = asyncio.Event()  # set when IDENTIFY is no longer "sent"
        self._line_waiters: list[tuple[Callable[[Line], bool], asyncio.Future[Line]]] = []
        self._buf = b""
        self._overflow = False
        self._me = b""
        self._me_bang = b""
        self._ignore_first = b"#&+!"
        self._out: deque[tuple[bytes, Pending | None]] = deque()
        self._tokens = float(params.flood_burst)
        self._tok_time = 0.0
        self._pump_handle: asyncio.TimerHandle | None = None
        self._ping_handle: asyncio.TimerHandle | None = None
        self._expire_handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._lost: asyncio.Future[None] | None = None
        self._attempt = 0
        self._nick_attempt = 0
        self._ls_caps: dict[str, str] = {}
        self._cap_pending = 0
        self._sasl_state = ""
        self._last_rx = 0.0
        self._joins: dict[str, _Waiter] = {}
        self._nick_waiter: _Waiter | None = None
        self._barriers: list[_Barrier] = []  # few and rare: a deque costs 760 bytes
        self._barrier_seq = itertools.count(1)
        self._ident_key: tuple[int, str, int] | None = None
        self._welcome_hold: asyncio.Task[None] | None = None
        self._set_me(params.nick)

    # --- public API --------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, new: str) -> None:
        old, self._state = self._state, new
        if old != new:
            self.handler.irc_state(self, old, new)

    @property
    def registered(self) -> bool:
        return self.state == "registered"

    def fold(self, name: str) -> str:
        return casefold(name, self.casemapping)

    def is_channel(self, name: str) -> bool:
        return bool(name) and name[0] in self.chantypes

    def start(self) -> None:
        """Connect (and keep reconnecting) in the background."""
        if self.state == "closed":
            self.state = "idle"
        self.fatal = None
        self.fatal_kind = ""
        if self._ready is None:
            self._ready = asyncio.Event()
        elif not self.registered:
            self._ready.clear()  # set by a failure that ended the last attempt
        if self._task is None or self._task.done():
            if self.state in ("idle", "failed"):
                self._task = asyncio.get_running_loop().create_task(self._connect_loop())

    async def wait_registered(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        if self.registered:
            return True
        if self._ready is None:
            self._ready = asyncio.Event()
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return self.registered

    async def connect(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Start and wait for registration; raise :class:`NotConnected` on failure."""
        self.start()
        if not await self.wait_registered(timeout or self.params.register_timeout + 5):
            raise NotConnected(self.fatal or self.stats.last_error or "could not connect")

    async def quit(self, message: str = "") -> None:
        """Disconnect for good (until :meth:`start`). Queued messages fail."""
        self.state = "closed"
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        self._cancel_timers()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            try:
                transport.write(serialize("QUIT", message) if message else b"QUIT\r\n")
            except Exception:
                pass
            transport.close()
            lost = self._lost
            if lost is not None and not lost.done():
                try:
                    await asyncio.wait_for(asyncio.shield(lost), 2)
                except TimeoutError:
                    transport.abort()
        self._fail_barriers()
        self._fail_pending("the IRC connection was closed")

    def send(self, command: str, *params: str, tags: dict[str, str] | None = None) -> None:
        """Send a command through the flood-control queue. Raises ``UnsafeLine`` for a line that
        would not be one command, :class:`NotConnected` when not registered."""
        data = serialize(command, *params, tags=tags)
        if not self.registered:
            raise NotConnected("not connected to IRC")
        self._enqueue(data, None)

    def send_raw(self, raw: str) -> None:
        """A raw line typed by an admin: one line, parsed and re-serialized."""
        line = parse_line(raw)
        if line is None or any(c in raw for c in "\r\n\0"):
            raise ValueError("not a single IRC line")
        self.send(line.command, *line.params)

    def queue_message(
        self,
        target: str,
        lines: list[bytes],
        on_fail: Callable[[str], None] | None = None,
    ) -> None:
        """Deliver serialized lines to ``target`` now, or after (re)connect and channel join."""
        channel = self.fold(target) if self.is_channel(target) else None
        msg = Pending(target, lines, time.monotonic(), on_fail, channel)
        if channel is not None and channel not in self.channels:
            self.channels[channel] = None
            self.channel_names[channel] = target
            if self.registered:
                self._send_join(target, None)
        if self.registered and (channel is None or channel in self.joined) and not self.pending:
            self._push(msg)
        else:
            self.pending.append(msg)
            self._arm_expiry()
            if self.state in ("idle", "failed"):
                self.start()

    async def join(self, channel: str, key: str | None = None, timeout: float = 15.0) -> None:  # noqa: ASYNC109
        """Join (and keep rejoining) a channel. Waits for the server's answer when connected;
        raises ``ConnectionError`` with the server's reason when refused."""
        canon = self.fold(channel)
        self.channels[canon] = key
        self.channel_names[canon] = channel
        if not self.registered or canon in self.joined:
            return
        waiter = self._joins.get(canon)
        if waiter is None:
            loop = asyncio.get_running_loop()
            waiter = _Waiter(loop.create_future())
            self._joins[canon] = waiter
            self._send_join(channel, key)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except TimeoutError as e:
            raise ConnectionError(f"no answer from the server joining {channel}") from e

    def part(self, channel: str, reason: str = "") -> None:
        canon = self.fold(channel)
        self.channels.pop(canon, None)
        self.channel_names.pop(canon, None)
        if canon in self.joined and self.registered:
            if reason:
                self.send("PART", channel, reason)
            else:
                self.send("PART", channel)
        self.joined.discard(canon)

    async def change_nick(self, nick: str, timeout: float = 10.0) -> str:  # noqa: ASYNC109
        """Change nick; returns the new nick or raises :class:`NickRefused` (a ``ValueError``)
        with the server's reason."""
        self.params.nick = nick
        if not self.registered:
            return nick
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), self.fold(nick))
        self._nick_waiter = waiter
        self.send("NICK", nick)
        try:
            await asyncio.wait_for(waiter.future, timeout)
        except TimeoutError as e:
            raise ValueError("the server did not answer") from e
        finally:
            self._nick_waiter = None
        return self.nick

    async def command(
        self,
        command: str,
        *params: str,
        errors: Collection[str],
        timeout: float = 15.0,  # noqa: ASYNC109
    ) -> None:
        """Send a command and wait until the server has handled it. A server answers one
        client's lines in order, so the PONG to a PING queued right after the command means it
        is done: refused when one of the ``errors`` numerics naming one of the command's
        parameters came first (raises :class:`CommandRefused`; the line goes to no handler).
        Raises :class:`NotConnected` when not registered, ``ConnectionError`` when the
        connection drops meanwhile, ``TimeoutError`` without an answer."""
        data = serialize(command, *params)
        subjects = frozenset(self.fold(p) for p in params)
        await self._barrier(data, frozenset(errors), subjects, timeout)

    async def sync(self, timeout: float = 15.0) -> None:  # noqa: ASYNC109
        """Wait until every line the server sent this connection before it reads a PING now
        queued has been handled (a PING and its PONG, through flood control)."""
        await self._barrier(None, frozenset(), frozenset(), timeout)

    def forget_refusal(self) -> None:
        """New credentials: IDENTIFY is tried again."""
        if self.identify_state == "refused":
            self.identify_state = ""

    def expect_line(self, pred: Callable[[Line], bool]) -> asyncio.Future[Line]:
        """A future of the next line from the server for which ``pred`` is true (registered
        now, before the command it answers is sent); cancel it to stop waiting."""
        future: asyncio.Future[Line] = asyncio.get_running_loop().create_future()
        entry = (pred, future)
        self._line_waiters.append(entry)
        future.add_done_callback(lambda _: self._line_waiters.remove(entry))
        return future

    async def _barrier(
        self,
        data: bytes | None,
        errors: frozenset[str],
        subjects: frozenset[str],
        timeout: float,  # noqa: ASYNC109
    ) -> None:
        if not self.registered:
            raise NotConnected("not connected to IRC")
        token = f"mimi-sync-{next(self._barrier_seq)}"
        barrier = _Barrier(token, asyncio.get_running_loop().create_future(), errors, subjects)
        self._barriers.append(barrier)
        if data is not None:
            self._enqueue(data, None)
        self._enqueue(serialize("PING", token), None)
        try:
            await asyncio.wait_for(asyncio.shield(barrier.future), timeout)
        finally:
            if barrier in self._barriers:
                self._barriers.remove(barrier)

    # --- connecting ----------------------------------------------------------------------------

    def _backoff(self) -> float:
        p = self.params
        delay = min(p.reconnect_max, p.reconnect_min * (2 ** min(self._attempt, 20)))
        return delay / 2 + random.uniform(0, delay / 2)

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        p = self.params
        while self.state not in ("closed", "registered"):
            if self.pacer is not None:
                await self.pacer.wait(*self.handler.irc_connect_rank(self))
            if self.state == "closed":
                return
            self.state = "connecting"
            self.stats.connects += 1
            log.debug("%s: connecting (attempt %d)", self.name, self.stats.connects)
            try:
                self._lost = loop.create_future()
                await asyncio.wait_for(self._open(loop), p.register_timeout)
                assert self._ready is not None
                await asyncio.wait_for(
                    _first(self._ready.wait(), asyncio.shield(self._lost)), p.register_timeout
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.stats.last_error = str(e) or type(e).__name__
            if self.state == "registered":
                self._attempt = 0
                return
            if self.transport is not None:
                self.transport.abort()
                self.transport = None
            if self.fatal or self.state == "closed":
                if self.state != "closed":
                    self.state = "failed"
                    if self._ready is not None:
                        self._ready.set()  # wake wait_registered(): it reports the failure
                self._fail_pending(self.fatal or "the IRC connection was closed")
                if self.fatal and self.state == "failed":
                    self.handler.irc_failed(self, self.fatal)
                return
            self.state = "idle"
            delay = self._backoff()
            self._attempt += 1
            log.info(
                "%s: connecting failed (%s), retrying in %.1fs",
                self.name,
                self.stats.last_error,
                delay,
            )
            await asyncio.sleep(delay)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Connect the socket, tell the ident table, then start TLS and the protocol.

        The socket is known to the ident table before the TLS handshake: servers look up ident
        as soon as the TCP connection is accepted.
        """
        p = self.params
        infos = await _resolve(loop, p.host, p.port)
        if p.bind_address:
            binds = await _resolve(loop, p.bind_address, 0)
            families = {b[0] for b in binds}
            infos = [i for i in infos if i[0] in families]
            if not infos:
                # Leaving from another address than the configured one would be worse.
                version = "IPv6" if socket.AF_INET6 in families else "IPv4"
                raise OSError(f"{p.host} has no {version} address to reach from {p.bind_address}")
        else:
            binds = []
        error: OSError = OSError(f"no address for {p.host}")
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                for b in binds:
                    if b[0] == family:
                        if p.freebind:
                            _set_freebind(sock)
                        try:
                            sock.bind(b[4])
                        except OSError as e:
                            raise OSError(e.errno, f"cannot bind {p.bind_address}: {e}") from e
                        break
                await loop.sock_connect(sock, addr)
            except OSError as e:
                sock.close()
                error = e
                continue
            except BaseException:
                sock.close()
                raise
            key = self._ident_add(sock)
            try:
                await loop.create_connection(
                    lambda: self,
                    sock=sock,
                    ssl=p.ssl,
                    server_hostname=p.host if p.ssl else None,
                )
            except BaseException:
                self._ident_remove(key)
                sock.close()
                raise
            return
        raise error

    def _ident_add(self, sock: socket.socket) -> tuple[int, str, int] | None:
        if self.params.ident is None:
            return None
        try:
            local, remote = sock.getsockname(), sock.getpeername()
        except OSError:
            return None
        key = (int(local[1]), str(remote[0]), int(remote[1]))
        self.params.ident.add(*key, self.params.username)
        self._ident_key = key
        return key

    def _ident_remove(self, key: tuple[int, str, int] | None) -> None:
        if key is not None and self.params.ident is not None:
            self.params.ident.remove(*key)
        if key == self._ident_key:
            self._ident_key = None

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses).
        self.transport = cast(asyncio.Transport, transport)
        self.state = "registering"
        self._buf = b""
        self._overflow = False
        self.caps = set()
        self._ls_caps = {}
        self._cap_pending = 0
        self._sasl_state = ""
        self.account = None
        if self.identify_state != "refused":
            self.identify_state = ""
        self._nick_attempt = 0
        self.joined = set()
        self._out.clear()
        self._tokens = float(self.params.flood_burst)
        self._last_rx = time.monotonic()
        p = self.params
        self._set_me(p.nick)
        self._write(b"CAP LS 302\r\n")
        if p.password:
            self._write(serialize("PASS", p.password))
        self._write(serialize("NICK", p.nick))
        self._write(serialize("USER", p.username, "0", "*", p.realname or p.nick))
        self._arm_ping()

    def connection_lost(self, exc: Exception | None) -> None:
        was_registered = self.state == "registered"
        self._ident_remove(self._ident_key)
        self.transport = None
        self._cancel_timers(keep_expiry=True)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self._ready is not None:
            self._ready.clear()
        for waiter in self._joins.values():
            if not waiter.future.done():
                waiter.future.set_exception(ConnectionError("disconnected from IRC"))
        self._joins.clear()
        self._fail_barriers()
        self._requeue_out()
        reason = self.fatal or self.stats.last_error or (str(exc) if exc else "connection closed")
        if self.state == "closed":
            return
        if was_registered:
            log.info("%s: disconnected (%s)", self.name, reason)
            self.state = "idle"
            self.handler.irc_disconnected(self, reason)
            if not self.fatal:
                self._attempt = max(self._attempt, 1)
                self._task = asyncio.get_running_loop().create_task(self._reconnect_later())
            else:
                self.state = "failed"
                self._fail_pending(self.fatal)
        elif self.state == "registering":
            self.state = "connecting"

    async def _reconnect_later(self) -> None:
        await asyncio.sleep(self.params.reconnect_min * random.uniform(0.5, 1.0))
        if self.state not in ("closed", "registered"):
            await self._connect_loop()

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
        lines = data.split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_INCOMING:
            self.stats.bad_lines += 1
            log.warning("%s: discarding an overlong line from the server", self.name)
            rest = b""
            self._overflow = True
        self._buf = rest
        self._last_rx = time.monotonic()
        stats = self.stats
        for raw in lines:
            if self._overflow:
                self._overflow = False
                continue
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if not raw:
                continue
            stats.lines_in += 1
            if not self.listen_channels and self._ignorable(raw):
                stats.lines_ignored += 1
                continue
            try:
                self._handle(raw[:MAX_INCOMING])
            except Exception:
                stats.bad_lines += 1
                log.exception("%s: error handling line %r", self.name, raw[:200])

    def eof_received(self) -> bool | None:
        return None

    # --- incoming -------------------------------------------------------------------------------

    def _set_me(self, nick: str) -> None:
        self.nick = nick
        self._me = b":" + nick.encode("utf-8", "replace")
        self._me_bang = self._me + b"!"

    def _ignorable(self, raw: bytes) -> bool:
        """True for lines a puppet does not need (cheap byte checks, no parsing)."""
        if raw[:1] == b"@":
            sp = raw.find(b" ")
            if sp < 0:
                return True
            raw = raw[sp + 1 :]
        if raw[:1] != b":":
            return False
        parts = raw.split(b" ", 3)
        if len(parts) < 3:
            return False
        cmd = parts[1]
        if cmd in (b"PRIVMSG", b"NOTICE", b"TAGMSG"):
            return parts[2][:1] in self._ignore_first
        if cmd in (b"JOIN", b"PART", b"QUIT", b"NICK", b"MODE", b"AWAY", b"ACCOUNT", b"CHGHOST",
                   b"TOPIC", b"SETNAME"):  # fmt: skip
            src = parts[0]
            return not (src == self._me or src.startswith(self._me_bang))
        return cmd in (b"353", b"366", b"332", b"333", b"329", b"324", b"352", b"315")

    def _handle(self, raw: bytes) -> None:
        line = parse_line(raw)
        if line is None:
            self.stats.bad_lines += 1
            return
        if self._barriers and self._barrier_line(line):
            return
        if self._line_waiters:
            for pred, future in list(self._line_waiters):
                if not future.done() and pred(line):
                    future.set_result(line)
        cmd = line.command
        handler = _BUILTIN.get(cmd)
        if handler is not None:
            handler(self, line)
        elif cmd in NICK_ERRORS:
            self._on_nick_error(line)
        elif cmd in JOIN_ERRORS:
            self._on_join_error(line)
        elif cmd in SASL_OK or cmd in SASL_FAIL:
            self._on_sasl_result(line)
        self.handler.irc_line(self, line)

    def _barrier_line(self, line: Line) -> bool:
        """A PONG ending a :meth:`command` or an error numeric answering one (consumed)."""
        if line.command == "PONG":
            token = line.param(-1)
            for barrier in self._barriers:
                if barrier.token == token:
                    self._barriers.remove(barrier)
                    if not barrier.future.done():
                        if barrier.refusal is not None:
                            barrier.future.set_exception(barrier.refusal)
                        else:
                            barrier.future.set_result(None)
                    return True
            return False
        if not line.command.isdigit():
            return False
        named = {self.fold(p) for p in line.params[1:-1]}
        for barrier in self._barriers:
            if line.command in barrier.errors and named & barrier.subjects:
                if barrier.refusal is None:
                    barrier.refusal = CommandRefused(line.command, line.param(-1))
                return True
        return False

    def _fail_barriers(self) -> None:
        while self._barriers:
            barrier = self._barriers.pop(0)
            if not barrier.future.done():
                barrier.future.set_exception(ConnectionError("disconnected from IRC"))

    def _on_ping(self, line: Line) -> None:
        self._write(serialize("PONG", line.param(0) or self.params.host))

    def _on_welcome(self, line: Line) -> None:
        self._set_me(line.param(0, self.nick))
        # ":Welcome to the Internet Relay Network nick!user@host" on many servers
        last = line.param(-1).rsplit(" ", 1)[-1]
        if "!" in last and "@" in last:
            _, user, host = split_source(last)
            self.user, self.host = user, host
        hold = self.handler.irc_welcomed(self)
        if hold is None:
            self._registered()
        else:
            self._welcome_hold = asyncio.get_running_loop().create_task(
                self._registered_after(hold, self.transport)
            )

    async def _registered_after(self, hold: Awaitable[None], transport: object) -> None:
        try:
            await asyncio.wait_for(hold, self.params.register_timeout / 2)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # Going on without it is better than no connection (the handler said why).
            log.warning("%s: %s after registration: %s", self.name, type(e).__name__, e)
        if self.transport is transport and transport is not None and self.state == "registering":
            self._registered()

    def _registered(self) -> None:
        self.state = "registered"
        self._attempt = 0
        if self._ready is not None:
            self._ready.set()
        log.debug("%s: registered as %s", self.name, self.nick)
        self._identify()
        self._auto_commands()
        self.handler.irc_registered(self)
        for canon, key in list(self.channels.items()):
            self._send_join(self.channel_names.get(canon, canon), key)
        self._flush_pending()

    def _identify(self) -> None:
        """NickServ IDENTIFY (``auth="nickserv"``), before anything else is sent."""
        p = self.params
        if p.auth != "nickserv" or not (p.sasl_account and p.sasl_password):
            return
        if self.identify_state == "refused":
            return
        text = p.identify_template.format(account=p.sasl_account, password=p.sasl_password)
        try:
            self._write(serialize("PRIVMSG", p.nickserv, text))
        except ValueError:
            self.identify_state = "refused"
            self.handler.irc_identify_failed(self, "the account or password cannot be sent")
            return
        self.identify_state = "sent"
        self.identify_answered.clear()

    def _auto_commands(self) -> None:
        for cmd in self.params.after_connect:
            try:
                if cmd[0] == "msg" and len(cmd) == 3:
                    self._enqueue(serialize("PRIVMSG", cmd[1], cmd[2]), None)
                elif cmd[0] == "mode" and len(cmd) == 2:
                    self._enqueue(serialize("MODE", self.nick, cmd[1]), None)
            except ValueError:
                log.warning("%s: an auto-command cannot be sent", self.name)

    def _on_logged_in(self, line: Line) -> None:
        self.account = line.param(2) or None
        if self.identify_state == "sent":
            self.identify_state = "done"
            self.identify_answered.set()

    def _on_logged_out(self, line: Line) -> None:
        self.account = None

    def _on_notice(self, line: Line) -> None:
        """NickServ's answer to IDENTIFY: the refusals of common services, word for word
        enough to tell them from the greeting lines services send around them."""
        if self.identify_state != "sent" or self.fold(line.nick) != self.fold(self.params.nickserv):
            return
        text = line.param(-1)
        low = strip_formatting(text).lower()
        if any(w in low for w in IDENTIFIED):
            self.identify_state = "done"
            self.identify_answered.set()
        elif any(w in low for w in IDENTIFY_REFUSED):
            self.identify_state = "refused"
            self.identify_error = strip_formatting(text)
            self.identify_answered.set()
            self.handler.irc_identify_failed(self, self.identify_error)

    def _on_isupport(self, line: Line) -> None:
        for token in line.params[1:-1]:
            key, _, value = token.partition("=")
            if key.startswith("-"):
                self.isupport.pop(key[1:], None)
                continue
            self.isupport[key] = value
            if key == "CASEMAPPING" and value in ("ascii", "rfc1459", "strict-rfc1459"):
                self._set_casemapping(value)
            elif key == "CHANTYPES":
                self.chantypes = value
            elif key == "PREFIX" and value.startswith("(") and ")" in value:
                modes, _, chars = value[1:].partition(")")
                self.prefixes = dict(zip(chars, modes, strict=False))
            elif key == "NICKLEN" and value.isdigit():
                self.params.nicklen = int(value)
        self._ignore_first = (self.chantypes + "".join(self.prefixes)).encode()

    def _set_casemapping(self, mapping: str) -> None:
        """The server's mapping: every name this connection keeps is re-folded with it (they
        were folded with the default before the server said), then the handler is told."""
        if mapping == self.casemapping:
            return
        self.casemapping = mapping
        names = self.channel_names

        def refold(canon: str) -> str:
            # From the name as given: the old fold may have lost what the new one keeps.
            return self.fold(names.get(canon, canon))

        self.channels = {refold(c): key for c, key in self.channels.items()}
        self.joined = {refold(c) for c in self.joined}
        self._joins = {refold(c): waiter for c, waiter in self._joins.items()}
        for msg in self.pending:
            if msg.channel is not None:
                msg.channel = self.fold(msg.target)
        self.channel_names = {self.fold(given): given for given in names.values()}
        self.handler.irc_casemapping(self)

    def _on_cap(self, line: Line) -> None:
        sub = line.param(1).upper()
        if sub == "LS":
            more = len(line.params) > 3 and line.params[2] == "*"
            for item in line.param(-1).split():
                key, _, value = item.partition("=")
                self._ls_caps[key] = value
            if more or self.registered:
                return
            want = {c for c in self.params.caps if c in self._ls_caps}
            if self._sasl_wanted():
                mech = self.params.sasl_mechanism
                mechs = self._ls_caps.get("sasl")
                if "sasl" in self._ls_caps and (not mechs or mech in mechs.split(",")):
                    want.add("sasl")
                else:
                    self._auth_failed(f"the server does not offer SASL {mech}", "mechanism")
                    return
            if want:
                self._cap_pending = 1
                self._write(serialize("CAP", "REQ", " ".join(sorted(want))))
            else:
                self._write(b"CAP END\r\n")
        elif sub in ("ACK", "NAK"):
            caps = line.param(-1).split()
            if sub == "ACK":
                for c in caps:
                    if c.startswith("-"):
                        self.caps.discard(c[1:])
                    else:
                        self.caps.add(c)
            elif len(caps) > 1 and not self.registered:
                # The whole set was refused: ask for each one alone.
                for c in caps:
                    self._cap_pending += 1
                    self._write(serialize("CAP", "REQ", c))
            elif "sasl" in caps and self._sasl_wanted():
                self._auth_failed("the server refused SASL", "mechanism")
                return
            self._cap_pending -= 1
            if self.registered or self._cap_pending > 0:
                return
            if "sasl" in self.caps and self._sasl_wanted() and not self._sasl_state:
                self._sasl_state = "started"
                self._write(serialize("AUTHENTICATE", self.params.sasl_mechanism))
            elif not self._sasl_state:
                self._write(b"CAP END\r\n")
        elif sub == "NEW":
            new = [c.partition("=")[0] for c in line.param(-1).split()]
            more_caps = [c for c in new if c in self.params.caps and c not in self.caps]
            if more_caps and self.registered:
                self._write(serialize("CAP", "REQ", " ".join(more_caps)))
        elif sub == "DEL":
            for c in line.param(-1).split():
                self.caps.discard(c)

    def _on_authenticate(self, line: Line) -> None:
        if self._sasl_state != "started" or line.param(0) != "+":
            return
        p = self.params
        if p.sasl_mechanism == "EXTERNAL":
            # The certificate speaks; an empty authorization identity: its account.
            self._write(b"AUTHENTICATE +\r\n")
            self._sasl_state = "sent"
            return
        account = p.sasl_account or ""
        blob = f"{account}\0{account}\0{p.sasl_password or ''}".encode()
        payload = base64.b64encode(blob).decode()
        for i in range(0, len(payload), 400):
            self._write(b"AUTHENTICATE " + payload[i : i + 400].encode() + b"\r\n")
        if len(payload) % 400 == 0:
            self._write(b"AUTHENTICATE +\r\n")
        self._sasl_state = "sent"

    def _on_sasl_result(self, line: Line) -> None:
        if line.command in SASL_OK:
            self._sasl_state = "done"
            if not self.registered:
                self._write(b"CAP END\r\n")
        elif line.command in ("904", "905", "906", "902") and not self.registered:
            mech = self.params.sasl_mechanism
            why = "aborted" if line.command == "906" else "failed"
            self._auth_failed(f"SASL authentication {why} ({mech}): " + line.param(-1), "sasl")
        elif line.command == "908" and not self.registered:
            # The mechanisms the server has (before its 904): ours is not one of them.
            mechs = line.param(1)
            self._auth_failed(
                f"the server does not offer SASL {self.params.sasl_mechanism} (only {mechs})",
                "mechanism",
            )

    def _sasl_wanted(self) -> bool:
        p = self.params
        return p.auth == "sasl" and (bool(p.sasl_account) or p.sasl_mechanism == "EXTERNAL")

    def _auth_failed(self, reason: str, kind: str) -> None:
        if self.fatal:
            return  # the first reason counts (908 comes before its 904)
        self.fatal = reason
        self.fatal_kind = kind
        self.stats.last_error = reason
        log.warning("%s: %s", self.name, reason)
        self._write(b"QUIT\r\n")
        if self.transport is not None:
            self.transport.close()

    def _on_error(self, line: Line) -> None:
        self.stats.last_error = line.param(-1) or "ERROR from server"
        text = line.param(-1).lower()
        if not (self.registered or self.fatal) and self.params.password and "password" in text:
            # Servers without numeric 464 (ngircd: "Access denied: Bad password?"): retrying
            # with the same password cannot help.
            self.fatal = "the server refused the password: " + line.param(-1)
            self.fatal_kind = "password"

    def _on_password_mismatch(self, line: Line) -> None:
        self.fatal = "the server refused the password: " + line.param(-1)
        self.fatal_kind = "password"
        self.stats.last_error = self.fatal

    def _on_nick_error(self, line: Line) -> None:
        if not self.registered:
            self._nick_attempt += 1
            nick = (
                self.handler.irc_nick_taken(self, line.param(1), self._nick_attempt)
                if self._nick_attempt <= 20
                else None
            )
            if nick is None:
                self.stats.last_error = "no usable nick: " + line.param(-1)
                if self.transport is not None:
                    self.transport.close()
                return
            self._set_me(nick)
            self._write(serialize("NICK", nick))
            return
        waiter = self._nick_waiter
        if waiter is not None and not waiter.future.done():
            waiter.future.set_exception(
                NickRefused(line.command, f"{line.param(1)}: {line.param(-1)}")
            )

    def _on_join(self, line: Line) -> None:
        if not self._is_me(line.nick):
            return
        canon = self.fold(line.param(0))
        self.joined.add(canon)
        waiter = self._joins.pop(canon, None)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_result(None)
        self._flush_pending()

    def _on_join_error(self, line: Line) -> None:
        channel = line.param(1)
        canon = self.fold(channel)
        reason = f"cannot join {channel}: {line.param(-1)}"
        if line.command == "477" and canon not in self._joins:
            return  # some servers use 477 for "need registered nick to speak"
        self.channels.pop(canon, None)
        waiter = self._joins.pop(canon, None)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_exception(ConnectionError(reason))
        self._fail_pending(reason, channel=canon)

    def _on_part(self, line: Line) -> None:
        if self._is_me(line.nick):
            self.joined.discard(self.fold(line.param(0)))

    def _on_kick(self, line: Line) -> None:
        if self._is_me(line.param(1)):
            canon = self.fold(line.param(0))
            self.joined.discard(canon)
            self.channels.pop(canon, None)
            self._fail_pending(f"kicked from {line.param(0)}: {line.param(2)}", channel=canon)

    def _on_nick(self, line: Line) -> None:
        if not self._is_me(line.nick):
            return
        self._set_me(line.param(0))
        self.params.nick = self.nick
        waiter = self._nick_waiter
        if waiter is not None and not waiter.future.done():
            waiter.future.set_result(None)

    def _on_hosthidden(self, line: Line) -> None:
        self.host = line.param(1) or self.host

    def _on_chghost(self, line: Line) -> None:
        if self._is_me(line.nick):
            self.user, self.host = line.param(0), line.param(1)

    def _is_me(self, nick: str) -> bool:
        return self.fold(nick) == self.fold(self.nick)

    # --- outgoing ------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Write now, bypassing flood control (registration, PONG)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.stats.lines_out += 1

    def _send_join(self, channel: str, key: str | None) -> None:
        data = serialize("JOIN", channel, key) if key else serialize("JOIN", channel)
        self._enqueue(data, None)

    def _push(self, msg: Pending) -> None:
        for data in msg.lines:
            self._out.append((data, msg))
        self._pump()

    def _enqueue(self, data: bytes, msg: Pending | None) -> None:
        self._out.append((data, msg))
        self._pump()

    def _pump(self) -> None:
        self._pump_handle = None
        if self.transport is None or self.transport.is_closing():
            return
        p = self.params
        now = time.monotonic()
        self._tokens = min(
            float(p.flood_burst), self._tokens + (now - self._tok_time) * p.flood_rate
        )
        self._tok_time = now
        out = self._out
        while out and self._tokens >= 1.0:
            data, _ = out.popleft()
            self.transport.write(data)
            self.stats.lines_out += 1
            self._tokens -= 1.0
        if out and self._pump_handle is None:
            delay = (1.0 - self._tokens) / p.flood_rate
            self._pump_handle = asyncio.get_running_loop().call_later(delay, self._pump)

    def _flush_pending(self) -> None:
        if not self.registered:
            return
        while self.pending:
            msg = self.pending[0]
            if msg.channel is not None and msg.channel not in self.joined:
                if msg.channel not in self.channels:
                    self.pending.popleft()
                    if msg.on_fail:
                        msg.on_fail(f"not in {msg.target}")
                    continue
                break  # keep the order: wait for this join
            self.pending.popleft()
            self._push(msg)

    def _requeue_out(self) -> None:
        """Unsent message lines go back to the front of the pending queue."""
        if self._pump_handle is not None:
            self._pump_handle.cancel()
            self._pump_handle = None
        back: list[Pending] = []
        for data, msg in self._out:
            if msg is None:
                continue
            if (
                back
                and back[-1].lines
                and back[-1].created == msg.created
                and (back[-1].target == msg.target)
            ):
                back[-1].lines.append(data)
            else:
                back.append(Pending(msg.target, [data], msg.created, msg.on_fail, msg.channel))
        self._out.clear()
        for msg in reversed(back):
            self.pending.appendleft(msg)
        if self.pending:
            self._arm_expiry()

    def _fail_pending(self, reason: str, channel: str | None = None) -> None:
        keep: deque[Pending] = deque()
        while self.pending:
            msg = self.pending.popleft()
            if channel is not None and msg.channel != channel:
                keep.append(msg)
                continue
            if msg.on_fail is not None:
                try:
                    msg.on_fail(reason)
                except Exception:
                    log.exception("%s: failure callback", self.name)
        self.pending = keep

    # --- timers --------------------------------------------------------------------------------

    def _arm_expiry(self) -> None:
        if self._expire_handle is None and self.params.queue_timeout > 0:
            self._expire_handle = asyncio.get_running_loop().call_later(
                min(self.params.queue_timeout, 5.0), self._expire
            )

    def _expire(self) -> None:
        self._expire_handle = None
        limit = time.monotonic() - self.params.queue_timeout
        while self.pending and self.pending[0].created <= limit:
            msg = self.pending.popleft()
            if msg.on_fail is not None:
                reason = self.fatal or "not connected to IRC"
                if msg.channel is not None and self.registered:
                    reason = f"could not join {msg.target}"
                msg.on_fail(reason)
        if self.pending:
            self._arm_expiry()

    def _arm_ping(self) -> None:
        self._ping_handle = asyncio.get_running_loop().call_later(
            self.params.ping_interval / 2, self._ping
        )

    def _ping(self) -> None:
        self._ping_handle = None
        if self.transport is None:
            return
        idle = time.monotonic() - self._last_rx
        p = self.params
        if idle > p.ping_timeout:
            self.stats.last_error = f"ping timeout ({int(idle)}s)"
            self.transport.abort()
            return
        if idle > p.ping_interval / 2:
            self._write(serialize("PING", "mimi"))
        self._arm_ping()

    def _cancel_timers(self, keep_expiry: bool = False) -> None:
        for attr in ["_pump_handle", "_ping_handle"] + ([] if keep_expiry else ["_expire_handle"]):
            handle = getattr(self, attr)
            if handle is not None:
                handle.cancel()
                setattr(self, attr, None)


async def _first(*aws: object) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]  # type: ignore[call-overload]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


_BUILTIN: dict[str, Callable[[IRCConnection, Line], None]] = {
    "PING": IRCConnection._on_ping,
    "001": IRCConnection._on_welcome,
    "005": IRCConnection._on_isupport,
    "CAP": IRCConnection._on_cap,
    "AUTHENTICATE": IRCConnection._on_authenticate,
    "ERROR": IRCConnection._on_error,
    "464": IRCConnection._on_password_mismatch,
    "JOIN": IRCConnection._on_join,
    "PART": IRCConnection._on_part,
    "KICK": IRCConnection._on_kick,
    "NICK": IRCConnection._on_nick,
    "396": IRCConnection._on_hosthidden,
    "900": IRCConnection._on_logged_in,
    "901": IRCConnection._on_logged_out,
    "NOTICE": IRCConnection._on_notice,
    "CHGHOST": IRCConnection._on_chghost,
}
