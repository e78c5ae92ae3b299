"""Line parser and serializer: RFC framing, IRCv3 tags, CTCP, hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.irc.protocol import (
    Line,
    UnsafeLine,
    casefold,
    ctcp,
    decode,
    escape_tag_value,
    parse_ctcp,
    parse_line,
    serialize,
    split_source,
    unescape_tag_value,
)


def test_parse_basic() -> None:
    line = parse_line(b":nick!user@host PRIVMSG #chan :hello world")
    assert line == Line("PRIVMSG", ["#chan", "hello world"], "nick!user@host", {})
    assert line.nick == "nick"


def test_parse_tags_and_escapes() -> None:
    line = parse_line(
        r"@time=2024-01-02T03:04:05.678Z;msgid=abc;+x=a\sb\:c\\d;flag :s PRIVMSG #c :hi"
    )
    assert line is not None
    assert line.tags == {
        "time": "2024-01-02T03:04:05.678Z",
        "msgid": "abc",
        "+x": "a b;c\\d",
        "flag": "",
    }


def test_parse_numeric_and_empty_trailing() -> None:
    line = parse_line(":srv 001 me :")
    assert line is not None and line.params == ["me", ""]
    line = parse_line("PING")
    assert line is not None and line.command == "PING" and line.params == []


@pytest.mark.parametrize(
    "raw",
    [b"", b"   ", b":onlysource", b"@tagsonly", b"@a=b :src", b"\x00\x00", b":"],
)
def test_parse_broken_returns_none(raw: bytes) -> None:
    assert parse_line(raw) is None


def test_invalid_utf8_falls_back_to_latin1() -> None:
    line = parse_line(b":n!u@h PRIVMSG #c :caf\xe9")
    assert line is not None and line.params[1] == "café"
    assert decode("ü".encode()) == "ü"


def test_missing_params_do_not_raise() -> None:
    line = parse_line(":srv KICK")
    assert line is not None and line.param(0) == "" and line.param(5, "x") == "x"


def test_serialize_roundtrip() -> None:
    data = serialize("PRIVMSG", "#chan", "hello: world", tags={"+draft/reply": "a;b c"})
    assert data == b"@+draft/reply=a\\:b\\sc PRIVMSG #chan :hello: world\r\n"
    line = parse_line(data)
    assert line is not None and line.tags["+draft/reply"] == "a;b c"


@pytest.mark.parametrize(
    "params",
    [
        ("#chan", "hi\r\nQUIT :pwned"),
        ("#chan", "hi\nJOIN #evil"),
        ("#chan", "hi\rPART #chan"),
        ("#chan", "nul\0byte"),
        ("#ch an", "x"),
        (":#chan", "x"),
        ("", "x"),
    ],
)
def test_serialize_refuses_injection(params: tuple[str, str]) -> None:
    with pytest.raises(UnsafeLine):
        serialize("PRIVMSG", *params)


def test_serialize_refuses_bad_command() -> None:
    with pytest.raises(UnsafeLine):
        serialize("PRIVMSG #x :a\r\nQUIT")


def test_ctcp() -> None:
    assert parse_ctcp("\x01ACTION waves\x01") == ("ACTION", "waves")
    assert parse_ctcp("\x01ACTION waves") == ("ACTION", "waves")
    assert parse_ctcp("\x01VERSION\x01") == ("VERSION", "")
    assert parse_ctcp("plain") is None
    assert parse_ctcp("\x01") is None
    assert ctcp("ACTION", "x") == "\x01ACTION x\x01"


def test_split_source() -> None:
    assert split_source("n!u@h") == ("n", "u", "h")
    assert split_source("irc.server") == ("irc.server", "", "")
    assert split_source(None) == ("", "", "")


def test_casefold() -> None:
    assert casefold("Foo[]\\~") == "foo{}|^"
    assert casefold("Foo[]", "ascii") == "foo[]"
    assert casefold("A~", "strict-rfc1459") == "a~"


@settings(max_examples=3000)
@given(st.binary(max_size=1200))
def test_fuzz_parse_never_raises(raw: bytes) -> None:
    line = parse_line(raw)
    if line is not None:
        assert line.command
        assert all("\0" not in p for p in line.params)


_word = st.text(
    alphabet=st.characters(blacklist_characters=" \r\n\0:", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=20,
)


@settings(max_examples=1000)
@given(
    st.sampled_from(["PRIVMSG", "NOTICE", "JOIN", "001", "KICK"]),
    st.lists(_word, max_size=5),
    st.text(
        alphabet=st.characters(blacklist_characters="\r\n\0", blacklist_categories=("Cs",)),
        max_size=60,
    ),
    st.dictionaries(st.from_regex(r"\A\+?[a-z][a-z0-9/.-]{0,10}\Z"), st.text(max_size=20)),
)
def test_fuzz_serialize_parse_roundtrip(
    command: str, middle: list[str], trailing: str, tags: dict[str, str]
) -> None:
    data = serialize(command, *middle, trailing, tags=tags)
    assert data.count(b"\r\n") == 1 and data.endswith(b"\r\n")
    line = parse_line(data[:-2])
    assert line is not None
    assert line.command == command
    assert line.params == [*middle, trailing]
    assert line.tags == {k: v.replace("\0", "") for k, v in tags.items()}


@given(st.text(max_size=50))
def test_tag_escape_roundtrip(value: str) -> None:
    value = value.replace("\0", "")
    escaped = escape_tag_value(value)
    assert not any(c in escaped for c in " ;\r\n")
    assert unescape_tag_value(escaped) == value


@settings(max_examples=500)
@given(st.text(max_size=300))
def test_serialize_any_text_is_one_line_or_refused(text: str) -> None:
    try:
        data = serialize("PRIVMSG", "#c", text)
    except UnsafeLine:
        assert any(c in text for c in "\r\n\0")
        return
    assert data.count(b"\n") == 1 and b"\r" not in data[:-2] and b"\0" not in data
