"""Nick/channel <-> ghost/alias ids."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from connectors.irc import ids
from connectors.irc.protocol import casefold

nicks = st.from_regex(r"\A[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]{0,29}\Z")


def test_ghost_localpart_escapes_specials() -> None:
    assert ids.ghost_localpart("Foo[m]") == "foo=7bm=7d"  # rfc1459: [ ] fold to { }
    assert ids.ghost_localpart("Foo[m]", "ascii") == "foo=5bm=5d"
    assert ids.ghost_localpart("a_b`^|") == "a__b=60=5e=7c"


@given(nicks)
def test_ghost_roundtrip(nick: str) -> None:
    for mapping in ("rfc1459", "ascii"):
        canon = ids.canonical_nick(nick, mapping)
        local = ids.ghost_localpart(nick, mapping)
        assert ids.parse_ghost_localpart(local, mapping) == canon
        # one ghost for every spelling of the same nick
        assert ids.ghost_localpart(nick.upper(), mapping) == local


def test_parse_ghost_rejects_non_canonical() -> None:
    assert ids.parse_ghost_localpart("_foo") is None  # upper-case F: not canonical
    assert ids.parse_ghost_localpart("=61") is None  # not canonical escape
    assert ids.parse_ghost_localpart("1abc") is None  # not a nick
    assert ids.parse_ghost_localpart("=5bx", "rfc1459") is None  # [ folds to {


def test_alias_localpart() -> None:
    assert ids.alias_localpart("#Python") == "#python"
    assert ids.parse_alias_localpart("#python") == "#python"
    assert ids.parse_alias_localpart("#Python") == "#python"
    assert ids.parse_alias_localpart("python") is None
    assert ids.parse_alias_localpart("#a,b") is None
    assert ids.parse_alias_localpart("#a b") is None


def test_nick_for_display_names() -> None:
    assert ids.nick_for("{displayname}[m]", "Alice", "@alice:x") == "Alice[m]"
    assert ids.nick_for("{displayname}[m]", "José Müller", "@j:x") == "JoseMuller[m]"
    assert ids.nick_for("{displayname}[m]", "42 is cool", "@j:x") == "iscool[m]"
    long = ids.nick_for("{displayname}[m]", "x" * 50, "@j:x", 30)
    assert long == "x" * 27 + "[m]"
    assert ids.nick_for("{displayname}[m]", "🙂🙂", "@bob:x") == "bob[m]"
    assert ids.nick_for("{displayname}", "🙂", "@🙂:x") == ids.fallback_nick("@🙂:x")
    assert ids.nick_for("M-{localpart}", "Whatever", "@carol:x") == "M-carol"


@given(st.text(max_size=40), st.text(min_size=1, max_size=20))
def test_nick_for_always_valid(display: str, local: str) -> None:
    nick = ids.nick_for("{displayname}[m]", display, f"@{local}:x", 30)
    assert ids.valid_nick(nick, 30)


def test_alternative_nick() -> None:
    assert ids.alternative_nick("alice[m]", 1) == "alice[m]1"
    assert len(ids.alternative_nick("x" * 30, 12, 30)) == 30


@given(nicks)
def test_ids_without_folded_specials_keep_the_servers_fold(nick: str) -> None:
    # An id without {}|^ folds, under any server mapping, as the name does: no spelling to find.
    for form in ("rfc1459", "strict-rfc1459", "ascii"):
        remote_id = ids.canonical_nick(nick, form)
        if not ids.folded_specials(remote_id):
            for server in ("rfc1459", "strict-rfc1459", "ascii"):
                assert casefold(remote_id, server) == casefold(nick, server)


def test_canonical_room_id_is_the_alias_round_trip() -> None:
    """What users type for a channel (``join``, ``link``) becomes the channel id its alias
    names: folded with the network's ``casemapping``; None for what is no channel."""
    from connectors.irc import IRCConnector

    from .conftest import FakeBridge

    nets = {
        "rfc": {"host": "127.0.0.1", "port": 6667, "bot": {"nick": "b"}},
        "asc": {"host": "127.0.0.1", "port": 6667, "bot": {"nick": "b"}, "casemapping": "ascii"},
    }
    conn = IRCConnector(FakeBridge(), {"networks": nets})
    assert conn.canonical_room_id("irc_rfc", "#Case7") == "#case7"
    assert conn.canonical_room_id("irc_rfc", "#X[Y]") == "#x{y}"
    assert conn.canonical_room_id("irc_rfc", "#x{y}") == "#x{y}"
    assert conn.canonical_room_id("irc_asc", "#X[Y]") == "#x[y]"
    assert conn.canonical_room_id("irc_rfc", "notachannel") is None
    assert conn.canonical_room_id("irc_rfc", "#a b") is None
