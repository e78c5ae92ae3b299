"""The test harness itself: throwaway PostgreSQL, real Synapse and the test Matrix client."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from mautrix.util.async_db import Database, UpgradeTable

try:  # tests/ as a package (tests/__init__.py) or as a plain directory on sys.path
    from tests.harness import (
        MatrixClient,
        MatrixRequestError,
        PostgresServer,
        SynapseServer,
        find_postgres_bin,
        free_port,
        start_postgres,
        start_synapse,
        wait_for_port,
    )
except ImportError:
    from harness import (  # type: ignore[no-redef]
        MatrixClient,
        MatrixRequestError,
        PostgresServer,
        SynapseServer,
        find_postgres_bin,
        free_port,
        start_postgres,
        start_synapse,
        wait_for_port,
    )

AS_TOKEN = "harness-as-token"
HS_TOKEN = "harness-hs-token"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def as_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def synapse(tmp_path_factory: pytest.TempPathFactory, as_port: int) -> Iterator[SynapseServer]:
    workdir = tmp_path_factory.mktemp("synapse")
    registration = workdir / "harness-appservice.yaml"
    registration.write_text(
        json.dumps(
            {
                "id": "harness",
                "url": f"http://127.0.0.1:{as_port}",
                "as_token": AS_TOKEN,
                "hs_token": HS_TOKEN,
                "sender_localpart": "harnessbot",
                "rate_limited": False,
                "receive_ephemeral": True,
                "namespaces": {
                    "users": [{"exclusive": True, "regex": "@harness_.*:localhost"}],
                    "aliases": [{"exclusive": True, "regex": "#harness_.*:localhost"}],
                    "rooms": [],
                },
            }
        )
    )
    started = time.monotonic()
    server = start_synapse(workdir, [registration])
    print(f"synapse started in {time.monotonic() - started:.2f} s")
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def alice(synapse: SynapseServer) -> AsyncIterator[MatrixClient]:
    client = synapse.new_client("alice")
    yield client
    await client.close()


@pytest.fixture(scope="module")
async def bob(synapse: SynapseServer) -> AsyncIterator[MatrixClient]:
    client = synapse.new_client("bob")
    yield client
    await client.close()


# -- ports ------------------------------------------------------------------------------------


def test_free_port_and_wait_for_port() -> None:
    port = free_port()
    with pytest.raises(TimeoutError):
        wait_for_port("127.0.0.1", port, timeout=0.2)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        wait_for_port("127.0.0.1", port, timeout=5)


# -- postgres ---------------------------------------------------------------------------------


def test_missing_postgres_gives_install_hint(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"apt-get install postgresql"):
        find_postgres_bin(tmp_path)


async def test_postgres_accepts_asyncpg(postgres: PostgresServer) -> None:
    url = postgres.create_database("harness_asyncpg")
    assert url == f"postgres://postgres@127.0.0.1:{postgres.port}/harness_asyncpg"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INT)")
        await conn.executemany("INSERT INTO t VALUES ($1, $2)", [("a", 1), ("b", 2)])
        assert await conn.fetchval("SELECT sum(v) FROM t") == 3
        assert await conn.fetchval("SHOW fsync") == "off"
    finally:
        await conn.close()
    postgres.drop_database("harness_asyncpg")


async def test_postgres_with_mautrix_async_db(postgres: PostgresServer) -> None:
    url = postgres.create_database("harness_mautrix")
    upgrade_table = UpgradeTable()

    @upgrade_table.register(description="initial")
    async def upgrade_v1(conn: Any) -> None:
        await conn.execute("CREATE TABLE puppet (mxid TEXT PRIMARY KEY, nick TEXT NOT NULL)")

    db = Database.create(url, upgrade_table=upgrade_table)
    await db.start()
    try:
        await db.execute("INSERT INTO puppet VALUES ($1, $2)", "@harness_a:localhost", "a")
        assert await db.fetchval("SELECT nick FROM puppet") == "a"
        assert await db.fetchval("SELECT version FROM version") == 1
    finally:
        await db.stop()


def test_postgres_stop_removes_cluster(tmp_path: Path) -> None:
    server = start_postgres(tmp_path)
    assert server.data_dir.is_dir()
    server.stop()
    assert not server.base_dir.exists()
    assert (tmp_path / "postgres.log").is_file()
    server.stop()  # idempotent


# -- synapse ----------------------------------------------------------------------------------


def test_register_and_login(synapse: SynapseServer) -> None:
    assert synapse.url == f"http://127.0.0.1:{synapse.port}"
    user_id = synapse.register_user("carol", "carol-pw")
    assert user_id == "@carol:localhost"
    assert synapse.login("carol", "carol-pw")
    with pytest.raises(RuntimeError, match="403"):
        synapse.login("carol", "wrong")


async def test_admin_user(synapse: SynapseServer) -> None:
    admin_id = synapse.register_user("admin", "admin-pw", admin=True)
    async with MatrixClient(synapse.url, synapse.login("admin", "admin-pw"), admin_id) as admin:
        status, body = await admin.request("GET", f"/_synapse/admin/v2/users/{admin_id}")
        assert status == 200 and body["admin"] is True


async def test_client_room_roundtrip(
    synapse: SynapseServer, alice: MatrixClient, bob: MatrixClient
) -> None:
    await alice.set_displayname("Alice")
    room = await alice.create_room(name="harness", preset="private_chat", invite=[bob.user_id])
    assert await bob.join(room) == room
    assert set(await alice.joined_members(room)) == {alice.user_id, bob.user_id}

    first = await alice.send_text(room, "hello from alice")
    seen = await bob.wait_for_event(room, lambda e: e["event_id"] == first)
    assert seen["content"]["body"] == "hello from alice"
    assert seen["sender"] == alice.user_id

    edit = await alice.edit(room, first, "hello, edited")
    reply = await bob.reply(room, first, "a reply")
    reaction = await bob.react(room, first, "👍")
    emote = await alice.send_text(room, "waves", msgtype="m.emote")
    await bob.typing(room, True)
    await bob.typing(room, False)
    await bob.read_receipt(room, emote)
    await alice.send_state(room, "m.room.topic", "", {"topic": "testing"})
    assert await alice.get_state(room, "m.room.topic") == {"topic": "testing"}
    assert await alice.get_state(room, "org.example.absent", "x") is None

    events = await alice.messages(room)
    ids = [e["event_id"] for e in events]
    assert ids.index(first) < ids.index(edit) < ids.index(reply) < ids.index(reaction)
    by_id = {e["event_id"]: e for e in events}
    assert by_id[edit]["content"]["m.new_content"]["body"] == "hello, edited"
    assert by_id[reply]["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == first
    assert by_id[reaction]["content"]["m.relates_to"]["key"] == "👍"
    assert by_id[emote]["content"]["msgtype"] == "m.emote"

    await alice.redact(room, reply, reason="cleanup")
    redacted = await alice.wait_for_event(
        room, lambda e: e["event_id"] == reply and not e["content"]
    )
    assert "redacted_because" in redacted.get("unsigned", {})

    await alice.kick(room, bob.user_id, "bye")
    member = await alice.get_state(room, "m.room.member", bob.user_id)
    assert member is not None and member["membership"] == "leave"
    await alice.ban(room, bob.user_id, "banned")
    with pytest.raises(MatrixRequestError) as err:
        await bob.join(room)
    assert err.value.status == 403
    await alice.unban(room, bob.user_id)
    await alice.leave(room)


async def test_wait_for_event_times_out_with_context(alice: MatrixClient) -> None:
    room = await alice.create_room()
    await alice.send_text(room, "not it")
    with pytest.raises(TimeoutError, match="not it"):
        await alice.wait_for_event(room, lambda e: False, timeout=0.5)


async def test_rate_limits_are_off(alice: MatrixClient) -> None:
    room = await alice.create_room()
    ids = await asyncio.gather(*(alice.send_text(room, f"burst {i}") for i in range(40)))
    assert len(set(ids)) == 40
    await alice.set_presence("online", "here")
    assert (await alice.get_presence(alice.user_id))["presence"] == "online"


async def test_appservice_gets_transactions(
    synapse: SynapseServer, alice: MatrixClient, as_port: int
) -> None:
    received: list[dict[str, Any]] = []
    bad_auth = 0

    async def transactions(request: web.Request) -> web.Response:
        nonlocal bad_auth
        if request.headers.get("Authorization") != f"Bearer {HS_TOKEN}":
            bad_auth += 1
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        received.extend((await request.json()).get("events", []))
        return web.json_response({})

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_put("/_matrix/app/v1/transactions/{txn}", transactions)
    app.router.add_post("/_matrix/app/v1/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", as_port)
    await site.start()
    try:
        bot = MatrixClient(synapse.url, AS_TOKEN, "@harnessbot:localhost")
        async with bot:
            status, body = await bot.request(
                "POST", "/_matrix/client/v1/appservice/harness/ping", json={}
            )
            assert status == 200, body
            room = await alice.create_room(invite=["@harnessbot:localhost"])
            await bot.join(room)
            event_id = await alice.send_text(room, "to the bridge")
            deadline = time.monotonic() + 10
            while not any(e.get("event_id") == event_id for e in received):
                assert time.monotonic() < deadline, f"not delivered; got {received}"
                await asyncio.sleep(0.05)
        assert bad_auth == 0
    finally:
        await runner.cleanup()


def test_restart_keeps_data(synapse: SynapseServer) -> None:
    synapse.register_user("dave", "dave-pw")
    old_pid = synapse.pid
    synapse.restart()
    assert synapse.running and synapse.pid != old_pid
    assert synapse.login("dave", "dave-pw")


def test_synapse_start_failure_shows_log(tmp_path: Path) -> None:
    bad = tmp_path / "bad-appservice.yaml"
    bad.write_text("id: broken\n")  # no tokens, no namespaces: Synapse refuses it
    with pytest.raises(RuntimeError, match="exited with code"):
        start_synapse(tmp_path / "hs", [bad], timeout=60)
