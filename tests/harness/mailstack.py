"""A throwaway mail stack on loopback for the Delta Chat connector's tests: postfix (SMTP with
dovecot SASL, delivery over LMTP) and dovecot (IMAP, LMTP, passwd-file users).

``start_mailstack(users)`` writes both configurations into one private directory, picks free
ports, and starts ``postfix -c <dir>`` and ``dovecot -c <conf>``: nothing under ``/etc`` or
``/var`` is read for configuration or changed, so the system's own postfix and dovecot (if
any) are untouched and several stacks can run side by side. Every address is in the virtual
domain ``example.test``.

Postfix refuses a recipient of that domain without a mailbox at ``RCPT TO`` (550 5.1.1), as a
real provider does, so a sender learns it at once rather than from a bounce later: a policy
service (a small shell script run by postfix's ``spawn``) looks each recipient up in the list of
mailboxes, which :meth:`MailStack.add_user` and :meth:`MailStack.remove_user` rewrite while the
stack runs.

The directory lives under ``/tmp`` with mode 0755 (dovecot delivers as ``nobody``, who could
not enter pytest's 0700 directories) and is removed on :meth:`MailStack.stop`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .ports import free_port, port_is_open

INSTALL_HINT = "postfix or dovecot not found: apt-get install postfix dovecot-imapd dovecot-lmtpd"
DOMAIN = "example.test"
MAIL_UID = 65534  # nobody: dovecot refuses root, the maildirs belong to this user

_MAIN_CF = """\
# Written by tests/harness/mailstack.py: a loopback-only postfix instance.
compatibility_level = 3.6
config_directory = {base}/postfix
queue_directory = {base}/spool
data_directory = {base}/postfix-data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-mimi-test
maillog_file = {base}/postfix.log
maillog_file_prefixes = {base}
myhostname = mail.{domain}
mydomain = {domain}
myorigin = {domain}
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
virtual_mailbox_domains = {domain}
virtual_transport = lmtp:inet:127.0.0.1:{lmtp_port}
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_sasl_auth_enable = yes
smtpd_tls_security_level = none
smtp_tls_security_level = none
smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated defer_unauth_destination
smtpd_recipient_restrictions = check_policy_service unix:private/rcptpolicy
rcptpolicy_time_limit = 3600s
message_size_limit = {message_size_limit}
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 10s
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
default_process_limit = 50
biff = no
"""

_MASTER_CF = """\
# Written by tests/harness/mailstack.py (no chroot: the queue is a private directory).
127.0.0.1:{smtp_port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
rcptpolicy unix -       n       n       -       0       spawn
  user=nobody argv=/bin/sh {base}/rcptpolicy.sh
"""

# Postfix policy delegation (one request: attribute lines, then an empty line): a recipient in
# the domain must be a line of the mailbox list, read afresh for each request. Postfix puts
# "<address>: Recipient address rejected: " before the text of the refusal.
_RCPT_POLICY = """\
#!/bin/sh
# Written by tests/harness/mailstack.py: refuse recipients of {domain} that have no mailbox.
rcpt=
while IFS= read -r line; do
  case "$line" in
    recipient=*) rcpt=${{line#recipient=}} ;;
    "")
      case "$rcpt" in
        *@{domain})
          if grep -qixF -e "$rcpt" {base}/mailboxes; then
            printf 'action=DUNNO\\n\\n'
          else
            printf 'action=550 5.1.1 no such mailbox\\n\\n'
          fi ;;
        *) printf 'action=DUNNO\\n\\n' ;;
      esac
      rcpt= ;;
  esac
done
"""

_DOVECOT_CONF = """\
# Written by tests/harness/mailstack.py: a loopback-only dovecot instance.
protocols = imap lmtp
listen = 127.0.0.1
base_dir = {base}/dovecot-run
state_dir = {base}/dovecot-state
instance_name = mimi-test-{imap_port}
log_path = {base}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 100
mail_location = maildir:{base}/vmail/%n/Maildir
mail_uid = {uid}
mail_gid = {uid}
mail_max_userip_connections = 200
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={uid} home={base}/vmail/%n
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  process_min_avail = 1
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp_port}
  }}
}}
service auth {{
  unix_listener {base}/spool/private/auth {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
protocol imap {{
  mail_max_userip_connections = 200
}}
"""


@dataclass
class MailStack:
    base: Path
    smtp_port: int
    imap_port: int
    lmtp_port: int
    users: dict[str, str] = field(default_factory=dict)  # address -> password
    running: bool = False
    _users_mtime: float = 0.0

    host = "127.0.0.1"

    def address(self, local: str) -> str:
        return f"{local}@{DOMAIN}"

    def add_user(self, local: str, password: str) -> str:
        """A new mailbox (dovecot rereads its passwd-file on each login)."""
        addr = self.address(local)
        self.users[addr] = password
        self._write_users()
        if self.running:
            self._wait_login(addr, password)
        return addr

    def remove_user(self, addr: str) -> None:
        """Delete a mailbox: postfix refuses mail for it from now on, dovecot its logins."""
        del self.users[addr]
        self._write_users()

    def _wait_login(self, addr: str, password: str, limit_s: float = 10.0) -> None:
        """Until SMTP AUTH (postfix asking dovecot) accepts the new mailbox."""
        deadline = time.monotonic() + limit_s
        while True:
            try:
                with smtplib.SMTP(self.host, self.smtp_port, timeout=5) as smtp:
                    smtp.login(addr, password)
                return
            except (smtplib.SMTPException, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def transport(self, addr: str) -> dict[str, object]:
        """Delta Chat ``EnteredLoginParam`` for a mailbox of this stack."""
        return {
            "addr": addr,
            "password": self.users[addr],
            "imapServer": self.host,
            "imapPort": self.imap_port,
            "imapSecurity": "plain",
            "imapUser": addr,
            "smtpServer": self.host,
            "smtpPort": self.smtp_port,
            "smtpSecurity": "plain",
            "smtpUser": addr,
            "smtpPassword": self.users[addr],
            "certificateChecks": "acceptInvalidCertificates",
        }

    def _write_users(self) -> None:
        """Replace the passwd-file atomically, with a modification time later than the last
        one: dovecot rereads it when the time changes, which a write in the same second
        would not show."""
        lines = [f"{a}:{{PLAIN}}{p}::::::\n" for a, p in self.users.items()]
        path = self.base / "users"
        tmp = self.base / "users.new"
        tmp.write_text("".join(lines))
        tmp.chmod(0o640)
        shutil.chown(tmp, group="dovecot")
        self._users_mtime = max(time.time(), self._users_mtime + 1)
        os.utime(tmp, (self._users_mtime, self._users_mtime))
        tmp.replace(path)
        # The mailbox list for postfix's recipient check (no passwords; readable by all).
        listing = self.base / "mailboxes.new"
        listing.write_text("".join(f"{a}\n" for a in self.users))
        listing.chmod(0o644)
        listing.replace(self.base / "mailboxes")

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        subprocess.run(
            ["dovecot", "-c", str(self.base / "dovecot.conf")],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # The master daemon inherits stdout/stderr: a pipe would never see EOF.
        with (self.base / "postfix-start.out").open("w") as out:
            result = subprocess.run(
                ["postfix", "-c", str(self.base / "postfix"), "start"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if result.returncode != 0:
            text = (self.base / "postfix-start.out").read_text()
            raise RuntimeError(f"postfix did not start: {text}{self._log_tail()}")
        deadline = time.monotonic() + 20
        for port in (self.smtp_port, self.imap_port, self.lmtp_port):
            while not port_is_open(self.host, port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mail stack port {port} not open{self._log_tail()}")
                time.sleep(0.05)
        self.running = True

    def stop(self, remove: bool = False) -> None:
        """Stop postfix and dovecot (the mailboxes stay unless ``remove``)."""
        if self.running:
            for cmd in (
                ["postfix", "-c", str(self.base / "postfix"), "stop"],
                ["doveadm", "-c", str(self.base / "dovecot.conf"), "stop"],
            ):
                subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            self._wait_closed()
            self.running = False
        if remove:
            shutil.rmtree(self.base, ignore_errors=True)

    def _wait_closed(self) -> None:
        deadline = time.monotonic() + 15
        pidfile = self.base / "dovecot-run" / "master.pid"
        while time.monotonic() < deadline:
            if not any(
                port_is_open(self.host, p) for p in (self.smtp_port, self.imap_port, self.lmtp_port)
            ):
                return
            time.sleep(0.05)
        # Stubborn processes: end the masters by their own pid files.
        for pid_path in (pidfile, self.base / "spool" / "pid" / "master.pid"):
            try:
                os.kill(int(pid_path.read_text().split()[0]), signal.SIGKILL)
            except (OSError, ValueError):
                pass

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def _log_tail(self) -> str:
        out = []
        for name in ("postfix.log", "dovecot.log"):
            path = self.base / name
            if path.exists():
                out.append(f"\n--- {name} ---\n" + "\n".join(path.read_text().splitlines()[-20:]))
        return "".join(out)

    def logs(self) -> str:
        return self._log_tail()


def _check_installed() -> None:
    for tool in ("postfix", "dovecot", "doveadm"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise RuntimeError(INSTALL_HINT)
    if not Path("/usr/lib/dovecot/lmtp").exists():
        raise RuntimeError(INSTALL_HINT)


def start_mailstack(
    users: dict[str, str] | None = None, message_size_limit: int = 30 * 1024 * 1024
) -> MailStack:
    """Start postfix and dovecot on free loopback ports. ``users``: local part -> password."""
    _check_installed()
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    base = Path(tempfile.mkdtemp(prefix="mimi-mailstack-"))
    base.chmod(0o755)
    stack = MailStack(base, free_port(), free_port(), free_port())
    for sub in ("postfix", "spool", "postfix-data", "dovecot-run", "dovecot-state", "vmail"):
        (base / sub).mkdir()
    shutil.chown(base / "vmail", MAIL_UID, MAIL_UID)
    shutil.chown(base / "postfix-data", "postfix")
    fmt = {
        "base": base,
        "domain": DOMAIN,
        "smtp_port": stack.smtp_port,
        "imap_port": stack.imap_port,
        "lmtp_port": stack.lmtp_port,
        "uid": MAIL_UID,
        "message_size_limit": message_size_limit,
    }
    (base / "postfix" / "main.cf").write_text(_MAIN_CF.format(**fmt))
    (base / "postfix" / "master.cf").write_text(_MASTER_CF.format(**fmt))
    (base / "dovecot.conf").write_text(_DOVECOT_CONF.format(**fmt))
    (base / "rcptpolicy.sh").write_text(_RCPT_POLICY.format(**fmt))
    for local, pw in (users or {}).items():
        stack.users[stack.address(local)] = pw
    stack._write_users()
    # The queue's layout and owners, as "postfix post-install" would make them.
    subprocess.run(
        ["postfix", "-c", str(base / "postfix"), "set-permissions"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for sub in ("private", "public", "pid"):
        (base / "spool" / sub).mkdir(exist_ok=True)
    shutil.chown(base / "spool" / "private", "postfix")
    shutil.chown(base / "spool" / "public", "postfix", "postdrop")
    stack.start()
    atexit.register(stack.stop, True)
    return stack
