"""Splitting at the 512-byte limit (prefix included), long-message policy, injection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.connector import MessageContent, MessageKind
from connectors.irc.matrix_to_irc import (
    clean_text,
    content_to_irc,
    payload_budget,
    reaction_text,
    render,
    split_line,
    split_text,
    strip_reply_fallback,
)
from connectors.irc.protocol import MAX_LINE, ctcp, serialize
from connectors.irc.ranks import mode_change, mode_params

NICK, USER, HOST = "alice[m]", "~alice", "127.0.0.1"


def wire_len(target: str, text: str, action: bool = False) -> int:
    """Length of the line as the server relays it, prefix and CR LF included."""
    payload = ctcp("ACTION", text) if action else text
    return len(f":{NICK}!{USER}@{HOST} ".encode()) + len(serialize("PRIVMSG", target, payload))


def budget(command: str, action: bool) -> int:
    return payload_budget(NICK, USER, HOST, command, "#chan", action)


def test_budget_accounts_for_prefix() -> None:
    b = budget("PRIVMSG", False)
    # (a space in the text makes the serializer add the ":" the budget reserves)
    assert wire_len("#chan", "a " + "x" * (b - 2)) == MAX_LINE
    assert wire_len("#chan", "a " + "x" * (b - 1)) == MAX_LINE + 1
    a = budget("PRIVMSG", True)
    assert wire_len("#chan", "x" * a, action=True) == MAX_LINE
    # unknown host: assume the longest (63 bytes)
    assert payload_budget(NICK, USER, None, "PRIVMSG", "#chan") < b


def test_split_prefers_words() -> None:
    assert split_line("aaa bbb ccc", 7) == ["aaa bbb", "ccc"]
    assert split_line("abcdefghij", 4) == ["abcd", "efgh", "ij"]


@pytest.mark.parametrize("char", ["é", "€", "😀", "ö̈"])
def test_split_on_utf8_boundaries(char: str) -> None:
    text = char * 400
    for limit in (16, 17, 18, 19, 100, 431):
        parts = split_line(text, limit)
        assert "".join(parts) == text
        assert all(len(p.encode()) <= limit for p in parts)


@settings(max_examples=300)
@given(st.text(min_size=1, max_size=3000), st.integers(min_value=16, max_value=500))
def test_split_fuzz(text: str, limit: int) -> None:
    text = clean_text(text)
    lines = split_text(text, limit)
    for line in lines:
        assert len(line.encode()) <= limit
        assert "\n" not in line and "\r" not in line and "\0" not in line
    # nothing lost but the spaces split on and the line breaks
    assert "".join(lines).replace(" ", "") == "".join(
        ln for ln in text.split("\n") if ln.strip()
    ).replace(" ", "")


async def test_real_lines_fit_512_with_prefix() -> None:
    text = "word " * 200 + "ü" * 300
    out = await render(text, kind=MessageKind.TEXT, budget=budget, line_limit=0, upload=None)
    assert len(out.lines) > 2
    for line in out.lines:
        assert wire_len("#chan", line) <= MAX_LINE


@pytest.mark.parametrize(
    "evil",
    [
        "hi\r\nQUIT :pwned",
        "hi\nJOIN #evil",
        "hi\rKICK #chan bob",
        "a\0b",
        "\x01DCC SEND evil 0 0 0\x01",
        "x\u2028PRIVMSG #other :y",
        "\r\n\r\n",
    ],
)
async def test_injection_never_becomes_a_command(evil: str) -> None:
    for content in (MessageContent(evil), MessageContent(evil, html=f"<b>{evil}</b>")):
        text = content_to_irc(content)
        out = await render(text, kind=MessageKind.TEXT, budget=budget, line_limit=0, upload=None)
        for line in out.lines:
            data = serialize(out.command, "#chan", line)
            assert data.count(b"\n") == 1 and data.count(b"\r") == 1
            assert b"\0" not in data and b"\x01" not in data
    # multi-line text becomes separate PRIVMSGs of the same target
    out = await render(
        clean_text("hi\r\nQUIT :pwned"),
        kind=MessageKind.TEXT,
        budget=budget,
        line_limit=0,
        upload=None,
    )
    assert out.lines == ["hi", "QUIT :pwned"]


async def test_long_message_goes_out_as_link() -> None:
    uploaded: list[str] = []

    async def upload(text: str, name: str) -> str:
        uploaded.append(text)
        return "https://example.org/paste/1"

    text = "\n".join(f"line {i}" for i in range(10))
    out = await render(text, kind=MessageKind.TEXT, budget=budget, line_limit=3, upload=upload)
    assert out.pasted and out.lines == ["line 0 (full message: https://example.org/paste/1)"]
    assert uploaded == [text]
    short = await render("a\nb\nc", kind=MessageKind.TEXT, budget=budget, line_limit=3,
                         upload=upload)  # fmt: skip
    assert short.lines == ["a", "b", "c"] and not short.pasted


async def test_long_message_upload_failure_truncates() -> None:
    async def upload(text: str, name: str) -> str:
        raise RuntimeError("no")

    text = "\n".join(f"line {i}" for i in range(10))
    out = await render(text, kind=MessageKind.TEXT, budget=budget, line_limit=3, upload=upload)
    assert out.truncated and out.lines == ["line 0", "line 1", "(message truncated)"]


async def test_emote_and_notice() -> None:
    out = await render("waves", kind=MessageKind.EMOTE, budget=budget, line_limit=3, upload=None)
    assert out.action and out.command == "PRIVMSG"
    out = await render("bot", kind=MessageKind.NOTICE, budget=budget, line_limit=3, upload=None)
    assert out.command == "NOTICE" and not out.action


def test_reply_fallback_and_reaction_text() -> None:
    assert strip_reply_fallback("> <@a:x> old\n> more\n\nnew text") == "new text"
    assert reaction_text("👍", "hello world") == 'reacted 👍 to "hello world"'
    assert reaction_text("👍", "x" * 100).endswith('…"')
    assert reaction_text("👍", None) == "reacted 👍"


def test_attachment_links() -> None:
    from bridge.connector import Attachment

    content = MessageContent(
        "cat.png", attachments=[Attachment("cat.png", "image/png", url="https://e.org/m/1")]
    )
    assert content_to_irc(content) == "https://e.org/m/1"


@pytest.mark.parametrize(
    ("level", "previous", "held", "line"),
    [
        (50, 0, None, "MODE #chan +o nick"),
        (100, 10, {"v"}, "MODE #chan +o nick"),  # an operator keeps their voice
        (10, 0, None, "MODE #chan +v nick"),
        (49, 50, {"o"}, "MODE #chan -o+v nick nick"),
        (1, 100, None, "MODE #chan -o+v nick nick"),
        (20, 0, {"o"}, "MODE #chan -o+v nick nick"),  # IRC said +o although Matrix did not
        (0, 50, {"o"}, "MODE #chan -o nick"),
        (0, 10, None, "MODE #chan -v nick"),
        (-5, 75, {"o", "v"}, "MODE #chan -ov nick nick"),
        (0, 0, None, None),
    ],
)
def test_power_levels_become_channel_modes(
    level: int, previous: int, held: set[str] | None, line: str | None
) -> None:
    add, take = mode_change(level, previous, held)
    if line is None:
        assert not add and not take
        return
    assert serialize("MODE", *mode_params("#chan", "nick", add, take)) == f"{line}\r\n".encode()
