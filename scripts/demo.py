"""Bring up Synapse, an IRC server (ngircd), an XMPP server (Prosody), a mail server (postfix
and dovecot, for Delta Chat) and the bridge with its three connectors on loopback; bridge the
IRC channel #lobby, and say how to watch messages cross on each network.

Used by ``scripts/demo``. Runs until Ctrl-C (or SIGTERM); everything lives in ./demo-data/
(the bridge's SQLite database, Synapse's files, ngircd's config and log)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.ircd import IrcServer, start_ngircd  # noqa: E402
from tests.harness.mailstack import MailStack, start_mailstack  # noqa: E402
from tests.harness.ports import free_port, port_is_open  # noqa: E402
from tests.harness.prosody import ProsodyServer, start_prosody  # noqa: E402
from tests.harness.synapse import SynapseServer, start_synapse  # noqa: E402

NETWORK = "demo"  # IRC network id: ghosts are @irc_demo_<nick>, portals #irc_demo_<#channel>
CHANNEL = "#lobby"
USERS = (("alice", False), ("admin", True))
COMPONENT = "matrix.localhost"  # the XMPP domain of Matrix users
COMPONENT_SECRET = "demo-component-secret"


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops everything the demo started, like Ctrl-C


def write_config(
    data: Path, as_port: int, ircd: IrcServer, xmpp: ProsodyServer, mail: MailStack
) -> Path:
    cfg_path = data / "config.yaml"
    cfg = YAML().load((ROOT / "config.example.yaml").read_text())
    cfg["homeserver"]["domain"] = "localhost"
    cfg["appservice"]["address"] = f"http://127.0.0.1:{as_port}"
    cfg["appservice"]["port"] = as_port
    cfg["appservice"]["database"] = f"sqlite://{data / 'bridge.db'}"
    cfg["bridge"]["permissions"] = {"*": "relay", "localhost": "user", "@admin:localhost": "admin"}
    cfg["connectors"] = {
        "irc": {
            "networks": {
                NETWORK: {
                    "host": ircd.host,
                    "port": ircd.port,
                    "display_name": "Demo IRC",
                    "bot": {"nick": "mimibridge"},
                    "channels": [CHANNEL],  # joined, and so bridged, at start
                }
            }
        },
        "xmpp": {
            "server": {"host": xmpp.host, "port": xmpp.component_port},
            "component": {"domain": COMPONENT, "secret": COMPONENT_SECRET},
            "muc_services": [xmpp.muc_domain],
            "media": {"allow_private_addresses": True},
        },
        "deltachat": {
            "accounts_dir": str(data / "deltachat"),
            "account": {
                "address": mail.address("bridge"),
                "password": "bridge-password",
                "display_name": "Matrix bridge",
            },
            "imap": {"host": mail.host, "port": mail.imap_port, "security": "plain"},
            "smtp": {"host": mail.host, "port": mail.smtp_port, "security": "plain"},
            "policy": {"allowed_senders": ["*@example.test"], "dm_receiver": "@alice:localhost"},
        },
    }
    with cfg_path.open("w") as f:
        YAML().dump(cfg, f)
    return cfg_path


def instructions(
    synapse: SynapseServer, ircd: IrcServer, xmpp: ProsodyServer, mail: MailStack, cfg_path: Path
) -> str:
    alias = f"#irc_{NETWORK}_{CHANNEL}:localhost"
    return f"""
mimi-bridge demo is running on 127.0.0.1: Synapse, ngircd, Prosody, postfix+dovecot, the bridge.
  Matrix homeserver: {synapse.url}  (server name: localhost)
      users: alice / alice-password, admin / admin-password
  IRC server:        {ircd.host} port {ircd.port} (no TLS, no password)
  Bridged channel:   {CHANNEL}  <->  Matrix room {alias}
  Bridge config:     {cfg_path}   (log on this terminal; ngircd's in demo-data/ngircd/)

Watch a message cross:
  IRC side, with any IRC client, e.g. `irssi -c {ircd.host} -p {ircd.port} -n carol`, then
      /join {CHANNEL}
    or with no IRC client at all: `nc {ircd.host} {ircd.port}` and type
      NICK carol
      USER carol 0 * :Carol
      JOIN {CHANNEL}
      PRIVMSG {CHANNEL} :hello from IRC
  Matrix side, with any Matrix client (Element, nheko, gomuks, ...) set to the homeserver
    {synapse.url}: log in as alice and join the room {alias}
    (Element: "Join public room" or `/join {alias}`).
  IRC lines show up in Matrix from the ghost @irc_{NETWORK}_carol:localhost ("carol");
  alice's Matrix messages reach {CHANNEL} from her own IRC connection, the nick alice[m].
  In a DM with @mimibot:localhost: `help`, `irc nick <nick>`, `join irc_{NETWORK} #other`.

XMPP: Prosody on {xmpp.host}, client port {xmpp.c2s_port} (plain, no TLS), user
  carol@{xmpp.domain} / carol-password. With any XMPP client (Gajim, Dino, poezio, profanity)
  log in as carol, join the MUC lobby@{xmpp.muc_domain}; in Matrix, alice joins
  #xmpp_lobby@{xmpp.muc_domain}:localhost. carol sees alice as an occupant; alice sees carol's
  ghost. carol can also write to alice directly: alice\\40localhost@{COMPONENT}.

Delta Chat: mail server on {mail.host}, IMAP {mail.imap_port}, SMTP {mail.smtp_port} (plain),
  mailbox dave@example.test / dave-password. Set up a Delta Chat profile with that account
  (advanced login settings: those servers and ports, security "off"), then write to
  {mail.address("bridge")}: the chat appears in alice's Matrix account. In Matrix, alice can
  `link deltachat <group name>` in a room to make a group and get its invite link.
Press Ctrl-C to stop."""


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    data = ROOT / "demo-data"
    data.mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    ircd: IrcServer | None = None
    xmpp: ProsodyServer | None = None
    mail: MailStack | None = None
    synapse: SynapseServer | None = None
    try:
        # The usual IRC port when it is free, so that IRC clients need no port argument.
        irc_port = 6667 if not port_is_open("127.0.0.1", 6667) else free_port()
        ircd = start_ngircd(data / "ngircd", port=irc_port)
        # The MUC loads contrib/prosody/mod_muc_bridge_fanout.lua, as README recommends.
        xmpp = start_prosody(
            data / "prosody", COMPONENT, COMPONENT_SECRET, log_level="warn", bridge_fanout=True
        )
        xmpp.register_user("carol", "carol-password")
        mail = start_mailstack({"bridge": "bridge-password", "dave": "dave-password"})
        cfg_path = write_config(data, free_port(), ircd, xmpp, mail)
        reg = data / "registration.yaml"
        py = sys.executable
        # -g fills in the tokens and writes the registration Synapse loads at its start.
        subprocess.run([py, "-m", "bridge", "-c", str(cfg_path), "-g", "-r", str(reg)], check=True)
        synapse = start_synapse(data / "synapse", [reg])
        cfg = YAML().load(cfg_path)
        cfg["homeserver"]["address"] = synapse.url
        with cfg_path.open("w") as f:
            YAML().dump(cfg, f)
        for user, admin in USERS:
            try:
                synapse.register_user(user, f"{user}-password", admin=admin)
            except RuntimeError:
                pass  # registered in an earlier run
        bridge = subprocess.Popen([py, "-m", "bridge", "-c", str(cfg_path)])
        procs.append(bridge)
        print(instructions(synapse, ircd, xmpp, mail, cfg_path), flush=True)
        return bridge.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if synapse is not None:
            synapse.stop()
        if ircd is not None:
            ircd.stop()
        if xmpp is not None:
            xmpp.stop()
        if mail is not None:
            mail.stop(remove=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
