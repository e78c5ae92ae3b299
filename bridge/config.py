"""Loading and validating the bridge's YAML config.

Key names are an interface (admins' configs and tooling depend on them). Every problem is
reported as one :class:`ConfigError` naming the dotted key, so the CLI prints one line and
exits with status 2.
"""

from __future__ import annotations

import copy
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from yarl import URL

from .config_upgrade import apply_renames, connector_warnings, example_path, suggestion

PERMISSION_LEVELS = ("relay", "user", "admin")
_LOCALPART = re.compile(r"^[a-z0-9._=\-/]+$")
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
MIN_SECRET_LENGTH = 16
_SERVER_NAME = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
GENERATE = "generate"


class ConfigError(Exception):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


@dataclass(slots=True)
class RelayConfig:
    enabled: bool = True
    # {displayname}, {user_id} and {message}; emotes use ``emote_format``.
    message_format: str = "<{displayname}> {message}"
    emote_format: str = "* {displayname} {message}"


@dataclass(slots=True)
class EncryptionConfig:
    # Join and work in encrypted rooms (needs the homeserver's MSC2409/MSC3202 support).
    allow: bool = False
    # Portals the bridge creates are encrypted.
    default: bool = False
    # Refuse to bridge rooms that are not encrypted.
    require: bool = False


@dataclass(slots=True)
class ProvisioningConfig:
    """The provisioning API on the appservice port (docs/provisioning.yaml)."""

    enabled: bool = True
    prefix: str = "/_matrix/provision"
    # "generate" until -g writes one: until then only OpenID tokens are accepted.
    shared_secret: str = GENERATE

    @property
    def secret(self) -> str | None:
        return None if self.shared_secret == GENERATE else self.shared_secret


@dataclass(slots=True)
class MetricsConfig:
    """Prometheus' /metrics on a port of its own (never the appservice port)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9108


@dataclass(slots=True)
class DoublePuppetConfig:
    # The token of the second registration (users of this homeserver, non-exclusive, no url):
    # the bridge acts as local users with it. None: off; "generate": -g writes it.
    as_token: str | None = None
    # Users (of any homeserver) may give the bridge their own access token: ``login matrix``.
    allow_login: bool = True


@dataclass(slots=True)
class ScaleConfig:
    """Scale-out mode (docs/scale-out.md). ``nats_url`` None: one process, as always."""

    nats_url: str | None = None
    worker_id: str | None = None  # default: <hostname>-<pid>
    request_timeout_s: float = 30.0
    unowned_notice_s: float = 60.0
    op_dedup_s: float = 600.0
    # Shard leases (docs/scale-out.md, "Shards and leases").
    lease_ttl_s: float = 15.0
    lease_renew_s: float = 5.0
    lease_claims_per_s: float = 10.0

    @property
    def enabled(self) -> bool:
        return self.nats_url is not None


@dataclass(slots=True)
class BridgeConfig:
    path: Path
    hs_address: str
    domain: str
    as_address: str
    hostname: str
    port: int
    appservice_id: str
    bot_username: str
    bot_displayname: str
    as_token: str
    hs_token: str
    database: str
    permissions: dict[str, str]
    relay: RelayConfig
    command_prefix: str
    credentials_key: str
    logging: dict[str, Any]
    connectors: dict[str, dict[str, Any]]
    ephemeral_events: bool = True
    backfill_limit: int = 50
    # Base URL remote users open for media links the bridge serves (default: as_address).
    public_address: str = ""
    media_link_lifetime_days: float = 30
    media_link_max_size_mb: float = 100
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    # Unknown and renamed keys, one line each: logged at start-up, never a stop.
    warnings: list[str] = field(default_factory=list)
    provisioning: ProvisioningConfig = field(default_factory=ProvisioningConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    double_puppet: DoublePuppetConfig = field(default_factory=DoublePuppetConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)

    @property
    def bot_mxid(self) -> str:
        return f"@{self.bot_username}:{self.domain}"

    def permission_of(self, user_id: str) -> str | None:
        """Most specific entry wins: the user id, then their server name, then ``*``."""
        if user_id in self.permissions:
            return self.permissions[user_id]
        server = user_id.split(":", 1)[1] if ":" in user_id else ""
        if server in self.permissions:
            return self.permissions[server]
        return self.permissions.get("*")


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def load_document(path: Path) -> Any:
    """The raw round-trip document (comments kept) for rewriting tokens into it."""
    try:
        with path.open(encoding="utf-8") as f:
            doc = _yaml().load(f)
    except FileNotFoundError as e:
        raise ConfigError("", f"config file {path} does not exist") from e
    except (YAMLError, UnicodeDecodeError) as e:
        problem = str(e).replace("\n", " ")
        raise ConfigError("", f"{path} is not valid YAML: {problem}") from e
    if not isinstance(doc, Mapping):
        raise ConfigError("", f"{path} must hold a mapping at the top level")
    return doc


def save_document(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        _yaml().dump(doc, f)
    tmp.replace(path)


class _Reader:
    """Typed access to a nested mapping that remembers which keys were read, so unknown keys
    can be reported."""

    def __init__(self, data: Mapping[str, Any], prefix: str, warnings: list[str]) -> None:
        self.data = data
        self.prefix = prefix
        self.seen: set[str] = set()
        self.warnings = warnings

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, typ: type | tuple[type, ...], default: Any = ...) -> Any:
        self.seen.add(name)
        if name not in self.data or self.data[name] is None:
            if default is ...:
                raise ConfigError(self.key(name), "missing")
            return default
        value = self.data[name]
        if typ is int and isinstance(value, bool):
            raise ConfigError(self.key(name), "must be an integer")
        if not isinstance(value, typ):
            names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            names = names.replace("str", "a string").replace("int", "an integer")
            names = names.replace("bool", "true or false").replace("dict", "a mapping")
            raise ConfigError(self.key(name), f"must be {names}, not {value!r}")
        return value

    def section(self, name: str, required: bool = True) -> _Reader:
        value = self.get(name, dict, ... if required else {})
        return _Reader(value, self.key(name), self.warnings)

    def finish(self) -> None:
        """Every key was read: the ones left are unknown (a warning, with the nearest key)."""
        for name in self.data:
            if name not in self.seen:
                hint = suggestion(str(name), self.seen)
                self.warnings.append(f"{self.key(str(name))}: unknown key, ignored{hint}")


def _url(r: _Reader, name: str, default: Any = ...) -> str:
    value = r.get(name, str, default)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(r.key(name), f"must be an http(s) URL, not {value!r}")
    try:
        parts.port  # noqa: B018 - raises on an invalid port
    except ValueError as e:
        raise ConfigError(r.key(name), f"invalid port in {value!r}") from e
    return value.rstrip("/")


def database_url(value: str, config_dir: Path) -> str:
    """The config's database URL in the form mautrix.util.async_db reads.

    SQLite: ``sqlite:relative/path.db`` (beside the config), ``sqlite:/abs``, ``sqlite:///abs``
    and SQLAlchemy's ``sqlite:////abs``, all absolute but the first. The path is taken
    literally (no percent-decoding) and handed on percent-encoded, because the database layer
    parses it as a URL: ``sqlite:///`` + an absolute path would otherwise read as a host.
    PostgreSQL: ``postgres://`` or ``postgresql://`` URLs, passed on as written.
    Raises ValueError saying what is wrong."""
    scheme, colon, rest = value.partition(":")
    scheme = scheme.lower()
    if colon and scheme in ("sqlite", "sqlite3"):
        return _sqlite_url(rest, config_dir)
    if colon and scheme in ("postgres", "postgresql"):
        return _postgres_url(value)
    raise ValueError(
        f"must be sqlite:path/to/file.db or postgres://user:password@host/db, not {value!r}"
    )


def _sqlite_url(rest: str, config_dir: Path) -> str:
    if rest.startswith("//"):
        authority, slash, tail = rest[2:].partition("/")
        if authority not in ("", "localhost"):
            raise ValueError(
                f"a SQLite URL names no host ({authority!r}): write sqlite:///absolute/path.db"
                " or sqlite:relative/path.db"
            )
        path = Path("/" + tail.lstrip("/")) if slash and tail.strip("/") else None
    else:
        path = config_dir / rest if rest.strip("/") else None
    if path is None:
        raise ValueError("names no database file: write sqlite:path/to/file.db")
    return str(URL.build(scheme="sqlite", path=str(path)))


def _postgres_url(value: str) -> str:
    try:
        url = URL(value)
        url.port  # noqa: B018 - raises on an invalid port
    except ValueError as e:
        raise ValueError(f"{value.split('@')[-1]!r} is not a valid URL: {e}") from e
    if not (url.host or url.query.get("host")):
        raise ValueError("a PostgreSQL URL needs a host: postgres://user:password@host/db")
    if not url.path.strip("/"):
        raise ValueError("a PostgreSQL URL needs a database name: postgres://user@host/db")
    return value


def parse(doc: Mapping[str, Any], path: Path) -> BridgeConfig:
    doc = copy.deepcopy(doc)
    warnings = apply_renames(doc)
    root = _Reader(doc, "", warnings)
    hs = root.section("homeserver")
    hs_address = _url(hs, "address")
    domain = hs.get("domain", str)
    if not _SERVER_NAME.match(domain):
        raise ConfigError("homeserver.domain", f"{domain!r} is not a server name")
    hs.finish()

    asv = root.section("appservice")
    as_address = _url(asv, "address")
    public_address = _url(asv, "public_address", as_address)
    hostname = asv.get("hostname", str, "127.0.0.1")
    port = asv.get("port", int)
    if not 0 < port < 65536:
        raise ConfigError("appservice.port", f"{port} is not a TCP port")
    appservice_id = asv.get("id", str, "mimi-bridge")
    bot_username = asv.get("bot_username", str, "mimibot")
    if not _LOCALPART.match(bot_username):
        raise ConfigError("appservice.bot_username", f"{bot_username!r} is not a valid localpart")
    bot_displayname = asv.get("bot_displayname", str, "mimi-bridge bot")
    as_token = asv.get("as_token", str, GENERATE)
    hs_token = asv.get("hs_token", str, GENERATE)
    ephemeral = asv.get("ephemeral_events", bool, True)
    db_value = asv.get("database", str, "sqlite:mimi-bridge.db")
    try:
        database = database_url(db_value, path.parent.resolve())
    except ValueError as e:
        raise ConfigError("appservice.database", str(e)) from e
    asv.finish()

    br = root.section("bridge", required=False)
    perms_raw = br.get("permissions", dict, {"*": "relay"})
    permissions: dict[str, str] = {}
    for who, level in perms_raw.items():
        key = f"bridge.permissions.{who}"
        if level not in PERMISSION_LEVELS:
            raise ConfigError(key, f"must be one of {', '.join(PERMISSION_LEVELS)}, not {level!r}")
        who = str(who)
        if who != "*" and not who.startswith("@") and not _SERVER_NAME.match(who):
            raise ConfigError(key, "must be a user id, a server name or *")
        permissions[who] = str(level)
    relay_r = br.section("relay", required=False)
    relay = RelayConfig(
        enabled=relay_r.get("enabled", bool, True),
        message_format=relay_r.get("message_format", str, "<{displayname}> {message}"),
        emote_format=relay_r.get("emote_format", str, "* {displayname} {message}"),
    )
    for name in ("message_format", "emote_format"):
        fmt = getattr(relay, name)
        try:
            fmt.format(displayname="", user_id="", message="")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"bridge.relay.{name}", f"invalid template: {e}") from e
    relay_r.finish()
    command_prefix = br.get("command_prefix", str, "!mimi")
    credentials_key = br.get("credentials_key", str, GENERATE)
    backfill_limit = br.get("backfill_limit", int, 50)
    if backfill_limit < 0:
        raise ConfigError("bridge.backfill_limit", "must be 0 (off) or more")
    links = br.section("media_links", required=False)
    link_days = links.get("lifetime_days", (int, float), 30)
    link_mb = links.get("max_size_mb", (int, float), 100)
    for key, value in (("lifetime_days", link_days), ("max_size_mb", link_mb)):
        if value < 0:
            raise ConfigError(f"bridge.media_links.{key}", "must be 0 (no limit) or more")
    links.finish()
    enc_r = br.section("encryption", required=False)
    encryption = EncryptionConfig(
        allow=enc_r.get("allow", bool, False),
        default=enc_r.get("default", bool, False),
        require=enc_r.get("require", bool, False),
    )
    for name in ("default", "require"):
        if getattr(encryption, name) and not encryption.allow:
            raise ConfigError(f"bridge.encryption.{name}", "needs bridge.encryption.allow: true")
    enc_r.finish()
    dp_r = br.section("double_puppet", required=False)
    double_puppet = DoublePuppetConfig(
        as_token=dp_r.get("as_token", str, None) or None,
        allow_login=dp_r.get("allow_login", bool, True),
    )
    dp_r.finish()
    br.finish()

    provisioning = _provisioning(root.section("provisioning", required=False))
    metrics = _metrics(root.section("metrics", required=False), port)
    scale = _scale(root.section("scale", required=False), database)
    log_cfg = root.get("logging", dict, {"level": "INFO"})
    connectors_r = root.get("connectors", dict, {})
    connectors = {str(k): dict(v or {}) for k, v in connectors_r.items()}
    for name, section in connectors_r.items():
        if section is not None and not isinstance(section, Mapping):
            raise ConfigError(f"connectors.{name}", "must be a mapping")
    root.finish()
    warnings += _connector_warnings(doc)
    return BridgeConfig(
        path=path,
        hs_address=hs_address,
        domain=domain,
        as_address=as_address,
        hostname=hostname,
        port=port,
        appservice_id=appservice_id,
        bot_username=bot_username,
        bot_displayname=bot_displayname,
        as_token=as_token,
        hs_token=hs_token,
        database=database,
        permissions=permissions,
        relay=relay,
        command_prefix=command_prefix,
        credentials_key=credentials_key,
        logging=dict(log_cfg),
        connectors=connectors,
        ephemeral_events=ephemeral,
        backfill_limit=backfill_limit,
        public_address=public_address,
        media_link_lifetime_days=link_days,
        media_link_max_size_mb=link_mb,
        encryption=encryption,
        warnings=warnings,
        provisioning=provisioning,
        metrics=metrics,
        double_puppet=double_puppet,
        scale=scale,
    )


def _connector_warnings(doc: Mapping[str, Any]) -> list[str]:
    try:
        example_file = example_path()
        text = example_file.read_text(encoding="utf-8")
        example = YAML(typ="safe").load(text)
    except (OSError, YAMLError):
        return []  # no example to compare with: the connectors' own checks still run
    return connector_warnings(doc, example, text)


def _provisioning(r: _Reader) -> ProvisioningConfig:
    prefix = r.get("prefix", str, "/_matrix/provision").rstrip("/")
    if not _PREFIX.match(prefix):
        raise ConfigError(
            r.key("prefix"), f"must be a URL path like /_matrix/provision, not {prefix!r}"
        )
    if prefix == "/_matrix/app" or prefix.startswith(("/_matrix/app/", "/_mimi/")):
        raise ConfigError(r.key("prefix"), f"{prefix} is taken by the appservice API")
    secret = r.get("shared_secret", str, GENERATE)
    if secret != GENERATE and len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(
            r.key("shared_secret"),
            f"must be at least {MIN_SECRET_LENGTH} characters (or generate, for -g)",
        )
    cfg = ProvisioningConfig(r.get("enabled", bool, True), prefix, secret)
    r.finish()
    return cfg


def _metrics(r: _Reader, as_port: int) -> MetricsConfig:
    enabled = r.get("enabled", bool, False)
    listen = r.get("listen", str, "127.0.0.1:9108")
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(r.key("listen"), f"must be host:port, not {listen!r}")
    port = int(port_text)
    if enabled and port == as_port:
        # Scrapers must not reach the appservice API, nor the homeserver the metrics.
        raise ConfigError(r.key("listen"), f"port {port} is the appservice port; pick another")
    r.finish()
    return MetricsConfig(enabled, host, port)


def _scale(r: _Reader, database: str) -> ScaleConfig:
    url = r.get("nats_url", str, None) or None
    if url is not None and not url.startswith(("nats://", "tls://")):
        raise ConfigError(r.key("nats_url"), f"must be a nats:// or tls:// URL, not {url!r}")
    if url is not None and database.startswith("sqlite"):
        raise ConfigError(
            r.key("nats_url"),
            "scale-out mode needs PostgreSQL (appservice.database: postgres://...), not SQLite",
        )
    numbers = {}
    for key, default in (
        ("request_timeout_s", 30.0),
        ("unowned_notice_s", 60.0),
        ("op_dedup_s", 600.0),
        ("lease_ttl_s", 15.0),
        ("lease_renew_s", 5.0),
        ("lease_claims_per_s", 10.0),
    ):
        value = float(r.get(key, (int, float), default))
        if value <= 0:
            raise ConfigError(r.key(key), "must be more than 0")
        numbers[key] = value
    cfg = ScaleConfig(url, r.get("worker_id", str, None) or None, **numbers)
    r.finish()
    return cfg


def load(path: Path) -> BridgeConfig:
    return parse(load_document(path), path)


def require_tokens(cfg: BridgeConfig) -> None:
    """Running needs real tokens; ``-g`` generates them."""
    for key, value in (
        ("appservice.as_token", cfg.as_token),
        ("appservice.hs_token", cfg.hs_token),
        ("bridge.credentials_key", cfg.credentials_key),
        ("bridge.double_puppet.as_token", cfg.double_puppet.as_token),
    ):
        if value == GENERATE:
            raise ConfigError(
                key, "not generated yet: run mimi-bridge -g to write the registration"
            )


def new_token() -> str:
    return secrets.token_urlsafe(48)
