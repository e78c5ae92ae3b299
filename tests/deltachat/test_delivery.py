"""Messages from Matrix that the mail server refuses: the Matrix user is told in the room,
never left thinking the message went out."""

from __future__ import annotations

from typing import Any, cast

from bridge.connector import MessageKind, PortalKey, RemoteMessage
from connectors.deltachat.delivery import Deliveries
from connectors.deltachat.rpc import Rpc
from tests.deltachat.conftest import DCBridge, Peers
from tests.deltachat.test_dm import body, contact_link, ghost
from tests.harness.synapse import MatrixClient, SynapseServer
from tests.helpers import management_room, new_user, until


async def _member(user: MatrixClient, room: str, who: str) -> bool:
    return who in await user.joined_members(room)


def _not_delivered(e: dict[str, Any]) -> bool:
    return e["content"].get("msgtype") == "m.notice" and "not delivered" in body(e)


async def test_refused_recipient_is_told_in_the_room(
    dcbridge: DCBridge, synapse: SynapseServer, peers: Peers
) -> None:
    dan = new_user(synapse)
    await dcbridge.start()
    mgmt = await management_room(dan)
    # The bridge's account meets carol (and her key), then her mailbox is deleted.
    carol = await peers.add(f"gone{dcbridge.address.split('@')[0]}", "Carol")
    await carol.join(await contact_link(dan, mgmt))
    await carol.call("stop_io")
    dcbridge.stack.remove_user(carol.addr)
    # Dan opens a DM with her ghost (through the relay: he has no login) and writes.
    room = await dan.create_room(invite=[ghost(carol.addr)], is_direct=True)
    await until(lambda: _member(dan, room, ghost(carol.addr)), 20, "ghost joined")
    await dan.send_text(room, "are you still there?")
    # Postfix refuses the recipient at RCPT TO, the core gives up at once, and dan hears of it
    # in the room from her ghost (the bot is not in a DM opened this way).
    notice = await dan.wait_for_event(room, _not_delivered, 30)
    assert notice["sender"] == ghost(carol.addr)
    text = body(notice)
    assert text.startswith("Your message “"), text
    assert "are you still there?” was not delivered: the mail server refused it (" in text, text
    assert f"<{carol.addr}>: Recipient address rejected: no such mailbox" in text, text
    assert "Traceback" not in text and "\n" not in text, text
    log = (dcbridge.stack.base / "postfix.log").read_text()
    assert f"550 5.1.1 <{carol.addr}>" in log
    await peers.rpc.call("remove_account", carol.acc)
    await dan.close()


class _Core:
    """``get_message`` of a core whose messages failed with ``error``."""

    is_up = True

    def __init__(self, error: str) -> None:
        self.error = error

    async def call(self, method: str, *params: Any) -> Any:
        assert method == "get_message"
        return {"error": self.error}


class _Bridge:
    def __init__(self) -> None:
        self.told: list[Any] = []

    async def emit(self, event: Any) -> None:
        self.told.append(event)

    async def notify(self, user_id: str, text: str, portal: Any = None) -> None:
        self.told.append((user_id, text, portal))

    def connection_changed(self, change: Any) -> None:
        pass  # the delivery tests do not look at connections


async def test_a_failure_before_the_send_is_recorded_is_still_told() -> None:
    """The refusal at RCPT TO can come before ``send_msg``'s caller has recorded the message."""
    bridge = _Bridge()
    error = "Permanent SMTP error: permanent: 5.1.1 <x@example.test>: no such mailbox\nmore"
    deliveries = Deliveries(cast(Rpc, _Core(error)), bridge)
    dm = PortalKey("deltachat", "x@example.test", receiver="@u:localhost")
    group = PortalKey("deltachat", "g1")
    await deliveries.failed(1, 7)
    deliveries.delivered(1, 8)
    assert bridge.told == []
    await deliveries.sent(1, 7, "@u:localhost", dm, "<m7@x>", "hello\nsecond line")
    await deliveries.sent(1, 8, "@u:localhost", dm, "<m8@x>", "fine")
    assert not deliveries._undelivered  # neither waits for the mail server any more
    [notice] = bridge.told
    assert isinstance(notice, RemoteMessage)
    assert notice.portal == dm and notice.sender.remote_id == "x@example.test"
    assert notice.reply_to == "<m7@x>" and notice.content.kind == MessageKind.NOTICE
    assert notice.content.text == (
        "Your message “hello” was not delivered: the mail server refused it"
        " (5.1.1 <x@example.test>: no such mailbox)"
    )
    # In a group the bot tells it.
    await deliveries.sent(1, 9, "@u:localhost", group, "<m9@x>", "")
    await deliveries.failed(1, 9)
    assert bridge.told[1] == (
        "@u:localhost",
        "Your message “file” was not delivered: the mail server refused it"
        " (5.1.1 <x@example.test>: no such mailbox)",
        group,
    )
