"""Marking a Matrix user's own message sent from another client of their remote account."""

from __future__ import annotations

from bridge.own_messages import mark

LABEL = "Ann <3 (from their XMPP account)"


def test_text_is_prefixed_in_body_and_html() -> None:
    out = mark({"msgtype": "m.text", "body": "a < b", "m.mentions": {"user_ids": ["@x:hs"]}}, LABEL)
    assert out["msgtype"] == "m.text"
    assert out["body"] == f"{LABEL}: a < b"
    assert out["format"] == "org.matrix.custom.html"
    assert out["formatted_body"] == "<strong>Ann &lt;3 (from their XMPP account)</strong>: a &lt; b"
    assert out["m.mentions"] == {"user_ids": ["@x:hs"]}  # kept when the message had mentions


def test_html_is_kept_and_the_user_is_not_notified_of_their_own_name() -> None:
    content = {"msgtype": "m.notice", "body": "hi *you*", "formatted_body": "hi <em>you</em>"}
    out = mark(content, "Ann (from their XMPP account)")
    assert out["msgtype"] == "m.notice"
    assert (
        out["formatted_body"] == "<strong>Ann (from their XMPP account)</strong>: hi <em>you</em>"
    )
    assert out["m.mentions"] == {}
    assert content["body"] == "hi *you*"  # the original is not changed


def test_an_emote_names_the_user_in_the_text() -> None:
    out = mark({"msgtype": "m.emote", "body": "waves"}, "Ann (from their XMPP account)")
    assert out["msgtype"] == "m.text"
    assert out["body"] == "* Ann (from their XMPP account) waves"


def test_a_file_keeps_its_name_and_gets_a_caption() -> None:
    out = mark({"msgtype": "m.image", "body": "cat.png", "url": "mxc://hs/x"}, "Ann (from X)")
    assert out["filename"] == "cat.png"
    assert out["body"] == "Ann (from X): cat.png"
    assert out["url"] == "mxc://hs/x"
