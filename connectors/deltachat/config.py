"""The ``connectors.deltachat`` config section.

Example::

    connectors:
      deltachat:
        accounts_dir: /var/lib/mimi-bridge/deltachat  # where the Delta Chat core keeps accounts
        account:                       # the bridge's own Delta Chat account (the relay)
          address: bridge@example.org
          password: "change me"
          display_name: Matrix bridge
        imap:                          # defaults for the bridge's account and for logins
          host: mail.example.org
          port: 993
          security: ssl                # ssl | starttls | plain | automatic
        smtp:
          host: mail.example.org
          port: 465
          security: ssl
        policy:
          allowed_senders: ["*@example.org"]  # who may open chats/groups with the bridge
          dm_receiver: "@admin:example.org"   # gets chats opened with the bridge's address
          puppet_senders: ["*"]        # who may open chats with a puppeted account
        rate_limit:                    # per remote sender, incoming messages
          messages: 30
          per_seconds: 60
        max_file_size: 26214400        # bytes, both ways
        send_timeout: 300              # seconds a Matrix message waits for a restarting core
        logins:
          enabled: true                # "login deltachat <address> <password>"
        provisioned: {}                # "@user:example.org": {address: ..., password: ...}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from bridge.connector import ConfigError

SECURITY = ("ssl", "starttls", "plain", "automatic")
_ADDR = re.compile(r"^[^@\s<>\"']+@[^@\s<>\"']+\.?[^@\s<>\"']*$")


def valid_address(value: object) -> bool:
    return isinstance(value, str) and bool(_ADDR.match(value)) and len(value) <= 254


@dataclass(slots=True)
class Server:
    host: str
    port: int
    security: str


@dataclass(slots=True)
class Provisioned:
    address: str
    password: str


@dataclass(slots=True)
class DeltaChatConfig:
    accounts_dir: Path
    address: str
    password: str
    display_name: str
    imap: Server
    smtp: Server
    allowed_senders: list[str] = field(default_factory=list)
    dm_receiver: str | None = None
    puppet_senders: list[str] = field(default_factory=lambda: ["*"])
    rate_messages: int = 30
    rate_seconds: float = 60.0
    max_file_size: int = 25 * 1024 * 1024
    send_timeout: float = 300.0
    logins_enabled: bool = True
    provisioned: dict[str, Provisioned] = field(default_factory=dict)

    def sender_allowed(self, address: str, puppet: bool = False) -> bool:
        patterns = self.puppet_senders if puppet else self.allowed_senders
        addr = address.lower()
        return any(fnmatchcase(addr, p.lower()) for p in patterns)

    def transport(self, address: str, password: str) -> dict[str, Any]:
        """Delta Chat ``EnteredLoginParam`` for an account on the configured servers."""
        return {
            "addr": address,
            "password": password,
            "imapServer": self.imap.host,
            "imapPort": self.imap.port,
            "imapSecurity": self.imap.security,
            "imapUser": address,
            "smtpServer": self.smtp.host,
            "smtpPort": self.smtp.port,
            "smtpSecurity": self.smtp.security,
            "smtpUser": address,
            "smtpPassword": password,
        }


def _section(config: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = config.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, "must be a mapping")
    return value


def _server(config: Mapping[str, Any], key: str, default_port: int) -> Server:
    sec = _section(config, key)
    host = sec.get("host")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{key}.host", "required: the mail server's host name or address")
    port = sec.get("port", default_port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"{key}.port", "must be a TCP port number")
    security = sec.get("security", "ssl")
    if security not in SECURITY:
        raise ConfigError(f"{key}.security", f"must be one of {', '.join(SECURITY)}")
    return Server(host, port, security)


def _positive(config: Mapping[str, Any], key: str, default: float, path: str) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(path, "must be a positive number")
    return float(value)


def _patterns(value: Any, path: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise ConfigError(path, "must be a list of address patterns (like *@example.org)")
    return list(value)


def parse_config(config: Mapping[str, Any]) -> DeltaChatConfig:
    """Check a ``connectors.deltachat`` section; raise :class:`ConfigError` on the first
    problem."""
    accounts_dir = config.get("accounts_dir")
    if not isinstance(accounts_dir, str) or not accounts_dir:
        raise ConfigError("accounts_dir", "required: a directory for the Delta Chat accounts")
    account = _section(config, "account")
    address = account.get("address")
    if not valid_address(address):
        raise ConfigError("account.address", "required: the bridge's e-mail address")
    password = account.get("password")
    if not isinstance(password, str) or not password:
        raise ConfigError("account.password", "required: the bridge account's password")
    display_name = account.get("display_name", "Matrix bridge")
    if not isinstance(display_name, str) or not display_name.strip():
        raise ConfigError("account.display_name", "must be a non-empty string")
    imap = _server(config, "imap", 993)
    smtp = _server(config, "smtp", 465)
    policy = _section(config, "policy")
    allowed = _patterns(policy.get("allowed_senders", []), "policy.allowed_senders")
    puppet_senders = _patterns(policy.get("puppet_senders", ["*"]), "policy.puppet_senders")
    receiver = policy.get("dm_receiver")
    if receiver is not None and (
        not isinstance(receiver, str) or not receiver.startswith("@") or ":" not in receiver
    ):
        raise ConfigError("policy.dm_receiver", "must be a Matrix user id (@user:server)")
    rate = _section(config, "rate_limit")
    messages = rate.get("messages", 30)
    if isinstance(messages, bool) or not isinstance(messages, int) or messages < 1:
        raise ConfigError("rate_limit.messages", "must be a positive integer")
    max_file = config.get("max_file_size", 25 * 1024 * 1024)
    if isinstance(max_file, bool) or not isinstance(max_file, int) or max_file < 1024:
        raise ConfigError("max_file_size", "must be a number of bytes (at least 1024)")
    logins = _section(config, "logins")
    provisioned: dict[str, Provisioned] = {}
    for user_id, entry in _section(config, "provisioned").items():
        path = f"provisioned.{user_id}"
        if not isinstance(user_id, str) or not user_id.startswith("@") or ":" not in user_id:
            raise ConfigError(path, "keys must be Matrix user ids (@user:server)")
        if not isinstance(entry, Mapping):
            raise ConfigError(path, "must be a mapping with address and password")
        if not valid_address(entry.get("address")):
            raise ConfigError(f"{path}.address", "must be an e-mail address")
        if not isinstance(entry.get("password"), str) or not entry["password"]:
            raise ConfigError(f"{path}.password", "required")
        provisioned[user_id] = Provisioned(str(entry["address"]).lower(), entry["password"])
    return DeltaChatConfig(
        accounts_dir=Path(accounts_dir),
        address=str(address).lower(),
        password=password,
        display_name=display_name.strip(),
        imap=imap,
        smtp=smtp,
        allowed_senders=allowed,
        dm_receiver=receiver,
        puppet_senders=puppet_senders,
        rate_messages=messages,
        rate_seconds=_positive(rate, "per_seconds", 60, "rate_limit.per_seconds"),
        max_file_size=max_file,
        send_timeout=_positive(config, "send_timeout", 300, "send_timeout"),
        logins_enabled=bool(logins.get("enabled", True)),
        provisioned=provisioned,
    )
