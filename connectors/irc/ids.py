"""IRC identifiers <-> bridge identifiers.

* Namespace network of IRC network ``<netid>``: ``irc_<netid>``; localpart prefix
  ``irc_<netid>_``.
* Remote user id (ghosts): the nick in canonical form, i.e. case-folded with the network's
  configured ``casemapping`` (rfc1459 by default, so ``Foo[1]`` and ``foo{1}`` are one user),
  never with the mapping the server announces: ids stay put when a server changes it, and the
  connector compares names at run time with the server's mapping instead. The ghost's
  display name keeps the nick as the user typed it. Localpart: ``escape_localpart`` of the
  canonical nick (``[]\\`^{}|`` become ``=xx``).
* Remote room id (portals): the channel name, case-folded the same way (``#python``). Alias
  localpart: the canonical channel name (``#irc_libera_#python:example.org``).
* DM portals: remote id = the canonical nick of the IRC user, receiver = the Matrix user id
  of the puppet's owner.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from bridge.connector.ids import escape_localpart, unescape_localpart

from .protocol import casefold

NETWORK_PREFIX = "irc_"
_NETID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
# RFC 2812 nickname = ( letter / special ) *( letter / digit / special / "-" ).
_NICK = re.compile(r"^[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]*$")
CHANTYPES_DEFAULT = "#&+!"


def valid_netid(netid: str) -> bool:
    return bool(_NETID.match(netid))


def network_of(netid: str) -> str:
    return NETWORK_PREFIX + netid


def netid_of(network: str) -> str | None:
    if network.startswith(NETWORK_PREFIX):
        return network[len(NETWORK_PREFIX) :]
    return None


def valid_nick(nick: str, maxlen: int = 30) -> bool:
    return 0 < len(nick) <= maxlen and bool(_NICK.match(nick))


def is_channel(name: str, chantypes: str = CHANTYPES_DEFAULT) -> bool:
    return bool(name) and name[0] in chantypes


def valid_channel(name: str, chantypes: str = CHANTYPES_DEFAULT, maxlen: int = 64) -> bool:
    return (
        is_channel(name, chantypes)
        and 1 < len(name) <= maxlen
        and not any(c in name for c in " ,\x07\r\n\0:")
    )


def canonical_nick(nick: str, casemapping: str = "rfc1459") -> str:
    return casefold(nick, casemapping)


def canonical_channel(channel: str, casemapping: str = "rfc1459") -> str:
    return casefold(channel, casemapping)


_FOLD_TARGETS = frozenset("{}|^")


def folded_specials(remote_id: str) -> bool:
    """Whether a remote id holds ``{}|^``, which rfc1459 and strict-rfc1459 fold ``[]\\~`` into:
    only then may the id hide how a server with a finer mapping spells the name. Otherwise the
    server's fold of the id is the server's fold of the name."""
    return not _FOLD_TARGETS.isdisjoint(remote_id)


def ghost_localpart(nick: str, casemapping: str = "rfc1459") -> str:
    return escape_localpart(canonical_nick(nick, casemapping))


def parse_ghost_localpart(localpart: str, casemapping: str = "rfc1459") -> str | None:
    """The canonical nick a ghost localpart names; None for anything we would not produce."""
    try:
        nick = unescape_localpart(localpart)
    except ValueError:
        return None
    if not valid_nick(nick, 64) or canonical_nick(nick, casemapping) != nick:
        return None
    return nick


def alias_localpart(channel: str, casemapping: str = "rfc1459") -> str:
    return canonical_channel(channel, casemapping)


def parse_alias_localpart(
    localpart: str, casemapping: str = "rfc1459", chantypes: str = CHANTYPES_DEFAULT
) -> str | None:
    """``#python`` (or ``#Python``) -> ``#python``; None when it is not a channel name."""
    if not valid_channel(localpart, chantypes):
        return None
    return canonical_channel(localpart, casemapping)


# --- nicks for Matrix users ----------------------------------------------------------------------

_NICK_CHAR = re.compile(r"[A-Za-z0-9\[\]\\`_^{|}-]")


def _ascii_nick_chars(text: str) -> str:
    """Keep what a nick may hold; transliterate accented letters (é -> e)."""
    out = []
    for ch in unicodedata.normalize("NFKD", text):
        if _NICK_CHAR.match(ch):
            out.append(ch)
    return "".join(out)


def fallback_nick(user_id: str) -> str:
    """A valid nick for any Matrix user: ``m`` + 7 hex digits of a hash of the user id."""
    return "m" + hashlib.sha256(user_id.encode()).hexdigest()[:7]


def nick_for(template: str, display_name: str, user_id: str, maxlen: int = 30) -> str:
    """The nick ``template`` (``{displayname}``, ``{localpart}``) gives a Matrix user, made
    valid: characters IRC does not allow are dropped, the variable part is shortened so that
    the template's fixed part (``[m]``) survives ``maxlen``."""
    localpart = user_id[1:].split(":", 1)[0] if user_id.startswith("@") else user_id
    values = {
        "displayname": _ascii_nick_chars(display_name) or _ascii_nick_chars(localpart),
        "localpart": _ascii_nick_chars(localpart),
    }
    fixed = _ascii_nick_chars(re.sub(r"\{[a-z]+\}", "", template))
    room = max(1, maxlen - len(fixed))
    try:
        nick = template.format(**{k: v[:room] for k, v in values.items()})
    except (KeyError, IndexError, ValueError):
        nick = values["displayname"][:room] + "[m]"
    nick = _ascii_nick_chars(nick)[:maxlen]
    while nick and not _NICK.match(nick):
        nick = nick[1:]  # a nick must not start with a digit or "-"
    if not valid_nick(nick, maxlen) or len(nick) < 2:
        return fallback_nick(user_id)[:maxlen]
    return nick


def alternative_nick(nick: str, attempt: int, maxlen: int = 30) -> str:
    """The ``attempt``-th (1-based) alternative for a nick that is taken: ``alice[m]`` ->
    ``alice[m]1`` ... shortened to ``maxlen`` from the front of the variable part."""
    suffix = str(attempt)
    base = nick[: maxlen - len(suffix)]
    return base + suffix
