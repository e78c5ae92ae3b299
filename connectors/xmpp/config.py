"""The ``connectors.xmpp`` config section.

Example::

    connectors:
      xmpp:
        server:                      # where the XMPP server accepts components (XEP-0114)
          host: 127.0.0.1
          port: 5347
        component:
          domain: matrix.example.org # the component's own domain; Matrix users live here
          secret: "change me"
        muc_services:                # MUC services Matrix users may join; [] allows any
          - conference.example.org
        resource: matrix             # resource of the Matrix users' puppet JIDs
        nick_conflict_suffix: "[m]"  # "Alice" taken -> "Alice [m]", then "Alice [m2]", ...
        max_message_bytes: 32768     # longer Matrix messages go out as a link to the full text
        self_ping_interval: 120      # seconds between XEP-0410 self-pings of idle rooms
        send_timeout: 10             # seconds to wait for the MUC to reflect a message
        outage_grace: 5              # seconds a message waits for the server before being queued
        outbox_ttl: 900              # queued messages older than this are dropped (user is told)
        reconnect:
          min_delay: 1
          max_delay: 60
        media:                       # files XMPP users share as links (XEP-0066)
          max_bytes: 16777216        # fetched and re-uploaded to Matrix up to this size; 0: links
          allow_private_addresses: false  # also fetch from private/loopback addresses
        logins:                      # "login xmpp <jid> <password>": puppet with own account
          enabled: true
          host: null                 # override the server's SRV lookup (host and port)
          port: null
          allow_plaintext: false     # only for loopback test servers
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from slixmpp import JID
from slixmpp.jid import InvalidJID

from bridge.connector import ConfigError


@dataclass(slots=True)
class XMPPConfig:
    host: str
    port: int
    domain: str
    secret: str
    muc_services: list[str] = field(default_factory=list)
    resource: str = "matrix"
    nick_conflict_suffix: str = "[m]"
    max_message_bytes: int = 32768
    self_ping_interval: float = 120.0
    send_timeout: float = 10.0
    outage_grace: float = 5.0
    outbox_ttl: float = 900.0
    reconnect_min_delay: float = 1.0
    reconnect_max_delay: float = 60.0
    media_max_bytes: int = 16 * 1024 * 1024
    media_allow_private: bool = False
    logins_enabled: bool = True
    login_host: str | None = None
    login_port: int | None = None
    login_allow_plaintext: bool = False

    def muc_allowed(self, service: str) -> bool:
        return not self.muc_services or service.lower() in self.muc_services


def _section(config: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = config.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, "must be a mapping")
    return value


def _number(section: Mapping[str, Any], key: str, default: float, path: str) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(path, "must be a positive number")
    return float(value)


def _domain(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, "must be a domain name")
    try:
        jid = JID(value)
    except InvalidJID as e:
        raise ConfigError(path, f"not a valid XMPP domain: {e}") from e
    if jid.user or jid.resource:
        raise ConfigError(path, "must be a bare domain (no '@' or '/')")
    return jid.domain


def parse_config(config: Mapping[str, Any]) -> XMPPConfig:
    """Check a ``connectors.xmpp`` section; raise :class:`ConfigError` on the first problem."""
    server = _section(config, "server")
    component = _section(config, "component")
    host = server.get("host")
    if not isinstance(host, str) or not host:
        raise ConfigError("server.host", "required: the XMPP server's host name or address")
    port = server.get("port", 5347)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError("server.port", "must be a TCP port number")
    domain = _domain(component.get("domain"), "component.domain")
    secret = component.get("secret")
    if not isinstance(secret, str) or not secret:
        raise ConfigError("component.secret", "required: the component secret from the server")
    services = config.get("muc_services", [])
    if not isinstance(services, list):
        raise ConfigError("muc_services", "must be a list of MUC service domains")
    muc_services = [_domain(s, f"muc_services[{i}]") for i, s in enumerate(services)]
    resource = config.get("resource", "matrix")
    if not isinstance(resource, str) or not resource or "/" in resource:
        raise ConfigError("resource", "must be a non-empty string")
    suffix = config.get("nick_conflict_suffix", "[m]")
    if not isinstance(suffix, str) or not suffix.strip():
        raise ConfigError("nick_conflict_suffix", "must be a non-empty string")
    max_bytes = config.get("max_message_bytes", 32768)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 256:
        raise ConfigError("max_message_bytes", "must be an integer >= 256")
    reconnect = _section(config, "reconnect")
    media = _section(config, "media")
    media_max = media.get("max_bytes", 16 * 1024 * 1024)
    if isinstance(media_max, bool) or not isinstance(media_max, int) or media_max < 0:
        raise ConfigError("media.max_bytes", "must be an integer >= 0 (0: keep links)")
    media_private = media.get("allow_private_addresses", False)
    if not isinstance(media_private, bool):
        raise ConfigError("media.allow_private_addresses", "must be true or false")
    logins = _section(config, "logins")
    login_port = logins.get("port")
    if login_port is not None and (
        isinstance(login_port, bool)
        or not isinstance(login_port, int)
        or not 0 < login_port < 65536
    ):
        raise ConfigError("logins.port", "must be a TCP port number")
    login_host = logins.get("host")
    if login_host is not None and not isinstance(login_host, str):
        raise ConfigError("logins.host", "must be a host name")
    cfg = XMPPConfig(
        host=host,
        port=port,
        domain=domain,
        secret=secret,
        muc_services=muc_services,
        resource=resource,
        nick_conflict_suffix=suffix.strip(),
        max_message_bytes=max_bytes,
        self_ping_interval=_number(config, "self_ping_interval", 120, "self_ping_interval"),
        send_timeout=_number(config, "send_timeout", 10, "send_timeout"),
        outage_grace=_number(config, "outage_grace", 5, "outage_grace"),
        outbox_ttl=_number(config, "outbox_ttl", 900, "outbox_ttl"),
        reconnect_min_delay=_number(reconnect, "min_delay", 1, "reconnect.min_delay"),
        reconnect_max_delay=_number(reconnect, "max_delay", 60, "reconnect.max_delay"),
        media_max_bytes=media_max,
        media_allow_private=media_private,
        logins_enabled=bool(logins.get("enabled", True)),
        login_host=login_host,
        login_port=login_port,
        login_allow_plaintext=bool(logins.get("allow_plaintext", False)),
    )
    if cfg.reconnect_max_delay < cfg.reconnect_min_delay:
        raise ConfigError("reconnect.max_delay", "must not be smaller than min_delay")
    return cfg
