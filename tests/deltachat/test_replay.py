"""A message sent from Matrix while the bridge is down (killed with SIGKILL) reaches the
Delta Chat group exactly once after the restart: the homeserver redelivers it as soon as the
bridge listens, before the Delta Chat connector has started, and it waits for the connector.

A real Synapse, the loopback mail stack, a real Delta Chat peer and the bridge as its own
process."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

from bridge.connector import escape_localpart
from tests.bridge_process import BridgeProcess, HomeserverProxy, bridge_config
from tests.deltachat.conftest import Peer, dc_config
from tests.deltachat.test_dm import body, ghost
from tests.harness.mailstack import MailStack
from tests.harness.synapse import SynapseServer
from tests.helpers import command, management_room, new_user


async def test_message_sent_while_the_bridge_is_down_reaches_delta_chat_once(
    tmp_path: Path, synapse: SynapseServer, as_port: int, mailstack: MailStack, alice: Peer
) -> None:
    local = f"replay{uuid.uuid4().hex[:8]}"
    address = mailstack.add_user(local, f"{local}-pw")
    connectors = {"deltachat": dc_config(mailstack, tmp_path, address, f"{local}-pw")}
    hs = HomeserverProxy(synapse.url)
    await hs.start()
    config = bridge_config(tmp_path / "bridge.yaml", synapse, as_port, connectors, hs.url)
    bridge = BridgeProcess(config, as_port)
    dan = new_user(synapse)
    await dan.set_displayname("Dan")
    group = int(await alice.call("create_group_chat", "Replay room", False))
    link = str(await alice.call("get_chat_securejoin_qr_code", group))
    grpid = re.search(r"[&#]x=([^&]+)", link)
    assert grpid
    try:
        await bridge.start(until_started=True)
        mgmt = await management_room(dan)
        await command(dan, mgmt, f"join deltachat {link}", "Invited you")
        room = await dan.join(f"#deltachat_{escape_localpart('g.' + grpid.group(1))}:localhost")
        await alice.send(group, "hi matrix")
        hi = await dan.wait_for_event(room, lambda e: body(e) == "hi matrix", 60)
        assert hi["sender"] == ghost(alice.addr)
        since = alice.mark()
        await dan.send_text(room, "before the crash")
        await alice.wait_message(lambda m: m["text"].endswith("before the crash"), since)

        await bridge.kill()
        await dan.send_text(room, "sent while the bridge was down")
        await asyncio.sleep(1)  # the homeserver tries, fails, and waits to retry
        hs.hold_s = 3.0  # the event comes back while the connectors have not started
        await bridge.start()

        await alice.wait_message(
            lambda m: m["text"].endswith("sent while the bridge was down"), since, 90
        )
        await dan.send_text(room, "after the restart")
        await alice.wait_message(lambda m: m["text"].endswith("after the restart"), since, 60)
        await asyncio.sleep(2)  # a second copy would come in behind
        relayed = [
            m["text"]
            for m in await alice.messages(group)
            if m["chatId"] == group and m["fromId"] != 1 and "<Dan>" in m["text"]
        ]
        assert relayed == [
            "<Dan> before the crash",
            "<Dan> sent while the bridge was down",
            "<Dan> after the restart",
        ], relayed
        assert "unhandled error" not in bridge.tail(1_000_000)
    finally:
        code = await bridge.stop()
        await dan.close()
        await hs.close()
    assert code == 0, bridge.tail()
