"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

from bridge.bridge import Bridge
from bridge.config import load as load_config
from tests.harness.synapse import MatrixClient, SynapseServer

_users = itertools.count(1)
ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter from the project's root (what it imports is what a
    bridge process would); its standard output, stripped. Fails with its stderr if it fails."""
    res = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


async def until(pred: Callable[[], Any], limit_s: float = 15.0, what: str = "") -> Any:
    """Poll ``pred`` (plain or async) until it returns something truthy; return that."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while True:
        value = pred()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= end:
            raise AssertionError(f"condition not met in {limit_s} s: {what or pred}")
        await asyncio.sleep(0.1)


def sent(bridge: Bridge, kind: str, **match: Any) -> Callable[[], dict[str, Any] | None]:
    """Finds what the test network connector recorded."""

    def find() -> dict[str, Any] | None:
        for entry in bridge.connectors["testnet"].sent:  # type: ignore[attr-defined]
            if entry["kind"] == kind and all(entry.get(k) == v for k, v in match.items()):
                return entry
        return None

    return find


async def management_room(user: MatrixClient) -> str:
    room = await user.create_room(invite=["@mimibot:localhost"], is_direct=True)
    await user.wait_for_event(room, lambda e: "management room" in e["content"].get("body", ""))
    return room


async def command(user: MatrixClient, room: str, text: str, expect: str) -> str:
    await user.send_text(room, text)
    evt = await user.wait_for_event(
        room,
        lambda e: e["sender"] == "@mimibot:localhost" and expect in e["content"].get("body", ""),
    )
    return str(evt["content"]["body"])


async def ask(user: MatrixClient, room: str, text: str, expect: str) -> str:
    """A command's reply: the bot's first notice after it that says ``expect``."""
    seen = {e["event_id"] for e in await user.messages(room, limit=100)}
    await user.send_text(room, text)
    evt = await user.wait_for_event(
        room,
        lambda e: (
            e["event_id"] not in seen
            and e["sender"] == "@mimibot:localhost"
            and expect in e["content"].get("body", "")
        ),
        timeout=30,
    )
    return str(evt["content"]["body"])


async def notices(user: MatrixClient, room: str, text: str) -> list[str]:
    """The bot's messages in the room's recent timeline that say ``text``, oldest first."""
    events = await user.messages(room, limit=100)
    return [
        str(e["content"]["body"])
        for e in events
        if e.get("sender") == "@mimibot:localhost" and text in e["content"].get("body", "")
    ]


def new_user(synapse: SynapseServer, prefix: str = "user") -> MatrixClient:
    return synapse.new_client(f"{prefix}{next(_users)}")


async def is_member(client: MatrixClient, room: str, user: str) -> bool:
    return user in await client.joined_members(room)


async def metrics_bridge(
    tmp_path: Path,
    synapse: SynapseServer,
    as_port: int,
    metrics_port: int,
    connectors: dict[str, Any],
    name: str = "metrics",
) -> Bridge:
    """A bridge (not started) whose config enables ``metrics`` on ``metrics_port``."""
    from tests.conftest import write_config

    path = write_config(
        tmp_path / f"{name}.yaml",
        synapse,
        as_port,
        f"sqlite://{tmp_path / (name + '.db')}",
        connectors,
    )
    yaml = YAML()
    doc = yaml.load(path)
    doc["metrics"] = {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"}
    yaml.dump(doc, path)
    return Bridge(load_config(path))


async def scrape(metrics_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The bridge's /metrics as (series name, sorted labels) -> value."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
