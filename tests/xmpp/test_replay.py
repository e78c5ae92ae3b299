"""A message sent from Matrix while the bridge is down (killed with SIGKILL) reaches the MUC
exactly once after the restart: the homeserver redelivers it as soon as the bridge listens,
before the XMPP connector has started, and it waits for the connector.

A real Synapse, a real Prosody and the bridge as its own process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.bridge_process import BridgeProcess, HomeserverProxy, bridge_config
from tests.harness.prosody import ProsodyServer
from tests.harness.synapse import SynapseServer

from .conftest import XClient, connector_config, unique
from .test_e2e_synapse import alias_of, from_nick, matrix_user, new_room


async def test_message_sent_while_the_bridge_is_down_reaches_xmpp_once(
    tmp_path: Path, synapse: SynapseServer, as_port: int, prosody: ProsodyServer
) -> None:
    if not prosody.running:
        prosody.start()
    muc = new_room(prosody, "replay")
    alice = await XClient(prosody, unique("alice")).connect()
    await alice.join(muc, "alice")
    hs = HomeserverProxy(synapse.url)
    await hs.start()
    connectors = {"xmpp": connector_config(prosody, media={"allow_private_addresses": True})}
    config = bridge_config(tmp_path / "bridge.yaml", synapse, as_port, connectors, hs.url)
    bridge = BridgeProcess(config, as_port)
    ann = await matrix_user(synapse, "Ann")
    from_ann = from_nick(muc, "Ann")

    def said(text: str) -> list[Any]:
        return [m for m in alice.messages if m["body"] == text and from_ann(m)]

    try:
        await bridge.start(until_started=True)
        room = await ann.join(alias_of(muc))
        await alice.wait_presence(from_ann, timeout=30)
        await ann.send_text(room, "before the crash")
        await alice.wait_message(lambda m: bool(said("before the crash")), timeout=30)

        await bridge.kill()
        await ann.send_text(room, "sent while the bridge was down")
        await asyncio.sleep(1)  # the homeserver tries, fails, and waits to retry
        hs.hold_s = 3.0  # the event comes back while the connectors have not started
        await bridge.start()

        await alice.wait_message(lambda m: bool(said("sent while the bridge was down")), 60)
        await ann.send_text(room, "after the restart")
        await alice.wait_message(lambda m: bool(said("after the restart")), timeout=30)
        texts = ["before the crash", "sent while the bridge was down", "after the restart"]
        got = [m["body"] for m in alice.messages if from_ann(m) and m["body"] in texts]
        assert got == texts
        assert "unhandled error" not in bridge.tail(1_000_000)
    finally:
        code = await bridge.stop()
        await ann.close()
        await alice.close()
        await hs.close()
    assert code == 0, bridge.tail()
