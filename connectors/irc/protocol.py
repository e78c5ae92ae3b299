"""IRC line parsing and serialization (RFC 1459/2812 framing plus IRCv3 message tags), CTCP and
case mapping.

Parsing never raises: a server may send anything, and one bad line must not break the
connection. Serialization refuses anything that would let a parameter turn into a second
command (CR, LF, NUL) or change the meaning of the line (spaces or a leading ``:`` in a middle
parameter).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# One IRC line: 512 bytes including the trailing CR LF (RFC 1459 2.3). Tags have their own
# budget of 8191 bytes (IRCv3 message-tags), so the whole line may reach 8191 + 512.
MAX_LINE = 512
MAX_TAGS = 8191
# What we accept from a server before discarding the rest of a line.
MAX_INCOMING = MAX_TAGS + MAX_LINE


class UnsafeLine(ValueError):
    """A parameter would change the structure of the serialized line."""


def decode(raw: bytes) -> str:
    """UTF-8 when the bytes are UTF-8, else latin-1 (which never fails): IRC has no declared
    encoding and older clients still send latin-1 or cp1252."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


_TAG_UNESCAPE = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
_TAG_ESCAPE = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}


def unescape_tag_value(value: str) -> str:
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch == "\\":
            i += 1
            if i < n:
                nxt = value[i]
                out.append(_TAG_UNESCAPE.get(nxt, nxt))
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def escape_tag_value(value: str) -> str:
    return "".join(_TAG_ESCAPE.get(ch, ch) for ch in value.replace("\0", ""))


@dataclass(slots=True)
class Line:
    command: str
    params: list[str] = field(default_factory=list)
    source: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def nick(self) -> str:
        """The nick (or server name) of the source, "" when there is none."""
        if not self.source:
            return ""
        return self.source.split("!", 1)[0].split("@", 1)[0]

    def param(self, index: int, default: str = "") -> str:
        return self.params[index] if -len(self.params) <= index < len(self.params) else default

    def __str__(self) -> str:
        return serialize(self.command, *self.params, source=self.source, tags=self.tags).decode(
            "utf-8", "replace"
        )


def parse_line(raw: bytes | str) -> Line | None:
    """Parse one line (without CR LF). Returns None for an empty or unusable line."""
    text = decode(raw) if isinstance(raw, bytes | bytearray) else raw
    text = text.rstrip("\r\n").replace("\0", "")
    pos = 0
    n = len(text)
    tags: dict[str, str] = {}
    if text.startswith("@"):
        end = text.find(" ")
        if end < 0:
            return None
        for item in text[1:end].split(";"):
            if not item:
                continue
            key, sep, value = item.partition("=")
            tags[key] = unescape_tag_value(value) if sep else ""
        pos = end + 1
    while pos < n and text[pos] == " ":
        pos += 1
    source: str | None = None
    if pos < n and text[pos] == ":":
        end = text.find(" ", pos)
        if end < 0:
            return None
        source = text[pos + 1 : end] or None
        pos = end + 1
    while pos < n and text[pos] == " ":
        pos += 1
    params: list[str] = []
    command = ""
    while pos < n:
        if text[pos] == ":" and command:
            params.append(text[pos + 1 :])
            break
        end = text.find(" ", pos)
        if end < 0:
            end = n
        word = text[pos:end]
        if not command:
            command = word.upper()
        else:
            params.append(word)
        pos = end
        while pos < n and text[pos] == " ":
            pos += 1
    if not command:
        return None
    return Line(command=command, params=params, source=source, tags=tags)


_FORBIDDEN = ("\r", "\n", "\0")


def serialize(
    command: str,
    *params: str,
    source: str | None = None,
    tags: dict[str, str] | None = None,
) -> bytes:
    """One line, CR LF included. Raises :class:`UnsafeLine` when a parameter holds CR, LF or
    NUL, or a middle parameter holds a space, is empty, or starts with ``:``."""
    if not command or not command.isalnum():
        raise UnsafeLine(f"bad command {command!r}")
    parts: list[str] = []
    if tags:
        items = []
        for key, value in tags.items():
            if not key or any(c in key for c in " ;=\r\n\0"):
                raise UnsafeLine(f"bad tag key {key!r}")
            items.append(f"{key}={escape_tag_value(value)}" if value else key)
        parts.append("@" + ";".join(items))
    if source:
        if any(c in source for c in (" ", *_FORBIDDEN)):
            raise UnsafeLine("bad source")
        parts.append(":" + source)
    parts.append(command)
    for i, param in enumerate(params):
        if any(c in param for c in _FORBIDDEN):
            raise UnsafeLine("CR, LF or NUL in a parameter")
        last = i == len(params) - 1
        if last and (not param or " " in param or param.startswith(":")):
            parts.append(":" + param)
        elif not param or " " in param or param.startswith(":"):
            raise UnsafeLine(f"middle parameter {param!r} needs to be the last one")
        else:
            parts.append(param)
    return (" ".join(parts) + "\r\n").encode("utf-8")


def split_source(source: str | None) -> tuple[str, str, str]:
    """``nick!user@host`` -> (nick, user, host); missing parts are ""."""
    if not source:
        return "", "", ""
    nick, _, rest = source.partition("!")
    user, _, host = rest.partition("@")
    if not rest and "@" in nick:
        nick, _, host = nick.partition("@")
    return nick, user, host


# --- CTCP --------------------------------------------------------------------------------------


def parse_ctcp(text: str) -> tuple[str, str] | None:
    """``\\x01ACTION waves\\x01`` -> ("ACTION", "waves"); None for a plain message. A missing
    closing ``\\x01`` is tolerated, as many clients omit it."""
    if len(text) < 2 or not text.startswith("\x01"):
        return None
    body = text[1:]
    if body.endswith("\x01"):
        body = body[:-1]
    cmd, _, arg = body.partition(" ")
    if not cmd:
        return None
    return cmd.upper(), arg


def ctcp(command: str, arg: str = "") -> str:
    return f"\x01{command} {arg}\x01" if arg else f"\x01{command}\x01"


# --- case mapping ------------------------------------------------------------------------------

_ASCII = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_RFC1459 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ[]\\~", "abcdefghijklmnopqrstuvwxyz{}|^")
_STRICT = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ[]\\", "abcdefghijklmnopqrstuvwxyz{}|")
CASEMAPPINGS = {"ascii": _ASCII, "rfc1459": _RFC1459, "strict-rfc1459": _STRICT}


def casefold(name: str, mapping: str = "rfc1459") -> str:
    return name.translate(CASEMAPPINGS.get(mapping, _RFC1459))


# --- numerics used by the client ---------------------------------------------------------------

RPL_WELCOME = "001"
RPL_ISUPPORT = "005"
RPL_TOPIC = "332"
RPL_NAMREPLY = "353"
RPL_ENDOFNAMES = "366"
ERR_NOSUCHNICK = "401"
ERR_CANNOTSENDTOCHAN = "404"
ERR_ERRONEUSNICKNAME = "432"
ERR_NICKNAMEINUSE = "433"
ERR_NICKCOLLISION = "436"
ERR_UNAVAILRESOURCE = "437"
ERR_PASSWDMISMATCH = "464"
ERR_YOUREBANNEDCREEP = "465"
ERR_CHANOPRIVSNEEDED = "482"
NICK_ERRORS = frozenset({"431", "432", "433", "436", "437", "438", "447"})
JOIN_ERRORS = frozenset({"403", "405", "471", "473", "474", "475", "476", "477", "489", "520"})
SASL_OK = frozenset({"903"})
SASL_FAIL = frozenset({"902", "904", "905", "906", "908"})
