"""The connector against a real ngircd on loopback, with plain IRC clients as IRC users."""

from __future__ import annotations

import asyncio
import time

import pytest

from bridge.connector import (
    ChatMember,
    ConnectorError,
    GhostKey,
    MatrixEdit,
    MatrixMembership,
    MatrixPowerLevel,
    MatrixReaction,
    MatrixRedaction,
    MatrixSender,
    MatrixUser,
    Membership,
    MessageContent,
    MessageKind,
    MessageRef,
    NotSupported,
    PortalKey,
    RemoteChatInfo,
    RemoteMembership,
    RemoteMessage,
    RemoteProfile,
)
from connectors.irc.protocol import MAX_LINE, serialize
from tests.harness.ircd import start_ngircd

from .conftest import FakeBridge, wait_for
from .helpers import NET, message, start_connector, unique

BOB = MatrixUser("@bob:example.org", "Bob", "user")


async def setup_channel(bridge, ngircd, irc_users, **over):
    chan = "#" + unique("chan")
    alice = await irc_users(unique("alice"))
    await alice.join(chan)
    conn = await start_connector(bridge, ngircd, **over)
    portal = PortalKey(NET, chan)
    assert await conn.resolve_portal(portal, None) is not None
    return conn, chan, portal, alice


async def test_puppet_joins_and_speaks(bridge, ngircd, irc_users) -> None:
    conn, chan, portal, alice = await setup_channel(bridge, ngircd, irc_users)
    try:
        client = await conn.client_for(BOB, portal)
        assert client is not None
        sent = await client.handle_matrix_message(message(portal, BOB.user_id, "hello irc"))
        assert sent.remote_id
        await alice.expect(lambda ln: ln.command == "JOIN" and ln.nick == "Bob[m]", what="join")
        line = await alice.expect(lambda ln: ln.command == "PRIVMSG" and ln.nick == "Bob[m]")
        assert line.params == [chan, "hello irc"]
        # formatted Matrix message -> mIRC codes
        await client.handle_matrix_message(
            message(portal, BOB.user_id, "bold", html="<b>bold</b> and <i>it</i>")
        )
        line = await alice.expect(lambda ln: ln.param(1).startswith("\x02"))
        assert line.param(1) == "\x02bold\x02 and \x1dit\x1d"
    finally:
        await conn.stop()


async def test_irc_message_emitted_once_not_per_puppet(bridge, ngircd, irc_users) -> None:
    conn, chan, portal, alice = await setup_channel(bridge, ngircd, irc_users)
    try:
        users = [MatrixUser(f"@u{i}:example.org", f"User{i}", "user") for i in range(5)]
        for u in users:
            client = await conn.client_for(u, portal)
            await client.handle_matrix_message(message(portal, u.user_id, f"hi from {u.user_id}"))
        await wait_for(lambda: len(alice.messages(chan)) == 5, what="5 puppet messages")
        alice.send(f"PRIVMSG {chan} :hello everyone", f"PRIVMSG {chan} :User3[m]: ping")
        await wait_for(lambda: len(bridge.of_type(RemoteMessage)) >= 2, what="remote messages")
        await asyncio.sleep(0.3)
        msgs = bridge.of_type(RemoteMessage)
        assert len(msgs) == 2  # puppets' own lines are not bridged back, IRC lines once
        first, second = msgs
        assert first.portal == portal and first.sender.remote_id == alice.nick.lower()
        assert first.sender.display_name == alice.nick
        assert first.content.text == "hello everyone" and first.content.kind == MessageKind.TEXT
        assert second.content.mentions == ["@u3:example.org"]
        assert (
            second.content.html is not None and "matrix.to/#/@u3:example.org" in second.content.html
        )
        assert first.id != second.id
        # puppets never parsed the channel traffic
        net = conn.networks["test"]
        for p in net.pool.puppets.values():
            assert p.conn.stats.lines_ignored > 0
    finally:
        await conn.stop()


async def test_membership_nick_topic_modes_kick(bridge, ngircd, irc_users) -> None:
    conn, chan, portal, alice = await setup_channel(bridge, ngircd, irc_users)
    try:
        carol = await irc_users(unique("carol"))
        await carol.join(chan)
        joined = await wait_for(lambda: bridge.of_type(RemoteMembership))
        assert (
            joined[0].membership == Membership.JOIN and joined[0].sender.display_name == carol.nick
        )

        new = unique("Caro")
        carol.send(f"NICK {new}")
        profile = (await wait_for(lambda: bridge.of_type(RemoteProfile)))[0]
        assert profile.sender.remote_id == carol.nick.lower()
        assert profile.display_name == new and profile.new_remote_id == new.lower()
        assert profile.portal == portal

        alice.send(f"TOPIC {chan} :the new topic")
        info = await wait_for(lambda: [e for e in bridge.of_type(RemoteChatInfo) if e.topic])
        assert info[-1].topic == "the new topic" and info[-1].sender.display_name == alice.nick

        alice.send(f"MODE {chan} +v {new}")
        snap = await wait_for(
            lambda: [
                e
                for e in bridge.of_type(RemoteChatInfo)
                if e.members and e.sender.display_name == alice.nick
            ]
        )
        levels = {m.sender.display_name: m.power_level for m in snap[-1].members}
        assert levels[new] == 10 and levels[alice.nick] == 50  # op (channel creator), voice
        assert all(isinstance(m, ChatMember) for m in snap[-1].members)

        alice.send(f"KICK {chan} {new} :behave")
        kick = await wait_for(
            lambda: [e for e in bridge.of_type(RemoteMembership) if e.membership == Membership.KICK]
        )
        assert kick[0].target is not None and kick[0].target.remote_id == new.lower()
        assert kick[0].sender.display_name == alice.nick and kick[0].reason == "behave"

        dave = await irc_users(unique("dave"))
        await dave.join(chan)
        dave.send(f"PART {chan} :later")
        left = await wait_for(
            lambda: [
                e for e in bridge.of_type(RemoteMembership) if e.membership == Membership.LEAVE
            ]
        )
        assert left[0].sender.display_name == dave.nick and left[0].reason == "later"
        eve = await irc_users(unique("eve"))
        await eve.join(chan)
        eve.send("QUIT :gone")
        quit_ = await wait_for(
            lambda: [
                e
                for e in bridge.of_type(RemoteMembership)
                if e.membership == Membership.LEAVE and e.sender.display_name == eve.nick
            ]
        )
        assert "gone" in (quit_[0].reason or "")
    finally:
        await conn.stop()


async def test_ctcp_action_and_notice_both_ways(bridge, ngircd, irc_users) -> None:
    conn, chan, portal, alice = await setup_channel(bridge, ngircd, irc_users)
    try:
        alice.send(f"PRIVMSG {chan} :\x01ACTION waves\x01", f"NOTICE {chan} :automated")
        alice.send(f"PRIVMSG {chan} :\x01VERSION\x01")  # other CTCP: not bridged
        alice.send(f"PRIVMSG {chan} :\x0304red\x03 text")
        msgs = await wait_for(
            lambda: len(bridge.of_type(RemoteMessage)) >= 3 and bridge.of_type(RemoteMessage)
        )
        assert [(m.content.kind, m.content.text) for m in msgs] == [
            (MessageKind.EMOTE, "waves"),
            (MessageKind.NOTICE, "automated"),
            (MessageKind.TEXT, "red text"),
        ]
        assert msgs[2].content.html == '<font data-mx-color="#ff0000">red</font> text'
        client = await conn.client_for(BOB, portal)
        await client.handle_matrix_message(
            message(portal, BOB.user_id, "dances", MessageKind.EMOTE)
        )
        await client.handle_matrix_message(message(portal, BOB.user_id, "beep", MessageKind.NOTICE))
        act = await alice.expect(lambda ln: ln.nick == "Bob[m]" and ln.command == "PRIVMSG")
        assert act.param(1) == "\x01ACTION dances\x01"
        note = await alice.expect(lambda ln: ln.nick == "Bob[m]" and ln.command == "NOTICE")
        assert note.param(1) == "beep"
    finally:
        await conn.stop()


async def test_long_and_multiline_messages(bridge, ngircd, irc_users) -> None:
    conn, chan, portal, alice = await setup_channel(bridge, ngircd, irc_users)
    try:
        client = await conn.client_for(BOB, portal)
        long = "ü" * 300 + " " + "wörd " * 100
        await client.handle_matrix_message(message(portal, BOB.user_id, long))
        await wait_for(lambda: len(alice.messages(chan)) >= 2, what="split lines")
        await asyncio.sleep(0.3)
        got = alice.messages(chan)
        assert "".join(m.param(1) for m in got).replace(" ", "") == long.replace(" ", "")
        raws = [raw for _, raw in alice.raw if b" PRIVMSG " in raw and b"Bob[m]" in raw]
        assert raws and all(len(r) <= MAX_LINE for r in raws)
        # injection attempt: each line is its own PRIVMSG, no QUIT/JOIN reaches the server
        await client.handle_matrix_message(
            message(portal, BOB.user_id, "a\r\nQUIT :x\nJOIN #evil\0")
        )
        await wait_for(lambda: any(m.param(1) == "JOIN #evil" for m in alice.messages(chan)))
        net = conn.networks["test"]
        assert net.pool.get(BOB.user_id).conn.registered
        # more than line_limit lines: a link to the full text
        text = "\n".join(f"line {i}" for i in range(8))
        await client.handle_matrix_message(message(portal, BOB.user_id, text))
        line = await alice.expect(lambda ln: "full message" in ln.param(1))
        assert line.param(1) == "line 0 (full message: https://example.org/paste/1)"
        assert bridge.uploads == [(text, "message.txt")]
    finally:
        await conn.stop()


async def test_dm_both_ways(bridge, ngircd, irc_users) -> None:
    conn, _chan, portal, alice = await setup_channel(bridge, ngircd, irc_users)
    try:
        client = await conn.client_for(BOB, portal)
        await client.handle_matrix_message(message(portal, BOB.user_id, "here"))
        await alice.expect(lambda ln: ln.nick == "Bob[m]")
        alice.send("PRIVMSG Bob[m] :psst, private")
        dm = await wait_for(lambda: bridge.of_type(RemoteMessage))
        assert dm[0].portal == PortalKey(NET, alice.nick.lower(), receiver=BOB.user_id)
        assert dm[0].content.text == "psst, private"
        dm_portal = await conn.open_dm(BOB, NET, alice.nick)
        assert dm_portal == dm[0].portal
        info = await conn.resolve_portal(dm_portal, BOB)
        assert info is not None and info.is_direct
        await client.handle_matrix_message(message(dm_portal, BOB.user_id, "private answer"))
        line = await alice.expect(lambda ln: ln.param(1) == "private answer")
        assert line.param(0) == alice.nick
    finally:
        await conn.stop()


async def test_matrix_kick_ban_needs_ops(bridge, ngircd, irc_users) -> None:
    chan = "#" + unique("ops")
    conn = await start_connector(bridge, ngircd)
    try:
        portal = PortalKey(NET, chan)
        client = await conn.client_for(BOB, portal)
        # Bob's puppet creates the channel, so it is operator there
        await client.handle_matrix_message(message(portal, BOB.user_id, "first"))
        bob_conn = conn.networks["test"].pool.get(BOB.user_id).conn
        await wait_for(lambda: chan in bob_conn.joined)
        await conn.resolve_portal(portal, None)
        alice = await irc_users(unique("alice"))
        await alice.join(chan)
        net = conn.networks["test"]
        await wait_for(lambda: alice.nick.lower() in net.translator.channels[chan].members)
        kick = MatrixMembership(
            portal=portal,
            sender=MatrixSender(BOB.user_id, "Bob"),
            event_id="$k",
            membership=Membership.KICK,
            target=GhostKey(NET, alice.nick.lower()),
            reason="spam",
        )
        await client.handle_matrix_membership(kick)
        line = await alice.expect(lambda ln: ln.command == "KICK")
        assert line.params == [chan, alice.nick, "spam"]
        await asyncio.sleep(0.2)
        assert not [e for e in bridge.of_type(RemoteMembership) if e.membership == Membership.KICK]
        # Carol's puppet is not an operator: told so, nothing sent
        carol = MatrixUser("@carol:example.org", "Carol", "user")
        cclient = await conn.client_for(carol, portal)
        await cclient.handle_matrix_message(message(portal, carol.user_id, "hi"))
        await alice.join(chan)
        await wait_for(lambda: "carol[m]" in net.translator.channels[chan].members)
        ban = MatrixMembership(
            portal=portal,
            sender=MatrixSender(carol.user_id, "Carol"),
            event_id="$b",
            membership=Membership.BAN,
            target=GhostKey(NET, alice.nick.lower()),
        )
        with pytest.raises(NotSupported, match="not a channel operator"):
            await cclient.handle_matrix_membership(ban)
        # Bob can ban: MODE +b then KICK
        await client.handle_matrix_membership(
            MatrixMembership(
                portal=portal,
                sender=MatrixSender(BOB.user_id, "Bob"),
                event_id="$b2",
                membership=Membership.BAN,
                target=GhostKey(NET, alice.nick.lower()),
            )
        )
        mode = await alice.expect(lambda ln: ln.command == "MODE" and ln.param(1) == "+b")
        assert mode.param(2) == f"{alice.nick}!*@*"
    finally:
        await conn.stop()


async def test_matrix_power_levels_become_modes(bridge, ngircd, irc_users) -> None:
    """ngircd's own answers: the operator's MODE reaches the channel, a non-operator's gets
    482, a nick not in the channel 441."""
    chan = "#" + unique("pl")
    conn = await start_connector(bridge, ngircd)
    try:
        portal = PortalKey(NET, chan)
        client = await conn.client_for(BOB, portal)
        await client.handle_matrix_message(message(portal, BOB.user_id, "first"))  # creates: op
        net = conn.networks["test"]
        await wait_for(lambda: chan in net.pool.get(BOB.user_id).conn.joined)
        await conn.resolve_portal(portal, None)
        alice = await irc_users(unique("alice"))
        await alice.join(chan)
        await wait_for(lambda: net.translator.member(chan, alice.nick.lower()))

        def change(level: int, previous: int, by: MatrixUser = BOB, nick: str = alice.nick):
            return MatrixPowerLevel(
                portal=portal,
                sender=MatrixSender(by.user_id, by.display_name),
                event_id="$p",
                level=level,
                previous=previous,
                target=GhostKey(NET, nick.lower()),
            )

        def modes() -> list[list[str]]:
            return [ln.params for ln in alice.lines if ln.command == "MODE"]

        await client.handle_matrix_power_level(change(50, 0))
        await wait_for(lambda: modes(), what="+o")
        assert modes() == [[chan, "+o", alice.nick]]
        await client.handle_matrix_power_level(change(10, 50))
        await wait_for(lambda: len(modes()) == 2, what="-o+v")
        assert modes()[1] == [chan, "-o+v", alice.nick, alice.nick]
        assert net.translator.member_modes(chan, alice.nick.lower()) == {"v"}
        with pytest.raises(ConnectorError, match="not in"):
            await client.handle_matrix_power_level(change(50, 0, nick="nobody" + unique("x")))
        carol = MatrixUser("@carol:example.org", "Carol", "user")
        cclient = await conn.client_for(carol, portal)
        with pytest.raises(ConnectorError, match="you are not a channel operator"):
            await cclient.handle_matrix_power_level(change(0, 10, by=carol))
        assert len(modes()) == 2
        assert not [n for n in bridge.notices if "operator" in n[1]]
    finally:
        await conn.stop()


async def test_edit_reply_reaction_redaction_policies(bridge, ngircd, irc_users) -> None:
    conn, _chan, portal, alice = await setup_channel(bridge, ngircd, irc_users)
    try:
        client = await conn.client_for(BOB, portal)
        sender = MatrixSender(BOB.user_id, "Bob")
        await client.handle_matrix_edit(
            MatrixEdit(
                portal=portal,
                sender=sender,
                event_id="$e",
                target=MessageRef("m1", None, "helo"),
                content=MessageContent("hello"),
            )
        )
        await alice.expect(lambda ln: ln.param(1) == "* hello", what="edit")
        reply = message(portal, BOB.user_id, "> <@x:y> old\n\nyes indeed")
        reply.reply_to = MessageRef("r1", alice.nick.lower(), "question?")
        await client.handle_matrix_message(reply)
        await alice.expect(lambda ln: ln.param(1) == f"{alice.nick}: yes indeed", what="reply")
        await client.handle_matrix_reaction(
            MatrixReaction(
                portal=portal,
                sender=sender,
                event_id="$r",
                target=MessageRef("r1", alice.nick.lower(), "question?"),
                key="👍",
            )
        )
        await alice.expect(
            lambda ln: ln.param(1) == '\x01ACTION reacted 👍 to "question?"\x01', what="reaction"
        )
        with pytest.raises(NotSupported, match="cannot delete"):
            await client.handle_matrix_redaction(
                MatrixRedaction(
                    portal=portal, sender=sender, event_id="$d", target=MessageRef("m1", None)
                )
            )
    finally:
        await conn.stop()
    bridge2 = FakeBridge()
    conn = await start_connector(bridge2, ngircd, edits="off", reactions="off")
    try:
        client = await conn.client_for(BOB, portal)
        with pytest.raises(NotSupported):
            await client.handle_matrix_edit(
                MatrixEdit(
                    portal=portal,
                    sender=MatrixSender(BOB.user_id, "Bob"),
                    event_id="$e",
                    target=MessageRef("m1", None),
                    content=MessageContent("x"),
                )
            )
    finally:
        await conn.stop()


async def test_nick_collision_and_nick_command(bridge, ngircd, irc_users) -> None:
    conn, chan, portal, alice = await setup_channel(bridge, ngircd, irc_users)
    try:
        name = unique("Same")
        u1 = MatrixUser("@same1:example.org", name, "user")
        u2 = MatrixUser("@same2:example.org", name, "user")
        for u in (u1, u2):
            c = await conn.client_for(u, portal)
            await c.handle_matrix_message(message(portal, u.user_id, f"I am {u.user_id}"))
        await wait_for(lambda: len(alice.messages(chan)) == 2)
        nicks = {m.param(1): m.nick for m in alice.messages(chan)}
        assert set(nicks.values()) == {f"{name}[m]", f"{name}[m]1"}
        cmd = next(c for c in conn.commands() if c.name == "nick")
        new = unique("Renamed")
        answer = await cmd.handler(u1, [new])
        assert new in answer
        await alice.expect(lambda ln: ln.command == "NICK" and ln.param(0) == new)
        taken = await cmd.handler(u2, [new])
        assert "refused" in taken
        assert "not a valid" in await cmd.handler(u2, ["9bad"])
    finally:
        await conn.stop()


async def test_raw_command_admin_only(bridge, ngircd, irc_users) -> None:
    conn, _chan, _portal, alice = await setup_channel(bridge, ngircd, irc_users)
    try:
        raw = next(c for c in conn.commands() if c.name == "raw")
        assert raw.admin_only
        assert "Only bridge admins" in await raw.handler(BOB, [f"PRIVMSG {alice.nick} :x"])
        admin = MatrixUser("@admin:example.org", "Admin", "admin")
        assert await raw.handler(admin, [f"PRIVMSG {alice.nick} :raw hello"]) == "Sent."
        await alice.expect(lambda ln: ln.param(1) == "raw hello")
    finally:
        await conn.stop()


async def test_flood_control_paces_lines(bridge, ngircd, irc_users) -> None:
    conn, chan, portal, alice = await setup_channel(
        bridge, ngircd, irc_users, flood={"burst": 2, "rate": 5}, line_limit=0
    )
    try:
        client = await conn.client_for(BOB, portal)
        await client.handle_matrix_message(message(portal, BOB.user_id, "warmup"))
        await alice.expect(lambda ln: ln.param(1) == "warmup")
        await asyncio.sleep(0.5)  # bucket refills to the burst of 2
        start = time.monotonic()
        lines = {f"l{i}".encode() for i in range(10)}
        text = "\n".join(f"l{i}" for i in range(10))
        await client.handle_matrix_message(message(portal, BOB.user_id, text))
        await wait_for(lambda: len(alice.messages(chan)) == 11, what="10 lines")
        times = [t for t, raw in alice.raw if raw.rstrip().split(b" ")[-1].lstrip(b":") in lines]
        elapsed = max(times) - start
        # 2 lines at once, then 8 at 5 per second: at least 1.6 s
        assert 1.4 < elapsed < 4.0, elapsed
    finally:
        await conn.stop()


async def test_undeliverable_message_is_reported(bridge, tmp_path) -> None:
    server = start_ngircd(tmp_path / "dead")
    server.stop()  # nothing listens on the port now
    from connectors.irc import IRCConnector

    from .helpers import net_config

    conn = IRCConnector(
        bridge, net_config(server, queue_timeout=1, reconnect={"min_delay": 0.1, "max_delay": 0.3})
    )
    await conn.start()
    try:
        portal = PortalKey(NET, "#nowhere")
        client = await conn.client_for(BOB, portal)
        await client.handle_matrix_message(message(portal, BOB.user_id, "lost?"))
        notice = await wait_for(lambda: bridge.notices, 8, "failure notice")
        assert notice[0][0] == BOB.user_id and "not delivered" in notice[0][1]
        assert notice[0][2] == portal
    finally:
        await conn.stop()


async def test_reconnect_after_restart_delivers_queued(bridge, tmp_path) -> None:
    server = start_ngircd(tmp_path / "restart")
    from .conftest import RawIRC

    conn = await start_connector(
        bridge, server, reconnect={"min_delay": 3, "max_delay": 3}, queue_timeout=60
    )
    try:
        chan = "#" + unique("restart")
        portal = PortalKey(NET, chan)
        await conn.resolve_portal(portal, None)
        client = await conn.client_for(BOB, portal)
        await client.handle_matrix_message(message(portal, BOB.user_id, "before"))
        net = conn.networks["test"]
        puppet = net.pool.get(BOB.user_id)
        await wait_for(lambda: puppet.conn.fold(chan) in puppet.conn.joined)
        server.stop()
        await wait_for(lambda: not puppet.conn.registered, 5, "disconnect")
        await client.handle_matrix_message(message(portal, BOB.user_id, "sent while down"))
        # Restart right after a failed attempt of the bot, so that alice is in the channel
        # before its next attempt (seconds away; the puppet follows the bot) and the puppet's
        # delivery of the queued line.
        failed = net.bot._attempt
        await wait_for(lambda: net.bot._attempt > failed, 10, "a failed reconnect")
        await asyncio.to_thread(server.restart)
        alice = await RawIRC(server.host, server.port, unique("alice")).connect()
        await alice.join(chan)
        line = await alice.expect(lambda ln: ln.param(1) == "sent while down", timeout=15)
        assert line.nick == "Bob[m]"
        await wait_for(lambda: net.bot.registered and net.bot.fold(chan) in net.bot.joined)
        assert not bridge.notices
        await alice.close()
    finally:
        await conn.stop()
        server.stop()


async def test_idle_disconnect(bridge, ngircd, irc_users) -> None:
    conn, _chan, portal, alice = await setup_channel(bridge, ngircd, irc_users, idle_timeout=0.5)
    try:
        client = await conn.client_for(BOB, portal)
        await client.handle_matrix_message(message(portal, BOB.user_id, "then idle"))
        await alice.expect(lambda ln: ln.nick == "Bob[m]" and ln.command == "PRIVMSG")
        await alice.expect(lambda ln: ln.nick == "Bob[m]" and ln.command == "QUIT", timeout=5)
        # talking again reconnects
        client = await conn.client_for(BOB, portal)
        await client.handle_matrix_message(message(portal, BOB.user_id, "back"))
        await alice.expect(lambda ln: ln.param(1) == "back")
    finally:
        await conn.stop()


async def test_paced_reconnects(bridge, ngircd) -> None:
    conn = await start_connector(bridge, ngircd, connects_per_second=20)
    try:
        net = conn.networks["test"]
        await asyncio.sleep(0.2)
        start = time.monotonic()
        puppets = [net.pool.obtain(f"@p{i}:example.org", f"Paced{unique('')}") for i in range(20)]
        await wait_for(lambda: all(p.conn.registered for p in puppets), 10)
        elapsed = time.monotonic() - start
        assert elapsed >= 0.85, elapsed  # 20 connects at 20/s
    finally:
        await conn.stop()


async def test_connector_error_when_join_refused(bridge, ngircd, irc_users) -> None:
    conn, chan, portal, alice = await setup_channel(bridge, ngircd, irc_users)
    try:
        alice.send(f"MODE {chan} +i")
        await asyncio.sleep(0.2)
        client = await conn.client_for(BOB, portal)
        with pytest.raises(ConnectorError, match="cannot join"):
            await client.handle_matrix_message(message(portal, BOB.user_id, "let me in"))
    finally:
        await conn.stop()


def test_serialized_lines_are_single() -> None:
    assert serialize("PRIVMSG", "#c", "x").count(b"\r\n") == 1


async def test_ascii_server_folds_names_its_way_ids_keep_rfc1459(bridge, ngircd, irc_users) -> None:
    """ngircd announces CASEMAPPING=ascii, the ids' form is rfc1459 (no ``casemapping`` key):
    what the connection kept before the announcement is re-folded, the puppet is known by its
    nick as the server folds it, and a channel named in the rfc1459 form in Matrix is spelled
    as IRC knows it on the way back."""
    n = unique("")
    chan = f"#Ch[{n}]a"
    alice = await irc_users(unique("alice"))
    await alice.join(chan)
    conn = await start_connector(bridge, ngircd, channels=[chan])
    try:
        net = conn.networks["test"]
        assert net.bot.casemapping == "ascii" and net.pool.casemapping == "ascii"
        await wait_for(lambda: f"#ch[{n}]a" in net.bot.joined, what="the bot's join")
        assert set(net.bot.channels) == {f"#ch[{n}]a"}
        alice.send(f"NICK Al[{n}]")
        await alice.expect(lambda ln: ln.command == "NICK", what="NICK")
        alice.send(f"PRIVMSG {chan} :hello")
        msg = (await wait_for(lambda: bridge.of_type(RemoteMessage), what="message"))[0]
        portal = PortalKey(NET, f"#ch{{{n}}}a")  # the rfc1459 form
        assert msg.portal == portal
        assert msg.sender.remote_id == f"al{{{n}}}" and msg.sender.display_name == f"Al[{n}]"
        client = await conn.client_for(BOB, portal)
        await client.handle_matrix_message(message(portal, BOB.user_id, "hi Al"))
        line = await alice.expect(lambda ln: ln.nick == "Bob[m]" and ln.param(1) == "hi Al")
        assert line.param(0) == chan
        assert net.pool.user_of_nick(net.bot.fold("Bob[m]")) == BOB.user_id
        # The puppet's own line is not bridged back; a DM to the rfc1459 id reaches Al[n].
        await asyncio.sleep(0.3)
        assert len(bridge.of_type(RemoteMessage)) == 1
        dm = await conn.open_dm(BOB, NET, f"AL[{n}]")
        assert dm.remote_id == f"al{{{n}}}"
        await client.handle_matrix_message(message(dm, BOB.user_id, "psst"))
        line = await alice.expect(lambda ln: ln.param(1) == "psst", what="the DM")
        assert line.param(0) == f"Al[{n}]"
        # Someone in no channel with the bot: the answer to their DM goes to their nick as
        # they spell it, not to the rfc1459 form of the portal's id.
        zoe = await irc_users(f"zoe{n}")
        zoe.send(f"NICK Zo[e]{n}")
        await zoe.expect(lambda ln: ln.command == "NICK", what="NICK")
        zoe.send("PRIVMSG Bob[m] :who is this?")
        dm = await wait_for(
            lambda: [m for m in bridge.of_type(RemoteMessage) if m.content.text == "who is this?"],
            what="the DM from IRC",
        )
        assert dm[0].portal == PortalKey(NET, f"zo{{e}}{n}", receiver=BOB.user_id)
        await client.handle_matrix_message(message(dm[0].portal, BOB.user_id, "Bob"))
        line = await zoe.expect(lambda ln: ln.param(1) == "Bob", what="the answer")
        assert line.param(0) == f"Zo[e]{n}"
    finally:
        await conn.stop()
