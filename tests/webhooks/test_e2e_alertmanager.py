"""A real Alertmanager notifies a hook: the firing group is one Matrix message, and when the
group resolves that same message is edited to resolved; a new firing is a new message."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness.alertmanager import start_alertmanager
from tests.webhooks.conftest import HookRoom, body

HookRoomFactory = Callable[..., Awaitable[HookRoom]]


def _ts(delta_s: float) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delta_s)
    return when.isoformat().replace("+00:00", "Z")


async def _push(am_url: str, alerts: list[dict[str, Any]]) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{am_url}/api/v2/alerts", json=alerts) as r:
        assert r.status == 200, await r.text()


def _alert(instance: str, ends_in: float | None = None) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "labels": {"alertname": "DiskFull", "instance": instance, "severity": "page"},
        "annotations": {"summary": f"disk of {instance} is full"},
        "startsAt": _ts(-60),
    }
    if ends_in is not None:
        alert["endsAt"] = _ts(ends_in)
    return alert


async def _ghost_messages(hr: HookRoom) -> list[dict[str, Any]]:
    return [
        e
        for e in await hr.admin.messages(hr.room, limit=100)
        if e["type"] == "m.room.message" and e["sender"].startswith("@webhook_")
    ]


async def test_alertmanager_group_fires_then_resolves_as_an_edit(
    hook_room_factory: HookRoomFactory, tmp_path: Path
) -> None:
    hr = await hook_room_factory("oncall")
    url = await hr.create_hook("alertmanager")
    am = start_alertmanager(tmp_path / "alertmanager", url)
    try:
        await _push(am.url, [_alert("db1"), _alert("db2")])
        # Alertmanager may notify the group with db1 alone first, then with both: the
        # group's message then shows both by an edit. Either way, wait for what it shows.
        shown = await hr.admin.wait_for_event(
            hr.room, lambda e: "FIRING (2): DiskFull" in _shown(e), timeout=30
        )
        assert shown["sender"].startswith("@webhook_")
        assert "disk of db1 is full" in _shown(shown) and "disk of db2 is full" in _shown(shown)
        shown_html = _shown(shown, "formatted_body")
        assert "<strong>[firing]</strong> DiskFull" in shown_html
        target = shown["content"].get("m.relates_to", {}).get("event_id")
        firing = await hr.admin.get_event(hr.room, target) if target else shown
        assert "FIRING" in body(firing) and "m.relates_to" not in firing["content"]

        # Resolve both: Alertmanager sends the group's "resolved" notification.
        await _push(am.url, [_alert("db1", ends_in=-1), _alert("db2", ends_in=-1)])
        edit = await hr.admin.wait_for_event(
            hr.room,
            lambda e: (
                e["content"].get("m.relates_to", {}).get("rel_type") == "m.replace"
                and "RESOLVED: DiskFull" in e["content"].get("m.new_content", {}).get("body", "")
            ),
            timeout=30,
        )
        assert edit["content"]["m.relates_to"]["event_id"] == firing["event_id"]
        # One message for the group: everything else from the ghost is an edit of it.
        originals = [e for e in await _ghost_messages(hr) if "m.relates_to" not in e["content"]]
        assert [e["event_id"] for e in originals] == [firing["event_id"]]

        # The same alert firing again later is news: a new message.
        await _push(am.url, [_alert("db1")])
        # (The group's first message may have said "FIRING (1)" too, if db1 came alone.)
        again = await hr.admin.wait_for_event(
            hr.room,
            lambda e: (
                "FIRING (1): DiskFull" in body(e)
                and "m.relates_to" not in e["content"]
                and e["event_id"] != firing["event_id"]
            ),
            timeout=30,
        )
        assert again["sender"] == firing["sender"]
    except BaseException:
        print(am.log()[-4000:])
        raise
    finally:
        am.stop()


def _shown(evt: dict[str, Any], key: str = "body") -> str:
    """What a message event shows: an edit's new content, else its own."""
    content = evt.get("content", {})
    if content.get("m.relates_to", {}).get("rel_type") == "m.replace":
        content = content.get("m.new_content", {})
    return str(content.get(key, ""))


def _notification(status: str) -> dict[str, Any]:
    alert = {**_alert("web1"), "status": status}
    return {
        "version": "4",
        "groupKey": '{}:{alertname="HighLatency"}',
        "status": status,
        "receiver": "mimi",
        "commonLabels": {"alertname": "HighLatency"},
        "alerts": [alert],
    }


async def test_repeated_resolution_edits_and_does_not_post(
    hook_room_factory: HookRoomFactory,
) -> None:
    """Alertmanager may notify a resolved group again: the message is edited, never doubled."""
    hr = await hook_room_factory("latency")
    url = await hr.create_hook("am")
    async with aiohttp.ClientSession() as s:
        for status in ("firing", "resolved", "resolved"):
            async with s.post(url, json=_notification(status)) as r:
                assert r.status == 200
        await hr.admin.wait_for_event(hr.room, lambda e: "FIRING (1): HighLatency" in body(e))

        def edits(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [e for e in events if "m.relates_to" in e["content"]]

        await hr.admin.wait_for_event(
            hr.room,
            lambda e: "RESOLVED: HighLatency" in body(e) and "m.relates_to" in e["content"],
        )
        # The second resolution is handled after its request was answered: wait for its edit.
        for _ in range(100):
            await hr.bridge.queues.drain()
            events = await _ghost_messages(hr)
            if len(edits(events)) >= 2:
                break
            await asyncio.sleep(0.1)
        assert len([e for e in events if "m.relates_to" not in e["content"]]) == 1
        assert len(edits(events)) == 2
        async with s.post(url, json=_notification("firing")) as r:
            assert r.status == 200
        await hr.admin.wait_for_event(
            hr.room,
            lambda e: (
                "FIRING (1): HighLatency" in body(e)
                and "m.relates_to" not in e["content"]
                and e["event_id"] != events[0]["event_id"]
            ),
        )
