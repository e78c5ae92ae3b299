"""The homeserver -> appservice API: authentication, malformed bodies, unknown routes,
idempotent and durable transactions (replay, SIGKILL right after the acknowledgement)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import HS_TOKEN, BridgeFactory, write_config
from tests.harness.synapse import SynapseServer

ROUTES = [
    ("PUT", "/_matrix/app/v1/transactions/t-auth", {"events": []}),
    ("PUT", "/transactions/t-auth-legacy", {"events": []}),
    ("GET", "/_matrix/app/v1/users/@testnet_x:localhost", None),
    ("GET", "/users/@testnet_x:localhost", None),
    ("GET", "/_matrix/app/v1/rooms/%23testnet_%3D23auth:localhost", None),
    ("GET", "/rooms/%23testnet_%3D23auth:localhost", None),
    ("GET", "/_matrix/app/v1/thirdparty/protocol/testnet", None),
    ("GET", "/_matrix/app/unstable/thirdparty/protocol/testnet", None),
    ("GET", "/_matrix/app/v1/thirdparty/location/testnet?network=testnet&room=%23a", None),
    ("GET", "/_matrix/app/v1/thirdparty/user/testnet?network=testnet&user=a", None),
    ("GET", "/_matrix/app/v1/thirdparty/location?alias=%23testnet_%3D23a:localhost", None),
    ("GET", "/_matrix/app/v1/thirdparty/user?userid=@testnet_a:localhost", None),
    ("POST", "/_matrix/app/v1/ping", {"transaction_id": "x"}),
]


async def call(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    raw: bytes | None = None,
    query_token: str | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if query_token:
        path += ("&" if "?" in path else "?") + f"access_token={query_token}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, base + path, data=data, headers=headers) as r,
    ):
        return r.status, await r.json(content_type=None)


async def test_every_route_checks_tokens(make_bridge: BridgeFactory, as_port: int) -> None:
    await make_bridge()
    base = f"http://127.0.0.1:{as_port}"
    for method, path, body in ROUTES:
        status, resp = await call(base, method, path, body)
        assert status == 401, (path, status, resp)
        status, resp = await call(base, method, path, body, token="wrong")
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN"), path
        status, resp = await call(base, method, path, body, token=HS_TOKEN, query_token="other")
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN"), path
        status, resp = await call(base, method, path, body, token=HS_TOKEN)
        assert status == 200, (path, status, resp)
        # Legacy query-parameter authentication alone is accepted.
        status, _ = await call(base, method, path, body, query_token=HS_TOKEN)
        assert status == 200, path


async def test_bad_requests(make_bridge: BridgeFactory, as_port: int) -> None:
    await make_bridge()
    base = f"http://127.0.0.1:{as_port}"
    put = "/_matrix/app/v1/transactions/"
    assert (await call(base, "PUT", put + "bad1", token=HS_TOKEN, raw=b"{nope"))[1][
        "errcode"
    ] == "M_NOT_JSON"
    for n, body in enumerate([[], {"events": {}}, {"events": [1]}, {"events": [], "ephemeral": 3}]):
        status, resp = await call(base, "PUT", put + f"bad-{n}", body, token=HS_TOKEN)
        assert (status, resp["errcode"]) == (400, "M_BAD_JSON"), body
    status, resp = await call(base, "GET", "/_matrix/app/v1/nope", token=HS_TOKEN)
    assert (status, resp["errcode"]) == (404, "M_UNRECOGNIZED")
    status, resp = await call(base, "POST", put + "x", {"events": []}, token=HS_TOKEN)
    assert (status, resp["errcode"]) == (405, "M_UNRECOGNIZED")
    # A malformed event inside a valid transaction is logged and skipped, the others go on.
    status, _ = await call(base, "PUT", put + "odd", {"events": [{"type": 5}]}, token=HS_TOKEN)
    assert status == 200
    # Unknown users and aliases are 404 with an error body.
    status, resp = await call(
        base, "GET", "/_matrix/app/v1/users/@someone:elsewhere", token=HS_TOKEN
    )
    assert status == 404
    status, resp = await call(
        base, "GET", "/_matrix/app/v1/thirdparty/protocol/nope", token=HS_TOKEN
    )
    assert status == 404


async def test_replayed_transaction_is_processed_once(
    make_bridge: BridgeFactory, synapse: SynapseServer, as_port: int
) -> None:
    bridge = await make_bridge()
    gina = synapse.new_client("gina")
    await gina.set_displayname("Gina")
    room = await gina.join("#testnet_=23replay:localhost")
    # A synthetic transaction, as the homeserver would push it, sent twice.
    evt = {
        "type": "m.room.message",
        "room_id": room,
        "sender": gina.user_id,
        "event_id": "$replayed-event",
        "origin_server_ts": 1,
        "content": {"msgtype": "m.text", "body": "only once"},
    }
    base = f"http://127.0.0.1:{as_port}"
    for _ in range(3):
        status, _ = await call(
            base, "PUT", "/_matrix/app/v1/transactions/replay-1", {"events": [evt]}, token=HS_TOKEN
        )
        assert status == 200
    await bridge.queues.drain()
    tn: Any = bridge.connectors["testnet"]
    assert [e["text"] for e in tn.sent if e["kind"] == "message"] == ["<Gina> only once"]
    # The same id after a restart is still known.
    await bridge.stop()
    bridge2 = await make_bridge()
    status, _ = await call(
        base, "PUT", "/_matrix/app/v1/transactions/replay-1", {"events": [evt]}, token=HS_TOKEN
    )
    assert status == 200
    await bridge2.queues.drain()
    assert bridge2.connectors["testnet"].sent == []  # type: ignore[attr-defined]
    await gina.close()


async def test_event_redelivered_in_a_new_transaction_is_bridged_once(
    make_bridge: BridgeFactory, synapse: SynapseServer, as_port: int
) -> None:
    """A homeserver that timed out waiting may put an event into a new transaction."""
    bridge = await make_bridge()
    hana = synapse.new_client("hana")
    await hana.set_displayname("Hana")
    room = await hana.join("#testnet_=23redeliver:localhost")
    evt = {
        "type": "m.room.message",
        "room_id": room,
        "sender": hana.user_id,
        "event_id": "$redelivered-event",
        "origin_server_ts": 1,
        "content": {"msgtype": "m.text", "body": "once only"},
    }
    base = f"http://127.0.0.1:{as_port}"
    put = "/_matrix/app/v1/transactions/"
    for txn in ("redeliver-1", "redeliver-2"):
        status, _ = await call(base, "PUT", put + txn, {"events": [evt]}, token=HS_TOKEN)
        assert status == 200
    await bridge.queues.drain()
    tn: Any = bridge.connectors["testnet"]
    assert [e["text"] for e in tn.sent if e["kind"] == "message"] == ["<Hana> once only"]
    # After a restart, in a third transaction beside a new event: only the new one is bridged.
    await bridge.stop()
    bridge2 = await make_bridge()
    fresh = {**evt, "event_id": "$fresh-event", "content": {"msgtype": "m.text", "body": "new"}}
    status, _ = await call(
        base, "PUT", put + "redeliver-3", {"events": [evt, fresh]}, token=HS_TOKEN
    )
    assert status == 200
    await bridge2.queues.drain()
    tn2: Any = bridge2.connectors["testnet"]
    assert [e["text"] for e in tn2.sent if e["kind"] == "message"] == ["<Hana> new"]
    await hana.close()


def _run_bridge(config: Path) -> subprocess.Popen[bytes]:
    # Output to a file: an unread pipe fills up and blocks the bridge's logging.
    log = (config.parent / f"{config.stem}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
    )


async def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise AssertionError(f"bridge exited with {proc.returncode}")
        try:
            status, _ = await call(f"http://127.0.0.1:{port}", "GET", "/_matrix/mau/live")
            if status == 200:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("bridge did not start")


async def test_sigkill_after_ack_loses_nothing(
    tmp_path: Path, synapse: SynapseServer, as_port: int
) -> None:
    record = tmp_path / "record.jsonl"
    db = tmp_path / "bridge.db"
    slow = write_config(
        tmp_path / "slow.yaml",
        synapse,
        as_port,
        f"sqlite://{db}",
        {"testnet": {"delay_seconds": 30, "record_file": str(record)}},
    )
    fast = write_config(
        tmp_path / "fast.yaml",
        synapse,
        as_port,
        f"sqlite://{db}",
        {"testnet": {"record_file": str(record)}},
    )
    proc = _run_bridge(slow)
    try:
        await _wait_listening(as_port, proc)
        hank = synapse.new_client("hank")
        await hank.set_displayname("Hank")
        room = await hank.join("#testnet_=23durable:localhost")
        await hank.send_text(room, "survives a crash")
        # Acknowledged and recorded, but not processed (the connector is slow): kill it now.
        for _ in range(200):
            with sqlite3.connect(db) as c:
                rows = c.execute("SELECT event FROM pending_event").fetchall()
            if any("survives a crash" in r[0] for r in rows):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("event never recorded")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not record.exists() or "survives a crash" not in record.read_text()
        proc = _run_bridge(fast)
        await _wait_listening(as_port, proc)
        for _ in range(150):
            if record.exists() and "survives a crash" in record.read_text():
                break
            await asyncio.sleep(0.1)
        lines = [json.loads(x) for x in record.read_text().splitlines()]
        assert [x["text"] for x in lines if x["kind"] == "message"] == ["<Hank> survives a crash"]
        await hank.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = -9
    assert code == 0, (tmp_path / "fast.log").read_text()[-3000:]


@pytest.mark.parametrize("key", ["homeserver", "appservice"])
def test_missing_section_is_a_config_error(tmp_path: Path, key: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "homeserver: {address: 'http://x', domain: x}\nappservice: {port: 1, address: 'http://x'}\n"
    )
    text = cfg.read_text().splitlines()
    cfg.write_text("\n".join(line for line in text if not line.startswith(key)))
    res = subprocess.run(
        [sys.executable, "-m", "bridge", "-c", str(cfg)], capture_output=True, text=True
    )
    assert res.returncode == 2
    assert res.stderr.strip() == f"mimi-bridge: config error: {key}: missing"


async def _raw_request(port: int, data: bytes) -> bytes:
    """Send bytes as they are (no client library to fix them up) and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


async def test_malformed_requests_do_not_fill_the_log(
    make_bridge: BridgeFactory, as_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    await make_bridge()
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    bad = b"GET /_matrix/mau/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad\x01Header: \x01\x02\r\n\r\n"
    for _ in range(5):
        answer = await _raw_request(as_port, bad)
        assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer[:200]
    # Still serving.
    status, _ = await call(f"http://127.0.0.1:{as_port}", "GET", "/_matrix/mau/live")
    assert status == 200
    assert "Traceback" not in caplog.text
    assert all(r.exc_info is None for r in caplog.records), [r.getMessage() for r in caplog.records]
    about = [r for r in caplog.records if "Error handling request" in r.getMessage()]
    # Five bad requests, at most one line (the others are counted into the next one).
    assert len(about) <= 1, [r.getMessage() for r in about]
    for r in about:
        assert "\n" not in r.getMessage() and len(r.getMessage()) < 400
        assert r.levelno <= logging.WARNING


def test_request_error_log_counts_what_it_leaves_out() -> None:
    from bridge.appservice.request_log import RequestErrorLog

    now = [100.0]
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            assert record.exc_info is None
            lines.append(record.getMessage())

    base = logging.getLogger("test.request_log")
    base.setLevel(logging.DEBUG)
    base.propagate = False
    base.addHandler(Collect())
    log = RequestErrorLog(base, interval_s=10, clock=lambda: now[0])
    try:
        raise ValueError("bad\nheader\x01")
    except ValueError as e:
        for _ in range(4):
            log.exception("Error handling request from %s", "127.0.0.1", exc_info=e)
    assert lines == ["Error handling request from 127.0.0.1: ValueError: bad header\x01"]
    now[0] += 11
    log.error("Error handling request from %s", "127.0.0.2")
    assert lines[1] == (
        "Error handling request from 127.0.0.2 (and 3 more since the last such line, not logged)"
    )


async def test_path_parameters_are_decoded_once(
    make_bridge: BridgeFactory, as_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge = await make_bridge()
    seen: list[tuple[str, Any]] = []

    async def query_alias(alias: str) -> bool:
        seen.append(("alias", alias))
        return False

    async def query_user(user_id: str) -> bool:
        seen.append(("user", user_id))
        return False

    async def thirdparty_protocol(protocol: str) -> dict[str, Any] | None:
        seen.append(("protocol", protocol))
        return {}

    async def thirdparty_location(protocol: str | None, fields: dict[str, str]) -> list[Any]:
        seen.append(("location", (protocol, fields)))
        return []

    monkeypatch.setattr(bridge, "query_alias", query_alias)
    monkeypatch.setattr(bridge, "query_user", query_user)
    monkeypatch.setattr(bridge, "thirdparty_protocol", thirdparty_protocol)
    monkeypatch.setattr(bridge, "thirdparty_location", thirdparty_location)
    base = f"http://127.0.0.1:{as_port}"
    # The alias #irc_acc_#spec%41:localhost, percent-encoded once as a homeserver sends it.
    for path in (
        "/_matrix/app/v1/rooms/%23irc_acc_%23spec%2541%3Alocalhost",
        "/rooms/%23irc_acc_%23spec%2541%3Alocalhost",
        "/_matrix/app/v1/users/%40irc_acc_a%2541%3Alocalhost",
        "/_matrix/app/v1/thirdparty/protocol/ir%2541c",
        "/_matrix/app/v1/thirdparty/location/ir%2541c?room=%2523a%2541",
        "/_matrix/app/v1/thirdparty/location?alias=%23irc_acc_%23spec%2541%3Alocalhost",
    ):
        status, _ = await call(base, "GET", path, token=HS_TOKEN)
        assert status in (200, 404), path
    assert seen == [
        ("alias", "#irc_acc_#spec%41:localhost"),
        ("alias", "#irc_acc_#spec%41:localhost"),
        ("user", "@irc_acc_a%41:localhost"),
        ("protocol", "ir%41c"),
        ("protocol", "ir%41c"),
        ("location", ("ir%41c", {"room": "%23a%41"})),
        ("location", (None, {"alias": "#irc_acc_#spec%41:localhost"})),
    ]


async def test_path_parameters_may_hold_braces_and_slashes(
    make_bridge: BridgeFactory, as_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp's default placeholder refuses ``{`` and ``}`` (an IRC channel's alias may hold
    them), and Synapse leaves the ``/`` of an alias or a user id unencoded: every path
    parameter still reaches its handler whole, encoded or not."""
    bridge = await make_bridge()
    seen: list[tuple[str, str]] = []

    async def query_alias(alias: str) -> bool:
        seen.append(("alias", alias))
        return False

    async def query_user(user_id: str) -> bool:
        seen.append(("user", user_id))
        return False

    async def thirdparty_protocol(protocol: str) -> dict[str, Any] | None:
        seen.append(("protocol", protocol))
        return None

    monkeypatch.setattr(bridge, "query_alias", query_alias)
    monkeypatch.setattr(bridge, "query_user", query_user)
    monkeypatch.setattr(bridge, "thirdparty_protocol", thirdparty_protocol)
    base = f"http://127.0.0.1:{as_port}"
    for path in (
        # As Synapse sends them: urllib's quote(), which encodes braces and leaves "/".
        "/_matrix/app/v1/rooms/%23irc_acc_%23x%7By%7D%3Alocalhost",
        "/rooms/%23irc_acc_%23x%7By%7D%3Alocalhost",
        "/_matrix/app/v1/rooms/%23irc_acc_%23a/b%3Alocalhost",
        "/_matrix/app/v1/rooms/%23irc_acc_%23a%2Fb%3Alocalhost",
        "/_matrix/app/v1/users/%40irc_acc_a/%7Bb%7D%3Alocalhost",
        "/users/%40irc_acc_a/%7Bb%7D%3Alocalhost",
        "/_matrix/app/v1/thirdparty/protocol/a%7Bb%7D/c",
        "/_matrix/app/unstable/thirdparty/location/a%7Bb%7D",
        "/_matrix/app/v1/thirdparty/user/a%7Bb%7D",
    ):
        status, resp = await call(base, "GET", path, token=HS_TOKEN)
        assert (status, resp["errcode"]) == (404, "M_NOT_FOUND"), (path, resp)
    # Braces left as they are reach the handler too.
    answer = await _raw_request(
        as_port,
        b"GET /_matrix/app/v1/rooms/%23irc_acc_%23x{y}%3Alocalhost HTTP/1.1\r\n"
        + b"Host: 127.0.0.1\r\nAuthorization: Bearer "
        + HS_TOKEN.encode()
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert b"M_NOT_FOUND" in answer, answer[:300]
    # A transaction id is opaque: braces and slashes are part of it.
    status, _ = await call(
        base, "PUT", "/_matrix/app/v1/transactions/t%7B1%7D/2", {"events": []}, token=HS_TOKEN
    )
    assert status == 200
    assert seen == [
        ("alias", "#irc_acc_#x{y}:localhost"),
        ("alias", "#irc_acc_#x{y}:localhost"),
        ("alias", "#irc_acc_#a/b:localhost"),
        ("alias", "#irc_acc_#a/b:localhost"),
        ("user", "@irc_acc_a/{b}:localhost"),
        ("user", "@irc_acc_a/{b}:localhost"),
        ("protocol", "a{b}/c"),
        ("protocol", "a{b}"),
        ("protocol", "a{b}"),
        ("alias", "#irc_acc_#x{y}:localhost"),
    ]
