"""Crashes lose no encrypted message. A room key is delivered once: the bridge is SIGKILLed
right after the homeserver got the acknowledgement of the transaction carrying one, and after
a restart the next message encrypted with that key is decrypted. And a message waiting for
its late key when the bridge is killed is handled after the restart, once the key comes."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import write_config
from tests.e2ee.conftest import NioFactory
from tests.e2ee.helpers import BOT, encrypted_management_room, unshared_ciphertext
from tests.harness.synapse import SynapseServer

PROBED = "the homeserver delivers to-device messages"


def _run_bridge(config: Path) -> subprocess.Popen[bytes]:
    log = (config.parent / f"{config.stem}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
    )


async def _poll(pred: object, what: str, limit_s: float = 45.0) -> object:
    assert callable(pred)
    for _ in range(int(limit_s * 10)):
        value = pred()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} within {limit_s} s")


def _query(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as c:
        return c.execute(sql, args).fetchall()


async def test_room_key_survives_sigkill_after_ack(
    tmp_path: Path, synapse: SynapseServer, as_port: int, nio_user: NioFactory
) -> None:
    db = tmp_path / "bridge.db"
    config = write_config(
        tmp_path / "bridge.yaml",
        synapse,
        as_port,
        f"sqlite://{db}",
        {"testnet": {}},
        encryption={"allow": True},
    )
    proc = _run_bridge(config)
    try:
        alice = await nio_user()
        room = await encrypted_management_room(alice)

        # A new room key, sent on its own (no message yet): a transaction of to-device only.
        last = "SELECT COALESCE(MAX(received_at), 0) FROM appservice_txn"
        before = _query(db, last)[0][0]
        alice.client.invalidate_outbound_session(room)
        await alice.client.share_group_session(room, ignore_unverified_devices=True)
        session = alice.client.olm.outbound_group_sessions[room]  # type: ignore[union-attr]
        newer = "SELECT txn_id FROM appservice_txn WHERE received_at > ?"
        txn = await _poll(lambda: _query(db, newer, before), "the key's transaction never came")
        txn_id = int(str(txn[0][0]))  # type: ignore[index]
        # The homeserver deletes a transaction once it has the acknowledgement: kill the
        # bridge right then, whatever it was doing.
        hs_db = Path(synapse.config["database"]["args"]["database"])
        unacked = "SELECT 1 FROM application_services_txns WHERE as_id=? AND txn_id=?"
        await _poll(
            lambda: not _query(hs_db, unacked, "mimi-bridge", txn_id), "the ack never reached"
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stored = "SELECT 1 FROM crypto_megolm_inbound_session WHERE room_id=? AND session_id=?"
        assert _query(db, stored, room, session.id), "the acknowledged room key was not stored"

        proc = _run_bridge(config)
        sent = await alice.send_text(room, "help")
        assert alice.raw is not None
        raw = await alice.raw.get_event(room, sent)
        assert raw["content"]["session_id"] == session.id  # the key from before the crash
        await alice.wait_for_body(room, "login <network>", sender=BOT)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = -9
    log = (tmp_path / "bridge.log").read_text()
    assert code == 0, log[-3000:]
    assert "could not decrypt" not in log


async def test_event_waiting_for_its_key_survives_sigkill(
    tmp_path: Path, synapse: SynapseServer, as_port: int, nio_user: NioFactory
) -> None:
    db = tmp_path / "bridge.db"
    config = write_config(
        tmp_path / "bridge.yaml",
        synapse,
        as_port,
        f"sqlite://{db}",
        {"testnet": {}},
        encryption={"allow": True},
    )
    proc = _run_bridge(config)
    try:
        alice = await nio_user()
        room = await encrypted_management_room(alice)
        assert alice.raw is not None
        session, payload = await unshared_ciphertext(alice, room, "help")
        event_id = await alice.raw.send_event(room, "m.room.encrypted", payload)
        kept = "SELECT 1 FROM mimi_crypto_waiting WHERE event_id=?"
        await _poll(lambda: _query(db, kept, event_id), "the event was never kept")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

        proc = _run_bridge(config)
        # Only once to-device messages reach the new process: Synapse does not keep those it
        # could not deliver while the appservice was down (its retries carry events only).
        log = tmp_path / "bridge.log"
        before = log.read_text().count(PROBED)
        await _poll(lambda: log.read_text().count(PROBED) > before, "the bridge never came back")
        alice.client.olm.outbound_group_sessions[room] = session  # type: ignore[union-attr]
        await alice.client.share_group_session(room, ignore_unverified_devices=True)
        await alice.wait_for_body(room, "login <network>", sender=BOT)
        await _poll(lambda: not _query(db, kept, event_id), "the kept event stayed")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = -9
    assert code == 0, (tmp_path / "bridge.log").read_text()[-3000:]
