"""A throwaway Prosody XMPP server on loopback for the XMPP connector's tests.

``start_prosody(workdir, component_domain, component_secret)`` writes a config into its own
directory, picks free ports, and starts ``prosody -F`` in the foreground with:

* a VirtualHost ``localhost`` (c2s on plain TCP, SCRAM without TLS; loopback only) whose
  accounts keep a vCard-temp (XEP-0054, ``mod_vcard``: the XEP-0153 avatars) and PEP nodes
  (XEP-0163, ``mod_pep``: the XEP-0084 avatars),
* a MUC component ``conference.localhost`` with ``mod_muc_mam`` (XEP-0313 archives and
  XEP-0359 stanza ids) and ``mod_muc_moderation`` (XEP-0425 message moderation, from
  Debian's ``prosody-modules``), without room locking (new rooms are usable at once),
* an external component (XEP-0114) for ``component_domain`` with ``component_secret``,
* an XEP-0363 upload service ``upload.localhost`` (``mod_http_file_share``) whose files are
  served on a free loopback HTTP port (``http_url``).

Prosody refuses to run as root, so as root it runs as the packaged ``prosody`` user (the
child process drops privileges itself); its directory then lives under ``/tmp`` (pytest's
directories are mode 0700 and that user could not enter them) and the log is copied into
``workdir`` on :meth:`stop`.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .ports import free_port, port_is_open

INSTALL_HINT = "Prosody not found: apt-get install prosody"
# Community modules the MUC component loads, from Debian's prosody-modules (Prosody finds them
# in its plugin directory without any plugin_paths setting).
PLUGIN_DIR = Path("/usr/lib/prosody/modules")
COMMUNITY_MODULES = ("muc_moderation",)
MODULES_HINT = "Prosody module mod_{name} not found in {dir}: apt-get install prosody-modules"
PROSODY_USER = "prosody"
FANOUT_MODULE = (
    Path(__file__).resolve().parents[2] / "contrib" / "prosody" / "mod_muc_bridge_fanout.lua"
)
DOMAIN = "localhost"
MUC_DOMAIN = "conference.localhost"
UPLOAD_DOMAIN = "upload.localhost"

_CONFIG = """\
-- Loopback-only Prosody config written by tests/harness/prosody.py.
pidfile = {base!r} .. "/prosody.pid"
data_path = {base!r} .. "/data"
certificates = {base!r} .. "/certs"
log = {{
  {{ levels = {{ min = "{log_level}" }}, to = "file", filename = {base!r} .. "/prosody.log" }};
  {{ levels = {{ min = "error" }}, to = "console" }};
}}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s_port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ {component_port} }}
component_interface = "127.0.0.1"
http_ports = {{ {http_port} }}
http_interfaces = {{ "127.0.0.1" }}
https_ports = {{ }}
http_external_url = "http://127.0.0.1:{http_port}/"
http_default_host = "{upload_domain}"
modules_enabled = {{
  "roster"; "saslauth"; "disco"; "ping"; "presence"; "message"; "iq";
  "register"; "carbons"; "mam"; "vcard"; "pep";
}}
modules_disabled = {{ "s2s"; "tls"; "admin_shell"; "posix" }}
c2s_require_encryption = false
s2s_require_encryption = false
allow_unencrypted_plain_auth = true
allow_registration = true
registration_throttle_max = 1000
min_seconds_between_registrations = 0
authentication = "internal_hashed"
storage = "internal"
gc = {{ mode = "generational" }}
archive_expires_after = "never"
default_archive_policy = true
{extra_config}

VirtualHost "{domain}"

Component "{muc_domain}" "muc"
  modules_enabled = {{ "muc_mam"; "muc_moderation"{muc_extra_modules} }}
  muc_bridge_components = {{ "{component_domain}" }}
  restrict_room_creation = false
  muc_room_locking = false
  muc_log_by_default = true
  muc_log_all_rooms = true
  max_history_messages = 50

Component "{upload_domain}" "http_file_share"
  http_file_share_size_limit = 16 * 1024 * 1024
  http_file_share_daily_quota = 1024 * 1024 * 1024
  http_file_share_access = {{ "{domain}", "{component_domain}" }}

Component "{component_domain}"
  component_secret = {component_secret!r}
"""


def find_prosody() -> str:
    path = shutil.which("prosody") or (
        "/usr/bin/prosody" if Path("/usr/bin/prosody").exists() else None
    )
    if not path:
        raise RuntimeError(INSTALL_HINT)
    return path


def check_community_modules() -> None:
    """Prosody only logs a module it cannot find and runs on without it; fail here instead."""
    for name in COMMUNITY_MODULES:
        mod = f"mod_{name}"
        if not any((PLUGIN_DIR / p).is_file() for p in (f"{mod}/{mod}.lua", f"{mod}.lua")):
            raise RuntimeError(MODULES_HINT.format(name=name, dir=PLUGIN_DIR))


@dataclass
class ProsodyServer:
    host: str
    c2s_port: int
    component_port: int
    http_port: int
    domain: str
    muc_domain: str
    component_domain: str
    component_secret: str
    base: Path
    workdir: Path
    upload_domain: str = UPLOAD_DOMAIN
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _as_user: bool = field(default=False, repr=False)

    # --- process control ------------------------------------------------------------------

    def _popen_user(self) -> dict[str, object]:
        # Drop to the prosody user in the child itself (no runuser in between), so that
        # signals reach prosody directly.
        if self._as_user:
            return {"user": PROSODY_USER, "group": PROSODY_USER, "extra_groups": []}
        return {}

    def start(self, timeout: float = 20.0) -> None:
        prosody = find_prosody()
        log = open(self.base / "console.log", "ab")
        self._proc = subprocess.Popen(
            [prosody, "--config", str(self.base / "prosody.cfg.lua"), "-F"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            **self._popen_user(),  # type: ignore[call-overload]
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"prosody exited with {self._proc.returncode}: {self.console_log()[-2000:]}"
                )
            if all(port_is_open(self.host, p, 0.2) for p in self.ports):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"prosody did not listen within {timeout} s")
            time.sleep(0.03)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        # Wait until the ports are free again so a restart can bind them.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
            port_is_open(self.host, p, 0.1) for p in self.ports
        ):
            time.sleep(0.03)

    def stop(self) -> None:
        self._terminate()
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            for name in ("prosody.log", "console.log"):
                if (self.base / name).exists() and self.base != self.workdir:
                    shutil.copy(self.base / name, self.workdir / name)
        except OSError:
            pass

    def restart(self) -> None:
        """Stop and start again on the same ports (every connection drops)."""
        self._terminate()
        self.start()

    def kill_for(self, seconds: float) -> None:
        """Stop, wait ``seconds``, start again: an outage of a given length."""
        self._terminate()
        time.sleep(seconds)
        self.start()

    @property
    def ports(self) -> tuple[int, int, int]:
        return (self.c2s_port, self.component_port, self.http_port)

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP server (uploaded files are below it)."""
        return f"http://{self.host}:{self.http_port}/"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # --- helpers ------------------------------------------------------------------------

    def register_user(self, name: str, password: str) -> str:
        """Create ``name@domain`` and return its bare JID."""
        cmd = [
            "prosodyctl",
            "--config",
            str(self.base / "prosody.cfg.lua"),
            "register",
            name,
            self.domain,
            password,
        ]
        res = subprocess.run(
            cmd,
            capture_output=True,
            timeout=30,
            check=False,
            **self._popen_user(),  # type: ignore[call-overload]
        )
        if res.returncode != 0:
            raise RuntimeError(f"prosodyctl register failed: {res.stdout!r} {res.stderr!r}")
        return f"{name}@{self.domain}"

    def set_password(self, name: str, password: str) -> None:
        """Give ``name@domain`` a new password (the account is made again with it; clients
        logged in stay connected until they reconnect)."""
        cmd = ["prosodyctl", "--config", str(self.base / "prosody.cfg.lua")]
        res = subprocess.run(
            [*cmd, "deluser", f"{name}@{self.domain}"],
            capture_output=True,
            timeout=30,
            check=False,
            **self._popen_user(),  # type: ignore[call-overload]
        )
        if res.returncode != 0:
            raise RuntimeError(f"prosodyctl deluser failed: {res.stdout!r} {res.stderr!r}")
        self.register_user(name, password)

    def console_log(self) -> str:
        try:
            return (self.base / "console.log").read_text(errors="replace")
        except OSError:
            return ""

    def log_text(self) -> str:
        try:
            return (self.base / "prosody.log").read_text(errors="replace")
        except OSError:
            return ""


def start_prosody(
    workdir: str | os.PathLike[str],
    component_domain: str,
    component_secret: str,
    log_level: str = "debug",
    extra_config: str = "",
    bridge_fanout: bool = False,
) -> ProsodyServer:
    """Start a fresh Prosody; see the module docstring. Call ``stop()`` when done.
    ``log_level`` is the level of ``prosody.log`` (benchmarks want "warn"); ``extra_config``
    is Lua appended to the global section (later settings win). ``bridge_fanout`` loads the
    project's ``contrib/prosody/mod_muc_bridge_fanout.lua`` on the MUC for the component."""
    find_prosody()
    check_community_modules()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    as_user = os.geteuid() == 0
    if as_user:
        try:
            pw = pwd.getpwnam(PROSODY_USER)
        except KeyError as e:
            raise RuntimeError(INSTALL_HINT) from e
        base = Path(tempfile.mkdtemp(prefix="mimi-prosody-"))
        os.chmod(base, 0o755)
    else:
        base = workdir / "prosody"
        base.mkdir(parents=True, exist_ok=True)
    (base / "data").mkdir(exist_ok=True)
    (base / "certs").mkdir(exist_ok=True)
    muc_extra_modules = ""
    if bridge_fanout:
        # A copy Prosody's user can read (the repository may sit in a private directory).
        (base / "plugins").mkdir(exist_ok=True)
        shutil.copy(FANOUT_MODULE, base / "plugins" / FANOUT_MODULE.name)
        extra_config += f'\nplugin_paths = {{ "{base}/plugins" }}\n'
        muc_extra_modules = '; "muc_bridge_fanout"'
    server = ProsodyServer(
        host="127.0.0.1",
        c2s_port=free_port(),
        component_port=free_port(),
        http_port=free_port(),
        domain=DOMAIN,
        muc_domain=MUC_DOMAIN,
        component_domain=component_domain,
        component_secret=component_secret,
        base=base,
        workdir=workdir,
        _as_user=as_user,
    )
    (base / "prosody.cfg.lua").write_text(
        _CONFIG.format(
            base=str(base),
            c2s_port=server.c2s_port,
            component_port=server.component_port,
            http_port=server.http_port,
            domain=DOMAIN,
            upload_domain=UPLOAD_DOMAIN,
            muc_domain=MUC_DOMAIN,
            component_domain=component_domain,
            component_secret=component_secret,
            log_level=log_level,
            extra_config=extra_config,
            muc_extra_modules=muc_extra_modules,
        )
    )
    if as_user:
        for root, dirs, files in os.walk(base):
            for name in [*dirs, *files]:
                os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    server.start()

    def _cleanup() -> None:
        server.stop()
        if as_user:
            shutil.rmtree(base, ignore_errors=True)

    atexit.register(_cleanup)
    return server
