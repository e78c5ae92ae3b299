"""An account the admin provisions for a Matrix user (``provisioned`` in the config), and
formatting both ways, end to end: real Delta Chat cores over postfix + dovecot, real Synapse."""

from __future__ import annotations

import logging
import secrets

import pytest

from tests.deltachat.conftest import DCBridge, Peer
from tests.deltachat.test_dm import body, ghost
from tests.harness.synapse import SynapseServer
from tests.helpers import command, is_member, management_room, new_user, until

# A formatted Matrix message whose plain body says something else: what reaches Delta Chat is
# rendered from the HTML.
FORMATTED_HTML = (
    "<p><strong>bold</strong>, <em>italic</em>, <code>x = 1 &lt; 2</code> and"
    ' <a href="https://example.org/page?a=1&amp;b=2">the page</a>, Tom &amp; Jerry</p>\n'
    "<blockquote>\n<p>a quote</p>\n</blockquote>\n"
    "<ul>\n<li>one</li>\n<li>two</li>\n</ul>\n"
)
FORMATTED_BODY = "formatted message (plain body)"
FORMATTED_TEXT = (
    "**bold**, _italic_, `x = 1 < 2` and [the page](https://example.org/page?a=1&b=2),"
    " Tom & Jerry\n> a quote\n- one\n- two"
)


async def test_provisioned_account_dm_and_formatting(
    dcbridge: DCBridge,
    synapse: SynapseServer,
    alice: Peer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    ivy = new_user(synapse)
    # The admin made a mailbox for ivy and put it into the bridge's config: no login command.
    password = "prov-" + secrets.token_hex(12)
    addr = dcbridge.stack.add_user("prov-" + ivy.user_id[1:].split(":")[0], password)
    await dcbridge.start(provisioned={ivy.user_id: {"address": addr, "password": password}})
    mgmt = await management_room(ivy)
    reply = await command(ivy, mgmt, "deltachat invite", "invite link")
    assert reply.startswith("Scan or open your Delta Chat invite link")
    await alice.join(reply.rsplit(" ", 1)[-1])
    # Inviting alice's ghost opens a DM from ivy's own address.
    room = await ivy.create_room(invite=[ghost(alice.addr)], is_direct=True)
    await until(lambda: is_member(ivy, room, ghost(alice.addr)), 20, "ghost joined")
    since = alice.mark()
    await ivy.send_text(room, "hello from ivy")
    got = await alice.wait_message(lambda m: "hello from ivy" in m["text"], since)
    assert got["text"] == "hello from ivy"  # no relay prefix
    assert (await alice.call("get_contact", got["fromId"]))["address"] == addr
    assert got["showPadlock"]
    chat = got["chatId"]
    await alice.call("accept_chat", chat)
    # Alice's answer reaches ivy in the same room, from alice's ghost.
    await alice.send(chat, "hello ivy")
    await ivy.wait_for_event(
        room, lambda e: body(e) == "hello ivy" and e["sender"] == ghost(alice.addr), 30
    )

    # Formatting, Matrix -> Delta Chat: light markdown rendered from the HTML, no markup.
    since = alice.mark()
    await ivy.send_event(
        room,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": FORMATTED_BODY,
            "format": "org.matrix.custom.html",
            "formatted_body": FORMATTED_HTML,
        },
    )
    got = await alice.wait_message(lambda m: m["chatId"] == chat, since)
    assert got["text"] == FORMATTED_TEXT
    # An ordered list and a code block; an edit is rendered the same way.
    since = alice.mark()
    await ivy.send_event(
        room,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "steps",
            "format": "org.matrix.custom.html",
            "formatted_body": (
                "<ol><li>first</li><li>second</li></ol><pre><code>a &lt;b&gt;\n</code></pre>"
            ),
        },
    )
    steps = await alice.wait_message(lambda m: m["chatId"] == chat, since)
    assert steps["text"] == "1. first\n2. second\n```\na <b>\n```"
    mine = await ivy.wait_for_event(room, lambda e: body(e) == "steps")
    await ivy.send_event(
        room,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "* steps",
            "m.new_content": {
                "msgtype": "m.text",
                "body": "steps (edited)",
                "format": "org.matrix.custom.html",
                "formatted_body": "<del>steps</del> <strong>done</strong>",
            },
            "m.relates_to": {"rel_type": "m.replace", "event_id": mine["event_id"]},
        },
    )
    await until(lambda: _text(alice, steps["id"], "~~steps~~ **done**"), 20, "edit")

    # Formatting, Delta Chat -> Matrix: links and markdown markers become HTML.
    await alice.send(chat, "see https://example.org/a?b=1&c=2 and **this** or _that_")
    evt = await ivy.wait_for_event(room, lambda e: body(e).startswith("see https://"), 30)
    assert evt["content"]["format"] == "org.matrix.custom.html"
    assert evt["content"]["formatted_body"] == (
        'see <a href="https://example.org/a?b=1&amp;c=2">https://example.org/a?b=1&amp;c=2</a>'
        " and <strong>this</strong> or <em>that</em>"
    )
    # Plain text (markup-looking characters included) stays plain.
    await alice.send(chat, "1 < 2 and <b>not bold</b>")
    evt = await ivy.wait_for_event(room, lambda e: body(e) == "1 < 2 and <b>not bold</b>", 30)
    assert "formatted_body" not in evt["content"]

    # The password never reached the bridge's log.
    assert dcbridge.bridge is not None
    await dcbridge.bridge.stop()
    assert addr in caplog.text  # the account's lines are in the captured log
    assert password not in caplog.text
    await ivy.close()


async def _text(peer: Peer, msg_id: int, text: str) -> bool:
    return bool((await peer.call("get_message", msg_id))["text"] == text)
