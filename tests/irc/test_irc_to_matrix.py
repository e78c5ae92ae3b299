"""IRC lines -> RemoteEvents, fed line by line as a server would send them to the listener
(no network): mentions anywhere in a line, who left while the bridge could not see it."""

from __future__ import annotations

from bridge.connector import (
    Membership,
    RemoteChatInfo,
    RemoteEvent,
    RemoteMembership,
    RemoteMessage,
    escape_localpart,
)
from connectors.irc.client import ConnParams, IRCConnection
from connectors.irc.config import DEFAULT_POWER
from connectors.irc.irc_to_matrix import IrcToMatrix, key_change
from connectors.irc.protocol import parse_line

CHAN = "#chan"
PUPPETS = {"ann{m}": "@ann:example.org"}  # rfc1459: Ann[m] folds to ann{m}


def ghost(canon: str) -> str:
    return f"@irc_test_{escape_localpart(canon)}:example.org"


class Listener:
    """The bot's connection and the translator, fed raw server lines."""

    def __init__(self, nick: str = "bot", puppets: dict[str, str] = PUPPETS) -> None:
        self.conn = IRCConnection(ConnParams("irc.test", 6667, nick, nick, nick))
        self.tr = IrcToMatrix(
            "irc_test",
            puppet_user=puppets.get,
            ghost_user_id=ghost,
            power_levels=dict(DEFAULT_POWER),
        )

    def feed(self, *raw: str) -> list[RemoteEvent]:
        out: list[RemoteEvent] = []
        for text in raw:
            line = parse_line(text)
            assert line is not None
            out += self.tr.handle(self.conn, line)
        return out

    def join(self, names: str, channel: str = CHAN) -> list[RemoteEvent]:
        me = self.conn.nick
        return self.feed(
            f":{me}!b@h JOIN {channel}",
            f":srv 353 {me} = {channel} :{names}",
            f":srv 366 {me} {channel} :End of NAMES list",
        )

    def say(self, nick: str, text: str) -> RemoteMessage:
        (msg,) = self.feed(f":{nick}!u@h PRIVMSG {CHAN} :{text}")
        assert isinstance(msg, RemoteMessage)
        return msg


def test_nicks_anywhere_in_a_line_become_pills() -> None:
    irc = Listener()
    irc.join("bot @Carol Ann[m] a dave{1}")
    msg = irc.say("dave{1}", "ask CAROL, or Ann[m] (she knows); carolyn is someone else")
    assert msg.content.text == "ask CAROL, or Ann[m] (she knows); carolyn is someone else"
    assert msg.content.mentions == ["carol", "@ann:example.org"]
    assert msg.content.html == (
        f'ask <a href="https://matrix.to/#/{ghost("carol")}">CAROL</a>, or '
        '<a href="https://matrix.to/#/@ann:example.org">Ann[m]</a> (she knows); '
        "carolyn is someone else"
    )
    # IRC case mapping (rfc1459): DAVE[1] is dave{1}.
    assert irc.say("carol", "thanks DAVE[1]!").content.mentions == ["dave{1}"]
    # Not a mention: a one-letter nick, a nick inside a URL, the bot, someone not in the channel.
    for text in ("a b c", "see https://example.org/carol and www.carol.org", "bot: hi", "bob?"):
        msg = irc.say("carol", text)
        assert msg.content.mentions == [] and msg.content.html is None, text
    # HTML special characters around a mention are escaped, not taken for markup.
    msg = irc.say("dave{1}", "<b>carol</b> & co")
    assert msg.content.html == (
        f'&lt;b&gt;<a href="https://matrix.to/#/{ghost("carol")}">carol</a>&lt;/b&gt; &amp; co'
    )


def test_pills_in_formatted_lines_keep_the_formatting() -> None:
    irc = Listener()
    irc.join("bot carol b")
    msg = irc.say("b", "\x02hey carol\x02 &amp; <i>carol</i>")
    assert msg.content.mentions == ["carol"]
    pill = f'<a href="https://matrix.to/#/{ghost("carol")}">carol</a>'
    assert msg.content.html == (
        f"<strong>hey {pill}</strong> &amp;amp; &lt;i&gt;{pill}&lt;/i&gt;"
    ) or msg.content.html == (f"<b>hey {pill}</b> &amp;amp; &lt;i&gt;{pill}&lt;/i&gt;")


def ghosts(info: RemoteChatInfo) -> dict[str, int | None]:
    """remote id -> power level of the IRC users in a member snapshot."""
    return {
        m.sender.remote_id: m.power_level for m in info.members or [] if not m.sender.is_from_me
    }


def powers(info: RemoteChatInfo) -> dict[str, int | None]:
    """Matrix user id -> power level of the puppets in a member snapshot."""
    return {
        m.sender.matrix_user or "": m.power_level for m in info.members or [] if m.sender.is_from_me
    }


def test_channel_modes_are_power_levels_of_ghosts_and_puppets() -> None:
    irc = Listener()
    irc.conn.prefixes = {"~": "q", "&": "a", "@": "o", "%": "h", "+": "v"}
    (info,) = irc.join("bot ~owner @carol %half +dave erin @Ann[m]")
    assert isinstance(info, RemoteChatInfo)
    assert ghosts(info) == {"owner": 50, "carol": 50, "half": 25, "dave": 10, "erin": 0}
    # A puppet's modes are its Matrix user's power level; the bot is not a member.
    assert powers(info) == {"@ann:example.org": 50}
    (info,) = irc.feed(f":carol!c@h MODE {CHAN} -o+v Ann[m] Ann[m]")
    assert isinstance(info, RemoteChatInfo)
    assert powers(info) == {"@ann:example.org": 10}
    (info,) = irc.feed(f":carol!c@h MODE {CHAN} +o-v erin dave")
    assert isinstance(info, RemoteChatInfo)
    assert ghosts(info)["erin"] == 50 and ghosts(info)["dave"] == 0
    # An operator's new nick is a new ghost: it gets the old one's power.
    events = irc.feed(":erin!e@h NICK erin2")
    assert [type(e).__name__ for e in events] == ["RemoteProfile", "RemoteChatInfo"]
    assert isinstance(events[1], RemoteChatInfo) and ghosts(events[1])["erin2"] == 50
    # Not for someone without modes.
    assert [type(e).__name__ for e in irc.feed(":dave!d@h NICK dave2")] == ["RemoteProfile"]


def test_levels_set_from_matrix_survive_their_own_echo() -> None:
    """A Matrix user gave dave 75 (the connector sent +o): snapshots leave dave's level alone
    (None) while the MODE is on its way and once it is back, instead of the 50 of +o; an IRC
    change of rank brings back the level of the modes."""
    irc = Listener()
    irc.join("bot @carol dave erin Ann[m]")
    dave = irc.tr.member(CHAN, "dave")
    assert dave is not None
    dave.matrix_level, dave.level_pending = 75, True
    (info,) = irc.feed(f":carol!c@h MODE {CHAN} +v erin")  # someone else's MODE first
    assert isinstance(info, RemoteChatInfo) and ghosts(info) == {
        "carol": 50,
        "dave": None,
        "erin": 10,
    }
    (info,) = irc.feed(f":Ann[m]!a@h MODE {CHAN} +o dave")  # the echo
    assert isinstance(info, RemoteChatInfo) and ghosts(info)["dave"] is None
    dave.level_pending = False
    # A NAMES refresh (the bot rejoined) keeps it.
    (info, *_) = irc.join("bot @carol @dave +erin Ann[m]")
    assert isinstance(info, RemoteChatInfo) and ghosts(info)["dave"] is None
    # An IRC operator takes +o: the level of the modes again, and for good.
    (info,) = irc.feed(f":carol!c@h MODE {CHAN} -o dave")
    assert isinstance(info, RemoteChatInfo) and ghosts(info)["dave"] == 0
    (info,) = irc.feed(f":carol!c@h MODE {CHAN} +o dave")
    assert isinstance(info, RemoteChatInfo) and ghosts(info)["dave"] == 50
    # A puppet's level too: Ann's Matrix user was given 30, which +v stands for.
    ann = irc.tr.member(CHAN, "ann{m}")
    assert ann is not None
    ann.matrix_level = 30
    (info,) = irc.feed(f":carol!c@h MODE {CHAN} +v Ann[m]")
    assert isinstance(info, RemoteChatInfo) and powers(info) == {"@ann:example.org": None}
    (info,) = irc.feed(f":carol!c@h MODE {CHAN} +o Ann[m]")
    assert isinstance(info, RemoteChatInfo) and powers(info) == {"@ann:example.org": 50}


def test_rejoin_names_makes_the_departed_leave() -> None:
    irc = Listener()
    first = irc.join("bot @carol dave Ann[m] erin")
    (info,) = first
    assert isinstance(info, RemoteChatInfo) and info.members is not None
    assert sorted(ghosts(info)) == ["carol", "dave", "erin"]
    # The bot's connection drops and comes back; dave and erin went meanwhile, fred came.
    events = irc.join("bot @carol Ann[m] fred")
    leaves = [e for e in events if isinstance(e, RemoteMembership)]
    assert [(e.sender.remote_id, e.membership) for e in leaves] == [
        ("dave", Membership.LEAVE),
        ("erin", Membership.LEAVE),
    ]
    assert all(e.portal.remote_id == CHAN for e in leaves)
    (info,) = [e for e in events if isinstance(e, RemoteChatInfo)]
    assert info.members is not None
    assert sorted(ghosts(info)) == ["carol", "fred"]
    # Kicked and rejoined: the same.
    irc.feed(f":carol!c@h KICK {CHAN} bot :out")
    events = irc.join("bot @carol")
    assert [e.sender.remote_id for e in events if isinstance(e, RemoteMembership)] == ["fred"]
    # A first join knows nobody yet: nobody leaves.
    assert not [e for e in irc.join("bot x", "#other") if isinstance(e, RemoteMembership)]


def test_netsplit_quits_are_held_until_the_window_ends() -> None:
    irc = Listener()
    irc.join("bot carol dave erin")
    irc.join("bot carol", "#other")
    split = "irc.a.example irc.b.example"
    # Two netsplit QUITs and an ordinary one: only the ordinary one leaves now.
    events = irc.feed(
        f":carol!c@h QUIT :{split}",
        f":dave!d@h QUIT :{split}",
        ":erin!e@h QUIT :Quit: bye",
    )
    assert [
        (e.sender.remote_id, e.membership) for e in events if isinstance(e, RemoteMembership)
    ] == [("erin", Membership.LEAVE)]
    assert sorted(irc.tr.splits) == ["carol", "dave"]
    # The split heals: carol is back in both channels, nothing reaches Matrix.
    assert irc.feed(f":carol!c@h JOIN {CHAN}", ":carol!c@h JOIN #other") == []
    assert sorted(irc.tr.splits) == ["dave"]
    # Within the window nothing more happens; after it, dave's ghost leaves.
    assert irc.tr.expire_splits() == []
    due = irc.tr.next_split_expiry()
    assert due is not None
    (leave,) = irc.tr.expire_splits(due)
    assert isinstance(leave, RemoteMembership) and leave.membership == Membership.LEAVE
    assert leave.sender.remote_id == "dave" and leave.portal.remote_id == CHAN
    assert leave.reason == f"Quit: {split} (netsplit)"
    assert irc.tr.splits == {} and irc.tr.next_split_expiry() is None
    # A server that does not name itself in the reason: an IRCv3 netsplit batch says it.
    irc.join("bot carol fred")
    events = irc.feed(
        "BATCH +n1 netsplit hub.example leaf.example",
        "@batch=n1 :fred!f@h QUIT :Quit: *.net *.split",
        "@batch=n1 :carol!c@h QUIT :gone",
        "BATCH -n1",
        "BATCH +n2 netjoin hub.example leaf.example",
        f"@batch=n2 :fred!f@h JOIN {CHAN}",
        "BATCH -n2",
    )
    assert events == [] and sorted(irc.tr.splits) == ["carol"]
    # Held, then listed by NAMES when the bot rejoins (its JOIN was missed): not held anymore.
    irc.feed(":fred!f@h QUIT :hub.example leaf.example")
    assert "fred" in irc.tr.splits
    irc.join("bot fred")
    assert sorted(irc.tr.splits) == ["carol"]
    # Ordinary QUITs whose reason merely has two words are not netsplits.
    irc.join("bot gina")
    assert irc.feed(":gina!g@h QUIT :see you") != []
    # Stopping the bridge lets every held user go.
    left = irc.tr.expire_splits(everyone=True)
    assert sorted((e.sender.remote_id, e.portal.remote_id) for e in left) == [
        ("carol", CHAN),
        ("carol", "#other"),
    ]


def test_netsplit_window_zero_leaves_at_once() -> None:
    irc = Listener()
    irc.tr.netsplit_window = 0
    irc.join("bot carol")
    (leave,) = irc.feed(":carol!c@h QUIT :irc.a.example irc.b.example")
    assert isinstance(leave, RemoteMembership) and leave.membership == Membership.LEAVE


def test_server_mapping_for_lookups_id_form_for_events() -> None:
    """An ascii server (ngircd) under the default id form (rfc1459): the puppet Ann[m] is known
    by ann[m] (the server's fold, as the pool indexes it), events name users and channels in
    the rfc1459 form; names kept before the server's announcement are re-folded."""
    irc = Listener(puppets={"ann[m]": "@ann:example.org"})
    irc.join("bot Dan[x] Ann[m]", "#Ch[1]")  # still the default rfc1459 fold
    assert set(irc.tr.channels) == {"#ch{1}"}
    irc.conn.casemapping = "ascii"
    irc.tr.rekey(irc.conn.fold)
    assert set(irc.tr.channels) == {"#ch[1]"}
    assert set(irc.tr.channels["#ch[1]"].members) == {"bot", "dan[x]", "ann[m]"}
    # The puppet's own line (its echo on the listener) is not bridged.
    assert irc.feed(":Ann[m]!a@h PRIVMSG #Ch[1] :hello") == []
    (msg,) = irc.feed(":Dan[x]!d@h PRIVMSG #CH[1] :ANN[M]: hi, ann{m} is someone else")
    assert isinstance(msg, RemoteMessage)
    assert msg.portal.remote_id == "#ch{1}"
    assert (msg.sender.remote_id, msg.sender.display_name) == ("dan{x}", "Dan[x]")
    assert msg.content.mentions == ["@ann:example.org"]
    assert irc.tr.nick_of_id("dan{x}", irc.conn.fold) == "Dan[x]"
    (leave,) = irc.feed(":DAN[X]!d@h PART #CH[1] :bye")
    assert isinstance(leave, RemoteMembership)
    assert leave.portal.remote_id == "#ch{1}" and leave.sender.remote_id == "dan{x}"


def test_the_key_a_mode_line_leaves() -> None:
    conn = IRCConnection(ConnParams("irc.test", 6667, "bot", "bot", "bot"))
    conn.isupport["CHANMODES"] = "beI,k,l,imnpst"

    def key(raw: str) -> str | None:
        line = parse_line(raw)
        assert line is not None
        return key_change(conn, line)

    assert key(f":op!u@h MODE {CHAN} +k s3cret") == "s3cret"
    assert key(f":op!u@h MODE {CHAN} -k s3cret") == ""
    assert key(f":op!u@h MODE {CHAN} -k *") == ""
    # The key's parameter found among the others: lists, prefixes, +l's (on set only).
    assert key(f":op!u@h MODE {CHAN} +bolk x!*@* ann 10 n3w") == "n3w"
    assert key(f":op!u@h MODE {CHAN} -l+k n3w") == "n3w"
    assert key(f":op!u@h MODE {CHAN} -k+k old n3w") == "n3w"
    # No key change, or a key the server hides.
    assert key(f":op!u@h MODE {CHAN} +o-v ann ann") is None
    assert key(f":op!u@h MODE {CHAN} +k *") is None
    assert key(f":op!u@h MODE {CHAN} +k") is None
