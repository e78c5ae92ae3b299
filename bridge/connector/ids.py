"""Identifiers shared by the core and the connectors, and the reversible escaping of remote
identifiers into Matrix localparts."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Matrix user-id localparts may hold only these characters (spec: "User Identifiers").
_LOCALPART_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-./")


@dataclass(frozen=True, slots=True)
class PortalKey:
    """Names one remote conversation. ``receiver`` is empty for shared rooms (channels, MUCs)
    and holds the login id for conversations private to one login (DMs)."""

    network: str
    remote_id: str
    receiver: str = ""


@dataclass(frozen=True, slots=True)
class GhostKey:
    """Names one remote user of one network (instance)."""

    network: str
    remote_id: str


def escape_localpart(value: str) -> str:
    """Escape any string into the Matrix localpart alphabet, reversibly.

    Follows the spec's "Mapping from other character sets": ``_`` becomes ``__``, an upper-case
    letter becomes ``_`` plus its lower-case form, and any other character outside
    ``[a-z0-9-./]`` becomes ``=xx`` for each byte of its UTF-8 encoding.
    """
    out: list[str] = []
    for ch in value:
        if ch in _LOCALPART_SAFE:
            out.append(ch)
        elif ch == "_":
            out.append("__")
        elif "A" <= ch <= "Z":
            out.append("_" + ch.lower())
        else:
            out.extend(f"={b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


class InvalidEscape(ValueError):
    """A localpart that no remote identifier escapes to."""


_ESCAPED = re.compile(r"__|_[a-z]|=[0-9a-f]{2}|[a-z0-9\-./]")


def unescape_localpart(value: str) -> str:
    """Invert :func:`escape_localpart`. Raises :class:`InvalidEscape` on anything it could
    not have produced, so a forged localpart never maps to a surprising remote id."""
    raw = bytearray()
    pos = 0
    while pos < len(value):
        m = _ESCAPED.match(value, pos)
        if not m:
            raise InvalidEscape(f"invalid escape at position {pos} of {value!r}")
        tok = m.group(0)
        if tok == "__":
            raw += b"_"
        elif tok[0] == "_":
            raw += tok[1].upper().encode()
        elif tok[0] == "=":
            raw.append(int(tok[1:], 16))
        else:
            raw += tok.encode()
        pos = m.end()
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidEscape(f"{value!r} does not decode to UTF-8") from e
    if escape_localpart(decoded) != value:
        # e.g. "=61" for "a": not the canonical form, so not ours.
        raise InvalidEscape(f"{value!r} is not in canonical escaped form")
    return decoded
