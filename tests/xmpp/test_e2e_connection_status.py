"""End to end through a real Synapse and a real Prosody: a Matrix user's XMPP login loses its
stream (Prosody restarts) and cannot log in again (its password was changed meanwhile). The
management room hears once that it was lost and once that the password is refused, however
often the bridge retries; once the password is right again, once that it is back."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.harness.prosody import ProsodyServer
from tests.harness.synapse import SynapseServer
from tests.helpers import ask, command, management_room, notices, until

from .conftest import unique
from .test_e2e_synapse import matrix_user, xmpp_bridge  # noqa: F401 (a fixture)


async def test_a_refused_login_is_told_once_not_per_retry(
    xmpp_bridge: Any,  # noqa: F811 (the fixture)
    synapse: SynapseServer,
    prosody: ProsodyServer,
) -> None:
    bridge = await xmpp_bridge()
    name = unique("jo")
    jid = prosody.register_user(name, "jo-secret")
    jo = await matrix_user(synapse, "Jo")
    mgmt = await management_room(jo)
    await command(jo, mgmt, f"login xmpp {jid} jo-secret", "Logged in as")
    connector: Any = bridge.connectors["xmpp"]

    async def connected() -> str | None:
        listed = await ask(jo, mgmt, "list", "Logins:")
        return listed if f"- xmpp {jid}: connected since " in listed else None

    assert await until(connected, 30, "the login connected")

    # The password changes on the server; the stream drops and every retry is refused.
    await asyncio.to_thread(prosody.set_password, name, "changed-secret")
    await asyncio.to_thread(prosody.restart)
    refused = "the server refused the password"
    await jo.wait_for_event(mgmt, lambda e: refused in e["content"].get("body", ""), timeout=90)
    stream = connector.sessions[jo.user_id].identity.stream
    tried = stream.attempts
    await until(lambda: stream.attempts >= tried + 3, 60, "three more refused attempts")
    ping = await ask(jo, mgmt, "ping", f"xmpp/{jid}: ")
    assert f"xmpp/{jid}: failed since " in ping, ping
    told = await notices(jo, mgmt, refused)
    assert [t for t in told if not t.startswith("Pong")] == [
        f"Your connection to XMPP as {jid} failed: {refused} (authentication failed). "
        "Log in again: `login xmpp ...` (`help` shows how)."
    ]
    assert len(await notices(jo, mgmt, "was lost")) == 1

    # The old password is back: the next retry gets in, told once.
    await asyncio.to_thread(prosody.set_password, name, "jo-secret")
    await jo.wait_for_event(
        mgmt, lambda e: "is back (after " in e["content"].get("body", ""), timeout=90
    )
    await ask(jo, mgmt, "ping", f"xmpp/{jid}: connected since")
    assert len(await notices(jo, mgmt, "is back (after ")) == 1
    assert len([t for t in await notices(jo, mgmt, refused) if not t.startswith("Pong")]) == 1
    await jo.close()
