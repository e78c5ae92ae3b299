"""Which nicks are the bridge's own puppets when the connector runs split across scale-out
workers (``ShardedConnector``): the listening bot runs in one process, most puppets in others,
and the bot must still tell a puppet's line (a Matrix user's own message, already in Matrix)
from an IRC user's.

Each instance writes its puppets' nicks to the bridge database before they show up anywhere
on IRC (the connection waits for the write after the server's welcome, before any JOIN) and
removes them when they leave IRC. The bot looks up a nick it does not know yet the first
time it sees it, and keeps the answer while it sees the nick: a rename carries it over, a
QUIT, PART or KICK forgets it (the next line asks again). Lines wait for their lookup in
order, so a puppet's first message is never taken for an IRC user's."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterable

from bridge.connector import BridgeAPI

from .client import IRCConnection
from .protocol import Line, casefold
from .table_store import TableStore

log = logging.getLogger("mimi.irc.puppet_nicks")

# The most folding mapping: the key is the same whatever the server announced later.
KEY_MAPPING = "rfc1459"
LOOKUP_CHUNK = 400  # nicks per query (a channel's member list may be long)
LOOKUP_BATCH = 2000  # nicks of held lines looked up together by the bot


def nick_key(nick: str) -> str:
    return casefold(nick, KEY_MAPPING)


class LiveNickStore(TableStore):
    """``irc_live_nick``: the nick each connected puppet has now, by network. Writes of one
    user go in order (a disconnect's removal never lands after the reconnect's write), and a
    removal takes only this instance's rows: the instance a user moved to keeps its own."""

    table = "irc_live_nick"

    def __init__(self, bridge: BridgeAPI) -> None:
        super().__init__(bridge)
        self.instance = uuid.uuid4().hex
        self._last: dict[tuple[str, str], asyncio.Future[None]] = {}

    def publish(self, netid: str, user_id: str, nick: str) -> asyncio.Future[None]:
        return self._chain(netid, user_id, nick)

    def withdraw(self, netid: str, user_id: str) -> asyncio.Future[None]:
        """Remove the user's row if this instance wrote it."""
        return self._chain(netid, user_id, None, mine=True)

    def forget(self, netid: str, user_id: str) -> asyncio.Future[None]:
        """Remove the user's row whoever wrote it (a dead instance's)."""
        return self._chain(netid, user_id, None, mine=False)

    def _chain(
        self, netid: str, user_id: str, nick: str | None, mine: bool = True
    ) -> asyncio.Future[None]:
        key = (netid, user_id)
        previous = self._last.get(key)
        task = asyncio.ensure_future(self._write(previous, netid, user_id, nick, mine))
        self._last[key] = task

        def done(t: asyncio.Future[None]) -> None:
            if self._last.get(key) is t:
                del self._last[key]

        task.add_done_callback(done)
        return task

    async def _write(
        self,
        previous: asyncio.Future[None] | None,
        netid: str,
        user_id: str,
        nick: str | None,
        mine: bool,
    ) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        db = await self._db()
        if db is None:
            return
        try:
            if nick is None and not mine:
                await db.execute(
                    "DELETE FROM irc_live_nick WHERE network=$1 AND user_id=$2", netid, user_id
                )
                return
            if nick is None:
                await db.execute(
                    "DELETE FROM irc_live_nick WHERE network=$1 AND user_id=$2 AND instance=$3",
                    netid,
                    user_id,
                    self.instance,
                )
                return
            async with db.acquire() as conn, conn.transaction():
                await conn.execute(
                    "DELETE FROM irc_live_nick WHERE network=$1 AND user_id=$2", netid, user_id
                )
                # A row left by a process that died with the nick goes.
                await conn.execute(
                    "INSERT INTO irc_live_nick (network, nick, user_id, instance) "
                    "VALUES ($1, $2, $3, $4) ON CONFLICT (network, nick) "
                    "DO UPDATE SET user_id=excluded.user_id, instance=excluded.instance",
                    netid,
                    nick_key(nick),
                    user_id,
                    self.instance,
                )
        except Exception as e:
            # Said here once: nobody awaits a removal, and a connection goes on without it.
            log.warning("%s: the puppet nick of %s not stored: %s", netid, user_id, e)

    async def users(self, netid: str) -> set[str]:
        """The Matrix users with a row on ``netid``."""
        db = await self._db()
        if db is None:
            return set()
        rows = await db.fetch("SELECT user_id FROM irc_live_nick WHERE network=$1", netid)
        return {row["user_id"] for row in rows}

    async def lookup(self, netid: str, nicks: Iterable[str]) -> dict[str, str]:
        """Nick key -> Matrix user id, for those of ``nicks`` that are puppets."""
        db = await self._db()
        keys = sorted({nick_key(n) for n in nicks})
        found: dict[str, str] = {}
        if db is None or not keys:
            return found
        for start in range(0, len(keys), LOOKUP_CHUNK):
            chunk = keys[start : start + LOOKUP_CHUNK]
            marks = ", ".join(f"${i + 2}" for i in range(len(chunk)))
            rows = await db.fetch(
                f"SELECT nick, user_id FROM irc_live_nick WHERE network=$1 AND nick IN ({marks})",
                netid,
                *chunk,
            )
            found.update({row["nick"]: row["user_id"] for row in rows})
        return found


# Lines whose source may be a nick the bot sees for the first time.
_FROM_SOURCE = {"JOIN", "PRIVMSG", "NOTICE", "TAGMSG", "AWAY", "ACCOUNT", "CHGHOST"}
_FORGET = {"QUIT", "PART"}


class OtherPuppets:
    """The bot's view of the puppets other instances hold: folded nick (the server's
    mapping) -> Matrix user id, None for a nick known to be an IRC user's."""

    def __init__(
        self,
        store: LiveNickStore,
        netid: str,
        local: Callable[[str], str | None],
        handle: Callable[[IRCConnection, Line], None],
    ) -> None:
        self.store = store
        self.netid = netid
        self.local = local  # this instance's puppets (and nothing to look up for them)
        self.handle = handle  # what a line does once its nicks are known
        self.known: dict[str, str | None] = {}
        self._held: deque[tuple[IRCConnection, Line]] = deque()
        self._task: asyncio.Task[None] | None = None

    def user_of_nick(self, canon: str) -> str | None:
        return self.known.get(canon)

    def clear(self) -> None:
        """The server's case mapping changed (the keys are folded with it): ask again."""
        self.known.clear()

    def line(self, conn: IRCConnection, line: Line) -> None:
        if self._held or self._unknown(conn, line):
            self._held.append((conn, line))
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._drain())
            return
        self._handle(conn, line)

    def _nicks(self, conn: IRCConnection, line: Line) -> list[str]:
        cmd = line.command
        if cmd in _FROM_SOURCE and line.nick:
            return [line.nick]
        if cmd == "353" and len(line.params) >= 4:  # RPL_NAMREPLY: members, prefixed
            marks = "".join(conn.prefixes)
            names = (n.split("!", 1)[0].lstrip(marks) for n in line.param(-1).split())
            return [n for n in names if n]
        if cmd == "352" and len(line.params) >= 6:  # RPL_WHOREPLY
            return [line.param(5)]
        return []

    def _unknown(self, conn: IRCConnection, line: Line) -> list[str]:
        me = conn.fold(conn.nick)
        out = []
        for nick in self._nicks(conn, line):
            canon = conn.fold(nick)
            if canon != me and canon not in self.known and self.local(canon) is None:
                out.append(nick)
        return out

    async def _drain(self) -> None:
        while self._held:
            conn, line = self._held[0]
            if self._unknown(conn, line):
                await self._look_up_held()
            self._held.popleft()
            self._handle(conn, line)

    async def _look_up_held(self) -> None:
        """The unknown nicks of the lines held (up to LOOKUP_BATCH), in one trip: thousands
        of puppets joining at once would otherwise cost a trip each, in line. Every nick
        asked was seen on a line already received, so its row (written before the puppet's
        first line) is there."""
        wanted: dict[str, tuple[IRCConnection, str]] = {}
        for conn, line in self._held:
            for nick in self._unknown(conn, line):
                wanted.setdefault(conn.fold(nick), (conn, nick))
            if len(wanted) >= LOOKUP_BATCH:
                break
        try:
            found = await self.store.lookup(self.netid, [nick for _, nick in wanted.values()])
        except Exception as e:
            # Not cached: each nick is asked again at its next line.
            log.warning("%s: puppet nicks not looked up: %s", self.netid, e)
            return
        for canon, (_, nick) in wanted.items():
            self.known[canon] = found.get(nick_key(nick))

    def _handle(self, conn: IRCConnection, line: Line) -> None:
        try:
            self.handle(conn, line)
        finally:
            cmd = line.command
            if cmd in _FORGET and line.nick:
                self.known.pop(conn.fold(line.nick), None)
            elif cmd == "KICK" and len(line.params) >= 2:
                self.known.pop(conn.fold(line.param(1)), None)
            elif cmd == "NICK" and line.nick and line.params:
                old = conn.fold(line.nick)
                if old in self.known:  # the same connection, puppet or not
                    self.known[conn.fold(line.param(0))] = self.known.pop(old)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
