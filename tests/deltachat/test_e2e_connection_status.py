"""End to end through a real Synapse, the real Delta Chat core and a real postfix and dovecot:
a Matrix user's Delta Chat account loses the mail server (it is stopped, and stays down until
the bridge has seen the account disconnected), then gets it back. The management room hears
exactly once that it was lost and once that it is back; ``list`` shows the state and since."""

from __future__ import annotations

import asyncio

from tests.deltachat.conftest import DCBridge
from tests.harness.synapse import SynapseServer
from tests.helpers import ask, command, management_room, new_user, notices, until


async def test_the_mail_server_going_away_is_told_once_and_its_return_once(
    dcbridge: DCBridge, synapse: SynapseServer
) -> None:
    bridge = await dcbridge.start()
    cy = new_user(synapse)
    mgmt = await management_room(cy)
    local = "puppet-" + cy.user_id[1:].split(":")[0]
    address = await asyncio.to_thread(dcbridge.stack.add_user, local, "cy-pw")
    await command(cy, mgmt, f"login deltachat {address} cy-pw", "Logged in")

    def state() -> str:
        st = bridge.connections.get(cy.user_id, "deltachat", address)
        return str(st.state) if st else ""

    await until(lambda: state() == "connected", 90, "the account connected")
    listed = await ask(cy, mgmt, "list", "Logins:")
    assert f"- deltachat {address}: connected since " in listed, listed

    # Down until the bridge has seen it: how soon the core notices a dropped IMAP connection
    # depends on the machine's load, so a fixed outage would race it.
    await asyncio.to_thread(dcbridge.stack.stop)
    try:
        await cy.wait_for_event(
            mgmt, lambda e: "was lost" in e["content"].get("body", ""), timeout=120
        )
        down = await ask(cy, mgmt, "list", f"- deltachat {address}: ")
        assert "disconnected since " in down or "reconnecting since " in down, down
    finally:
        await asyncio.to_thread(dcbridge.stack.start)
    await cy.wait_for_event(
        mgmt, lambda e: "is back (after " in e["content"].get("body", ""), timeout=120
    )
    await ask(cy, mgmt, "ping", f"deltachat/{address}: connected since")
    lost = await notices(cy, mgmt, "was lost")
    # (with the core's reason when it saw the server unreachable before it began reconnecting)
    assert len(lost) == 1, lost
    assert lost[0].startswith(f"Your connection to Delta Chat as {address} was lost")
    assert lost[0].endswith("Reconnecting; I will tell you when it is back.")
    assert len(await notices(cy, mgmt, "is back (after ")) == 1
    assert await notices(cy, mgmt, "cannot connect") == []  # logging in is no outage
    await cy.close()


async def test_a_refused_imap_login_is_told_once_with_what_to_do(
    dcbridge: DCBridge, synapse: SynapseServer
) -> None:
    bridge = await dcbridge.start()
    di = new_user(synapse)
    mgmt = await management_room(di)
    local = "puppet-" + di.user_id[1:].split(":")[0]
    address = await asyncio.to_thread(dcbridge.stack.add_user, local, "di-pw")
    await command(di, mgmt, f"login deltachat {address} di-pw", "Logged in")

    def state() -> str:
        st = bridge.connections.get(di.user_id, "deltachat", address)
        return str(st.state) if st else ""

    await until(lambda: state() == "connected", 90, "the account connected")
    # The password changes on the mail server; the account's connection drops with the
    # restart and every login after it is refused.
    await asyncio.to_thread(dcbridge.stack.add_user, local, "changed-pw")
    await asyncio.to_thread(dcbridge.stack.stop)
    try:
        await until(lambda: state() != "connected", 120, "the account disconnected")
    finally:
        await asyncio.to_thread(dcbridge.stack.start)
    refused = "the mail server refused the login"
    await di.wait_for_event(mgmt, lambda e: refused in e["content"].get("body", ""), timeout=120)
    # The core keeps trying: the refusals after the first one are not told again.
    account = dcbridge.connector.accounts.account_of_user[di.user_id]
    seen = dcbridge.connector.connectivity.refusals
    first = seen.get(account, 0)
    await until(lambda: seen.get(account, 0) >= first + 1, 120, "another refused login")
    ping = await ask(di, mgmt, "ping", f"deltachat/{address}: ")
    assert f"deltachat/{address}: failed since " in ping, ping
    told = [t for t in await notices(di, mgmt, refused) if not t.startswith("Pong")]
    assert len(told) == 1 and told[0].startswith(
        f"Your connection to Delta Chat as {address} failed: {refused}"
    )
    assert told[0].endswith("Log in again: `login deltachat ...` (`help` shows how).")
    await di.close()
