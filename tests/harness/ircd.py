"""Real IRC servers on loopback for the IRC connector's tests and benchmark.

``start_ngircd(workdir)`` runs Debian's ngircd in the foreground with a config that lets one
address hold thousands of connections (MaxConnections=0, MaxConnectionsIP=0: as many as its
open-files limit allows), long nicks (MaxNickLength=30),
unlimited joins (MaxJoins=0), no PAM/ident/DNS and no PidFile (ngircd drops to ``nobody`` as
root and could not write one). ``start_inspircd(workdir)`` runs InspIRCd 3 with its IRCv3
modules (server-time, echo-message, message-tags, multi-prefix, batch, ...).
``start_services(workdir)`` runs InspIRCd with a services link, SASL and a TLS port asking for
client certificates, and Debian's Atheme (``atheme-services``) linked to it: NickServ
(REGISTER, IDENTIFY, CERT) and SaslServ (PLAIN, EXTERNAL).
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
\tListen = {listen}
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


def start_ngircd(
    workdir: Path | str, port: int | None = None, penalty: int = 0, listen: str = "127.0.0.1"
) -> IrcServer:
    """Start ngircd on 127.0.0.1 (or the comma-separated ``listen`` addresses, the first one
    being ``host``). ``penalty=-1`` keeps ngircd's own flood throttling."""
    binary = _need("ngircd", "ngircd")
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    confd = workdir / "conf.d"
    confd.mkdir(exist_ok=True)
    os.chmod(workdir, 0o755)
    port = port or free_port()
    conf = workdir / "ngircd.conf"
    conf.write_text(NGIRCD_CONF.format(port=port, confd=confd, penalty=penalty, listen=listen))
    os.chmod(conf, 0o644)
    check = subprocess.run([binary, "-t", "-f", str(conf)], capture_output=True)
    if check.returncode != 0:
        raise RuntimeError(f"ngircd rejected its config: {check.stdout[-500:]!r}")
    host = listen.split(",")[0].strip()
    server = IrcServer(host, port, [binary, "-n", "-f", str(conf)], workdir, "ngircd")
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
<options defaultmodes="{defaultmodes}" maxtargets="20">
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


def start_inspircd(
    workdir: Path | str, port: int | None = None, ident: bool = False, creator_op: bool = False
) -> IrcServer:
    """Start InspIRCd 3 with its IRCv3 modules on 127.0.0.1; ``ident``: look up each client's
    ident (users without an answer show as ``~user``). New channels are +nt, their creator no
    operator, unless ``creator_op`` (InspIRCd's ``defaultmodes`` "not")."""
    binary = _need("inspircd", "inspircd")
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    (workdir / "motd.txt").write_text("bridge test server\n")
    conf = workdir / "inspircd.conf"
    text = INSPIRCD_CONF.format(
        port=port,
        workdir=workdir,
        useident="yes" if ident else "no",
        defaultmodes="not" if creator_op else "nt",
    )
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


# --- InspIRCd + Atheme (real services: NickServ, SaslServ) ------------------------------------

SERVICES_NAME = "services.test.local"

INSPIRCD_SERVICES = """\
<bind address="127.0.0.1" port="{tls_port}" type="clients" sslprofile="clients">
<bind address="127.0.0.1" port="{link_port}" type="servers">
<module name="ssl_gnutls">
<sslprofile name="clients" provider="gnutls" certfile="{workdir}/server.crt"
            keyfile="{workdir}/server.key" hash="sha256" requestclientcert="yes">
<module name="sslinfo">
<module name="spanningtree">
<module name="services_account">
<module name="sasl">
<module name="hidechans">
<module name="svshold">
<link name="{services}" ipaddr="127.0.0.1" port="{link_port}" allowmask="127.0.0.0/8"
      sendpass="{link_password}" recvpass="{link_password}">
<uline server="{services}" silent="yes">
<sasl target="{services}" requiressl="no">
"""

ATHEME_CONF = """\
loadmodule "modules/protocol/inspircd";
loadmodule "modules/backend/opensex";
loadmodule "modules/crypto/pbkdf2v2";
loadmodule "modules/nickserv/main";
loadmodule "modules/nickserv/cert";
loadmodule "modules/nickserv/help";
loadmodule "modules/nickserv/identify";
loadmodule "modules/nickserv/info";
loadmodule "modules/nickserv/logout";
loadmodule "modules/nickserv/register";
loadmodule "modules/nickserv/set_core";
loadmodule "modules/nickserv/set_password";
loadmodule "modules/nickserv/status";
loadmodule "modules/saslserv/main";
loadmodule "modules/saslserv/plain";
loadmodule "modules/saslserv/external";

serverinfo {{
    name = "{services}";
    desc = "mimi-bridge test services";
    numeric = "00A";
    recontime = 1;
    netname = "TestNet";
    hidehostsuffix = "users.test.local";
    adminname = "Test";
    adminemail = "admin@test.local";
    registeremail = "noreply@test.local";
    mta = "/bin/true";
    loglevel = {{ error; info; admin; network; }};
    maxlogins = 50;
    maxusers = 1000;
    mdlimit = 30;
    emaillimit = 1000;
    emailtime = 300;
    auth = none;
    casemapping = rfc1459;
}};

uplink "irc.test.local" {{
    host = "127.0.0.1";
    password = "{link_password}";
    port = {link_port};
}};

nickserv {{
    nick = "NickServ";
    user = "NickServ";
    host = "{services}";
    real = "Nickname Services";
    maxnicks = 5;
    expire = 0;
}};

saslserv {{
    nick = "SaslServ";
    user = "SaslServ";
    host = "{services}";
    real = "SASL Authentication Agent";
}};

crypto {{
    pbkdf2v2_digest = "SHA256";
    pbkdf2v2_rounds = 10000;
}};

general {{
    flood_msgs = 1000;
    flood_time = 10;
    ratelimit_uses = 10000;
    ratelimit_period = 1;
    commit_interval = 1;
    default_clone_allowed = 1000;
    default_clone_warn = 1000;
    uplink_sendq_limit = 1048576;
    language = "en";
    immune_level = immune;
}};
"""


def _server_certificate(workdir: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 and localhost (the tests' ``tls_ca_file``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "irc.test.local")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (workdir / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path = workdir / "server.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@dataclass
class ServicesNet:
    """InspIRCd (``ircd``: plain port; ``tls_port`` with client certificates) linked with
    Atheme (NickServ with CERT, SaslServ with PLAIN and EXTERNAL)."""

    ircd: IrcServer
    atheme_argv: list[str]
    workdir: Path
    tls_port: int
    ca_file: Path
    atheme: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return self.ircd.host

    @property
    def port(self) -> int:
        return self.ircd.port

    def start_atheme(self) -> None:
        log = open(self.workdir / "atheme.log", "ab")
        self.atheme = subprocess.Popen(
            self.atheme_argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        self.wait_linked()

    def stop_atheme(self) -> None:
        proc, self.atheme = self.atheme, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop(self) -> None:
        self.stop_atheme()
        self.ircd.stop()

    def wait_linked(self, timeout: float = 60.0) -> None:
        """Until services are linked: the ircd offers SASL with Atheme's mechanisms."""
        deadline = time.monotonic() + timeout
        last = b""
        while time.monotonic() < deadline:
            if self.atheme is not None and self.atheme.poll() is not None:
                raise RuntimeError(
                    f"atheme-services exited with {self.atheme.returncode}; see "
                    f"{self.workdir / 'atheme.log'}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=5) as s:
                    s.sendall(b"CAP LS 302\r\n")
                    last = b""
                    # Up to the last line of the list (not "LS * :", which says more follow).
                    while not (b" LS :" in last and last.endswith(b"\n")):
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        last += chunk
                    s.sendall(b"QUIT\r\n")
                if b"sasl=" in last and b"EXTERNAL" in last:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"Atheme did not link to InspIRCd (last CAP LS: {last!r})")

    def register(self, account: str, password: str, timeout: float = 30.0) -> None:
        """Register a NickServ account (the nick ``account``) over a plain IRC connection."""
        s = raw_register(self.host, self.port, account, timeout)
        try:
            s.sendall(f"PRIVMSG NickServ :REGISTER {password} {account}@test.local\r\n".encode())
            buf = b""
            deadline = time.monotonic() + timeout
            while b"is now registered" not in buf:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"NickServ did not register {account}: {buf[-500:]!r}")
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError(f"closed while registering {account}: {buf[-500:]!r}")
                buf += chunk
            s.sendall(b"QUIT\r\n")
        finally:
            s.close()


def start_services(workdir: Path | str) -> ServicesNet:
    """Start InspIRCd with a services link, SASL and TLS (client certificates' fingerprints
    go to services), and Atheme linked to it, each in the foreground with its files in
    ``workdir``. Returns when SASL is offered."""
    inspircd = _need("inspircd", "inspircd")
    atheme = _need("atheme-services", "atheme-services")
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    port, tls_port, link_port = free_port(), free_port(), free_port()
    link_password = "linkpass-" + os.urandom(6).hex()
    ca_file = _server_certificate(workdir)
    (workdir / "motd.txt").write_text("bridge test server\n")
    conf = workdir / "inspircd.conf"
    conf.write_text(
        INSPIRCD_CONF.format(port=port, workdir=workdir, useident="no", defaultmodes="nt")
        + INSPIRCD_SERVICES.format(
            tls_port=tls_port,
            link_port=link_port,
            workdir=workdir,
            services=SERVICES_NAME,
            link_password=link_password,
        )
    )
    argv = [inspircd, "--nofork", "--config", str(conf)]
    if os.geteuid() == 0:
        argv.append("--runasroot")
    ircd = IrcServer("127.0.0.1", port, argv, workdir, "inspircd")
    ircd._spawn()
    data = workdir / "atheme-data"
    data.mkdir(exist_ok=True)
    aconf = workdir / "atheme.conf"
    aconf.write_text(
        ATHEME_CONF.format(services=SERVICES_NAME, link_port=link_port, link_password=link_password)
    )
    # -n: foreground; -D: its database (services.db) in the test's directory.
    aargv = [atheme, "-n", "-c", str(aconf), "-D", str(data), "-l", str(workdir / "atheme-run.log"),
             "-p", str(workdir / "atheme.pid")]  # fmt: skip
    net = ServicesNet(ircd, aargv, workdir, tls_port, ca_file)
    try:
        net.start_atheme()
    except BaseException:
        net.stop()
        raise
    return net
