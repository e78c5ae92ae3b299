"""A message sent from Matrix while the bridge is down (killed with SIGKILL) reaches IRC
exactly once after the restart: the homeserver redelivers it as soon as the bridge listens,
before the IRC connector has started, and it waits for the connector and the user's puppet.

A real Synapse, a real ngircd and the bridge as its own process."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.bridge_process import BridgeProcess, HomeserverProxy, bridge_config
from tests.harness.ircd import IrcServer
from tests.harness.synapse import SynapseServer

from .conftest import RawIRC, matrix_user
from .test_e2e_synapse import alias, irc_connectors, joined, said, uniq


async def test_message_sent_while_the_bridge_is_down_reaches_irc_once(
    tmp_path: Path, synapse: SynapseServer, as_port: int, ngircd: IrcServer
) -> None:
    chan = "#" + uniq("replay")
    carol = await RawIRC(ngircd.host, ngircd.port, uniq("carol")).connect()
    await carol.join(chan)
    hs = HomeserverProxy(synapse.url)
    await hs.start()
    config = bridge_config(
        tmp_path / "bridge.yaml", synapse, as_port, irc_connectors(ngircd), hs.url
    )
    bridge = BridgeProcess(config, as_port)
    ann = await matrix_user(synapse, uniq("Ann"))
    try:
        await bridge.start(until_started=True)
        room = await ann.join(alias(chan))
        puppet = f"{(await ann.get_profile(ann.user_id))['displayname']}[m]"
        await carol.expect(joined(puppet, chan), timeout=30, what="the puppet's JOIN")
        await ann.send_text(room, "before the crash")
        await carol.expect(said(puppet, "before the crash"), timeout=30)

        await bridge.kill()
        await ann.send_text(room, "sent while the bridge was down")
        await asyncio.sleep(1)  # the homeserver tries, fails, and waits to retry
        hs.hold_s = 3.0  # the event comes back while the connectors have not started
        await bridge.start()

        await carol.expect(
            said(puppet, "sent while the bridge was down"),
            timeout=60,
            what=f"the replayed message on IRC; bridge log:\n{bridge.tail()}",
        )
        await ann.send_text(room, "after the restart")
        await carol.expect(said(puppet, "after the restart"), timeout=30)
        got = [ln.param(1) for ln in carol.messages(chan) if ln.nick == puppet]
        assert got == ["before the crash", "sent while the bridge was down", "after the restart"]
        assert "unhandled error" not in bridge.tail(1_000_000)
    finally:
        code = await bridge.stop()
        await ann.close()
        await carol.close()
        await hs.close()
    assert code == 0, bridge.tail()
