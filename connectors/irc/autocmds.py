"""Per-user auto-commands (``irc autocmd``): lines a user's connection sends after each connect,
such as ``msg HostServ ON`` or ``mode +R``.

Only two kinds are allowed, because the connection is shared with the bridge's own logic: a
message to a nick (not a channel: that would speak in a room no one sees bridged) and user
modes on the connection's own nick. Nothing that changes nick, channels or the connection
itself (NICK, JOIN, QUIT, raw lines). Passwords do not belong here: the table is not encrypted,
so commands that carry one (IDENTIFY, LOGIN, REGISTER, ...) are refused with a pointer to
``login``, which keeps credentials encrypted.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from .ids import valid_nick
from .table_store import TableStore

log = logging.getLogger("mimi.irc.autocmds")

MAX_COMMANDS = 10
MAX_TEXT = 300
# First words of service commands that carry a password (NickServ, Q, X, AuthServ, ...).
PASSWORD_WORDS = frozenset(
    "identify id login auth register setpass resetpass drop ghost recover release regain "
    "confirm verify".split()
)
_MODES = re.compile(r"[+-][A-Za-z]+([+-][A-Za-z]+)*")


class AutoCmdError(ValueError):
    pass


def parse_autocmd(words: list[str], services: str) -> tuple[str, ...]:
    """``msg <nick> <text...>`` or ``mode <+modes>``; raises :class:`AutoCmdError`."""
    if not words:
        raise AutoCmdError("Say what to send: msg <nick> <text>, or mode <+modes>")
    kind = words[0].lower()
    if kind in ("msg", "privmsg"):
        if len(words) < 3:
            raise AutoCmdError("Usage: msg <nick> <text>")
        target, text = words[1], " ".join(words[2:])
        if not valid_nick(target, 64):
            raise AutoCmdError(
                f"{target!r} is not a nick: auto-commands message services or users, not channels"
            )
        if len(text) > MAX_TEXT or any(c in text for c in "\r\n\0"):
            raise AutoCmdError(f"The text must be one line of at most {MAX_TEXT} characters")
        first = text.split()[0].lower()
        second = text.split()[1].lower() if len(text.split()) > 1 else ""
        if first in PASSWORD_WORDS or (first == "set" and second in ("password", "pass")):
            raise AutoCmdError(
                "Auto-commands are not stored encrypted, so they may not carry passwords. "
                "Log in instead, and the bridge identifies you to "
                f"{services} itself: login irc <network> sasl <account> <password> (or certfp "
                "instead of sasl, to log in with a certificate and store no password)"
            )
        return ("msg", target, text)
    if kind == "mode":
        if len(words) != 2 or not _MODES.fullmatch(words[1]) or len(words[1]) > 20:
            raise AutoCmdError("Usage: mode <+modes> (your own user modes, such as +R or -x)")
        return ("mode", words[1])
    raise AutoCmdError(
        f"{words[0]!r} is not allowed: auto-commands are msg <nick> <text> or mode <+modes>"
    )


def show_autocmd(cmd: tuple[str, ...]) -> str:
    return " ".join(cmd)


class AutoCmdStore(TableStore):
    """Auto-commands by network and Matrix user, in the bridge database (or in memory)."""

    table = "irc_autocmd"

    async def load(self, net: Any) -> None:
        db = await self._db()
        if db is None:
            return
        try:
            rows = await db.fetch(
                "SELECT user_id, commands FROM irc_autocmd WHERE network=$1", net.cfg.netid
            )
        except Exception:
            log.exception("loading auto-commands failed")
            return
        for row in rows:
            try:
                cmds = [tuple(str(x) for x in c) for c in json.loads(row["commands"])]
            except (ValueError, TypeError):
                log.error("auto-commands of %s cannot be read", row["user_id"])
                continue
            net.pool.autocmds[row["user_id"]] = cmds

    async def save(self, net: Any, user_id: str, cmds: list[tuple[str, ...]]) -> None:
        """Store (an empty list: forget) the user's commands; raises on a database error."""
        if cmds:
            net.pool.autocmds[user_id] = list(cmds)
        else:
            net.pool.autocmds.pop(user_id, None)
        db = await self._db()
        if db is None:
            return
        if cmds:
            await db.execute(
                "INSERT INTO irc_autocmd (network, user_id, commands) VALUES ($1, $2, $3) "
                "ON CONFLICT (network, user_id) DO UPDATE SET commands=excluded.commands",
                net.cfg.netid,
                user_id,
                json.dumps([list(c) for c in cmds]),
            )
        else:
            await db.execute(
                "DELETE FROM irc_autocmd WHERE network=$1 AND user_id=$2", net.cfg.netid, user_id
            )
