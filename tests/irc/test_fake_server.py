"""Behaviour no Debian ircd offers without services, or that a real ircd never sends: SASL
PLAIN (ngircd has no SASL; InspIRCd's m_sasl needs a services server), hostile and broken lines,
server-time/msgid tags. A small asyncio server plays the ircd."""

from __future__ import annotations

import asyncio
import base64
import logging

import pytest

from bridge.connector import (
    ConnectionChange,
    ConnectionState,
    ConnectorError,
    GhostKey,
    Login,
    MatrixPowerLevel,
    MatrixSender,
    MatrixUser,
    NotSupported,
    PortalKey,
    PowerLevelHandling,
    RemoteChatInfo,
    RemoteMessage,
)
from connectors.irc import IRCConnector
from connectors.irc.protocol import parse_line

from .conftest import FakeBridge, wait_for

USER = MatrixUser("@dana:example.org", "Dana", "user")


class FakeIRCd:
    def __init__(self, *, sasl_ok: tuple[str, str] | None = None, junk: list[bytes] | None = None):
        self.sasl_ok = sasl_ok
        self.junk = junk or []
        self.taken: set[str] = set()  # nicks a NICK change gets 433 for
        self.no_brackets = False  # 432 for nicks with "[" after registration
        self.not_op: set[str] = set()  # nicks whose channel MODEs get 482
        self.received: list[tuple[int, str]] = []
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.nicks: dict[int, str] = {}
        self.connections = 0
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> FakeIRCd:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers.values():
            w.close()

    def send(self, cid: int, data: bytes) -> None:
        self.writers[cid].write(data)

    def send_all(self, data: bytes) -> None:
        for w in self.writers.values():
            w.write(data)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        cid = self.connections
        self.writers[cid] = writer
        capped = registered = False
        user_seen = False
        while True:
            raw = await reader.readline()
            if not raw:
                return
            line = parse_line(raw)
            if line is None:
                continue
            self.received.append((cid, raw.decode("utf-8", "replace").rstrip("\r\n")))
            cmd = line.command
            w = writer.write
            if cmd == "CAP" and line.param(0) == "LS":
                capped = True
                caps = "server-time message-tags multi-prefix"
                if self.sasl_ok:
                    caps = "sasl=PLAIN,EXTERNAL " + caps
                w(f":fake CAP * LS :{caps}\r\n".encode())
            elif cmd == "CAP" and line.param(0) == "REQ":
                w(f":fake CAP * ACK :{line.param(1)}\r\n".encode())
            elif cmd == "AUTHENTICATE" and line.param(0) == "PLAIN":
                w(b"AUTHENTICATE +\r\n")
            elif cmd == "AUTHENTICATE":
                account, password = self.sasl_ok or ("", "")
                expected = base64.b64encode(f"{account}\0{account}\0{password}".encode()).decode()
                if line.param(0) == expected:
                    w(b":fake 900 * * acc :You are now logged in\r\n:fake 903 * :SASL ok\r\n")
                else:
                    w(b":fake 904 * :SASL authentication failed\r\n")
            elif cmd == "NICK" and registered:
                old, new = self.nicks[cid], line.param(0)
                if new in self.taken:
                    w(f":fake 433 {old} {new} :Nickname already in use\r\n".encode())
                elif "[" in new and self.no_brackets:
                    w(f":fake 432 {old} {new} :Erroneous nickname\r\n".encode())
                else:
                    self.nicks[cid] = new
                    w(f":{old}!u@h NICK :{new}\r\n".encode())
            elif cmd == "NICK":
                self.nicks[cid] = line.param(0)
            elif cmd == "USER":
                user_seen = True
            elif cmd == "PING":
                w(f":fake PONG fake :{line.param(0)}\r\n".encode())
            elif cmd == "MODE" and len(line.params) > 2:
                nick = self.nicks[cid]
                if nick in self.not_op:
                    # An unrelated error first (as for an earlier command), then the refusal.
                    w(f":fake 401 {nick} zed :No such nick/channel\r\n".encode())
                    w(f":fake 482 {nick} {line.param(0)} :You're not channel operator\r\n".encode())
                else:
                    self.send_all(f":{nick}!u@h MODE {' '.join(line.params)}\r\n".encode())
            elif cmd == "JOIN":
                nick = self.nicks[cid]
                w(f":{nick}!u@h JOIN {line.param(0)}\r\n".encode())
                w(f":fake 353 {nick} = {line.param(0)} :{nick} @eve\r\n".encode())
                w(f":fake 366 {nick} {line.param(0)} :End\r\n".encode())
            if (
                not registered
                and user_seen
                and cid in self.nicks
                and (not capped or (cmd == "CAP" and line.param(0) == "END"))
            ):
                registered = True
                for junk in self.junk:
                    w(junk)
                nick = self.nicks[cid]
                w(f":fake 001 {nick} :Welcome {nick}!u@h\r\n".encode())
                w(f":fake 005 {nick} CASEMAPPING=rfc1459 PREFIX=(ov)@+ :are supported\r\n".encode())
            await writer.drain()


def config(port: int, **over) -> dict:
    net = {
        "host": "127.0.0.1",
        "port": port,
        "bot": {"nick": "fakebot"},
        "reconnect": {"min_delay": 0.2, "max_delay": 0.5},
        "register_timeout": 3,
    }
    net.update(over)
    return {"networks": {"fake": net}}


async def test_sasl_plain_login(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = await FakeIRCd(sasl_ok=("dana", "s3cret-pw")).start()
    bridge = FakeBridge()
    conn = IRCConnector(bridge, config(server.port))
    await conn.start()
    try:
        result = await conn.login(USER, ["sasl", "dana", "s3cret-pw"])
        assert result.login_id == f"fake/{USER.user_id}"
        assert result.credentials == {
            "network": "fake",
            "sasl_account": "dana",
            "sasl_password": "s3cret-pw",
        }
        assert result.remote_name == "dana"
        puppet = conn.networks["fake"].pool.get(USER.user_id)
        assert puppet is not None and puppet.conn.registered and "sasl" in puppet.conn.caps
        cid = next(c for c, text in server.received if text == "AUTHENTICATE PLAIN")
        sent = [text for c, text in server.received if c == cid]
        assert "AUTHENTICATE PLAIN" in sent and "CAP END" in sent
        assert sent.index("AUTHENTICATE PLAIN") < sent.index("CAP END")
        assert "s3cret-pw" not in caplog.text
        assert base64.b64encode(b"dana\0dana\0s3cret-pw").decode() not in caplog.text
    finally:
        await conn.stop()
        await server.stop()


async def test_sasl_failure_is_reported_and_not_retried() -> None:
    server = await FakeIRCd(sasl_ok=("dana", "right")).start()
    bridge = FakeBridge()
    conn = IRCConnector(bridge, config(server.port))
    await conn.start()
    try:
        await wait_for(lambda: conn.networks["fake"].bot.registered)
        before = server.connections
        with pytest.raises(ConnectorError, match="SASL authentication failed"):
            await conn.login(USER, ["fake", "sasl", "dana", "wrong"])
        await asyncio.sleep(1.0)
        assert server.connections == before + 1  # no reconnect storm with bad credentials
        assert conn.networks["fake"].pool.get(USER.user_id) is None
    finally:
        await conn.stop()
        await server.stop()


async def test_a_refused_stored_sasl_login_is_reported_once_as_an_auth_failure() -> None:
    """A stored login whose SASL password the server now refuses: the puppet's connection is
    reported failed once, as an authentication failure, for the login's id; a refusal during
    ``login`` itself is the command's answer and is not reported."""
    server = await FakeIRCd(sasl_ok=("dana", "right")).start()
    bridge = FakeBridge()
    creds = {"network": "fake", "sasl_account": "dana", "sasl_password": "old"}
    bridge.login_list = [Login("irc", f"fake/{USER.user_id}", USER.user_id, creds)]
    conn = IRCConnector(bridge, config(server.port))
    await conn.start()
    try:
        await wait_for(lambda: conn.networks["fake"].bot.registered)
        await conn.client_for(USER, PortalKey("irc_fake", "#room"))

        def failed() -> list[ConnectionChange]:
            return [c for c in bridge.connection_changes if c.state == ConnectionState.FAILED]

        await wait_for(failed, 10, "the refusal reported")
        await asyncio.sleep(1.0)  # (reconnect delays are 0.2-0.5 s: a retry would show)
        [change] = failed()
        assert (change.user_id, change.network, change.login_id) == (
            USER.user_id,
            "irc_fake",
            f"fake/{USER.user_id}",
        )
        assert change.auth_failed and "SASL authentication failed" in change.reason
        *attempt, last = [c.state for c in bridge.connection_changes]
        assert set(attempt) == {ConnectionState.CONNECTING} and last == ConnectionState.FAILED
        bridge.connection_changes.clear()
        with pytest.raises(ConnectorError, match="SASL authentication failed"):
            await conn.login(USER, ["fake", "sasl", "dana", "wrong"])
        assert failed() == []
    finally:
        await conn.stop()
        await server.stop()


async def test_server_password_login() -> None:
    server = await FakeIRCd().start()
    bridge = FakeBridge()
    conn = IRCConnector(bridge, config(server.port))
    await conn.start()
    try:
        result = await conn.login(USER, ["password", "hunter2"])
        assert result.credentials["password"] == "hunter2"
        assert any(text == "PASS hunter2" for _, text in server.received)
        with pytest.raises(ConnectorError, match="Usage"):
            await conn.login(USER, ["bogus"])
    finally:
        await conn.stop()
        await server.stop()


HOSTILE = [
    b"x" * 20000 + b"\r\n",  # overlong
    b":fake 999 * :unknown numeric\r\n",
    b":fake KICK\r\n",  # missing params
    b":fake\r\n",
    b"@\r\n",
    b"@a=b\r\n",
    b"\x00\x00\r\n",
    b":fake PRIVMSG\r\n",
    b":eve!e@h PRIVMSG\r\n",
    b":fake NOTICE * :caf\xe9 latin-1\r\n",
    b"\r\n\r\n\n\n",
    b":fake 005\r\n",
    b":fake CAP\r\n",
    b"PING\r\n",
]


async def test_hostile_lines_do_not_break_the_connection() -> None:
    server = await FakeIRCd(junk=HOSTILE).start()
    bridge = FakeBridge()
    conn = IRCConnector(bridge, config(server.port, channels=["#c"]))
    await conn.start()
    try:
        net = conn.networks["fake"]
        await wait_for(lambda: net.bot.registered and "#c" in net.bot.joined)
        puppet = net.pool.obtain(USER.user_id, "Dana")
        assert puppet is not None
        await wait_for(lambda: puppet.conn.registered)
        cid = max(server.writers)
        server.send(cid, b":eve!e@h PRIVMSG Dana[m] :\xe7a va \xff\r\n")
        server.send(cid, b":eve!e@h PRIVMSG Dana[m] :" + b"y" * 9000 + b"\r\n")
        server.send(cid, b"PING :still-there\r\n")
        await wait_for(lambda: any("still-there" in t for c, t in server.received if c == cid))
        msgs = await wait_for(lambda: bridge.of_type(RemoteMessage))
        assert msgs[0].content.text == "ça va ÿ"
        assert msgs[0].portal == PortalKey("irc_fake", "eve", receiver=USER.user_id)
        assert puppet.conn.registered and net.bot.registered
        assert puppet.conn.stats.bad_lines >= 1
    finally:
        await conn.stop()
        await server.stop()


async def test_server_time_and_msgid_tags() -> None:
    server = await FakeIRCd().start()
    bridge = FakeBridge()
    conn = IRCConnector(bridge, config(server.port, channels=["#c"]))
    await conn.start()
    try:
        net = conn.networks["fake"]
        await wait_for(lambda: net.bot.registered and "#c" in net.bot.joined)
        assert {"server-time", "message-tags", "multi-prefix"} <= net.bot.caps
        server.send_all(
            b"@time=2020-01-01T00:00:00.000Z;msgid=abc123 :eve!e@h PRIVMSG #c :tagged\r\n"
        )
        msg = (await wait_for(lambda: bridge.of_type(RemoteMessage)))[0]
        assert msg.id == "abc123" and msg.timestamp == 1577836800000
        assert msg.sender.remote_id == "eve"
    finally:
        await conn.stop()
        await server.stop()


async def test_display_name_change_nick_collisions() -> None:
    """A new display name becomes the puppet's nick: taken -> the next alternative, refused as
    erroneous -> the fallback nick; the same change seen in a second portal does nothing."""
    from bridge.connector import MatrixProfile, MatrixSender

    server = await FakeIRCd().start()
    bridge = FakeBridge()
    conn = IRCConnector(bridge, config(server.port))
    await conn.start()
    try:
        net = conn.networks["fake"]
        client = await conn.client_for(USER, PortalKey("irc_fake", "#c"))
        puppet = net.pool.get(USER.user_id)
        assert client is not None and puppet is not None
        await wait_for(lambda: puppet.conn.registered)

        def change(name: str, channel: str = "#c") -> MatrixProfile:
            return MatrixProfile(
                portal=PortalKey("irc_fake", channel),
                sender=MatrixSender(USER.user_id, name),
                event_id="$x",
                display_name=name,
            )

        def nick_lines() -> list[str]:
            return [t for _, t in server.received if t.startswith("NICK ")]

        server.taken = {"Danielle[m]", "Danielle[m]1"}
        await client.handle_matrix_profile(change("Danielle"))  # type: ignore[attr-defined]
        assert puppet.conn.nick == "Danielle[m]2"
        assert nick_lines()[-3:] == ["NICK Danielle[m]", "NICK Danielle[m]1", "NICK Danielle[m]2"]
        before = len(nick_lines())
        await client.handle_matrix_profile(change("Danielle", "#d"))  # type: ignore[attr-defined]
        assert len(nick_lines()) == before
        assert net.pool.user_of_nick(net.pool.fold("Danielle[m]2")) == USER.user_id
        server.no_brackets = True
        await client.handle_matrix_profile(change("Dee"))  # type: ignore[attr-defined]
        assert puppet.conn.nick.startswith("m") and "[" not in puppet.conn.nick
        assert puppet.conn.params.nick == "Dee[m]"  # asked for first again after a reconnect
    finally:
        await conn.stop()
        await server.stop()


async def test_power_levels_become_modes_of_the_users_connection() -> None:
    """Matrix power levels become one MODE line from the Matrix user's own connection; the call
    returns once the server has handled it (and the listener has seen it come back); 482 is
    the Matrix user's answer, and goes to nobody else."""
    server = await FakeIRCd().start()
    bridge = FakeBridge()
    conn = IRCConnector(bridge, config(server.port, channels=["#c"], flood={"burst": 50}))
    await conn.start()
    try:
        net = conn.networks["fake"]
        await wait_for(lambda: net.bot.registered and "#c" in net.bot.joined)
        portal = PortalKey("irc_fake", "#c")
        client = await conn.client_for(USER, portal)
        assert isinstance(client, PowerLevelHandling)
        server.send_all(b":bob!b@h JOIN #c\r\n")
        bob = await wait_for(lambda: net.translator.member("#c", "bob"))

        def change(
            level: int,
            previous: int,
            matrix_user: str | None = None,
            where: PortalKey = portal,
            by: str = USER.user_id,
        ) -> MatrixPowerLevel:
            return MatrixPowerLevel(
                portal=where,
                sender=MatrixSender(by, by[1:].split(":")[0]),
                event_id="$p",
                level=level,
                previous=previous,
                target=None if matrix_user else GhostKey("irc_fake", "bob"),
                target_matrix_user=matrix_user,
            )

        def modes() -> list[str]:
            # Mode changes; the bot's bare ``MODE #c`` after joining only asks for the modes.
            return [t for _, t in server.received if t.startswith("MODE ") and " " in t[5:]]

        async def bob_level() -> int | None:
            await net.drain()
            info = [e for e in bridge.of_type(RemoteChatInfo) if e.members][-1]
            return next(m.power_level for m in info.members if m.sender.remote_id == "bob")

        await client.handle_matrix_power_level(change(50, 0))
        assert modes() == ["MODE #c +o bob"]
        # The echo leaves bob's level in Matrix as the Matrix user set it (None: unchanged).
        assert bob.modes == {"o"} and await bob_level() is None
        assert bob.matrix_level == 50 and not bob.level_pending
        await client.handle_matrix_power_level(change(20, 50))
        assert modes()[-1] == "MODE #c -o+v bob bob"
        assert bob.modes == {"v"} and await bob_level() is None  # not voice's 10
        await client.handle_matrix_power_level(change(75, 20))
        assert modes()[-1] == "MODE #c +o bob"
        assert bob.modes == {"o", "v"} and await bob_level() is None
        await client.handle_matrix_power_level(change(0, 75))
        assert modes()[-1] == "MODE #c -ov bob bob"
        assert bob.modes == set() and await bob_level() is None
        # An IRC operator's own MODE: the level of the modes again.
        server.send_all(b":eve!e@h MODE #c +v bob\r\n")
        await wait_for(lambda: bob.modes == {"v"})
        assert await bob_level() == 10
        assert len(modes()) == 4

        # Erin's connection is no channel operator: the server's 482 is her answer.
        erin = MatrixUser("@erin:example.org", "Erin", "user")
        server.not_op.add("Erin[m]")
        erin_client = await conn.client_for(erin, portal)
        assert isinstance(erin_client, PowerLevelHandling)
        with pytest.raises(ConnectorError, match="you are not a channel operator in #c on IRC"):
            await erin_client.handle_matrix_power_level(change(50, 0, by=erin.user_id))
        assert modes()[-1] == "MODE #c +o bob" and bob.matrix_level is None
        # The unrelated 401 before it still reaches her as usual; the 482 does not, twice.
        await wait_for(lambda: any("zed" in text for _, text, _ in bridge.notices))
        assert not [n for n in bridge.notices if "operator" in n[1]]

        # A Matrix user's own connection in the channel: its nick.
        await client.handle_matrix_power_level(change(100, 0, matrix_user=erin.user_id))
        assert modes()[-1] == "MODE #c +o Erin[m]"
        with pytest.raises(ConnectorError, match=r"@nobody:example\.org has no IRC connection"):
            await client.handle_matrix_power_level(change(50, 0, "@nobody:example.org"))
        dm = PortalKey("irc_fake", "bob", receiver=USER.user_id)
        with pytest.raises(NotSupported, match="IRC private chats have no ranks"):
            await client.handle_matrix_power_level(change(50, 0, where=dm))
        assert len(modes()) == 6
    finally:
        await conn.stop()
        await server.stop()
