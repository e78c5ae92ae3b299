"""The puppets' live nicks shared between the instances of the IRC connector run split
(``irc_live_nick``, both backends), and the bot's ordered lookup of nicks it sees first."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.db import open_database
from connectors.irc import IRCConnector
from connectors.irc.client import ConnParams, IRCConnection
from connectors.irc.protocol import parse_line
from connectors.irc.puppet_nicks import LiveNickStore, OtherPuppets, nick_key

from .helpers import DatabaseOnly


async def test_live_nicks_follow_the_puppets_in_order(database_url: str) -> None:
    db = await open_database(database_url, connectors=[IRCConnector])
    try:
        store = LiveNickStore(DatabaseOnly(db))  # type: ignore[arg-type]
        # Written in call order, each user's: a disconnect's removal before the reconnect's.
        store.publish("libera", "@a:x", "Ann[m]")
        store.withdraw("libera", "@a:x")
        await store.publish("libera", "@a:x", "Ann[m]1")
        await store.publish("libera", "@b:x", "Bob[m]")
        await store.publish("oftc", "@a:x", "Ann[m]")
        # Found folded the rfc1459 way whatever the spelling; only puppets; per network.
        assert await store.lookup("libera", ["ann{M}1", "ann[m]", "Bob[m]", "carol"]) == {
            nick_key("Ann[m]1"): "@a:x",
            nick_key("Bob[m]"): "@b:x",
        }
        # A rename replaces the user's row; leaving IRC removes it.
        await store.publish("libera", "@b:x", "Bobby")
        await store.withdraw("libera", "@a:x")
        assert await store.lookup("libera", ["Ann[m]1", "Bob[m]", "bobby"]) == {"bobby": "@b:x"}
        assert await store.lookup("oftc", ["Ann[m]"]) == {nick_key("Ann[m]"): "@a:x"}
        assert await store.users("libera") == {"@b:x"}
        # A nick a dead process left to another user goes to the one who has it now.
        await store.publish("oftc", "@c:x", "ANN[m]")
        assert await store.lookup("oftc", ["Ann[m]"]) == {nick_key("Ann[m]"): "@c:x"}
        # An instance's removal leaves the row of the instance the user moved to; a dead
        # instance's row is forgotten by whoever takes its users.
        other = LiveNickStore(DatabaseOnly(db))  # type: ignore[arg-type]
        await other.publish("oftc", "@c:x", "ANN[m]")
        await store.withdraw("oftc", "@c:x")
        assert await store.lookup("oftc", ["Ann[m]"]) == {nick_key("Ann[m]"): "@c:x"}
        await store.forget("oftc", "@c:x")
        assert await store.lookup("oftc", ["Ann[m]"]) == {}
        # A long member list is asked in chunks.
        many = [f"n{i}" for i in range(1000)]
        assert await store.lookup("libera", [*many, "Bobby"]) == {"bobby": "@b:x"}
    finally:
        await db.stop()


class SlowStore:
    """A lookup the test lets through (a fake: the ordering is what is tested here)."""

    def __init__(self, puppets: dict[str, str]) -> None:
        self.puppets = puppets
        self.asked: list[list[str]] = []
        self.gate = asyncio.Event()
        self.fail = False

    async def lookup(self, netid: str, nicks: list[str]) -> dict[str, str]:
        self.asked.append(list(nicks))
        await self.gate.wait()
        if self.fail:
            raise ConnectionError("database away")
        return {
            nick_key(n): self.puppets[nick_key(n)] for n in nicks if nick_key(n) in self.puppets
        }


def _bot() -> IRCConnection:
    return IRCConnection(ConnParams("irc", 6667, "bot", "bot", "bot"))


def _line(raw: str) -> Any:
    line = parse_line(raw.encode())
    assert line is not None
    return line


async def test_lines_wait_for_their_lookup_in_order() -> None:
    conn = IRCConnection(
        ConnParams(host="irc", port=6667, nick="bot", username="bot", realname="bot")
    )
    store = SlowStore({nick_key("Ann[m]"): "@ann:x"})
    seen: list[tuple[str, str | None]] = []

    def handle(c: IRCConnection, line: Any) -> None:
        seen.append((line.param(-1), others.user_of_nick(c.fold(line.nick or ""))))

    local = {conn.fold("Mine[m]"): "@mine:x"}
    others = OtherPuppets(store, "libera", local.get, handle)  # type: ignore[arg-type]
    others.line(conn, _line(":Ann[m]!a@h JOIN #c :joined"))
    others.line(conn, _line(":carol!c@h PRIVMSG #c :before ann's line"))
    others.line(conn, _line(":Ann[m]!a@h PRIVMSG #c :from matrix"))
    await asyncio.sleep(0.01)
    assert seen == []  # all wait behind the first lookup
    store.gate.set()
    await asyncio.sleep(0.01)
    assert seen == [("joined", "@ann:x"), ("before ann's line", None), ("from matrix", "@ann:x")]
    assert store.asked == [["Ann[m]", "carol"]]  # the held lines' nicks in one trip
    # Known now: no lookup, handled at once; this instance's own puppets and the bot itself
    # are never asked about.
    others.line(conn, _line(":Ann[m]!a@h PRIVMSG #c :again"))
    others.line(conn, _line(":Mine[m]!m@h PRIVMSG #c :local"))
    others.line(conn, _line(":bot!b@h PRIVMSG #c :me"))
    assert [s[0] for s in seen[3:]] == ["again", "local", "me"]
    assert len(store.asked) == 1
    # A rename carries the answer over, a puppet's or an IRC user's.
    others.line(conn, _line(":Ann[m]!a@h NICK Annie"))
    others.line(conn, _line(":carol!c@h NICK carola"))
    assert others.user_of_nick("annie") == "@ann:x" and "carola" in others.known
    assert conn.fold("Ann[m]") not in others.known and len(store.asked) == 1
    # QUIT, PART and KICK forget: the next line asks again.
    others.line(conn, _line(":Annie!a@h QUIT :bye"))
    others.line(conn, _line(":carola!c@h PART #c"))
    assert others.known == {}
    # The member list of a channel: one lookup for the nicks not known.
    others.line(conn, _line(":irc 353 bot = #c :@Ann[m] +dave bot Mine[m]"))
    await asyncio.sleep(0.01)
    assert store.asked[-1] == ["Ann[m]", "dave"]
    assert others.known == {conn.fold("Ann[m]"): "@ann:x", "dave": None}
    others.line(conn, _line(":dave!d@h KICK #c Ann[m] :out"))
    assert others.known == {"dave": None}


async def test_a_failed_lookup_lets_the_line_go_and_asks_again() -> None:
    conn = IRCConnection(
        ConnParams(host="irc", port=6667, nick="bot", username="bot", realname="bot")
    )
    store = SlowStore({nick_key("Ann[m]"): "@ann:x"})
    store.fail = True
    store.gate.set()
    seen: list[str] = []
    others = OtherPuppets(
        store,  # type: ignore[arg-type]
        "libera",
        lambda canon: None,
        lambda c, line: seen.append(line.param(-1)),
    )
    others.line(conn, _line(":Ann[m]!a@h PRIVMSG #c :one"))
    await asyncio.sleep(0.01)
    assert seen == ["one"] and others.known == {}  # not cached: asked again next time
    store.fail = False
    others.line(conn, _line(":Ann[m]!a@h PRIVMSG #c :two"))
    await asyncio.sleep(0.01)
    assert seen == ["one", "two"] and others.user_of_nick(conn.fold("Ann[m]")) == "@ann:x"
    await others.close()


async def test_a_burst_of_new_nicks_is_one_lookup() -> None:
    """Thousands of puppets joining at once: the held lines' nicks go in one trip, not a trip
    each in line (which held every later line, messages included, behind them)."""
    conn = IRCConnection(
        ConnParams(host="irc", port=6667, nick="bot", username="bot", realname="bot")
    )
    store = SlowStore({nick_key(f"P{i}[m]"): f"@p{i}:x" for i in range(0, 1500, 2)})
    seen: list[tuple[str, str | None]] = []

    def handle(c: IRCConnection, line: Any) -> None:
        seen.append((str(line.nick), others.user_of_nick(c.fold(line.nick or ""))))

    others = OtherPuppets(store, "libera", lambda canon: None, handle)  # type: ignore[arg-type]
    for i in range(1500):
        others.line(conn, _line(f":P{i}[m]!p@h JOIN #c"))
    store.gate.set()
    for _ in range(50):
        await asyncio.sleep(0.01)
        if len(seen) == 1500:
            break
    assert [nick for nick, _ in seen] == [f"P{i}[m]" for i in range(1500)]  # in order
    assert [user for _, user in seen] == [f"@p{i}:x" if i % 2 == 0 else None for i in range(1500)]
    assert len(store.asked) == 1 and len(store.asked[0]) == 1500
