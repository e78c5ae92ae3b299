"""The webhooks connector end to end through Synapse: hooks created by a room admin post
Slack-style, plain and Alertmanager payloads as their own ghost; bad requests are refused with
a JSON error and put nothing in the room; tokens are rotated and deleted, stored only hashed;
the room's messages go to an outgoing URL, signed, with retries, and a failing URL is told
once."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import struct
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from tests.harness.synapse import SynapseServer
from tests.helpers import new_user, until
from tests.webhooks.conftest import BOT, URL, HookRoom, LocalHttp, body, post

HookRoomFactory = Callable[..., Awaitable[HookRoom]]


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


async def _from_ghost(hr: HookRoom, ghost_prefix: str = "@webhook_") -> list[dict[str, Any]]:
    return [
        e
        for e in await hr.admin.messages(hr.room, limit=100)
        if e["type"] == "m.room.message" and e["sender"].startswith(ghost_prefix)
    ]


async def test_incoming_payloads_and_bad_input(
    hook_room_factory: HookRoomFactory, synapse: SynapseServer, local_http: LocalHttp
) -> None:
    hr = await hook_room_factory("deploys", max_body_kb=4)
    # Outside a webhooks room, and for a member without power, the command is refused.
    joe = new_user(synapse)
    await hr.admin.invite(hr.room, joe.user_id)
    await joe.join(hr.room)
    await joe.send_text(hr.room, "!mimi webhook create sneaky")
    await hr.admin.wait_for_event(hr.room, lambda e: "only room admins" in body(e))
    url = await hr.create_hook("ci")

    # Slack-compatible: mrkdwn, a username and an icon.
    local_http.icon = _png()
    status, answer = await post(
        url,
        {
            "text": "*deploy* of _web_ done: <https://ci.example/42|build 42> `v1.2`",
            "username": "CI Bot",
            "icon_url": f"{local_http.url}/icon.png",
        },
    )
    assert (status, answer["ok"]) == (200, True)
    evt = await hr.admin.wait_for_event(hr.room, lambda e: "done: build 42" in body(e))
    ghost = evt["sender"]
    assert ghost.startswith("@webhook_h")
    html = evt["content"]["formatted_body"]
    assert "<strong>deploy</strong>" in html and "<em>web</em>" in html
    assert '<a href="https://ci.example/42">build 42</a>' in html and "<code>v1.2</code>" in html
    # The plain body keeps the mrkdwn markers as they were typed, links spelled out.
    assert body(evt) == "*deploy* of _web_ done: build 42 (https://ci.example/42) `v1.2`"
    profile = await until(
        lambda: _profile_with_avatar(hr, ghost), what="the hook's ghost shows the icon"
    )
    assert profile["displayname"] == "CI Bot"

    # Attachments and blocks become Matrix HTML; the plain form passes its HTML (sanitized).
    await post(
        url,
        {
            "attachments": [
                {
                    "color": "#ff0000",
                    "title": "Disk full",
                    "title_link": "https://grafana.example/d/1",
                    "text": "on *db1*",
                    "fields": [{"title": "Usage", "value": "99%", "short": True}],
                }
            ]
        },
    )
    att = await hr.admin.wait_for_event(hr.room, lambda e: "Disk full" in body(e))
    att_html = att["content"]["formatted_body"]
    assert '<a href="https://grafana.example/d/1">Disk full</a>' in att_html
    assert "<strong>db1</strong>" in att_html and "<strong>Usage</strong>: 99%" in att_html
    await post(
        url,
        {
            "text": "fallback",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": "Release 3"}},
                {"type": "divider"},
                {"type": "section", "text": {"type": "mrkdwn", "text": "~old~ *new*"}},
            ],
        },
    )
    blk = await hr.admin.wait_for_event(hr.room, lambda e: "Release 3" in body(e))
    assert "<h4>Release 3</h4>" in blk["content"]["formatted_body"]
    assert "<del>old</del> <strong>new</strong>" in blk["content"]["formatted_body"]
    await post(url, {"text": "plain form", "html": "<b>plain</b> <script>x()</script>form"})
    plain = await hr.admin.wait_for_event(hr.room, lambda e: body(e) == "plain form")
    assert "<b>plain</b>" in plain["content"]["formatted_body"]
    assert "script" not in plain["content"]["formatted_body"]

    # Rejected requests: each answers with a JSON error, and none reaches the room.
    before = len(await _from_ghost(hr))
    wrong = url.rsplit("/", 1)[0] + "/not-a-token"
    status, answer = await post(wrong, {"text": "lost"})
    assert status == 404 and answer["error"] == "unknown webhook"
    status, answer = await post(url, data=b"{not json", content_type="application/json")
    assert status == 400 and "not JSON" in answer["error"]
    status, answer = await post(url, {"unexpected": "shape"})
    assert status == 400 and "unknown payload" in answer["error"]
    status, answer = await post(url, {"text": "x" * 5000})
    assert status == 413 and "over 4096 bytes" in answer["error"]
    status, answer = await post(url, {"blocks": [{"type": "carousel"}]})
    assert status == 400 and "carousel" in answer["error"]
    # Slack's form encoding works too; then the room holds exactly one more message.
    status, _ = await post(
        url,
        data=b"payload=%7B%22text%22%3A%22form+ok%22%7D",
        content_type="application/x-www-form-urlencoded",
    )
    assert status == 200
    await hr.admin.wait_for_event(hr.room, lambda e: body(e) == "form ok")
    after = await _from_ghost(hr)
    assert [body(e) for e in after[before:]] == ["form ok"]

    # Tokens: only a hash is stored; rotation retires the old URL; deletion answers 404.
    token = url.rsplit("/", 1)[1]
    rows = await hr.bridge.db.fetch("SELECT token_hash FROM webhooks_hook")
    assert [r["token_hash"] for r in rows] == [hashlib.sha256(token.encode()).hexdigest()]
    listing = await hr.command("webhook list", "Webhooks of this room")
    assert "- ci (created by" in listing and token not in listing
    reply = await hr.command("webhook rotate ci", "New URL of 'ci'")
    new_url = reply.split(": ", 1)[1]
    assert (await post(url, {"text": "old url"}))[0] == 404
    assert (await post(new_url, {"text": "new url"}))[0] == 200
    await hr.admin.wait_for_event(hr.room, lambda e: body(e) == "new url")
    await hr.command("webhook delete ci", "Deleted the webhook 'ci'")
    assert (await post(new_url, {"text": "deleted"}))[0] == 404
    assert await hr.bridge.db.fetch("SELECT id FROM webhooks_hook") == []


async def _profile_with_avatar(hr: HookRoom, user_id: str) -> dict[str, Any] | None:
    profile = await hr.admin.get_profile(user_id)
    return profile if str(profile.get("avatar_url", "")).startswith("mxc://") else None


async def test_rate_limit_per_hook(hook_room_factory: HookRoomFactory) -> None:
    hr = await hook_room_factory("busy", rate_limit_per_minute=3)
    url = await hr.create_hook("noisy")
    other = await hr.create_hook("quiet")
    statuses = [(await post(url, {"text": f"burst {n}"}))[0] for n in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    # Another hook has its own budget.
    assert (await post(other, {"text": "quiet one"}))[0] == 200
    await hr.admin.wait_for_event(hr.room, lambda e: body(e) == "quiet one")
    texts = sorted(body(e) for e in await _from_ghost(hr))
    assert texts == ["burst 0", "burst 1", "burst 2", "quiet one"]


async def test_outgoing_signed_with_retries_and_failure_told_once(
    hook_room_factory: HookRoomFactory, local_http: LocalHttp
) -> None:
    hr = await hook_room_factory("chatops", outgoing_backoff_seconds=0.05, outgoing_retries=2)
    await hr.create_hook("bot")
    reply = await hr.command(f"webhook outgoing bot {local_http.url}/in", "now posts")
    secret = reply.rsplit(" ", 1)[1]
    local_http.fail = 2  # two refusals, then the third try lands
    await hr.admin.send_text(hr.room, "deploy web please")
    await until(lambda: local_http.received, what="the outgoing post arrived")
    headers, raw = local_http.received[0]
    payload = json.loads(raw)
    assert payload["text"] == "deploy web please" and payload["user_id"] == hr.admin.user_id
    assert payload["channel_name"] == "chatops"
    mac = hmac.new(
        secret.encode(), headers["x-mimi-timestamp"].encode() + b"." + raw, hashlib.sha256
    )
    assert headers["x-mimi-signature"] == "sha256=" + mac.hexdigest()
    assert len(local_http.received) == 1  # retried, not doubled

    # A URL that never answers: the room hears it once, not once per message.
    await hr.command("webhook create dead", "Created the webhook 'dead'")
    await hr.command("webhook outgoing dead http://127.0.0.1:9/none", "now posts")
    for n in range(3):
        await hr.admin.send_text(hr.room, f"into the void {n}")
    await hr.admin.wait_for_event(
        hr.room, lambda e: e["sender"] == BOT and "could not deliver" in body(e)
    )
    await until(lambda: len(local_http.received) == 4, what="the working hook got all")
    await asyncio.sleep(1.0)
    told = [
        e
        for e in await hr.admin.messages(hr.room, limit=100)
        if e["sender"] == BOT and "could not deliver" in body(e)
    ]
    assert len(told) == 1 and "'dead'" in body(told[0])


async def test_create_in_a_room_not_bridged_yet_bridges_it(
    make_bridge: Any, synapse: SynapseServer
) -> None:
    """One command sets a room up: `webhook create` in a plain room bridges it first."""
    bridge = await make_bridge(connectors={"webhooks": {}})
    ivy = new_user(synapse)
    room = await ivy.create_room(invite=[BOT], power_level_content_override={"users": {BOT: 100}})
    await until(lambda: bridge.hs.is_joined(room, BOT), what="bot joined")
    # A member without power may not: nothing is bridged.
    joe = new_user(synapse)
    await ivy.invite(room, joe.user_id)
    await joe.join(room)
    await joe.send_text(room, "!mimi webhook create sneaky")
    await ivy.wait_for_event(room, lambda e: e["sender"] == BOT and "only room admins" in body(e))
    assert await bridge.portal_store.by_room(room) is None

    await ivy.send_text(room, "!mimi webhook create deploys")
    reply = await ivy.wait_for_event(
        room, lambda e: e["sender"] == BOT and "Created the webhook 'deploys'" in body(e)
    )
    assert "Bridged this room to webhooks" in body(reply)
    portal = await bridge.portal_store.by_room(room)
    assert portal is not None and portal.key.network == "webhooks"
    m = URL.search(body(reply))
    assert m, body(reply)
    status, _ = await post(m.group(1), {"text": "deployed v1"})
    assert status == 200
    got = await ivy.wait_for_event(room, lambda e: body(e) == "deployed v1")
    assert got["sender"].startswith("@webhook_")
    # A second hook in the now bridged room needs no link; the room is bridged once.
    await HookRoom(bridge, ivy, room, portal.key.remote_id).create_hook("second")
    again = await bridge.portal_store.by_room(room)
    assert again is not None and again.key == portal.key
