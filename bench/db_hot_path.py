"""The database work of one bridged message, alone: CPU and wall time per event on SQLite.

For each of N Matrix -> remote events, what the bridge does with the database: record the
appservice transaction carrying it (``TransactionStore.record``), store the id mapping of the
message sent (``MessageStore.insert``), and mark the event handled. No homeserver, no network:
the figure stays readable on a machine busy with other work, where the end-to-end benches'
CPU figures move with the load.

    /tmp/venv/bin/python bench/db_hot_path.py [-n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(n: int) -> None:
    from bridge.connector import PortalKey
    from bridge.db import MessageRow, MessageStore, TransactionStore, open_database

    with tempfile.TemporaryDirectory(prefix="db-hot-path-") as tmp:
        db = await open_database(f"sqlite://{tmp}/bridge.db")
        try:
            txns, msgs = TransactionStore(db), MessageStore(db)
            key = PortalKey("irc_bench", "#bench")
            evt = {
                "type": "m.room.message",
                "room_id": "!room:bench",
                "sender": "@user:bench",
                "content": {"msgtype": "m.text", "body": "a line of an ordinary length"},
                "origin_server_ts": 1,
                "unsigned": {"age": 1},
            }
            for rnd in ("warm-up", "measured"):
                c0, t0 = cpu_seconds(), time.monotonic()
                for i in range(n):
                    event_id = f"${rnd}.{i}"
                    got = await txns.record(f"{rnd}.{i}", [{**evt, "event_id": event_id}])
                    assert got
                    row = MessageRow(
                        key, f"{rnd}.{i}", 0, "!room:bench", event_id, "@user:bench",
                        "@user:bench", 1, body="a line",
                    )  # fmt: skip
                    await msgs.insert(row)
                    txns.handled(got[0].seq)
                await txns.close()
                cpu, wall = cpu_seconds() - c0, time.monotonic() - t0
            assert await txns.pending() == []
        finally:
            await db.stop()
    print(
        f"{n} Matrix -> remote events, database work per event (SQLite): "
        f"{cpu / n * 1e6:.0f} us CPU, {wall / n * 1e6:.0f} us wall"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="events")
    asyncio.run(run(parser.parse_args().n))


if __name__ == "__main__":
    main()
