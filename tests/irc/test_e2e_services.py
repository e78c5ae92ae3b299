"""End to end with real services: Synapse, the bridge, InspIRCd and Atheme (NickServ, SaslServ).

Accounts are registered with NickServ over a plain IRC connection; Matrix users log in from their
management room. Checked: SASL PLAIN (a wrong password refused at once and nothing stored; a
password changed on the services side told once in the management room after a bridge restart,
and not retried), ``login irc <net> certfp`` (a client certificate, NickServ CERT ADD after one
password login; after a restart the connection logs in with SASL EXTERNAL and no password is
stored; a certificate removed from the account is told once; ``logout`` takes the fingerprint
off the account, NickServ CERT DEL, and says when that failed), NickServ IDENTIFY on a network
with ``auth: nickserv`` (a refusal told once, the connection kept), ``irc autocmd``, the bot's
own account both ways, and a login while services are down. The ircd's WHOIS (330) says which
account a connection is logged into.

InspIRCd and Atheme come from Debian (``apt-get install inspircd atheme-services``); missing,
the tests fail with that hint.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bridge.bridge import Bridge
from connectors.irc.connector import IRCConnector
from connectors.irc.puppets import Puppet
from tests.conftest import BridgeFactory
from tests.harness.ircd import ServicesNet, start_services
from tests.harness.synapse import MatrixClient, SynapseServer

from .conftest import RawIRC, wait_for

BOT = "@mimibot:localhost"
_n = itertools.count(1)


def sha256_fingerprint(cert_pem: str) -> str:
    """What InspIRCd (hash="sha256") tells services: the SHA-256 of the DER certificate."""
    der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def uniq(prefix: str) -> str:
    return f"{prefix}{next(_n)}"


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServicesNet]:
    net = start_services(Path(tmp_path_factory.mktemp("services")))
    yield net
    net.stop()


def connectors(services: ServicesNet, tls: bool = False, **over: Any) -> dict[str, Any]:
    net: dict[str, Any] = {
        "host": services.host,
        "port": services.tls_port if tls else services.port,
        "bot": {"nick": uniq("mimibot")},
        "flood": {"burst": 50, "rate": 50},
        "reconnect": {"min_delay": 0.2, "max_delay": 1.0},
        "connects_per_second": 200,
        "register_timeout": 10,
    }
    if tls:
        net.update(tls=True, tls_ca_file=str(services.ca_file))
    net.update(over)
    return {"irc": {"networks": {"test": net}}}


def irc_of(bridge: Bridge) -> IRCConnector:
    connector = bridge.connectors["irc"]
    assert isinstance(connector, IRCConnector)
    return connector


def puppet_of(bridge: Bridge, user_id: str) -> Puppet | None:
    return irc_of(bridge).networks["test"].pool.get(user_id)


async def matrix_user(synapse: SynapseServer, name: str) -> MatrixClient:
    client = synapse.new_client(name.lower())
    await client.set_displayname(name)
    return client


async def management_room(user: MatrixClient) -> str:
    room = await user.create_room(invite=[BOT], is_direct=True)
    await user.wait_for_event(room, lambda e: "management room" in e["content"].get("body", ""))
    return room


async def seen(user: MatrixClient, room: str) -> set[str]:
    return {e["event_id"] for e in await user.messages(room, 100)}


async def command(user: MatrixClient, room: str, text: str, expect: str) -> str:
    """Send a command; the bot's answer holding ``expect`` (an answer to this command: not
    one seen before it was sent)."""
    before = await seen(user, room)
    await user.send_text(room, text)
    evt = await user.wait_for_event(
        room,
        lambda e: (
            e["event_id"] not in before
            and e["sender"] == BOT
            and expect in e["content"].get("body", "")
        ),
        timeout=60,
    )
    return str(evt["content"]["body"])


async def bot_notices(user: MatrixClient, room: str, text: str) -> list[str]:
    return [
        str(e["content"].get("body", ""))
        for e in await user.messages(room, 100)
        if e["sender"] == BOT and text in e["content"].get("body", "")
    ]


async def whois_account(watcher: RawIRC, nick: str) -> str | None:
    """The account the ircd says ``nick`` is logged into (WHOIS 330), None when none."""
    mark = len(watcher.lines)
    watcher.send(f"WHOIS {nick}")
    await watcher.expect(
        lambda ln: ln in watcher.lines[mark:] and ln.command == "318",
        timeout=30,
        what=f"WHOIS {nick}",
    )
    for ln in watcher.lines[mark:]:
        if ln.command == "330" and ln.param(1).lower() == nick.lower():
            return ln.param(2)
    return None


class Raw:
    """Plain IRC users on the services network, closed at the end of the test."""

    def __init__(self, services: ServicesNet) -> None:
        self.services = services
        self.made: list[RawIRC] = []

    async def __call__(self, prefix: str) -> RawIRC:
        client = await RawIRC(self.services.host, self.services.port, uniq(prefix)).connect()
        self.made.append(client)
        return client

    async def as_account(self, account: str, password: str) -> RawIRC:
        """A user identified to NickServ as ``account`` (to change the account's settings)."""
        client = await self(account + "x")
        client.send(f"PRIVMSG NickServ :IDENTIFY {account} {password}")
        await client.expect(lambda ln: ln.command == "900", timeout=30, what="identified")
        return client

    async def close(self) -> None:
        for c in self.made:
            await c.close()


@pytest.fixture
async def raw(services: ServicesNet) -> AsyncIterator[Raw]:
    users = Raw(services)
    yield users
    await users.close()


@pytest.fixture
async def matrix(synapse: SynapseServer) -> AsyncIterator[Callable[..., Any]]:
    made: list[MatrixClient] = []

    async def make(prefix: str) -> MatrixClient:
        # Synapse is shared by the session: names of this module's own.
        client = await matrix_user(synapse, uniq(prefix + "Svc"))
        made.append(client)
        return client

    yield make
    for c in made:
        await c.close()


async def register(services: ServicesNet, password: str) -> str:
    account = uniq("acct")
    await asyncio.to_thread(services.register, account, password)
    return account


async def in_portal(user: MatrixClient, watcher: RawIRC, bridge: Bridge) -> str:
    """The user joins a channel's portal (so their puppet comes back after a restart)."""
    chan = "#" + uniq("svc")
    await watcher.join(chan)
    await user.join(f"#irc_test_{chan}:localhost")
    puppet = await wait_for(lambda: puppet_of(bridge, user.user_id), 60, "the puppet")
    nick = puppet.conn.nick
    await watcher.expect(
        lambda ln: ln.command == "JOIN" and ln.nick == nick and ln.param(0) == chan,
        timeout=60,
        what="the puppet's JOIN",
    )
    return chan


# --- SASL PLAIN --------------------------------------------------------------------------------


async def test_sasl_plain_login_wrong_password_and_changed_password(
    make_bridge: BridgeFactory, services: ServicesNet, raw: Raw, matrix: Callable[..., Any]
) -> None:
    account = await register(services, "right-pw-1")
    bot_account = await register(services, "bot-pw-1")
    cfg = connectors(services)
    bot = cfg["irc"]["networks"]["test"]["bot"]
    bot.update(sasl_account=bot_account, sasl_password="bot-pw-1")
    bridge = await make_bridge(connectors=cfg)
    ann = await matrix("Ann")
    mgmt = await management_room(ann)
    # A wrong password: refused at once with what to do, nothing stored.
    reply = await command(ann, mgmt, f"login irc test sasl {account} wrong-pw", "failed")
    assert "SASL authentication failed" in reply
    assert f"login irc test sasl {account}" not in reply  # the advice shows no secrets
    assert "login irc test sasl <account> <password>" in reply
    assert "Traceback" not in reply
    # An account the services do not know: the same.
    reply = await command(ann, mgmt, "login irc test sasl nosuchacct any-pw", "failed")
    assert "SASL authentication failed" in reply and "Check the account name" in reply
    assert not [r for r in await bridge.users.logins(network="irc") if r.user_id == ann.user_id]
    # The right one: connected and logged into the account (the ircd says so).
    await command(ann, mgmt, f"login irc test sasl {account} right-pw-1", "Connected to test")
    watcher = await raw("watch")
    puppet = puppet_of(bridge, ann.user_id)
    assert puppet is not None and "sasl" in puppet.conn.caps
    assert await whois_account(watcher, puppet.conn.nick) == account
    # The bot logs in with the config's account.
    assert await whois_account(watcher, bot["nick"]) == bot_account
    await in_portal(ann, watcher, bridge)
    # The account's password changes on the services' side; the bridge restarts.
    owner = await raw.as_account(account, "right-pw-1")
    owner.send("PRIVMSG NickServ :SET PASSWORD right-pw-2")
    await owner.expect(lambda ln: "has been changed" in ln.param(1), timeout=30, what="SET")
    await bridge.stop()
    before = await seen(ann, mgmt)
    bridge = await make_bridge(connectors=cfg)
    await until_notice(ann, mgmt, "SASL authentication failed", before)
    # Told once, with what to do; not retried with the bad password.
    conn = await wait_for(lambda: puppet_of(bridge, ann.user_id), 30, "the puppet")
    await asyncio.sleep(3)  # reconnects would come every 0.2-1 s
    assert conn.conn.state == "failed" and conn.conn.stats.connects == 1
    told = [b for b in await bot_notices(ann, mgmt, "Your connection to") if " failed: SASL" in b]
    assert len(told) == 1  # the login commands' answers said it before, not this way
    assert "SASL authentication failed (PLAIN)" in told[0]
    assert "Check the account name and password" in told[-1]
    assert "login irc test sasl <account> <password>" in told[-1]
    # Logging in with the new password brings the puppet back.
    await command(ann, mgmt, f"login irc test sasl {account} right-pw-2", "Connected to test")
    puppet = puppet_of(bridge, ann.user_id)
    assert puppet is not None
    assert await whois_account(watcher, puppet.conn.nick) == account


async def until_notice(user: MatrixClient, room: str, text: str, before: set[str]) -> None:
    """Until the bot tells of a failed connection (a notice not among ``before``)."""
    await user.wait_for_event(
        room,
        lambda e: (
            e["event_id"] not in before
            and e["sender"] == BOT
            and text in e["content"].get("body", "")
            and "Your connection" in e["content"].get("body", "")
        ),
        timeout=90,
    )


# --- SASL EXTERNAL (certfp) --------------------------------------------------------------------


async def test_certfp_login_then_restart_uses_external_without_password(
    make_bridge: BridgeFactory,
    services: ServicesNet,
    raw: Raw,
    matrix: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    account = await register(services, "cert-pw-1")
    cfg = connectors(services, tls=True)
    bridge = await make_bridge(connectors=cfg)
    bea = await matrix("Bea")
    mgmt = await management_room(bea)
    reply = await command(
        bea, mgmt, f"login irc test certfp {account} cert-pw-1", "with a client certificate"
    )
    assert f"logged in as {account}" in reply and "password is not stored" in reply
    # What is stored: the certificate and its key, encrypted; no password.
    rows = [r for r in await bridge.users.logins(network="irc") if r.user_id == bea.user_id]
    assert len(rows) == 1
    assert "BEGIN" not in rows[0].credentials and "cert-pw-1" not in rows[0].credentials
    creds = bridge.credentials.open(rows[0].credentials)
    assert "sasl_password" not in creds and "password" not in creds
    assert creds["sasl_mechanism"] == "EXTERNAL" and creds["sasl_account"] == account
    assert "PRIVATE KEY" in creds["key"] and "CERTIFICATE" in creds["cert"]
    # NickServ has the certificate's fingerprint on the account.
    owner = await raw.as_account(account, "cert-pw-1")
    mark = len(owner.lines)
    owner.send("PRIVMSG NickServ :CERT LIST")
    await owner.expect(
        lambda ln: ln in owner.lines[mark:] and "end of" in ln.param(1).lower(),
        timeout=30,
        what="CERT LIST",
    )
    listed = " ".join(ln.param(1) for ln in owner.lines[mark:] if ln.command == "NOTICE")
    fp = sha256_fingerprint(creds["cert"])
    assert fp in reply  # the login told the user which fingerprint it added
    assert fp in listed
    watcher = await raw("watch")
    await in_portal(bea, watcher, bridge)
    # A restart: the puppet comes back logged in by its certificate alone.
    await bridge.stop()
    bridge = await make_bridge(connectors=cfg)
    puppet = await wait_for(lambda: puppet_of(bridge, bea.user_id), 60, "the puppet")
    assert await puppet.conn.wait_registered(60)
    p = puppet.conn.params
    assert p.sasl_mechanism == "EXTERNAL" and p.sasl_password is None and p.password is None
    assert puppet.conn.account == account
    assert await whois_account(watcher, puppet.conn.nick) == account
    # The certificate removed from the account: the next connection is refused, told once.
    owner.send(f"PRIVMSG NickServ :CERT DEL {fp}")
    await owner.expect(lambda ln: "deleted" in ln.param(1).lower(), timeout=30, what="CERT DEL")
    await bridge.stop()
    before = await seen(bea, mgmt)
    bridge = await make_bridge(connectors=cfg)
    await until_notice(bea, mgmt, "SASL authentication failed (EXTERNAL)", before)
    puppet = await wait_for(lambda: puppet_of(bridge, bea.user_id), 30, "the puppet")
    await asyncio.sleep(3)
    assert puppet.conn.state == "failed" and puppet.conn.stats.connects == 1
    told = await bot_notices(bea, mgmt, "did not accept your client certificate")
    assert len(told) == 1 and "login irc test certfp <account> <password>" in told[0]
    # Neither the password nor the key reached the bridge's log.
    leaks = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("mimi")
        and ("cert-pw-1" in r.getMessage() or "PRIVATE KEY" in r.getMessage())
    ]
    assert not leaks, leaks[0]


async def cert_list(owner: RawIRC) -> str:
    """What NickServ's CERT LIST tells the account's owner."""
    mark = len(owner.lines)
    owner.send("PRIVMSG NickServ :CERT LIST")
    await owner.expect(
        lambda ln: ln in owner.lines[mark:] and "end of" in ln.param(1).lower(),
        timeout=30,
        what="CERT LIST",
    )
    return " ".join(ln.param(1) for ln in owner.lines[mark:] if ln.command == "NOTICE")


async def test_certfp_logout_takes_the_fingerprint_off_the_account(
    make_bridge: BridgeFactory, services: ServicesNet, raw: Raw, matrix: Callable[..., Any]
) -> None:
    account = await register(services, "cert-pw-4")
    bridge = await make_bridge(connectors=connectors(services, tls=True))
    dee = await matrix("Dee")
    mgmt = await management_room(dee)
    await command(dee, mgmt, f"login irc test certfp {account} cert-pw-4", "client certificate")
    rows = [r for r in await bridge.users.logins(network="irc") if r.user_id == dee.user_id]
    fp = sha256_fingerprint(bridge.credentials.open(rows[0].credentials)["cert"])
    owner = await raw.as_account(account, "cert-pw-4")
    assert fp in await cert_list(owner)
    # Logging out removes the fingerprint from the account, then the certificate.
    await command(dee, mgmt, "logout irc", "Logged out")
    assert fp not in await cert_list(owner)
    assert not [r for r in await bridge.users.logins(network="irc") if r.user_id == dee.user_id]
    assert not await bot_notices(dee, mgmt, "removing its fingerprint failed")
    # A fingerprint already gone (removed by hand): the user is told what to check.
    await command(dee, mgmt, f"login irc test certfp {account} cert-pw-4", "client certificate")
    rows = [r for r in await bridge.users.logins(network="irc") if r.user_id == dee.user_id]
    fp = sha256_fingerprint(bridge.credentials.open(rows[0].credentials)["cert"])
    assert fp in await cert_list(owner)
    owner.send(f"PRIVMSG NickServ :CERT DEL {fp}")
    await owner.expect(lambda ln: fp in ln.param(1) and "deleted" in ln.param(1).lower())
    before = await seen(dee, mgmt)
    await command(dee, mgmt, "logout irc", "Logged out")
    await dee.wait_for_event(
        mgmt,
        lambda e: e["event_id"] not in before and "removing its fingerprint failed" in str(e),
        timeout=30,
    )
    (told,) = await bot_notices(dee, mgmt, "removing its fingerprint failed")
    assert "not on your fingerprint list" in told and f"CERT DEL {fp}" in told
    assert not [r for r in await bridge.users.logins(network="irc") if r.user_id == dee.user_id]


async def test_certfp_on_a_network_without_sasl(
    make_bridge: BridgeFactory, services: ServicesNet, raw: Raw, matrix: Callable[..., Any]
) -> None:
    """``auth: nickserv``: IDENTIFY once, CERT ADD, then the services log the certificate in."""
    account = await register(services, "cert-pw-3")
    bridge = await make_bridge(connectors=connectors(services, tls=True, auth="nickserv"))
    gus = await matrix("Gus")
    mgmt = await management_room(gus)
    reply = await command(
        gus, mgmt, f"login irc test certfp {account} cert-pw-3", "Your password is not stored"
    )
    assert f"logged in as {account} with a client certificate" in reply
    rows = [r for r in await bridge.users.logins(network="irc") if r.user_id == gus.user_id]
    creds = bridge.credentials.open(rows[0].credentials)
    assert "sasl_password" not in creds and "sasl_mechanism" not in creds and "cert" in creds
    puppet = puppet_of(bridge, gus.user_id)
    assert puppet is not None and "sasl" not in puppet.conn.caps
    assert puppet.conn.identify_state == ""  # no password to IDENTIFY with
    watcher = await raw("watch")
    assert await whois_account(watcher, puppet.conn.nick) == account
    status = await command(gus, mgmt, "irc status", "test:")
    assert f"logged in as {account}" in status


async def test_certfp_needs_tls(
    make_bridge: BridgeFactory, services: ServicesNet, matrix: Callable[..., Any]
) -> None:
    account = await register(services, "cert-pw-2")
    bridge = await make_bridge(connectors=connectors(services))
    cid = await matrix("Cid")
    mgmt = await management_room(cid)
    reply = await command(cid, mgmt, f"login irc test certfp {account} cert-pw-2", "needs TLS")
    assert "tls: true" in reply
    assert not [r for r in await bridge.users.logins(network="irc") if r.user_id == cid.user_id]


# --- NickServ IDENTIFY, auto-commands ---------------------------------------------------------


async def test_nickserv_identify_without_sasl_and_autocmds(
    make_bridge: BridgeFactory, services: ServicesNet, raw: Raw, matrix: Callable[..., Any]
) -> None:
    account = await register(services, "ns-pw-1")
    bot_account = await register(services, "ns-bot-pw")
    cfg = connectors(services, auth="nickserv")
    bot = cfg["irc"]["networks"]["test"]["bot"]
    bot.update(sasl_account=bot_account, sasl_password="ns-bot-pw")
    bridge = await make_bridge(connectors=cfg)
    dee = await matrix("Dee")
    mgmt = await management_room(dee)
    reply = await command(dee, mgmt, f"login irc test nickserv {account} wrong", "failed")
    assert "NickServ refused the login: Invalid password" in reply
    assert "login irc test nickserv <account> <password>" in reply
    reply = await command(dee, mgmt, "login irc test nickserv nosuchacct pw", "failed")
    assert "NickServ refused the login" in reply and "not a registered" in reply
    assert not [r for r in await bridge.users.logins(network="irc") if r.user_id == dee.user_id]
    await command(dee, mgmt, f"login irc test nickserv {account} ns-pw-1", "Connected to test")
    puppet = puppet_of(bridge, dee.user_id)
    assert puppet is not None
    assert "sasl" not in puppet.conn.caps  # the server offers SASL; the network says nickserv
    watcher = await raw("carol")
    assert await whois_account(watcher, puppet.conn.nick) == account
    # The bot identifies with the config's account the same way.
    bot_conn = irc_of(bridge).networks["test"].bot
    await wait_for(lambda: bot_conn.account == bot_account, 30, "the bot's IDENTIFY")
    assert "sasl" not in bot_conn.caps
    assert await whois_account(watcher, bot["nick"]) == bot_account
    # Auto-commands: a message to a nick is allowed, passwords and other commands are not.
    await command(
        dee, mgmt, f"irc autocmd test add msg {watcher.nick} hello from autocmd", "Saved: 1"
    )
    reply = await command(dee, mgmt, "irc autocmd test add msg NickServ IDENTIFY x y", "Not added")
    assert "passwords" in reply
    await command(dee, mgmt, "irc autocmd test add join #elsewhere", "is not allowed")
    await command(dee, mgmt, "irc autocmd test add msg #chan hi", "is not a nick")
    await command(dee, mgmt, "irc autocmd test add mode +i", "Saved: 2")
    listed = await command(dee, mgmt, "irc autocmd test list", "Auto-commands on test")
    assert f"1. msg {watcher.nick} hello from autocmd" in listed and "2. mode +i" in listed
    mark = len(watcher.lines)
    await command(dee, mgmt, "irc reconnect test", "Reconnecting")
    line = await watcher.expect(
        lambda ln: (
            ln in watcher.lines[mark:]
            and ln.command == "PRIVMSG"
            and ln.param(1) == "hello from autocmd"
        ),
        timeout=60,
        what="the auto-command",
    )
    puppet = puppet_of(bridge, dee.user_id)
    assert puppet is not None and line.nick == puppet.conn.nick
    # Identified again after the reconnect (NickServ answers after the auto-commands left).
    conn = puppet.conn
    await wait_for(lambda: conn.account == account, 30, "IDENTIFY after the reconnect")
    assert await whois_account(watcher, conn.nick) == account
    await command(dee, mgmt, "irc autocmd test del 1", "Saved: 1")
    await command(dee, mgmt, "irc autocmd test clear", "Saved: 0")
    # The password changes on the services' side: the next connection is told, once, and
    # stays up without the account.
    owner = await raw.as_account(account, "ns-pw-1")
    owner.send("PRIVMSG NickServ :SET PASSWORD ns-pw-2")
    await owner.expect(lambda ln: "has been changed" in ln.param(1), timeout=30, what="SET")
    before = await seen(dee, mgmt)
    await command(dee, mgmt, "irc reconnect test", "Reconnecting")
    await dee.wait_for_event(
        mgmt,
        lambda e: e["event_id"] not in before and "did not log you in" in e["content"]["body"],
        timeout=60,
    )
    puppet = puppet_of(bridge, dee.user_id)
    assert puppet is not None and puppet.conn.registered and puppet.conn.account is None
    await asyncio.sleep(2)
    told = [
        b for b in await bot_notices(dee, mgmt, "did not log you in") if "Invalid password" in b
    ]
    assert len(told) == 1
    assert "login irc test nickserv <account> <password>" in told[0]
    assert await whois_account(watcher, puppet.conn.nick) is None


# --- services down ----------------------------------------------------------------------------


async def test_services_down_login_told_what_to_do(
    make_bridge: BridgeFactory, services: ServicesNet, matrix: Callable[..., Any]
) -> None:
    account = await register(services, "down-pw-1")
    bridge = await make_bridge(connectors=connectors(services))
    fay = await matrix("Fay")
    mgmt = await management_room(fay)
    await asyncio.to_thread(services.stop_atheme)
    try:
        # Without services the ircd offers no SASL: said at once, nothing stored.
        reply = await command(fay, mgmt, f"login irc test sasl {account} down-pw-1", "failed")
        assert "does not offer SASL PLAIN" in reply
        assert "services may be down" in reply and "irc reconnect test" in reply
        assert not [r for r in await bridge.users.logins(network="irc") if r.user_id == fay.user_id]
    finally:
        await asyncio.to_thread(services.start_atheme)
    await command(fay, mgmt, f"login irc test sasl {account} down-pw-1", "Connected to test")
