"""The ``connectors.irc`` config section.

Example::

    connectors:
      irc:
        networks:
          libera:                       # network id: [a-z0-9-], used in ids (irc_libera_...)
            host: irc.libera.chat
            port: 6697                  # default 6697 with tls, 6667 without
            tls: true
            tls_verify: true            # check the server certificate and host name
            tls_ca_file: null           # extra CA bundle (PEM) for tls_verify
            password: null              # server password (PASS) for every connection
            casemapping: rfc1459        # the form of nicks/channels in Matrix ids (see below)
            bot:                        # the one connection that listens to channels
              nick: mimibridge
              username: mimibridge
              realname: Matrix bridge
              sasl_account: null        # the bot's services account (see auth)
              sasl_password: null
            auth: sasl                  # how accounts log in: sasl (SASL PLAIN, or EXTERNAL
                                        # with a client certificate) | nickserv (IDENTIFY
                                        # after connecting, for networks without SASL)
            nickserv_nick: NickServ     # who IDENTIFY goes to (auth: nickserv), CERT ADD too
            nickserv_identify: "IDENTIFY {account} {password}"  # what IDENTIFY says;
                                        # OFTC: "IDENTIFY {password} {account}"
            nick_template: "{displayname}[m]"   # also {localpart}
            username_template: "{localpart}"
            realname_template: "{user_id}"
            max_connections: 1000       # puppets; beyond it the least active idle one quits
            connects_per_second: 5      # pace of (re)connects, bridge restarts included
            idle_timeout: 0             # seconds without Matrix activity before QUIT, 0: never
            flood:
              burst: 4                  # lines sent at once
              rate: 1.0                 # lines per second after the burst
            reconnect:
              min_delay: 2
              max_delay: 300
            queue_timeout: 120          # seconds a message waits for a reconnect, then fails
            ping_interval: 90
            ping_timeout: 180
            line_limit: 3               # more lines: the text goes out as a link
            edits: prefix               # prefix ("* corrected text") | off
            replies: nick               # nick ("nick: text") | off
            reactions: action           # action ("* reacted 👍 to "…"") | off
            power_levels: {q: 50, a: 50, o: 50, h: 25, v: 10}
            netsplit_window: 60         # seconds a netsplit QUIT waits for the user to rejoin
                                        # before their ghost leaves; 0: leave at once
            channels: ["#bridge-test"]  # joined by the bot at start
            puppets: true               # false: relay through the bot only
            require_matrix_membership: true   # false: a puppet keeps its channel seat when
                                        # its Matrix user leaves the portal room (see below)
            bind_address: null          # local address to connect from (default: any);
                                        # with bind_prefix: the bot's only
            bind_prefix: null           # IPv6 prefix, e.g. 2001:db8:1::/64: each Matrix
                                        # user's puppet connects from its own address in it
            bind_key: null              # secret keying the address hash (default: fixed)
            exclude:                    # channels (shell patterns) kept from being bridged
              - {channel: "#ops*", mode: never}     # never: not by anyone
              - {channel: "#staff", mode: admins}   # admins: by bridge admins only
            link_request_timeout: 300   # seconds channel operators have to answer a link
            publish: false              # list portal rooms in the room directory (never
                                        # those of +s, +p or +k channels)
        identd:                         # built-in ident server (RFC 1413), shared by networks
          enabled: false
          listen: "::"                  # "::" takes IPv4 too; or 0.0.0.0, or one address
          port: 113                     # servers ask port 113; binding it needs root or
                                        # CAP_NET_BIND_SERVICE

``link`` (bridging an existing Matrix room to a channel) needs the channel's consent: the
requesting user's own IRC connection is a channel operator there (+o, +a or +q), or a channel
operator answers the bot's private request (``yes`` or ``no``, with the channel when several
requests wait) within ``link_request_timeout``. ``exclude`` applies to ``join``, aliases and
``link`` alike; an excluded channel already bridged is no longer joined.

``require_matrix_membership`` (default ``true``): a Matrix user's puppet is in a channel only
while the user is joined to its portal room. Leaving the room (or a kick or ban there) parts
the channel, and after a restart a puppet rejoins only the channels whose portal the user is
still joined to. With ``false`` a puppet keeps its seat when its user leaves the room (an
operator keeping the channel seat, say), after restarts too (the bridge's database keeps
which channels); it parts when the user logs out, when the portal is unbridged, or when a
Matrix moderator kicks or bans the user from the room. Joining the room again makes the
user a plain member again; a start with ``true`` forgets the seats kept.

Channel modes show in the portal room: +i makes its join rule invite, +m raises the level
posting needs to voice's (``power_levels.v``), and +s, +p or +k keep it out of the room directory
(``publish``) and +s, +p out of third-party lookups. A room admin's change of the join rule is
+i or -i on IRC, set by their own connection or the bot, whichever is a channel operator; the
room is told when neither is.

Channels with a key (+k) are joined with ``join irc <network> #channel <key>``; the key is
stored encrypted like login credentials, for rejoins after a restart.

``identd`` answers the ident lookups IRC servers make when a connection arrives: the puppet's
own username (``username_template``; the bot's ``bot.username``) for the port pair of a
connection the bridge holds to the querying server, ``NO-USER`` for every other pair. Servers
show users without an ident answer with a ``~`` before their username.

``bind_prefix`` gives every puppet a source address of its own, so a network sees (and can
ban, allow or rate-limit) each Matrix user apart: the host bits are a keyed hash (BLAKE2b)
of the Matrix user id, the same after restarts and upgrades. The bot connects from
``bind_address`` (IPv4 or IPv6; default: any). The host must be able to send from every
address of the prefix and receive on them: route it to the host
(``ip -6 route add local 2001:db8:1::/64 dev lo``, besides the upstream route); the bridge
binds with ``IP_FREEBIND``, so no address needs configuring one by one. The server must have
an IPv6 address; a puppet never falls back to another source address. ``bind_key`` (any
string) keys the hash so that nobody can tell which Matrix user an address is by hashing
ids; changing it gives every user a new address.

``connects_per_second`` paces every (re)connect of the network, the bot's included: after a
bridge restart or when the server comes back after an outage the bot connects first, then
the puppets, most recently active first (the last message each user sent through the bridge,
kept in the bridge's database so a restart knows it), one every 1/``connects_per_second``
seconds. Puppets wait for the bot to be back before they reconnect (at most a minute: a bot
that cannot get back does not keep the users off).

Users log in with ``login irc <network> sasl <account> <password>`` (``nickserv`` is the same
word for networks with ``auth: nickserv``), or with ``login irc <network> certfp <account>
<password>``: the bridge makes a client certificate for the user (kept encrypted with the other
credentials), logs in once with the password, adds the certificate's fingerprint to the account
(``NickServ CERT ADD``) and from then on connects with the certificate (SASL EXTERNAL, or the
services' own certificate check with ``auth: nickserv``) without storing the password. It needs
``tls: true``. ``irc autocmd <network> add msg <nick> <text>`` and ``add mode <+modes>`` are
sent after each connect (up to 10; no passwords: they are refused, use ``login``).

``casemapping`` is the form nicks and channels take in Matrix ids: ghost localparts
(``@irc_libera_foo=7b1=7d``), room aliases and portal ids. It is fixed by the config, not by the
server: at run time every comparison of nicks and channels (the listener's channel state, the
puppets' nick index, NAMES snapshots, mentions) uses the ``CASEMAPPING`` the server announces
in ISUPPORT, and the ids stay what they are when a server changes its mapping. ``rfc1459``
(``[]\\~`` fold to ``{}|^``, the default) folds the most of the three, so two nicks a server
counts as one always share a ghost; on a server that tells them apart (ngircd: ``ascii``),
``foo[1]`` and ``foo{1}`` share one ghost too. Names go back to IRC as the bridge saw them
spelled (``#a[b]`` for the portal ``#a{b}``; a channel it has not seen yet goes as its id).
Changing the key renames the ghosts and aliases
of names holding ``[]\\~`` (``ascii`` or ``strict-rfc1459`` keep ids of an install made with
them).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.connector.base import ConfigError

from .addresses import parse_prefix
from .ids import valid_channel, valid_netid, valid_nick

POLICIES = {
    "edits": ("prefix", "off"),
    "replies": ("nick", "off"),
    "reactions": ("action", "off"),
}
DEFAULT_POWER = {"q": 50, "a": 50, "o": 50, "h": 25, "v": 10}
EXCLUDE_MODES = ("never", "admins")


@dataclass(frozen=True, slots=True)
class ExcludeRule:
    channel: str  # a shell pattern (fnmatch), compared case-folded
    mode: str  # never | admins


@dataclass(slots=True)
class BotConfig:
    nick: str = "mimibridge"
    username: str = "mimibridge"
    realname: str = "Matrix bridge"
    sasl_account: str | None = None
    sasl_password: str | None = None


@dataclass(slots=True)
class NetworkConfig:
    netid: str
    host: str
    port: int = 6667
    tls: bool = False
    tls_verify: bool = True
    tls_ca_file: str | None = None
    password: str | None = None
    casemapping: str = "rfc1459"
    bot: BotConfig = field(default_factory=BotConfig)
    nick_template: str = "{displayname}[m]"
    username_template: str = "{localpart}"
    realname_template: str = "{user_id}"
    max_connections: int = 1000
    connects_per_second: float = 5.0
    idle_timeout: float = 0.0
    flood_burst: int = 4
    flood_rate: float = 1.0
    reconnect_min: float = 2.0
    reconnect_max: float = 300.0
    queue_timeout: float = 120.0
    ping_interval: float = 90.0
    ping_timeout: float = 180.0
    register_timeout: float = 30.0
    line_limit: int = 3
    edits: str = "prefix"
    replies: str = "nick"
    reactions: str = "action"
    power_levels: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_POWER))
    netsplit_window: float = 60.0
    channels: list[str] = field(default_factory=list)
    puppets: bool = True
    require_matrix_membership: bool = True
    display_name: str = ""
    bind_address: str | None = None
    bind_prefix: ipaddress.IPv6Network | None = None
    bind_key: str = ""
    auth: str = "sasl"
    nickserv_nick: str = "NickServ"
    nickserv_identify: str = "IDENTIFY {account} {password}"
    exclude: list[ExcludeRule] = field(default_factory=list)
    link_request_timeout: float = 300.0
    publish: bool = False

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.tls_ca_file)
        if not self.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def _num(
    section: Mapping[str, Any], key: str, default: float, path: str, lo: float, integer: bool
) -> Any:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}{key}", "must be a number")
    if integer and not isinstance(value, int):
        raise ConfigError(f"{path}{key}", "must be a whole number")
    if value < lo:
        raise ConfigError(f"{path}{key}", f"must be at least {lo}")
    return value


def _str(section: Mapping[str, Any], key: str, default: str | None, path: str) -> Any:
    value = section.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{path}{key}", "must be a string")
    return value


def _bool(section: Mapping[str, Any], key: str, default: bool, path: str) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{path}{key}", "must be true or false")
    return value


def parse_network(netid: str, section: Any) -> NetworkConfig:
    p = f"networks.{netid}."
    if not valid_netid(str(netid)):
        raise ConfigError(f"networks.{netid}", "network id must be 1-32 of a-z, 0-9 and - (no _)")
    if not isinstance(section, Mapping):
        raise ConfigError(f"networks.{netid}", "must be a mapping")
    host = _str(section, "host", None, p)
    if not host:
        raise ConfigError(p + "host", "is required")
    tls = _bool(section, "tls", False, p)
    port = _num(section, "port", 6697 if tls else 6667, p, 1, True)
    if port > 65535:
        raise ConfigError(p + "port", "must be at most 65535")
    casemapping = _str(section, "casemapping", "rfc1459", p)
    if casemapping not in ("rfc1459", "ascii", "strict-rfc1459"):
        raise ConfigError(p + "casemapping", "must be rfc1459, strict-rfc1459 or ascii")
    bot_s = section.get("bot", {}) or {}
    if not isinstance(bot_s, Mapping):
        raise ConfigError(p + "bot", "must be a mapping")
    bot = BotConfig(
        nick=_str(bot_s, "nick", "mimibridge", p + "bot."),
        username=_str(bot_s, "username", "mimibridge", p + "bot."),
        realname=_str(bot_s, "realname", "Matrix bridge", p + "bot."),
        sasl_account=_str(bot_s, "sasl_account", None, p + "bot."),
        sasl_password=_str(bot_s, "sasl_password", None, p + "bot."),
    )
    if not valid_nick(bot.nick, 64):
        raise ConfigError(p + "bot.nick", "is not a valid IRC nick")
    if bool(bot.sasl_account) != bool(bot.sasl_password):
        raise ConfigError(p + "bot.sasl_password", "sasl_account and sasl_password go together")
    template = _str(section, "nick_template", "{displayname}[m]", p)
    if "{displayname}" not in template and "{localpart}" not in template:
        raise ConfigError(p + "nick_template", "must contain {displayname} or {localpart}")
    flood = section.get("flood", {}) or {}
    reconnect = section.get("reconnect", {}) or {}
    if not isinstance(flood, Mapping):
        raise ConfigError(p + "flood", "must be a mapping")
    if not isinstance(reconnect, Mapping):
        raise ConfigError(p + "reconnect", "must be a mapping")
    policies = {}
    for key, allowed in POLICIES.items():
        value = _str(section, key, allowed[0], p)
        if value not in allowed:
            raise ConfigError(p + key, f"must be one of {', '.join(allowed)}")
        policies[key] = value
    power = dict(DEFAULT_POWER)
    pl = section.get("power_levels", {}) or {}
    if not isinstance(pl, Mapping):
        raise ConfigError(p + "power_levels", "must be a mapping of mode letter to level")
    for mode, level in pl.items():
        if not (isinstance(mode, str) and len(mode) == 1 and isinstance(level, int)):
            raise ConfigError(p + "power_levels", f"bad entry {mode!r}: {level!r}")
        if not 0 <= level <= 100:
            raise ConfigError(p + f"power_levels.{mode}", "must be between 0 and 100")
        power[mode] = level
    channels = section.get("channels", []) or []
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise ConfigError(p + "channels", "must be a list of channel names")
    for ch in channels:
        if not valid_channel(ch):
            raise ConfigError(p + "channels", f"{ch!r} is not a channel name")
    rmin = _num(reconnect, "min_delay", 2.0, p + "reconnect.", 0.01, False)
    rmax = _num(reconnect, "max_delay", 300.0, p + "reconnect.", 0.01, False)
    if rmax < rmin:
        raise ConfigError(p + "reconnect.max_delay", "must be at least min_delay")
    ca = _str(section, "tls_ca_file", None, p)
    prefix_text = _str(section, "bind_prefix", None, p)
    prefix = None
    if prefix_text:
        try:
            prefix = parse_prefix(prefix_text)
        except ValueError as e:
            raise ConfigError(p + "bind_prefix", str(e)) from None
    bind_address = _str(section, "bind_address", None, p) or None
    if bind_address:
        try:
            ipaddress.ip_address(bind_address)
        except ValueError:
            msg = f"{bind_address!r} is not an IP address"
            raise ConfigError(p + "bind_address", msg) from None
    auth = _str(section, "auth", "sasl", p)
    if auth not in ("sasl", "nickserv"):
        raise ConfigError(p + "auth", "must be sasl or nickserv")
    nickserv_nick = _str(section, "nickserv_nick", "NickServ", p)
    if not valid_nick(nickserv_nick or "", 64):
        raise ConfigError(p + "nickserv_nick", "is not a valid IRC nick")
    identify = _str(section, "nickserv_identify", "IDENTIFY {account} {password}", p)
    try:
        filled = identify.format(account="a", password="p")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(p + "nickserv_identify", "may hold {account} and {password}") from e
    if "{password}" not in identify or not filled.strip():
        raise ConfigError(p + "nickserv_identify", "must contain {password}")
    exclude = _exclude(section.get("exclude"), p + "exclude")
    return NetworkConfig(
        netid=netid,
        host=host,
        port=port,
        tls=tls,
        tls_verify=_bool(section, "tls_verify", True, p),
        tls_ca_file=ca,
        password=_str(section, "password", None, p),
        casemapping=casemapping,
        bot=bot,
        nick_template=template,
        username_template=_str(section, "username_template", "{localpart}", p),
        realname_template=_str(section, "realname_template", "{user_id}", p),
        max_connections=_num(section, "max_connections", 1000, p, 1, True),
        connects_per_second=_num(section, "connects_per_second", 5.0, p, 0.01, False),
        idle_timeout=_num(section, "idle_timeout", 0.0, p, 0, False),
        flood_burst=_num(flood, "burst", 4, p + "flood.", 1, True),
        flood_rate=_num(flood, "rate", 1.0, p + "flood.", 0.01, False),
        reconnect_min=rmin,
        reconnect_max=rmax,
        queue_timeout=_num(section, "queue_timeout", 120.0, p, 0, False),
        ping_interval=_num(section, "ping_interval", 90.0, p, 1, False),
        ping_timeout=_num(section, "ping_timeout", 180.0, p, 1, False),
        register_timeout=_num(section, "register_timeout", 30.0, p, 1, False),
        line_limit=_num(section, "line_limit", 3, p, 0, True),
        edits=policies["edits"],
        replies=policies["replies"],
        reactions=policies["reactions"],
        power_levels=power,
        netsplit_window=_num(section, "netsplit_window", 60.0, p, 0, False),
        channels=list(channels),
        puppets=_bool(section, "puppets", True, p),
        require_matrix_membership=_bool(section, "require_matrix_membership", True, p),
        display_name=_str(section, "display_name", "", p) or netid,
        bind_address=bind_address,
        bind_prefix=prefix,
        bind_key=_str(section, "bind_key", "", p) or "",
        auth=auth,
        nickserv_nick=nickserv_nick,
        nickserv_identify=identify,
        exclude=exclude,
        link_request_timeout=_num(section, "link_request_timeout", 300.0, p, 1, False),
        publish=_bool(section, "publish", False, p),
    )


def _exclude(value: Any, path: str) -> list[ExcludeRule]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(path, "must be a list of {channel: <pattern>, mode: never|admins}")
    rules = []
    for i, entry in enumerate(value):
        if isinstance(entry, str):  # a bare pattern: never
            entry = {"channel": entry}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{path}[{i}]", "must be {channel: <pattern>, mode: never|admins}")
        channel = entry.get("channel")
        if not isinstance(channel, str) or not channel:
            raise ConfigError(f"{path}[{i}].channel", "must be a channel name or pattern")
        mode = entry.get("mode", "never")
        if mode not in EXCLUDE_MODES:
            raise ConfigError(f"{path}[{i}].mode", "must be never or admins")
        rules.append(ExcludeRule(channel, str(mode)))
    return rules


@dataclass(slots=True)
class IdentdConfig:
    enabled: bool = False
    listen: str = "::"
    port: int = 113


def parse_identd(section: Any) -> IdentdConfig:
    p = "identd."
    if section is None:
        return IdentdConfig()
    if not isinstance(section, Mapping):
        raise ConfigError("identd", "must be a mapping")
    port = _num(section, "port", 113, p, 0, True)
    if port > 65535:
        raise ConfigError(p + "port", "must be at most 65535")
    listen = _str(section, "listen", "::", p)
    if not listen:
        raise ConfigError(p + "listen", "must be an address")
    return IdentdConfig(enabled=_bool(section, "enabled", False, p), listen=listen, port=port)


def parse_config(config: Mapping[str, Any]) -> dict[str, NetworkConfig]:
    if not isinstance(config, Mapping):
        raise ConfigError("networks", "the irc section must be a mapping")
    networks = config.get("networks")
    if not isinstance(networks, Mapping) or not networks:
        raise ConfigError("networks", "at least one network is required")
    return {str(k): parse_network(str(k), v) for k, v in networks.items()}


def validate_config(config: Mapping[str, Any]) -> None:
    parse_config(config)
    parse_identd(config.get("identd"))
