"""Real IRC servers on loopback for the IRC connector's tests and benchmark.

``start_ngircd(workdir)`` runs Debian's ngircd in the foreground with a config that lets one
address hold thousands of connections (MaxConnections=0, MaxConnectionsIP=0: as many as its
open-files limit allows), long nicks (MaxNickLength=30),
unlimited joins (MaxJoins=0), no PAM/ident/DNS and no PidFile (ngircd drops to ``nobody`` as
root and could not write one). ``start_inspircd(workdir)`` runs InspIRCd 3 with its IRCv3
modules (server-time, echo-message, message-tags, multi-prefix, batch, ...). Neither server has
SASL without a services package, so SASL is tested against an in-test fake server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .ports import free_port, port_is_open


class IrcdMissing(RuntimeError):
    pass


@dataclass
class IrcServer:
    host: str
    port: int
    argv: list[str]
    workdir: Path
    name: str = "ngircd"
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def _spawn(self) -> None:
        log = open(self.workdir / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=self.env or None
        )
        deadline = time.monotonic() + 15
        while not port_is_open(self.host, self.port, 0.2):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; see "
                    f"{self.workdir / (self.name + '.log')}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} did not listen on {self.host}:{self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server (only the process this object started) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        deadline = time.monotonic() + 5
        while port_is_open(self.host, self.port, 0.1) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self, downtime: float = 0.0) -> None:
        """Stop, stay down ``downtime`` seconds, start again on the same port."""
        self.stop()
        if downtime:
            time.sleep(downtime)
        self._spawn()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


def _need(binary: str, package: str) -> str:
    path = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None
    )
    if not path:
        raise IrcdMissing(f"install {package}: apt-get install {package}")
    return path


NGIRCD_CONF = """\
[Global]
\tName = irc.test.local
\tInfo = mimi-bridge test ircd
\tListen = 127.0.0.1
\tPorts = {port}
\tMotdPhrase = "bridge test server"
[Limits]
\tMaxConnections = 0
\tMaxConnectionsIP = 0
\tMaxJoins = 0
\tMaxNickLength = 30
\tMaxPenaltyTime = {penalty}
\tPingTimeout = 120
\tPongTimeout = 60
[Options]
\tPAM = no
\tIdent = no
\tDNS = no
\tIncludeDir = {confd}
[Operator]
\tName = oper
\tPassword = operpass
"""


def start_ngircd(workdir: Path | str, port: int | None = None, penalty: int = 0) -> IrcServer:
    """Start ngircd on 127.0.0.1. ``penalty=-1`` keeps ngircd's own flood throttling."""
    binary = _need("ngircd", "ngircd")
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    confd = workdir / "conf.d"
    confd.mkdir(exist_ok=True)
    os.chmod(workdir, 0o755)
    port = port or free_port()
    conf = workdir / "ngircd.conf"
    conf.write_text(NGIRCD_CONF.format(port=port, confd=confd, penalty=penalty))
    os.chmod(conf, 0o644)
    check = subprocess.run([binary, "-t", "-f", str(conf)], capture_output=True)
    if check.returncode != 0:
        raise RuntimeError(f"ngircd rejected its config: {check.stdout[-500:]!r}")
    server = IrcServer("127.0.0.1", port, [binary, "-n", "-f", str(conf)], workdir, "ngircd")
    server._spawn()
    return server


INSPIRCD_CONF = """\
<config format="xml">
<server name="irc.test.local" description="mimi-bridge test ircd" network="TestNet">
<admin name="Test" nick="admin" email="admin@test.local">
<bind address="127.0.0.1" port="{port}" type="clients">
<connect name="main" allow="*" maxchans="1000" timeout="60" pingfreq="120" hardsendq="1M"
         softsendq="64k" recvq="64k" threshold="1000" commandrate="100000" fakelag="off"
         localmax="100000" globalmax="100000" useident="{useident}" limit="100000"
         resolvehostnames="no">
<performance nouserdns="yes" netbuffersize="10240" somaxconn="1024" softlimit="20000">
<options defaultmodes="nt" maxtargets="20">
<security hidesplits="no" announceinvites="dynamic">
<limits maxnick="30" maxchan="64" maxmodes="20" maxident="11" maxhost="64" maxquit="255"
        maxtopic="307" maxkick="255" maxreal="128" maxgecos="128" maxaway="200">
<pid file="{workdir}/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default"
     target="{workdir}/inspircd-run.log">
<files motd="{workdir}/motd.txt">
<dns server="127.0.0.1" timeout="1">
<module name="cap">
<module name="ircv3">
<module name="ircv3_servertime">
<module name="ircv3_echomessage">
<module name="ircv3_msgid">
<module name="ircv3_accounttag">
<module name="ircv3_batch">
<module name="ircv3_ctctags">
<module name="ircv3_capnotify">
<module name="ircv3_chghost">
<module name="namesx">
<module name="uhnames">
"""

# Ident lookups (on port 113 of each client's address: InspIRCd 3 has no setting for the port).
INSPIRCD_IDENT = """\
<module name="ident">
<ident timeout="5" prefixunqueried="no">
"""


def start_inspircd(workdir: Path | str, port: int | None = None, ident: bool = False) -> IrcServer:
    """Start InspIRCd 3 with its IRCv3 modules on 127.0.0.1; ``ident``: look up each client's
    ident (users without an answer show as ``~user``)."""
    binary = _need("inspircd", "inspircd")
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    (workdir / "motd.txt").write_text("bridge test server\n")
    conf = workdir / "inspircd.conf"
    text = INSPIRCD_CONF.format(port=port, workdir=workdir, useident="yes" if ident else "no")
    conf.write_text(text + (INSPIRCD_IDENT if ident else ""))
    argv = [binary, "--nofork", "--config", str(conf)]
    if os.geteuid() == 0:
        argv.append("--runasroot")
    server = IrcServer("127.0.0.1", port, argv, workdir, "inspircd")
    server._spawn()
    return server


def raw_register(host: str, port: int, nick: str, timeout: float = 5.0) -> socket.socket:
    """A blocking socket registered as ``nick`` (for quick checks)."""
    s = socket.create_connection((host, port), timeout=timeout)
    s.sendall(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode())
    buf = b""
    while b" 001 " not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed before registration")
        buf += chunk
    return s
