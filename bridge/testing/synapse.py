"""A real Synapse homeserver on loopback for tests, and a small Matrix client for test users.

:func:`start_synapse` runs ``python -m synapse.app.homeserver`` (Synapse is a test extra, so
it is installed in the same environment as the tests) with a generated config: SQLite, one
HTTP listener on a free 127.0.0.1 port (client API and OpenID userinfo), no federation, every
``rc_*`` rate limit effectively off, presence on, URL previews off, authenticated media on, the
appservice encryption extensions (MSC2409 to-device, MSC3202) on. Users are registered through
the shared-secret admin API (synchronously, with urllib, so plain fixtures can call it).

:class:`MatrixClient` is an aiohttp client for tests acting as a human Matrix user.
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import hashlib
import hmac
import itertools
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from .ports import free_port

REGISTRATION_SHARED_SECRET = "mimi-test-registration-secret"
START_TIMEOUT = 60.0

_UNLIMITED = {"per_second": 100000, "burst_count": 1000000}

#: Every client-side rate limit Synapse reads, set so high that tests never hit one.
RATE_LIMITS_OFF: dict[str, Any] = {
    "rc_message": _UNLIMITED,
    "rc_registration": _UNLIMITED,
    "rc_registration_token_validity": _UNLIMITED,
    "rc_login": {
        "address": _UNLIMITED,
        "account": _UNLIMITED,
        "failed_attempts": _UNLIMITED,
    },
    "rc_admin_redaction": _UNLIMITED,
    "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
    "rc_joins_per_room": _UNLIMITED,
    "rc_3pid_validation": _UNLIMITED,
    "rc_invites": {
        "per_room": _UNLIMITED,
        "per_user": _UNLIMITED,
        "per_issuer": _UNLIMITED,
    },
    "rc_third_party_invite": _UNLIMITED,
    "rc_media_create": _UNLIMITED,
    "rc_presence": {"per_user": _UNLIMITED},
    "rc_delayed_event_mgmt": _UNLIMITED,
    "rc_room_creation": _UNLIMITED,
    "rc_reports": _UNLIMITED,
    "rc_user_directory": _UNLIMITED,
    "rc_profile": _UNLIMITED,
    "rc_key_requests": _UNLIMITED,
}


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({path}: {exc})"


class SynapseServer:
    """A Synapse process and its files. Create it with :func:`start_synapse`."""

    def __init__(self, workdir: Path, server_name: str, port: int, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.server_name = server_name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.config = config
        self.config_path = workdir / "homeserver.yaml"
        #: Synapse's own log (the Python logging file handler).
        self.log_path = workdir / "homeserver.log"
        #: Anything the process wrote to stdout/stderr (tracebacks before logging is set up).
        self.stdout_path = workdir / "synapse.stdout.log"
        self.registration_shared_secret = REGISTRATION_SHARED_SECRET
        self.process: subprocess.Popen[bytes] | None = None
        #: Seconds the last start took until /_matrix/client/versions answered.
        self.last_start_seconds: float | None = None

    # -- process lifecycle ------------------------------------------------------------------

    def _write_config(self) -> None:
        header = (
            "# Test homeserver for mimi-bridge, written by tests/harness/synapse.py.\n"
            "# JSON is valid YAML; loopback only, SQLite, no federation, no rate limits.\n"
        )
        self.config_path.write_text(header + json.dumps(self.config, indent=2) + "\n")
        log_config = {
            "version": 1,
            "formatters": {
                "precise": {
                    "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                    "%(request)s - %(message)s"
                }
            },
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "precise",
                    "filename": str(self.log_path),
                    "encoding": "utf8",
                }
            },
            "loggers": {
                "synapse.storage.SQL": {"level": "WARNING"},
                "twisted": {"level": "WARNING"},
            },
            "root": {"level": "INFO", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }
        (self.workdir / "log.config").write_text(json.dumps(log_config, indent=2) + "\n")

    def _synapse_cmd(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path), *extra]

    def _generate_keys(self) -> None:
        """Create the signing key if missing.

        Uses signedjson (a Synapse dependency) in-process, which writes the same file as
        ``synapse.app.homeserver --generate-keys`` without a second ~1.5 s interpreter start;
        falls back to that command if signedjson cannot be imported.
        """
        key_path = Path(self.config["signing_key_path"])
        if key_path.exists():
            return
        try:
            from signedjson.key import generate_signing_key, write_signing_keys
        except ImportError:
            pass
        else:
            with open(key_path, "w") as key_file:
                write_signing_keys(key_file, [generate_signing_key("a_test")])
            return
        result = subprocess.run(
            self._synapse_cmd("--generate-keys"),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            timeout=120,
            check=False,
        )
        if result.returncode != 0 or not Path(self.config["signing_key_path"]).exists():
            raise RuntimeError(
                f"synapse --generate-keys failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the process and wait until the client API answers."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("Synapse is already running")
        started = time.monotonic()
        with open(self.stdout_path, "ab") as out:
            self.process = subprocess.Popen(
                self._synapse_cmd(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.last_start_seconds = time.monotonic() - started

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        url = f"{self.url}/_matrix/client/versions"
        while True:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"Synapse exited with code {code} during startup.\n"
                    f"--- {self.stdout_path} (tail) ---\n{_tail(self.stdout_path)}\n"
                    f"--- {self.log_path} (tail) ---\n{_tail(self.log_path)}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"Synapse did not answer {url} within {timeout} s.\n"
                    f"--- {self.log_path} (tail) ---\n{_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, wait up to 10 s, then SIGKILL. Idempotent."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.process = None

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop and start again with the same config, port and database."""
        self.stop()
        self.start(timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def __enter__(self) -> SynapseServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SynapseServer {self.server_name} {self.url} pid={self.pid}>"

    # -- users ------------------------------------------------------------------------------

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    def _http(
        self, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None
    ) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                result: dict[str, Any] = json.loads(resp.read() or b"{}")
                return result
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"{method} {path} -> {exc.code} {detail}") from None

    def register_user(self, localpart: str, password: str, admin: bool = False) -> str:
        """Register a user through the shared-secret admin API; return the full user ID."""
        path = "/_synapse/admin/v1/register"
        nonce = self._http("GET", path)["nonce"]
        mac = hmac.new(self.registration_shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(
            b"\x00".join(
                [
                    nonce.encode(),
                    localpart.encode(),
                    password.encode(),
                    b"admin" if admin else b"notadmin",
                ]
            )
        )
        result = self._http(
            "POST",
            path,
            {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            },
        )
        return str(result["user_id"])

    def login(self, localpart: str, password: str) -> str:
        """Password login; return a new access token."""
        result = self._http(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": localpart},
                "password": password,
            },
        )
        return str(result["access_token"])

    def new_client(
        self, localpart: str, password: str | None = None, admin: bool = False
    ) -> MatrixClient:
        """Register ``localpart``, log in and return a :class:`MatrixClient` for it.

        The client opens its HTTP session lazily, so this can be called outside an event loop.
        """
        password = password or f"{localpart}-password"
        user_id = self.register_user(localpart, password, admin=admin)
        return MatrixClient(self.url, self.login(localpart, password), user_id)


def default_config(
    workdir: Path, server_name: str, port: int, appservice_files: Iterable[Path]
) -> dict[str, Any]:
    """The homeserver.yaml contents :func:`start_synapse` uses (before ``extra_config``)."""
    return {
        "server_name": server_name,
        "public_baseurl": f"http://127.0.0.1:{port}/",
        "pid_file": str(workdir / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                # openid: the bridge's provisioning API checks users' OpenID tokens here.
                "resources": [{"names": ["client", "openid"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(workdir / "homeserver.db")}},
        "log_config": str(workdir / "log.config"),
        "media_store_path": str(workdir / "media_store"),
        "signing_key_path": str(workdir / f"{server_name}.signing.key"),
        "registration_shared_secret": REGISTRATION_SHARED_SECRET,
        "macaroon_secret_key": "mimi-test-macaroon-secret",
        "form_secret": "mimi-test-form-secret",
        "report_stats": False,
        "enable_metrics": False,
        "enable_registration": False,
        # Cheap password hashing: registration and login are on every test's path.
        "bcrypt_rounds": 4,
        # No federation and no outbound traffic.
        "federation_domain_whitelist": [],
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "url_preview_enabled": False,
        "enable_authenticated_media": True,
        # The bridge routes presence, so it stays on.
        "presence": {"enabled": True},
        # Let the bridge publish portals in the room directory.
        "room_list_publication_rules": [{"action": "allow"}],
        "app_service_config_files": [str(Path(p).resolve()) for p in appservice_files],
        # End-to-bridge encryption: to-device messages, device lists and one-time-key counts
        # pushed in appservice transactions.
        "experimental_features": {
            "msc2409_to_device_messages_enabled": True,
            "msc3202_transaction_extensions": True,
        },
        **RATE_LIMITS_OFF,
    }


def start_synapse(
    workdir: Path,
    appservice_files: list[Path],
    server_name: str = "localhost",
    *,
    extra_config: dict[str, Any] | None = None,
    timeout: float = START_TIMEOUT,
    port: int | None = None,
) -> SynapseServer:
    """Write a config into ``workdir``, generate a signing key, start Synapse and wait for it.

    ``appservice_files`` are registration files (they must exist now; Synapse reads them at
    startup). ``extra_config`` is deep-merged over the default config. ``port`` is the client
    API's port (default: a free one), for a bridge config written before the start. Raises
    RuntimeError with the tail of the log if Synapse dies or does not answer within ``timeout``
    seconds.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for path in appservice_files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"appservice registration file {path} does not exist")
    port = port or free_port()
    config = default_config(workdir, server_name, port, appservice_files)
    if extra_config:
        config = _deep_merge(config, extra_config)
    server = SynapseServer(workdir, server_name, port, config)
    server._write_config()
    server._generate_keys()
    server.start(timeout)
    atexit.register(server.stop)
    return server


# -- Matrix client for tests ------------------------------------------------------------------


class MatrixRequestError(Exception):
    """A client-server API call answered with an HTTP error."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.errcode = body.get("errcode") if isinstance(body, dict) else None
        super().__init__(f"{method} {path} -> {status} {body}")


Event = dict[str, Any]

_txn_counter = itertools.count()


def _q(value: str) -> str:
    return quote(value, safe="")


def _summary(event: Event) -> str:
    content = event.get("content") or {}
    detail = content.get("body", content.get("membership", ""))
    return f"{event.get('type')} from {event.get('sender')}: {str(detail)[:80]!r}"


class MatrixClient:
    """An aiohttp client acting as one Matrix user (``url``, access ``token``, ``user_id``).

    Room arguments accept room IDs; :meth:`join` also accepts aliases. Methods raise
    :class:`MatrixRequestError` on HTTP errors; :meth:`request` returns the raw status instead.
    """

    def __init__(
        self,
        url: str,
        token: str,
        user_id: str,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.user_id = user_id
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> MatrixClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
            self._own_session = True
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._own_session and not self._session.closed:
            await self._session.close()
        self._session = None

    # -- raw requests -----------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> tuple[int, Any]:
        """Send a request; ``path`` starts with ``/_matrix/...``. Returns (status, parsed body).

        The body is parsed JSON when the response is JSON, else the text.
        """
        headers = {"Authorization": f"Bearer {self.token}"}
        query = {k: str(v) for k, v in (params or {}).items()}
        async with self._get_session().request(
            method, self.url + path, json=json, params=query, headers=headers
        ) as resp:
            text = await resp.text()
            try:
                body: Any = _json_loads(text) if text else {}
            except ValueError:
                body = text
            return resp.status, body

    async def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """Like :meth:`request`, but raise :class:`MatrixRequestError` on status >= 400."""
        status, body = await self.request(method, path, json=json, params=params)
        if status >= 400:
            raise MatrixRequestError(method, path, status, body)
        return body

    async def _client(self, method: str, path: str, json: Any = None, **params: Any) -> Any:
        return await self.call(method, "/_matrix/client/v3" + path, json=json, params=params)

    @staticmethod
    def _txn() -> str:
        return f"{uuid.uuid4().hex}-{next(_txn_counter)}"

    # -- account ----------------------------------------------------------------------------

    async def whoami(self) -> str:
        return str((await self._client("GET", "/account/whoami"))["user_id"])

    async def set_displayname(self, displayname: str) -> None:
        await self._client(
            "PUT", f"/profile/{_q(self.user_id)}/displayname", {"displayname": displayname}
        )

    async def get_profile(self, user_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._client("GET", f"/profile/{_q(user_id)}")
        return result

    async def set_presence(self, presence: str, status_msg: str | None = None) -> None:
        body: dict[str, Any] = {"presence": presence}
        if status_msg is not None:
            body["status_msg"] = status_msg
        await self._client("PUT", f"/presence/{_q(self.user_id)}/status", body)

    async def get_presence(self, user_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._client("GET", f"/presence/{_q(user_id)}/status")
        return result

    # -- rooms and membership ---------------------------------------------------------------

    async def create_room(self, **body: Any) -> str:
        """POST /createRoom with ``body`` as the request (e.g. ``invite=[...]``, ``name=...``)."""
        return str((await self._client("POST", "/createRoom", body))["room_id"])

    async def join(self, room_id_or_alias: str) -> str:
        return str((await self._client("POST", f"/join/{_q(room_id_or_alias)}", {}))["room_id"])

    async def invite(self, room_id: str, user_id: str) -> None:
        await self._client("POST", f"/rooms/{_q(room_id)}/invite", {"user_id": user_id})

    async def leave(self, room_id: str) -> None:
        await self._client("POST", f"/rooms/{_q(room_id)}/leave", {})

    async def kick(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        await self._membership_action("kick", room_id, user_id, reason)

    async def ban(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        await self._membership_action("ban", room_id, user_id, reason)

    async def unban(self, room_id: str, user_id: str) -> None:
        await self._membership_action("unban", room_id, user_id, None)

    async def _membership_action(
        self, action: str, room_id: str, user_id: str, reason: str | None
    ) -> None:
        body: dict[str, Any] = {"user_id": user_id}
        if reason is not None:
            body["reason"] = reason
        await self._client("POST", f"/rooms/{_q(room_id)}/{action}", body)

    async def joined_members(self, room_id: str) -> dict[str, dict[str, Any]]:
        """``{user_id: {"display_name": ..., "avatar_url": ...}}`` of the joined members."""
        result = await self._client("GET", f"/rooms/{_q(room_id)}/joined_members")
        return dict(result["joined"])

    async def joined_rooms(self) -> list[str]:
        return list((await self._client("GET", "/joined_rooms"))["joined_rooms"])

    async def resolve_alias(self, alias: str) -> str:
        return str((await self._client("GET", f"/directory/room/{_q(alias)}"))["room_id"])

    # -- sending ----------------------------------------------------------------------------

    async def send_event(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        path = f"/rooms/{_q(room_id)}/send/{_q(event_type)}/{self._txn()}"
        return str((await self._client("PUT", path, content))["event_id"])

    async def send_text(self, room_id: str, body: str, **extra: Any) -> str:
        """Send an ``m.text`` message; ``extra`` keys are merged into the content."""
        return await self.send_event(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body, **extra}
        )

    async def send_state(
        self, room_id: str, event_type: str, state_key: str, content: dict[str, Any]
    ) -> str:
        path = f"/rooms/{_q(room_id)}/state/{_q(event_type)}/{_q(state_key)}"
        return str((await self._client("PUT", path, content))["event_id"])

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        body = {"reason": reason} if reason is not None else {}
        path = f"/rooms/{_q(room_id)}/redact/{_q(event_id)}/{self._txn()}"
        return str((await self._client("PUT", path, body))["event_id"])

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        return await self.send_event(
            room_id,
            "m.reaction",
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}},
        )

    async def edit(self, room_id: str, event_id: str, new_body: str) -> str:
        return await self.send_event(
            room_id,
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": f"* {new_body}",
                "m.new_content": {"msgtype": "m.text", "body": new_body},
                "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
            },
        )

    async def reply(self, room_id: str, event_id: str, body: str) -> str:
        return await self.send_text(
            room_id, body, **{"m.relates_to": {"m.in_reply_to": {"event_id": event_id}}}
        )

    async def typing(self, room_id: str, typing: bool, timeout_ms: int = 30000) -> None:
        body: dict[str, Any] = {"typing": typing}
        if typing:
            body["timeout"] = timeout_ms
        await self._client("PUT", f"/rooms/{_q(room_id)}/typing/{_q(self.user_id)}", body)

    async def read_receipt(self, room_id: str, event_id: str) -> None:
        await self._client("POST", f"/rooms/{_q(room_id)}/receipt/m.read/{_q(event_id)}", {})

    # -- reading ----------------------------------------------------------------------------

    async def get_state(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None:
        """Content of one state event, or None if the room has no such state."""
        path = f"/_matrix/client/v3/rooms/{_q(room_id)}/state/{_q(event_type)}/{_q(state_key)}"
        status, body = await self.request("GET", path)
        if status == 404:
            return None
        if status >= 400:
            raise MatrixRequestError("GET", path, status, body)
        return dict(body)

    async def get_event(self, room_id: str, event_id: str) -> Event:
        return dict(await self._client("GET", f"/rooms/{_q(room_id)}/event/{_q(event_id)}"))

    async def messages(self, room_id: str, limit: int = 50) -> list[Event]:
        """The last ``limit`` timeline events of the room, oldest first."""
        result = await self._client("GET", f"/rooms/{_q(room_id)}/messages", dir="b", limit=limit)
        return list(reversed(result.get("chunk", [])))

    async def wait_for_event(
        self,
        room_id: str,
        predicate: Callable[[Event], bool],
        timeout: float = 15.0,  # noqa: ASYNC109 (polling deadline, part of the test API)
        limit: int = 100,
    ) -> Event:
        """Poll the room's recent timeline every 0.2 s until an event matches ``predicate``.

        Returns the oldest matching event among the last ``limit``. Raises TimeoutError (listing
        the events seen last) after ``timeout`` seconds.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        seen: list[Event] = []
        while True:
            seen = await self.messages(room_id, limit=limit)
            for event in seen:
                if predicate(event):
                    return event
            if asyncio.get_running_loop().time() >= deadline:
                recent = "\n  ".join(_summary(e) for e in seen[-15:])
                raise TimeoutError(
                    f"no matching event in {room_id} within {timeout} s; last events:\n  {recent}"
                )
            await asyncio.sleep(0.2)


def _json_loads(text: str) -> Any:
    return json.loads(text)


__all__ = [
    "RATE_LIMITS_OFF",
    "REGISTRATION_SHARED_SECRET",
    "MatrixClient",
    "MatrixRequestError",
    "SynapseServer",
    "default_config",
    "start_synapse",
]
