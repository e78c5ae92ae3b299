r"""Mapping identities between Matrix and XMPP.

Matrix users -> JIDs on the component domain
---------------------------------------------
A Matrix user ``@local:server`` is the JID ``E(local@server)@<component domain>``, where ``E``
is XEP-0106 JID escaping extended to every character that is not stable under the XMPP
localpart profile:

* kept as they are: ``a-z``, ``0-9`` and ``! # $ % ( ) * + , - . ; = ? [ ] ^ _ ` { | } ~``;
* every other character becomes ``\xx`` (lower-case hex) for each byte of its UTF-8 form.
  For the ten characters XEP-0106 covers this is exactly XEP-0106 (``@`` -> ``\40``,
  ``:`` -> ``\3a``, ``/`` -> ``\2f``, ``\`` -> ``\5c``, ...); upper-case letters (only in
  historical Matrix ids) become ``\41`` and so on, because servers would fold them to lower
  case and the mapping would no longer be reversible.

Examples: ``@alice:example.org`` -> ``alice\40example.org@matrix.example.org``;
``@bob:example.org:8448`` -> ``bob\40example.org\3a8448@matrix.example.org``.
Decoding accepts only the canonical form (``decode(x)`` is re-encoded and compared), so a JID
with a bad or non-canonical escape never maps to a surprising Matrix user.

XMPP users -> ghosts
--------------------
The ghost of an XMPP user is keyed by the bare JID (``alice@example.com``). A MUC occupant
whose real JID is visible (non-anonymous room, or the puppet is a moderator) is the ghost of
that real JID; an occupant of a semi-anonymous room is keyed by the occupant JID
``room@service/nick``. The ghost's Matrix id is ``@xmpp_<escape_localpart(key)>:<homeserver>``
(see :func:`bridge.connector.ids.escape_localpart`).
"""

from __future__ import annotations

import re

from slixmpp import JID
from slixmpp.jid import InvalidJID

_KEEP = frozenset("abcdefghijklmnopqrstuvwxyz0123456789!#$%()*+,-.;=?[]^_`{|}~")
_MXID = re.compile(r"^@([\x21-\x39\x3b-\x7e]+):(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")
_ESCAPE = re.compile(r"\\([0-9a-f]{2})")


class InvalidMapping(ValueError):
    """An identifier that does not map to the other side."""


def is_matrix_user_id(user_id: str) -> bool:
    return len(user_id.encode()) <= 255 and _MXID.match(user_id) is not None


def escape_node(value: str) -> str:
    out: list[str] = []
    for ch in value:
        if ch in _KEEP:
            out.append(ch)
        else:
            out.extend(f"\\{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def unescape_node(value: str) -> str:
    raw = bytearray()
    pos = 0
    while pos < len(value):
        ch = value[pos]
        if ch == "\\":
            m = _ESCAPE.match(value, pos)
            if not m:
                raise InvalidMapping(f"invalid escape at position {pos} of {value!r}")
            raw.append(int(m.group(1), 16))
            pos = m.end()
        elif ch in _KEEP:
            raw += ch.encode()
            pos += 1
        else:
            raise InvalidMapping(f"character {ch!r} is not allowed unescaped")
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidMapping(f"{value!r} does not decode to UTF-8") from e
    if escape_node(decoded) != value:
        raise InvalidMapping(f"{value!r} is not in canonical escaped form")
    return decoded


def matrix_to_node(user_id: str) -> str:
    """The JID localpart of a Matrix user. Raises :class:`InvalidMapping`."""
    if not is_matrix_user_id(user_id):
        raise InvalidMapping(f"{user_id!r} is not a Matrix user id")
    local, _, server = user_id[1:].partition(":")
    return escape_node(f"{local}@{server}")


def node_to_matrix(node: str) -> str:
    """Invert :func:`matrix_to_node`. Raises :class:`InvalidMapping`."""
    decoded = unescape_node(node)
    local, sep, server = decoded.rpartition("@")
    if not sep:
        raise InvalidMapping(f"{node!r} does not name a Matrix user (no server part)")
    user_id = f"@{local}:{server}"
    if not is_matrix_user_id(user_id):
        raise InvalidMapping(f"{user_id!r} is not a Matrix user id")
    return user_id


class JidMapper:
    """Matrix user ids <-> JIDs on one component domain."""

    def __init__(self, domain: str, resource: str) -> None:
        self.domain = domain.lower()
        self.resource = resource

    def bare_jid(self, user_id: str) -> JID:
        try:
            return JID(f"{matrix_to_node(user_id)}@{self.domain}")
        except InvalidJID as e:  # pragma: no cover - escape_node output is always valid
            raise InvalidMapping(str(e)) from e

    def full_jid(self, user_id: str) -> JID:
        jid = self.bare_jid(user_id)
        jid.resource = self.resource
        return jid

    def is_ours(self, jid: JID) -> bool:
        return jid.domain == self.domain

    def matrix_user(self, jid: JID) -> str:
        """The Matrix user behind a JID on the component domain. Raises InvalidMapping."""
        if jid.domain != self.domain or not jid.user:
            raise InvalidMapping(f"{jid} is not a Matrix user's JID")
        return node_to_matrix(jid.user)


def parse_remote_user(remote_id: str, component_domain: str) -> JID | None:
    """A ghost key as a JID: a bare JID, or ``room@service/nick`` of an occupant. None when
    it is not a JID, or names a JID on the bridge's own domain (Matrix users have no ghosts)."""
    if not remote_id or len(remote_id) > 3071:
        return None
    try:
        jid = JID(remote_id)
    except InvalidJID:
        return None
    if not jid.domain or jid.domain == component_domain.lower() or str(jid) != remote_id:
        return None
    return jid


def parse_room_jid(remote_id: str) -> JID | None:
    """A MUC room as a bare JID ``room@service``; None if it is not one."""
    try:
        jid = JID(remote_id)
    except InvalidJID:
        return None
    if not jid.user or jid.resource or str(jid) != remote_id:
        return None
    return jid
