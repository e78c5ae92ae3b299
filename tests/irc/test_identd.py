"""The built-in ident server: the query parser, hostile clients against the running server,
and InspIRCd's ident lookups of the bridge's connections end to end."""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.connector import MatrixUser, PortalKey
from bridge.connector.base import ConfigError
from connectors.irc import IRCConnector
from connectors.irc.client import ConnParams, IRCConnection
from connectors.irc.config import parse_identd, parse_network
from connectors.irc.identd import (
    BadQuery,
    IdentServer,
    IdentTable,
    Query,
    answer,
    normalize_host,
    parse_query,
)
from tests.harness.ircd import IrcServer, start_inspircd
from tests.harness.ports import free_port

from .conftest import RawIRC, wait_for
from .helpers import NET, message, net_config, unique

# --- parser and answers ---------------------------------------------------------------------


def test_parse_query_forms() -> None:
    assert parse_query(b"6191, 23\r\n") == Query(6191, 23)
    assert parse_query(b" 6191 ,23 \n") == Query(6191, 23)
    assert parse_query(b"0, 23\r\n") == BadQuery("INVALID-PORT", "0 , 23")
    assert parse_query(b"70000, 23\r\n") == BadQuery("INVALID-PORT", "70000 , 23")
    assert parse_query(b"a, 23\r\n").error == "INVALID-PORT"  # type: ignore[union-attr]
    assert parse_query(b"-1, 23\r\n").error == "INVALID-PORT"  # type: ignore[union-attr]
    assert parse_query(b"6191 23\r\n").error == "UNKNOWN-ERROR"  # type: ignore[union-attr]
    assert parse_query(b"1,2,3\r\n").error == "UNKNOWN-ERROR"  # type: ignore[union-attr]
    assert parse_query("٣, 23".encode()).error == "INVALID-PORT"  # type: ignore[union-attr]


def test_answer_only_the_own_connection() -> None:
    table = IdentTable()
    table.add(40000, "127.0.0.1", 6667, "alice")
    # The identd host's (our) port first, then the querying server's.
    assert answer(table, "127.0.0.1", b"40000 , 6667\r\n") == "40000 , 6667 : USERID : UNIX : alice"
    assert answer(table, "127.0.0.1", b"6667 , 40000\r\n") == "6667 , 40000 : ERROR : NO-USER"
    assert answer(table, "127.0.0.9", b"40000 , 6667\r\n") == "40000 , 6667 : ERROR : NO-USER"
    assert answer(table, "::ffff:127.0.0.1", b"40000,6667\n").endswith("USERID : UNIX : alice")
    assert answer(table, "127.0.0.1", b"x\n") == "0 , 0 : ERROR : UNKNOWN-ERROR"
    table.remove(40000, "127.0.0.1", 6667)
    assert answer(table, "127.0.0.1", b"40000 , 6667\r\n").endswith("NO-USER")
    assert normalize_host("::ffff:10.0.0.1") == "10.0.0.1" and normalize_host("::1") == "::1"


@given(st.binary(max_size=300))
def test_garbage_never_raises_nor_echoes(data: bytes) -> None:
    table = IdentTable()
    table.add(1234, "127.0.0.1", 6667, "bob")
    reply = answer(table, "127.0.0.1", data)
    assert reply.isascii() and "\n" not in reply and "\r" not in reply
    head, _, rest = reply.partition(" : ")
    a, _, b = head.partition(" , ")
    assert a.isdigit() and b.isdigit()
    assert rest in ("ERROR : NO-USER", "ERROR : INVALID-PORT", "ERROR : UNKNOWN-ERROR") or (
        reply == "1234 , 6667 : USERID : UNIX : bob"
    )


@given(st.integers(1, 65535), st.integers(1, 65535), st.sampled_from(["", " ", "  \t"]))
def test_every_valid_pair_parses(a: int, b: int, pad: str) -> None:
    assert parse_query(f"{pad}{a}{pad},{pad}{b}{pad}\r\n".encode()) == Query(a, b)


def test_identd_config() -> None:
    c = parse_identd(None)
    assert (c.enabled, c.listen, c.port) == (False, "::", 113)
    c = parse_identd({"enabled": True, "listen": "0.0.0.0", "port": 1113})
    assert (c.enabled, c.listen, c.port) == (True, "0.0.0.0", 1113)
    for bad in ({"port": 70000}, {"enabled": "yes"}, {"listen": ""}, [1]):
        with pytest.raises(ConfigError):
            parse_identd(bad)
    with pytest.raises(ConfigError, match="identd"):
        IRCConnector.validate_config({"networks": {"a": {"host": "h"}}, "identd": {"port": -1}})
    net = parse_network("a", {"host": "h", "bind_address": "127.0.0.5"})
    assert (
        net.bind_address == "127.0.0.5" and parse_network("a", {"host": "h"}).bind_address is None
    )
    with pytest.raises(ConfigError, match="bind_address"):
        parse_network("a", {"host": "h", "bind_address": 5})


# --- hostile clients against the running server ---------------------------------------------


async def _ask(port: int, query: bytes, host: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(query)
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


async def test_hostile_clients_leave_it_answering(caplog: pytest.LogCaptureFixture) -> None:
    table = IdentTable()
    table.add(40001, "127.0.0.1", 6667, "carol")
    server = IdentServer(table, "127.0.0.1", 0, read_timeout=1.0, max_clients=64)
    await server.start()
    port = server.port
    good = b"40001 , 6667\r\n"
    want = b"40001 , 6667 : USERID : UNIX : carol\r\n"
    try:
        assert await _ask(port, good) == want
        # Several queries on one connection, garbage in between.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x00\xff\xfe garbage\r\n" + good + b"99999,1\r\n")
        assert (await reader.readline()).endswith(b"ERROR : UNKNOWN-ERROR\r\n")
        assert await reader.readline() == want
        assert await reader.readline() == b"99999 , 1 : ERROR : INVALID-PORT\r\n"
        writer.close()
        # A 1 MB line: refused without reading it all into memory, nothing echoed.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with contextlib.suppress(ConnectionError):
            writer.write(b"1" * 1_000_000 + b"\r\n")
            await writer.drain()
        with contextlib.suppress(ConnectionError):
            reply = await asyncio.wait_for(reader.read(100), 5)
            assert b"1111111" not in reply
        writer.close()
        # Slowloris: half a query, never finished; it is dropped after the read timeout.
        sr, sw = await asyncio.open_connection("127.0.0.1", port)
        sw.write(b"400")
        await sw.drain()
        assert await asyncio.wait_for(sr.read(), 5) == b""
        sw.close()
        # 200 at once, all idle: beyond the cap they are closed, and the server stays up.
        crowd = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in range(200)),
            return_exceptions=True,
        )
        await wait_for(lambda: server.refused > 0, 5, "connections beyond the cap refused")
        assert server.clients <= 64
        for c in crowd:
            if isinstance(c, tuple):
                c[1].close()
        await wait_for(lambda: server.clients == 0, 5, "idle clients dropped")
        assert await _ask(port, good) == want
        # 200 good queries at once: each gets its answer or a clean close, never garbage.
        replies = await asyncio.gather(
            *(_ask(port, good) for _ in range(200)), return_exceptions=True
        )
        ok = [r for r in replies if r == want]
        assert ok and all(r in (want, b"") or isinstance(r, OSError) for r in replies)
        assert await _ask(port, good) == want
    finally:
        await server.stop()
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info]


async def test_listen_any_takes_ipv4() -> None:
    table = IdentTable()
    table.add(40002, "127.0.0.1", 6667, "dave")
    server = IdentServer(table, "::", free_port())
    await server.start()
    try:
        reply = await _ask(server.port, b"40002 , 6667\r\n", "127.0.0.1")
        assert reply == b"40002 , 6667 : USERID : UNIX : dave\r\n"
        assert (await _ask(server.port, b"40002 , 6667\r\n", "::1")).endswith(b"NO-USER\r\n")
    finally:
        await server.stop()


async def test_connection_known_before_tls_handshake() -> None:
    """Servers ask ident as soon as TCP is accepted, while TLS is still being negotiated."""
    table = IdentTable()
    found: list[str | None] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Never answers the TLS ClientHello: the handshake cannot finish.
        peer_host, peer_port = writer.get_extra_info("peername")[:2]
        here = writer.get_extra_info("sockname")[1]
        for _ in range(100):
            if table.lookup(peer_port, peer_host, here) is not None:
                break
            await asyncio.sleep(0.02)
        found.append(table.lookup(peer_port, peer_host, here))
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    params = ConnParams(
        "127.0.0.1", port, "tlsnick", "tlsuser", "", ssl=ssl.create_default_context()
    )
    params.ident, params.register_timeout, params.reconnect_min = table, 5, 30
    conn = IRCConnection(params)
    try:
        conn.start()
        await wait_for(lambda: found, 5, "the server's accept")
        assert found == ["tlsuser"]
        await wait_for(lambda: not table.entries, 5, "the entry removed after the failed handshake")
    finally:
        await conn.quit()
        server.close()
        await server.wait_closed()
    assert not table.entries


async def test_identd_port_taken_is_logged_not_fatal(
    bridge, caplog: pytest.LogCaptureFixture
) -> None:
    taken = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = taken.sockets[0].getsockname()[1]
    config = {
        "networks": {"test": {"host": "127.0.0.1", "port": free_port()}},
        "identd": {"enabled": True, "listen": "127.0.0.1", "port": port},
    }
    conn = IRCConnector(bridge, config)
    try:
        await conn.start()
        assert conn.identd is None and "test" in conn.networks
        assert f"identd cannot listen on 127.0.0.1 port {port}" in caplog.text
        assert not [r for r in caplog.records if r.exc_info]
    finally:
        await conn.stop()
        taken.close()
        await taken.wait_closed()


# --- end to end: InspIRCd looks up the bridge's connections ---------------------------------


@pytest.fixture(scope="module")
def ident_inspircd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IrcServer]:
    server = start_inspircd(Path(tmp_path_factory.mktemp("inspircd-ident")), ident=True)
    yield server
    server.stop()


async def test_inspircd_sees_the_puppets_ident(bridge, ident_inspircd) -> None:
    # InspIRCd asks port 113 of the client's address: the bridge connects from a loopback
    # address of its own, so tests running at the same time do not share that port.
    local = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    chan = "#" + unique("ident")
    alice = await RawIRC(ident_inspircd.host, ident_inspircd.port, unique("alice")).connect()
    config = net_config(ident_inspircd, bind_address=local)
    config["identd"] = {"enabled": True, "listen": local, "port": 113}
    conn = IRCConnector(bridge, config)
    await conn.start()
    try:
        await wait_for(lambda: conn.networks["test"].bot.registered, 15, "bot registration")
        assert conn.identd is not None and conn.identd.port == 113
        net = conn.networks["test"]
        portal = PortalKey(NET, chan)
        await alice.join(chan)
        await conn.resolve_portal(portal, None)
        bob = MatrixUser("@bobident:example.org", "Bob", "user")
        client = await conn.client_for(bob, portal)
        await client.handle_matrix_message(message(portal, bob.user_id, "hello"))
        await alice.expect(lambda ln: ln.param(1) == "hello", what="the puppet's message")
        puppet = net.pool.get(bob.user_id)
        assert puppet is not None
        alice.send(f"WHOIS {puppet.conn.nick}", f"WHOIS {net.bot.nick}")
        for nick, user in ((puppet.conn.nick, "bobident"), (net.bot.nick, "mimibridge")):
            whois = await alice.expect(
                lambda ln, n=nick: ln.command == "311" and ln.param(1) == n, what="WHOIS " + nick
            )
            assert whois.param(2) == user  # no "~": the server got the ident answer
            assert whois.param(3) == local
        assert conn.identd.answered >= 2
        # The client that has no identd shows the "~" the bridge's connections are spared.
        alice.send(f"WHOIS {alice.nick}")
        own = await alice.expect(lambda ln: ln.command == "311" and ln.param(1) == alice.nick)
        assert own.param(2) == "~" + alice.nick[:10]
    finally:
        await conn.stop()
        await alice.close()
    assert conn.ident_table is not None and not conn.ident_table.entries
