"""Metrics end to end: a real Prometheus scrapes the bridge while messages cross a real
Synapse both ways; its HTTP API shows the counters and histograms moved by what was sent.
Also: the metrics port is not the appservice port, and the Grafana dashboard names only
exported series."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp

from bridge.connector import ConnectorError, PortalKey
from bridge.metrics import SERIES
from tests.conftest import HS_TOKEN
from tests.harness.ports import free_port
from tests.harness.prometheus import PrometheusServer, start_prometheus
from tests.harness.synapse import SynapseServer
from tests.helpers import (
    command,
    management_room,
    metrics_bridge,
    new_user,
    scrape,
    sent,
    until,
)

ROOT = Path(__file__).resolve().parent.parent
M2R = '{network="testnet",direction="matrix_to_remote"}'
R2M = '{network="testnet",direction="remote_to_matrix"}'


async def scraped(prom: PrometheusServer) -> None:
    """Wait for a scrape that started after now (Prometheus runs in its own process; the
    bridge answers it from this event loop, so the blocking calls go to a thread)."""
    await asyncio.to_thread(prom.wait_scraped, time.time(), 60.0)


async def value(prom: PrometheusServer, expr: str) -> float:
    return await asyncio.to_thread(prom.value, expr) or 0.0


async def test_prometheus_sees_messages_both_ways(
    tmp_path: Path, synapse: SynapseServer, as_port: int
) -> None:
    metrics_port = free_port()
    prom = await asyncio.to_thread(
        start_prometheus, tmp_path / "prometheus", [f"127.0.0.1:{metrics_port}"]
    )
    bridge = await metrics_bridge(tmp_path, synapse, as_port, metrics_port, {"testnet": {}}, "m")
    try:
        await bridge.start()
        alice = new_user(synapse)
        mgmt = await management_room(alice)
        await command(alice, mgmt, "login testnet alice-metrics", "Logged in")
        await command(alice, mgmt, "join testnet #metrics", "Invited you")
        room = await alice.join("#testnet_=23metrics:localhost")
        await scraped(prom)
        before = {
            "m2r": await value(prom, f"mimi_messages_bridged_total{M2R}"),
            "r2m": await value(prom, f"mimi_messages_bridged_total{R2M}"),
            "m2r_lat": await value(prom, f"mimi_message_latency_seconds_count{M2R}"),
            "r2m_lat": await value(prom, f"mimi_message_latency_seconds_count{R2M}"),
            "txn": await value(prom, "mimi_transactions_received_total"),
            "hs": await value(prom, "sum(mimi_homeserver_request_duration_seconds_count)"),
            "db": await value(prom, "sum(mimi_database_query_duration_seconds_count)"),
        }
        assert before["db"] > 0 and before["hs"] > 0  # start-up already queried both

        # Three messages Matrix -> remote, two remote -> Matrix, one refused by the network.
        for i in range(3):
            await alice.send_text(room, f"to remote {i}")
        for i in range(3):
            await until(sent(bridge, "message", text=f"to remote {i}"))
        tn: Any = bridge.connectors["testnet"]
        for i in range(2):
            await tn.remote_message("#metrics", "bob", f"to matrix {i}")
        for i in range(2):
            await alice.wait_for_event(
                room, lambda e, i=i: e["content"].get("body") == f"to matrix {i}"
            )
        await alice.send_text(room, "fail: refused by the network")
        await alice.wait_for_event(
            room, lambda e: "was not delivered" in e["content"].get("body", "")
        )
        # A transaction the homeserver sends twice is recorded once and counted as replayed.
        replayed_before = await value(prom, "mimi_transactions_replayed_total")
        txn = {
            "events": [
                {
                    "type": "m.room.message",
                    "room_id": "!not-a-portal:localhost",
                    "sender": "@someone:localhost",
                    "event_id": "$metrics-replay",
                    "content": {"msgtype": "m.text", "body": "x"},
                }
            ]
        }
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.put(
                    f"http://127.0.0.1:{as_port}/_matrix/app/v1/transactions/metrics-replay-1",
                    json=txn,
                    headers={"Authorization": f"Bearer {HS_TOKEN}"},
                ) as resp:
                    assert resp.status == 200
        await bridge.queues.drain()

        await scraped(prom)
        assert await value(prom, f"mimi_messages_bridged_total{M2R}") - before["m2r"] == 3
        assert await value(prom, f"mimi_messages_bridged_total{R2M}") - before["r2m"] == 2
        assert (
            await value(prom, f"mimi_message_latency_seconds_count{M2R}") - before["m2r_lat"] == 3
        )
        assert (
            await value(prom, f"mimi_message_latency_seconds_count{R2M}") - before["r2m_lat"] == 2
        )
        assert await value(prom, f"mimi_message_latency_seconds_sum{M2R}") > 0
        # Every message took under a minute: all observations are in the finite buckets.
        assert await value(
            prom,
            'mimi_message_latency_seconds_bucket{network="testnet",direction="remote_to_matrix",le="60.0"}',
        ) == await value(prom, f"mimi_message_latency_seconds_count{R2M}")
        failed = await asyncio.to_thread(prom.query, "mimi_messages_failed_total")
        assert failed == {
            (("direction", "matrix_to_remote"), ("instance", f"127.0.0.1:{metrics_port}"),
             ("job", "mimi-bridge"), ("network", "testnet"), ("reason", "remote_error")): 1.0
        }  # fmt: skip
        # Each message was its own transaction, plus the two PUTs above (one replayed).
        assert await value(prom, "mimi_transactions_received_total") - before["txn"] >= 3 + 1 + 2
        assert await value(prom, "mimi_transactions_replayed_total") - replayed_before == 1
        assert (
            await value(prom, "sum(mimi_homeserver_request_duration_seconds_count)") > before["hs"]
        )
        assert await value(prom, "sum(mimi_database_query_duration_seconds_count)") > before["db"]
        assert await value(prom, 'mimi_logins{network="testnet",state="ok"}') == 1
        assert await value(prom, "mimi_pending_events") == 0
        assert (
            await value(prom, 'mimi_remote_connections{network="testnet",state="connected"}') == 1
        )
        assert await value(prom, 'mimi_remote_connections{network="testnet",state="failed"}') == 0
        assert await value(prom, f"mimi_queue_depth{M2R}") == 0
        assert await value(prom, f"mimi_queue_oldest_age_seconds{R2M}") == 0
        # Every query of the dashboard is valid PromQL and finds series.
        for expr in dashboard_exprs():
            expr = expr.replace("$__rate_interval", "1m")
            assert await asyncio.to_thread(prom.query, expr) is not None, expr
    finally:
        await bridge.stop()
        await asyncio.to_thread(prom.stop)


async def test_metrics_only_on_their_own_port(
    tmp_path: Path, synapse: SynapseServer, as_port: int
) -> None:
    metrics_port = free_port()
    bridge = await metrics_bridge(tmp_path, synapse, as_port, metrics_port, {"testnet": {}}, "p")
    try:
        await bridge.start()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{as_port}/metrics") as resp:
                assert resp.status == 404
            async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                text = await resp.text()
        declared = {line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE")}
        # The client library adds a ``_created`` timestamp beside unlabelled counters.
        assert {n for n in declared if not n.endswith("_created")} == set(SERIES)
    finally:
        await bridge.stop()


async def test_failures_told_outside_delivery_are_counted(
    tmp_path: Path, synapse: SynapseServer, as_port: int
) -> None:
    """Messages that fail where the bridge tells their senders before (or instead of) the
    delivery proper count too: the network giving no client, a bug caught by the queue, the
    homeserver refusing a remote message."""
    metrics_port = free_port()
    bridge = await metrics_bridge(tmp_path, synapse, as_port, metrics_port, {"testnet": {}}, "f")
    bridge.load_connectors()
    tn: Any = bridge.connectors["testnet"]

    async def unreachable(portal: PortalKey) -> None:
        raise ConnectorError(f"the test network cannot reach {portal.remote_id}")

    async def buggy(portal: PortalKey) -> None:
        raise RuntimeError("a bug in the test network")

    def failed(samples: dict[Any, float], direction: str, reason: str) -> float:
        labels = (("direction", direction), ("network", "testnet"), ("reason", reason))
        return samples.get(("mimi_messages_failed_total", labels), 0.0)

    def told(text: str) -> Any:
        return lambda e: (
            e["content"].get("msgtype") == "m.notice" and text in e["content"].get("body", "")
        )

    try:
        await bridge.start()
        gus = new_user(synapse)
        room = await gus.join("#testnet_=23failing:localhost")
        tn.relay_client = unreachable
        await gus.send_text(room, "into the void")
        await gus.wait_for_event(room, told("cannot reach #failing"))
        tn.relay_client = buggy
        await gus.send_text(room, "into the bug")
        await gus.wait_for_event(room, told("an internal error in the bridge"))

        levels = await bridge.hs.get_state(room, "m.room.power_levels") or {}
        levels["events_default"] = 100  # only the bot may speak: bob's message is refused
        await bridge.hs.send_state(room, "m.room.power_levels", levels)
        await tn.remote_message("#failing", "bob", "refused by the homeserver")
        await gus.wait_for_event(room, told("could not be bridged"), 30)
        await bridge.queues.drain()

        samples = await scrape(metrics_port)
        assert failed(samples, "matrix_to_remote", "remote_error") == 1
        assert failed(samples, "matrix_to_remote", "internal_error") == 1
        assert failed(samples, "remote_to_matrix", "homeserver_error") == 1
        await gus.close()
    finally:
        await bridge.stop()


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((ROOT / "contrib" / "grafana" / "mimi-bridge.json").read_text())
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dashboard)
    return exprs


def test_dashboard_uses_exported_series_only() -> None:
    exprs = dashboard_exprs()
    assert exprs, "the dashboard has no queries"
    allowed = set(SERIES) | {
        f"{name}_{suffix}"
        for name in SERIES
        if name.endswith("_seconds")
        for suffix in ("bucket", "count", "sum")
    }
    used: set[str] = set()
    for expr in exprs:
        for name in re.findall(r"\bmimi_[a-z_]+", expr):
            assert name in allowed, f"{name} in {expr!r} is not an exported series"
            used.add(name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum"))
    assert used == set(SERIES), f"series without a panel: {set(SERIES) - used}"
