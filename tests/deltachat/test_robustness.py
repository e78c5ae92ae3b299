"""Delta Chat connector robustness: a mail server restart, a crash of the Delta Chat core, a
bridge restart, and hostile mail (broken MIME, auto-replies, bounces) sent to the bridge."""

from __future__ import annotations

import asyncio
import smtplib
from typing import Any

from tests.deltachat.conftest import DCBridge, Peer
from tests.deltachat.test_dm import body, contact_link, dm_room, ghost
from tests.harness.mailstack import MailStack
from tests.harness.synapse import MatrixClient, SynapseServer
from tests.helpers import management_room, new_user, until


async def _dm_setup(
    dcbridge: DCBridge, synapse: SynapseServer, alice: Peer
) -> tuple[MatrixClient, str, int]:
    user = new_user(synapse)
    await dcbridge.start(policy={"dm_receiver": user.user_id})
    mgmt = await management_room(user)
    chat = await alice.join(await contact_link(user, mgmt))
    await alice.send(chat, "opening")
    room = await dm_room(dcbridge, user, alice.addr)
    await user.wait_for_event(room, lambda e: body(e) == "opening", 30)
    return user, room, chat


async def _texts(peer: Peer, chat: int) -> list[str]:
    return [str(m["text"]) for m in await peer.messages(chat)]


async def _count(peer: Peer, chat: int, suffix: str) -> int:
    return sum(1 for t in await _texts(peer, chat) if t.endswith(suffix))


async def _bodies(user: MatrixClient, room: str) -> list[str]:
    return [body(e) for e in await user.messages(room, 100) if e["type"] == "m.room.message"]


async def test_mail_server_restart_loses_and_doubles_nothing(
    dcbridge: DCBridge, synapse: SynapseServer, alice: Peer, mailstack: MailStack
) -> None:
    user, room, chat = await _dm_setup(dcbridge, synapse, alice)
    await asyncio.to_thread(mailstack.stop)
    try:
        for i in range(3):
            await user.send_text(room, f"during outage {i}")
        await alice.send(chat, "alice during outage")
        await asyncio.sleep(3)
    finally:
        await asyncio.to_thread(mailstack.start)
    for i in range(3):
        text = f"during outage {i}"

        async def arrived(text: str = text) -> int:
            return await _count(alice, chat, text)

        await until(arrived, 90, text)
    await user.wait_for_event(room, lambda e: body(e) == "alice during outage", 90)
    await asyncio.sleep(3)
    for i in range(3):
        assert await _count(alice, chat, f"during outage {i}") == 1
    assert (await _bodies(user, room)).count("alice during outage") == 1
    await user.close()


async def test_core_crash_is_restarted_without_loss(
    dcbridge: DCBridge, synapse: SynapseServer, alice: Peer
) -> None:
    user, room, chat = await _dm_setup(dcbridge, synapse, alice)
    conn: Any = dcbridge.connector
    old_pid = conn.rpc.pid
    await conn.rpc.kill()
    await user.send_text(room, "sent while the core restarts")
    await until(lambda: conn.rpc.is_up and conn.rpc.pid != old_pid, 30, "core restarted")
    await until(lambda: _count(alice, chat, "sent while the core restarts"), 60, "delivered")
    await alice.send(chat, "after the crash")
    await user.wait_for_event(room, lambda e: body(e) == "after the crash", 60)
    await asyncio.sleep(2)
    assert await _count(alice, chat, "sent while the core restarts") == 1
    assert conn.rpc.restarts >= 1
    await user.close()


async def test_bridge_restart_keeps_rooms_and_ids(
    dcbridge: DCBridge, synapse: SynapseServer, alice: Peer
) -> None:
    user, room, chat = await _dm_setup(dcbridge, synapse, alice)
    first = await alice.send(chat, "before restart")
    await user.wait_for_event(room, lambda e: body(e) == "before restart", 30)
    assert dcbridge.bridge is not None
    await dcbridge.bridge.stop()
    await alice.send(chat, "while the bridge is down")
    await asyncio.sleep(2)
    await dcbridge.start(policy={"dm_receiver": user.user_id})
    await user.wait_for_event(room, lambda e: body(e) == "while the bridge is down", 60)
    # Ids survived: an edit of a message from before the restart finds its event.
    await alice.call("send_edit_request", first, "before restart (edited)")
    await user.wait_for_event(
        room,
        lambda e: e["content"].get("m.new_content", {}).get("body") == "before restart (edited)",
        30,
    )
    since = alice.mark()
    await user.send_text(room, "after restart")
    await alice.wait_message(lambda m: m["text"].endswith("after restart"), since)
    assert (await _bodies(user, room)).count("while the bridge is down") == 1
    await user.close()


HOSTILE = [
    # Broken MIME: a multipart without its boundary, undecodable bytes.
    b"Subject: broken\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="nope"\r\n\r\n--other\r\n\xff\xfe\x00garbage\r\n',
    # An auto-reply: must never be answered.
    b"Subject: Out of office\r\nAuto-Submitted: auto-replied\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nI am away.\r\n",
    # A bounce.
    b"Subject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nThe mail system could not deliver.\r\n"
    b"--b\r\nContent-Type: message/delivery-status\r\n\r\nStatus: 5.1.1\r\n--b--\r\n",
    # Invalid encodings in headers and body.
    b"Subject: =?utf-8?B?////?=\r\nContent-Type: text/plain; charset=x-unknown\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n",
]


def _send_raw(stack: MailStack, sender: str, to: str, raw: bytes) -> None:
    header = f"From: {sender}\r\nTo: {to}\r\nMessage-ID: <hostile-{id(raw)}@example.test>\r\n"
    with smtplib.SMTP(stack.host, stack.smtp_port) as smtp:
        smtp.login(sender, stack.users[sender])
        smtp.sendmail(sender, [to], header.encode() + raw)


async def test_hostile_mail_is_survived_and_never_answered(
    dcbridge: DCBridge, synapse: SynapseServer, alice: Peer, mailstack: MailStack
) -> None:
    user, room, chat = await _dm_setup(dcbridge, synapse, alice)
    spammer = mailstack.add_user("mailer-daemon-test", "pw")
    for raw in HOSTILE:
        await asyncio.to_thread(_send_raw, mailstack, spammer, dcbridge.address, raw)
    big = b"Subject: huge\r\nContent-Type: text/plain\r\n\r\n" + b"x" * (2 * 1024 * 1024)
    await asyncio.to_thread(_send_raw, mailstack, spammer, dcbridge.address, big)
    await asyncio.sleep(5)
    # The connector still works both ways.
    await alice.send(chat, "still there?")
    await user.wait_for_event(room, lambda e: body(e) == "still there?", 30)
    since = alice.mark()
    await user.send_text(room, "yes")
    await alice.wait_message(lambda m: m["text"].endswith("yes"), since)
    # Nothing reached Matrix from the hostile sender, and nothing was sent back to it.
    members = set()
    for r in await user.joined_rooms():
        members |= set(await user.joined_members(r))
    assert ghost(spammer) not in members
    log = await asyncio.to_thread(lambda: (mailstack.base / "postfix.log").read_text())
    assert f"to=<{spammer}>" not in log
    await user.close()
