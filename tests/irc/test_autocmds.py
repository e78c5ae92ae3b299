"""What ``irc autocmd`` accepts: messages to nicks and the connection's own user modes, never a
password, a channel or a command that would change the connection."""

from __future__ import annotations

import pytest

from connectors.irc.autocmds import AutoCmdError, parse_autocmd


@pytest.mark.parametrize(
    ("words", "parsed"),
    [
        (["msg", "HostServ", "ON"], ("msg", "HostServ", "ON")),
        (["MSG", "ChanServ", "INVITE", "#secret"], ("msg", "ChanServ", "INVITE #secret")),
        (["mode", "+R"], ("mode", "+R")),
        (["mode", "-x+i"], ("mode", "-x+i")),
    ],
)
def test_allowed(words: list[str], parsed: tuple[str, ...]) -> None:
    assert parse_autocmd(words, "NickServ") == parsed


@pytest.mark.parametrize(
    ("words", "why"),
    [
        (["msg", "NickServ", "IDENTIFY", "acct", "pw"], "passwords"),
        (["msg", "NickServ", "id", "pw"], "passwords"),
        (["msg", "Q@CServe.quakenet.org", "AUTH", "a", "b"], "not a nick"),
        (["msg", "Q", "AUTH", "a", "b"], "passwords"),
        (["msg", "NickServ", "SET", "PASSWORD", "new"], "passwords"),
        (["msg", "#channel", "hello"], "not a nick"),
        (["msg", "NickServ"], "Usage"),
        (["join", "#x"], "not allowed"),
        (["quit"], "not allowed"),
        (["nick", "other"], "not allowed"),
        (["mode", "#chan", "+o"], "Usage"),
        (["mode", "o"], "Usage"),
        (["mode", "+i\r\nQUIT"], "Usage"),
        ([], "Say what"),
    ],
)
def test_refused(words: list[str], why: str) -> None:
    with pytest.raises(AutoCmdError, match=why):
        parse_autocmd(words, "NickServ")


def test_text_is_one_line() -> None:
    with pytest.raises(AutoCmdError, match="one line"):
        parse_autocmd(["msg", "HostServ", "ON\rQUIT"], "NickServ")
    with pytest.raises(AutoCmdError, match="one line"):
        parse_autocmd(["msg", "HostServ", "x" * 301], "NickServ")
