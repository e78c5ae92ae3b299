"""Unit tests: JID mapping, styling, stanza reading (malformed input included), config."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from slixmpp import JID
from slixmpp.stanza import Message
from slixmpp.xmlstream import ET

from bridge.connector import ConfigError, MessageKind, NotSupported, PortalKey, escape_localpart
from connectors.xmpp import xmpp_to_matrix as inc
from connectors.xmpp.config import parse_config
from connectors.xmpp.jid_mapping import (
    InvalidMapping,
    JidMapper,
    escape_node,
    matrix_to_node,
    node_to_matrix,
    parse_remote_user,
    unescape_node,
)
from connectors.xmpp.muc import clean_nick, nick_candidate, power_level
from connectors.xmpp.styling import html_to_styling, styling_to_html

localparts = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=":"),
    min_size=1,
    max_size=40,
)
servers = st.from_regex(r"\A[a-z0-9][a-z0-9.-]{0,30}(:[0-9]{1,5})?\Z")


@given(localparts, servers)
def test_matrix_user_jid_round_trip(local: str, server: str) -> None:
    user_id = f"@{local}:{server}"
    mapper = JidMapper("matrix.example.org", "matrix")
    jid = mapper.full_jid(user_id)
    # A valid JID that servers will not fold (no upper case, no reserved characters).
    assert JID(str(jid)) == jid
    assert jid.user == jid.user.lower()
    assert mapper.matrix_user(jid) == user_id
    assert mapper.matrix_user(JID(jid.bare)) == user_id


@given(st.text(max_size=30))
def test_node_unescape_only_accepts_canonical(text: str) -> None:
    try:
        decoded = unescape_node(text)
    except InvalidMapping:
        return
    assert escape_node(decoded) == text


def test_mapping_examples() -> None:
    assert matrix_to_node("@alice:example.org") == "alice\\40example.org"
    assert matrix_to_node("@bob:example.org:8448") == "bob\\40example.org\\3a8448"
    assert matrix_to_node("@Carl:x.org") == "\\43arl\\40x.org"
    assert node_to_matrix("alice\\40example.org") == "@alice:example.org"
    for bad in ("alice\\4", "alice\\zz", "alice\\41x.org", "noserver", "a\\40", "A\\40b"):
        with pytest.raises(InvalidMapping):
            node_to_matrix(bad)
    with pytest.raises(InvalidMapping):
        matrix_to_node("not a user")


@given(st.text(min_size=1, max_size=30))
def test_ghost_key_round_trip(text: str) -> None:
    jid = parse_remote_user(text, "matrix.example.org")
    if jid is None:
        return
    # The ghost localpart of any accepted remote id decodes back to it.
    from connectors.xmpp import XMPPConnector

    conn = XMPPConnector.__new__(XMPPConnector)
    conn.cfg = parse_config(CONFIG)
    assert conn.parse_ghost_localpart("xmpp", escape_localpart(str(jid))) == str(jid)


def test_ghost_and_alias_parsing() -> None:
    from connectors.xmpp import XMPPConnector

    conn = XMPPConnector.__new__(XMPPConnector)
    conn.cfg = parse_config(CONFIG)
    assert conn.parse_ghost_localpart("xmpp", "alice=40example.com") == "alice@example.com"
    assert conn.parse_ghost_localpart("xmpp", "=zz") is None  # invalid escape
    assert conn.parse_ghost_localpart("xmpp", "_alice=40example.com") is None  # not a JID form
    assert conn.parse_ghost_localpart("xmpp", "x=40matrix.example.org") is None  # own domain
    assert conn.parse_alias_localpart("xmpp", "room@conference.example.org") == (
        "room@conference.example.org"
    )
    assert conn.parse_alias_localpart("xmpp", "room=40conference.example.org") == (
        "room@conference.example.org"
    )
    assert conn.parse_alias_localpart("xmpp", "room@muc.elsewhere.net") is None  # not allowed
    assert conn.parse_alias_localpart("xmpp", "room") is None
    assert conn.alias_localpart("xmpp", "My_Room@conference.example.org") == (
        "_my___room@conference.example.org"
    )


CONFIG: dict[str, Any] = {
    "server": {"host": "127.0.0.1", "port": 5347},
    "component": {"domain": "matrix.example.org", "secret": "s"},
    "muc_services": ["conference.example.org"],
}


def test_config_errors() -> None:
    parse_config(CONFIG)
    bad: list[tuple[dict[str, Any], str]] = [
        ({**CONFIG, "server": {}}, "server.host"),
        ({**CONFIG, "server": {"host": "h", "port": 0}}, "server.port"),
        ({**CONFIG, "component": {"domain": "a@b", "secret": "s"}}, "component.domain"),
        ({**CONFIG, "component": {"domain": "m.org"}}, "component.secret"),
        ({**CONFIG, "muc_services": "conference"}, "muc_services"),
        ({**CONFIG, "max_message_bytes": 10}, "max_message_bytes"),
        ({**CONFIG, "reconnect": {"min_delay": 5, "max_delay": 1}}, "reconnect.max_delay"),
    ]
    for cfg, key in bad:
        with pytest.raises(ConfigError) as e:
            parse_config(cfg)
        assert e.value.key == key


def test_styling_to_html() -> None:
    assert styling_to_html("plain text") is None
    assert styling_to_html("a*b*c") is None  # no span inside words
    assert styling_to_html("*bold* _em_ ~del~ `co*de`") == (
        "<strong>bold</strong> <em>em</em> <del>del</del> <code>co*de</code>"
    )
    assert styling_to_html("<b> *x*") == "&lt;b&gt; <strong>x</strong>"
    assert styling_to_html("```\n*not bold*\n```") == "<pre><code>*not bold*</code></pre>"
    assert styling_to_html("> quoted\ntext") == "<blockquote>quoted</blockquote>text"


def test_html_to_styling() -> None:
    assert html_to_styling("<strong>a</strong> <em>b</em> <del>c</del> <code>d</code>") == (
        "*a* _b_ ~c~ `d`"
    )
    # Reply fallbacks and mention links never leak Matrix ids.
    out = html_to_styling(
        '<mx-reply><blockquote><a href="https://matrix.to/#/@a:b">@a:b</a> hi'
        '</blockquote></mx-reply><a href="https://matrix.to/#/@bob:x">Bob</a>: ok'
    )
    assert out == "Bob: ok"
    assert html_to_styling('<a href="https://e.org">site</a>') == "site <https://e.org>"
    assert html_to_styling("<blockquote>a<br>b</blockquote>c") == "> a\n> b\nc"
    assert html_to_styling("<pre><code>x\ny</code></pre>") == "```\nx\ny\n```"
    assert html_to_styling("<ul><li>one</li><li>two</li></ul>") == "• one\n• two"
    assert html_to_styling("<b>unclosed <i>tags") == "*unclosed _tags"


@given(st.text(max_size=200))
def test_styling_never_raises(text: str) -> None:
    html = styling_to_html(text)
    assert html is None or isinstance(html, str)
    html_to_styling(text)


def test_nicks_and_power() -> None:
    assert nick_candidate("Ann", "[m]", 0) == "Ann"
    assert nick_candidate("Ann", "[m]", 1) == "Ann [m]"
    assert nick_candidate("Ann", "[m]", 3) == "Ann [m3]"
    assert clean_nick("  A\u0000nn\u200b  ", "x") == "Ann"
    assert clean_nick("\u0000", "fallback") == "fallback"
    assert power_level("owner", "moderator") == 100
    assert power_level("none", "moderator") == 50
    assert power_level("member", "participant") == 0


# --- stanza reading ------------------------------------------------------------------------


def stanza(xml: str) -> Message:
    return Message(xml=ET.fromstring(xml))


def test_message_ids_trust_only_the_room() -> None:
    m = stanza(
        "<message xmlns='jabber:client' id='a1' from='r@muc.x/n' type='groupchat'>"
        "<origin-id xmlns='urn:xmpp:sid:0' id='o1'/>"
        "<stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='evil@x'/>"
        "<stanza-id xmlns='urn:xmpp:sid:0' id='s1' by='r@muc.x'/></message>"
    )
    ids = inc.message_ids(m, "r@muc.x")
    assert (ids.attr, ids.origin, ids.stanza) == ("a1", "o1", "s1")
    assert ids.canonical() == "s1"
    assert inc.message_ids(m, None).canonical() == "o1"


def test_content_emote_oob_reply_fallback_and_truncation() -> None:
    m = stanza("<message xmlns='jabber:client'><body>/me waves</body></message>")
    c = inc.message_content(m, 1000)
    assert c is not None and c.kind == MessageKind.EMOTE and c.text == "waves"
    m = stanza(
        "<message xmlns='jabber:client'><body>&gt; Bob:\n&gt; hi\nyes</body>"
        "<reply xmlns='urn:xmpp:reply:0' id='x'/>"
        "<fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'>"
        "<body start='0' end='12'/></fallback></message>"
    )
    c = inc.message_content(m, 1000)
    assert c is not None and c.text == "yes"
    assert inc.reply_target(m) == ("x", None)
    m = stanza(
        "<message xmlns='jabber:client'><body>x</body>"
        "<x xmlns='jabber:x:oob'><url>javascript:alert(1)</url></x></message>"
    )
    c = inc.message_content(m, 1000)
    assert c is not None and c.attachments == []
    m = stanza(f"<message xmlns='jabber:client'><body>{'é' * 600}</body></message>")
    c = inc.message_content(m, 300)
    assert c is not None and len(c.text.encode()) <= 300 and c.text.endswith("bridge)")


MALFORMED = [
    "<message xmlns='jabber:client'/>",
    "<message xmlns='jabber:client'><delay xmlns='urn:xmpp:delay' stamp='yesterday'/></message>",
    "<message xmlns='jabber:client'><replace xmlns='urn:xmpp:message-correct:0'/></message>",
    "<message xmlns='jabber:client'><reactions xmlns='urn:xmpp:reactions:0'/></message>",
    "<message xmlns='jabber:client'><retract xmlns='urn:xmpp:message-retract:1'/></message>",
    "<message xmlns='jabber:client'><reply xmlns='urn:xmpp:reply:0'/></message>",
    "<message xmlns='jabber:client'><body>x</body><fallback xmlns='urn:xmpp:fallback:0' "
    "for='urn:xmpp:reply:0'><body start='a' end='-5'/></fallback></message>",
    "<message xmlns='jabber:client'><x xmlns='jabber:x:oob'/></message>",
    "<message xmlns='jabber:client'><stanza-id xmlns='urn:xmpp:sid:0' by='not a jid@@'/></message>",
    "<message xmlns='jabber:client'><displayed xmlns='urn:xmpp:chat-markers:0'/></message>",
    "<message xmlns='jabber:client'><error/></message>",
]


@pytest.mark.parametrize("xml", MALFORMED)
def test_malformed_stanzas_never_raise(xml: str) -> None:
    m = stanza(xml)
    inc.message_ids(m, "r@muc.x")
    inc.timestamp(m)
    inc.message_content(m, 1000)
    assert inc.correction_target(m) is None
    assert inc.reactions(m) is None
    assert inc.retraction(m) is None
    assert inc.reply_target(m) is None
    assert inc.displayed_marker(m) is None
    inc.chat_state(m)
    inc.error_text(m)
    inc.subject(m)


def test_retraction_forms() -> None:
    v1 = stanza(
        "<message xmlns='jabber:client'><retract xmlns='urn:xmpp:message-retract:1' id='s1'>"
        "<moderated xmlns='urn:xmpp:message-moderate:1' by='r@m/mod'/>"
        "<reason>spam</reason></retract></message>"
    )
    r = inc.retraction(v1)
    assert r is not None and (r.target, r.moderated_by, r.reason) == ("s1", "r@m/mod", "spam")
    v0 = stanza(
        "<message xmlns='jabber:client'><apply-to xmlns='urn:xmpp:fasten:0' id='s2'>"
        "<retract xmlns='urn:xmpp:message-retract:0'/></apply-to></message>"
    )
    r = inc.retraction(v0)
    assert r is not None and r.target == "s2" and r.moderated_by is None

    # Prosody's mod_muc_moderation (XEP-0425 before v0.3): a fastening, reason inside.
    v0_moderated = stanza(
        "<message xmlns='jabber:client' from='r@m' type='groupchat'>"
        "<apply-to xmlns='urn:xmpp:fasten:0' id='s3'>"
        "<moderated xmlns='urn:xmpp:message-moderate:0' by='r@m/mod'>"
        "<retract xmlns='urn:xmpp:message-retract:0'/><reason>spam</reason>"
        "</moderated></apply-to></message>"
    )
    r = inc.retraction(v0_moderated)
    assert r is not None and (r.target, r.moderated_by, r.reason) == ("s3", "r@m/mod", "spam")


def test_moderation_requests() -> None:
    from slixmpp import ComponentXMPP

    from connectors.xmpp import matrix_to_xmpp as out

    assert out.moderation_version(["urn:xmpp:message-moderate:0"]) == 0
    assert out.moderation_version(["urn:xmpp:message-moderate:0", out.NS_MODERATE]) == 1
    assert out.moderation_version(["http://jabber.org/protocol/muc"]) is None
    xmpp = ComponentXMPP("matrix.example.org", "s", "127.0.0.1", 5347)
    args: dict[str, Any] = {
        "ifrom": JID("u\\40example.org@matrix.example.org/matrix"),
        "room": JID("r@m"),
        "target": "s1",
        "reason": "spam",
    }
    v1 = out.moderation_iq(xmpp, **args, version=1).xml
    mod = v1.find("{urn:xmpp:message-moderate:1}moderate")
    assert v1.get("type") == "set" and v1.get("to") == "r@m"
    assert mod is not None and mod.get("id") == "s1"
    assert mod.find("{urn:xmpp:message-retract:1}retract") is not None
    assert mod.findtext("{urn:xmpp:message-moderate:1}reason") == "spam"
    v0 = out.moderation_iq(xmpp, **{**args, "reason": None}, version=0).xml
    apply_to = v0.find("{urn:xmpp:fasten:0}apply-to")
    assert apply_to is not None and apply_to.get("id") == "s1"
    mod = apply_to.find("{urn:xmpp:message-moderate:0}moderate")
    assert mod is not None and mod.find("{urn:xmpp:message-retract:0}retract") is not None
    assert mod.find("{urn:xmpp:message-moderate:0}reason") is None


def test_moderation_sender_and_refusals() -> None:
    from bridge.connector import ConnectorError, NotSupported
    from connectors.xmpp.moderation import moderator, refusal
    from connectors.xmpp.muc import MucRoom, RemoteOccupant

    room = MucRoom(JID("r@m"), name="Room")
    room.remote["mod"] = RemoteOccupant("mod", "mod@example.org")
    assert moderator(room, "r@m/mod").remote_id == "mod@example.org"
    assert moderator(room, "r@m/mod").display_name == "mod"
    for unknown in ("r@m/gone", "other@m/mod", "", None, "not a jid@@"):
        assert moderator(room, unknown).remote_id == "r@m", unknown
    assert isinstance(refusal("service-unavailable", ""), NotSupported)
    forbidden = refusal("forbidden", "You need a role of at least 'moderator'")
    assert type(forbidden) is ConnectorError and "only its moderators" in str(forbidden)
    assert "item-not-found" in str(refusal("item-not-found", ""))


async def test_connector_survives_hostile_stanzas() -> None:
    """Stanzas fed straight into the connector's handlers: errors, never exceptions."""
    from connectors.xmpp import XMPPConnector

    from .conftest import FakeBridge

    bridge = FakeBridge()
    bridge.user("@u:example.org", "U")
    conn = XMPPConnector(bridge, CONFIG)
    sent: list[Any] = []
    conn.component.ready.set()
    conn.component.send = sent.append  # type: ignore[method-assign]
    to_u = "to='u\\40example.org@matrix.example.org'"
    hostile = [
        f"<message xmlns='jabber:component:accept' from='a@b/c' {to_u}"
        " type='chat'><body>hi</body><reactions xmlns='urn:xmpp:reactions:0' id='x'>"
        + "<reaction>r</reaction>" * 50
        + "</reactions></message>",
        "<message xmlns='jabber:component:accept' from='' to='matrix.example.org'/>",
        "<message xmlns='jabber:component:accept' from='a@@b' to='x@matrix.example.org'>"
        "<body>x</body></message>",
        "<message xmlns='jabber:component:accept' from='a@b/c' to='bad\\zz@matrix.example.org'"
        " type='chat'><body>x</body></message>",
        f"<presence xmlns='jabber:component:accept' from='a@b/c' {to_u} type='weird'/>",
        f"<message xmlns='jabber:component:accept' from='a@b/c' {to_u}"
        " type='chat'><body>x</body><delay xmlns='urn:xmpp:delay' stamp='99999-99-99'/></message>",
    ]
    from slixmpp.stanza import Presence

    for xml in hostile:
        el = ET.fromstring(xml)
        if el.tag.endswith("presence"):
            await conn.presence_in.on_presence(conn.component, Presence(conn.component_xmpp, el))
        else:
            await conn.messages_in.on_message(conn.component, Message(conn.component_xmpp, el))
    conditions = [s["error"]["condition"] for s in sent if s["type"] == "error"]
    assert conditions == ["jid-malformed"]
    # The reaction to an unknown message became reaction events, the body was kept out of
    # it (reactions take precedence), the bad timestamp fell back to now.
    portal = PortalKey("xmpp", "a@b", receiver="@u:example.org")
    assert all(e.portal == portal for e in bridge.events)
    assert bridge.events


def test_power_levels_to_muc_ranks() -> None:
    from connectors.xmpp.ranks import items_for

    # 50 makes a participant a moderator, 0 a participant again.
    assert items_for(50, 0, "carl", None, "none") == [{"nick": "carl", "role": "moderator"}]
    assert items_for(0, 50, "carl", None, "none") == [{"nick": "carl", "role": "participant"}]
    # 100 makes an owner (by JID; owners are moderators whatever their role).
    assert items_for(100, 0, "carl", "carl@x.org/r", "none") == [
        {"jid": "carl@x.org", "affiliation": "owner"}
    ]
    # An owner brought to 50 becomes an admin, to 0 a member and a participant.
    assert items_for(50, 100, "o", "o@x.org", "owner") == [
        {"jid": "o@x.org", "affiliation": "admin"}
    ]
    assert items_for(0, 100, "o", "o@x.org", "owner") == [
        {"jid": "o@x.org", "affiliation": "member"},
        {"nick": "o", "role": "participant"},
    ]
    # An owner's rank cannot change when the room hides the address.
    with pytest.raises(NotSupported):
        items_for(100, 0, "anon", None, "none")
    # Not in the room and not addressable: nothing to do.
    assert items_for(50, 0, None, None, "none") == []


def test_level_changes_between_power_levels() -> None:
    from bridge.matrix_to_remote import level_changes

    before = {"users": {"@a:x": 100, "@b:x": 50, "@c:x": "junk"}, "users_default": 0}
    after = {"users": {"@a:x": 100, "@c:x": 50, "@d:x": True}, "users_default": 0}
    assert level_changes(before, after) == {"@b:x": (50, 0), "@c:x": (0, 50)}
    assert level_changes({}, {"users": {"@a:x": 10}}) == {"@a:x": (0, 10)}
    assert level_changes({"users": "x"}, {"users": None, "users_default": "y"}) == {}
