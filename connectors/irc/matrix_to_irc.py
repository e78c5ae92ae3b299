"""Matrix messages -> IRC message texts: cleaning, splitting at the 512-byte line limit,
the long-message policy, and the edit / reply / reaction policies.

Nothing produced here can contain CR, LF, NUL or ``\\x01`` from Matrix text: every line is one
PRIVMSG/NOTICE parameter, and :func:`connectors.irc.protocol.serialize` checks again.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bridge.connector.events import MessageContent, MessageKind

from .formatting import PillResolver, carry_formatting, html_to_irc, strip_formatting
from .protocol import MAX_LINE

# Control characters Matrix text may not put on the wire: everything below 0x20 except
# TAB and the mIRC formatting codes (which the HTML converter itself produces), plus DEL.
_FORMAT_KEEP = "\x02\x03\x04\x0f\x11\x16\x1d\x1e\x1f"
_CONTROL = re.compile("[" + "".join(
    chr(c) for c in range(0x20) if chr(c) not in _FORMAT_KEEP + "\t\n"
) + "\x7f]")  # fmt: skip
_LINE_BREAKS = re.compile(r"\r\n|\r|\n|\u2028|\u2029|\x0b|\x0c|\x85")
# The reply fallback some clients still put in front of a reply body.
_REPLY_FALLBACK = re.compile(r"\A(?:> [^\n]*\n)+\n?")

ACTION_OVERHEAD = len(b"\x01ACTION \x01")
UNKNOWN_HOST_LEN = 63


def clean_text(text: str, keep_formatting: bool = False) -> str:
    """Normalise line breaks to ``\\n``; drop NUL, CR, ``\\x01`` and other controls; tabs become
    spaces."""
    text = _LINE_BREAKS.sub("\n", text)
    text = _CONTROL.sub("", text)
    if not keep_formatting:
        text = strip_formatting(text)
    return text.replace("\t", "    ")


def payload_budget(
    nick: str, user: str, host: str | None, command: str, target: str, action: bool = False
) -> int:
    """Bytes left for the text in ``:nick!user@host COMMAND target :text\\r\\n`` (the prefix is
    what the server adds when it relays our line)."""
    host_len = len(host.encode()) if host else UNKNOWN_HOST_LEN
    prefix = len(f":{nick}!{user}@".encode()) + host_len + 1
    fixed = prefix + len(f"{command} {target} :".encode()) + 2
    if action:
        fixed += ACTION_OVERHEAD
    return max(16, MAX_LINE - fixed)


def _cut(data: bytes, limit: int) -> int:
    """The largest index <= limit that is a UTF-8 character boundary."""
    if limit >= len(data):
        return len(data)
    i = limit
    while i > 0 and (data[i] & 0xC0) == 0x80:
        i -= 1
    return i


def split_line(line: str, max_bytes: int) -> list[str]:
    """Split one line into pieces of at most ``max_bytes`` UTF-8 bytes, at a space when there
    is one in the last half of the piece, else at a character boundary."""
    data = line.encode("utf-8")
    out: list[str] = []
    while len(data) > max_bytes:
        cut = _cut(data, max_bytes)
        space = data.rfind(b" ", 0, cut + 1)
        if space > max_bytes // 2:
            out.append(data[:space].decode("utf-8"))
            data = data[space + 1 :]
        else:
            if cut == 0:  # max_bytes smaller than one character: cannot happen with >= 16
                cut = len(data[:4].decode("utf-8", "ignore")[:1].encode())
            out.append(data[:cut].decode("utf-8"))
            data = data[cut:]
    out.append(data.decode("utf-8"))
    return out


def split_text(text: str, max_bytes: int) -> list[str]:
    """Lines of ``text`` (``\\n``-separated, empty ones dropped), each split to fit, with open
    formatting carried over to the next line."""
    lines: list[str] = []
    for raw in text.split("\n"):
        if not strip_formatting(raw).strip():
            continue
        lines.extend(split_line(raw, max_bytes))
    return carry_formatting(lines) if any(c in text for c in _FORMAT_KEEP) else lines


def fit(text: str, max_bytes: int, ellipsis: str = "…") -> str:
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    room = max_bytes - len(ellipsis.encode())
    return data[: _cut(data, max(0, room))].decode("utf-8") + ellipsis


def strip_reply_fallback(text: str) -> str:
    return _REPLY_FALLBACK.sub("", text, count=1) if text.startswith("> ") else text


def content_to_irc(content: MessageContent, resolve: PillResolver | None = None) -> str:
    """The IRC text of a Matrix message (formatting codes kept, lines joined by ``\\n``)."""
    if content.html:
        text = html_to_irc(content.html, resolve)
        text = clean_text(text, keep_formatting=True)
    else:
        text = clean_text(content.text)
    if content.attachments:
        links = []
        for att in content.attachments:
            link = att.url or ""
            if link and link not in text:
                links.append(link)
        if links:
            text = (text + "\n" if text.strip() and text.strip() != content.attachments[0].filename
                    else "") + "\n".join(links)  # fmt: skip
    return text


Uploader = Callable[[str, str], Awaitable[str]]


@dataclass(slots=True)
class Outgoing:
    """What a puppet sends for one Matrix event: lines, each one PRIVMSG/NOTICE (or ACTION)."""

    lines: list[str]
    command: str = "PRIVMSG"
    action: bool = False
    pasted: bool = False  # the long text went out as a link
    truncated: bool = False  # the link could not be made, the text was cut


async def render(
    text: str,
    *,
    kind: MessageKind,
    budget: Callable[[str, bool], int],
    line_limit: int,
    upload: Uploader | None,
    prefix: str = "",
) -> Outgoing:
    """Split ``text`` for IRC. ``budget(command, action)`` gives the bytes per line. Above
    ``line_limit`` lines (0: no limit) the full text is uploaded and a link goes out."""
    command = "NOTICE" if kind == MessageKind.NOTICE else "PRIVMSG"
    action = kind == MessageKind.EMOTE
    max_bytes = budget(command, action)
    full = prefix + text if prefix else text
    lines = split_text(full, max_bytes)
    if not lines:
        return Outgoing([], command, action)
    if line_limit <= 0 or len(lines) <= line_limit:
        return Outgoing(lines, command, action)
    plain = strip_formatting(full)
    first = strip_formatting(lines[0])
    if upload is not None:
        try:
            url = await upload(plain, "message.txt")
        except Exception:
            url = ""
        if url:
            suffix = f" (full message: {url})"
            head = fit(first, max(0, max_bytes - len(suffix.encode())))
            if len(head.encode()) + len(suffix.encode()) > max_bytes:
                return Outgoing([url], command, action, pasted=True)
            return Outgoing([head + suffix], command, action, pasted=True)
    keep = lines[: max(1, line_limit - 1)]
    keep.append("(message truncated)")
    return Outgoing(keep, command, action, truncated=True)


def quote(text: str | None, limit: int = 40) -> str:
    if not text:
        return ""
    one = " ".join(strip_reply_fallback(clean_text(text)).split())
    return one if len(one) <= limit else one[: limit - 1].rstrip() + "…"


def reaction_text(key: str, target_text: str | None) -> str:
    """``reacted 👍 to "hello wor…"`` (sent as a CTCP ACTION)."""
    q = quote(target_text)
    return f'reacted {clean_text(key)} to "{q}"' if q else f"reacted {clean_text(key)}"
