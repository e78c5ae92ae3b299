"""Shard leases through a real nats-server: claim and renew, balance between workers, hand-over
on a clean stop, takeover after a crash or a cut-off, a NATS restart, fencing revisions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats.js.errors
import pytest

from bridge.scale.shards import all_shards
from tests.harness.nats import NatsServer
from tests.helpers import until
from tests.scale.leasing import Ledger, disjoint, shares, workers_on

SHARDS = all_shards("irc")  # 257, the production layout
FAST = {"ttl": 3.0, "renew_every": 0.5, "claims_per_second": 100.0}
WORKER_SCRIPT = Path(__file__).with_name("lease_worker.py")
ROOT = Path(__file__).resolve().parents[2]


async def test_a_worker_claims_every_shard_and_keeps_it_past_the_ttl(
    nats_server: NatsServer,
) -> None:
    ledger = Ledger()
    shards = all_shards("irc", 8)
    async with workers_on(nats_server.url, ledger, **FAST) as pool:
        a = await pool.start("a", shards)
        await until(lambda: a.owned() == set(shards), 30, "a holds every shard")
        first = {s: a.leases.revision(s) for s in shards}
        assert all(first.values())
        # three TTLs: without renewals every key would have expired twice over
        await asyncio.sleep(3 * FAST["ttl"])
        assert a.owned() == set(shards)
        kv = await a.nc.jetstream().key_value("mimi_shards")
        for shard in shards:
            entry = await kv.get(shard)
            assert entry.revision == a.leases.revision(shard)
            assert entry.revision > first[shard]
            assert b'"worker": "a"' in (entry.value or b"")
        # held: nobody else can create the key
        with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
            await kv.create(shards[0], b"x")
        assert [e.kind for e in ledger.events].count("gain") == len(shards)
        assert not ledger.of("a", "lose") and not ledger.violations


async def test_two_then_three_workers_share_257_shards_evenly(nats_server: NatsServer) -> None:
    ledger = Ledger()
    async with workers_on(nats_server.url, ledger, **FAST) as pool:
        a = await pool.start("a", SHARDS)
        b = await pool.start("b", SHARDS)

        def balanced(want: list[int]) -> bool:
            assert disjoint(*pool.workers), "a shard owned twice"
            return shares(*pool.workers) == want

        await until(lambda: balanced(want=[128, 129]), 60, "a and b hold 128 and 129")
        assert a.owned() | b.owned() == set(SHARDS)
        c = await pool.start("c", SHARDS)
        await until(lambda: balanced(want=[85, 86, 86]), 60, "a newcomer takes its share")
        assert a.owned() | b.owned() | c.owned() == set(SHARDS)
        assert len(ledger.of("c", "gain")) >= 85
        assert not ledger.violations, ledger.violations


async def test_a_clean_stop_hands_its_shards_over_at_once(nats_server: NatsServer) -> None:
    ledger = Ledger()
    # a long TTL: a hand-over that waited for the keys to expire would take 20 s
    slow = {"ttl": 20.0, "renew_every": 2.0, "claims_per_second": 200.0}
    async with workers_on(nats_server.url, ledger, **slow) as pool:
        a = await pool.start("a", SHARDS)
        b = await pool.start("b", SHARDS)
        await until(lambda: shares(a, b) == [128, 129], 60, "a and b share the shards")
        moving = a.owned()
        before = {s: a.leases.revision(s) or 0 for s in moving}
        loop = asyncio.get_running_loop()
        stopped = loop.time()
        await pool.stop(a)
        assert all(e.kind == "lose" for e in ledger.of("a", "lose")) and len(
            ledger.of("a", "lose")
        ) == len(moving)
        await until(lambda: b.owned() == set(SHARDS), 15, "b holds every shard")
        took = loop.time() - stopped
        print(f"clean stop: {len(moving)} shards moved in {took:.2f} s")
        assert took < slow["ttl"] / 2
        # fencing: the new holder's revision is above the old holder's last
        assert all((b.leases.revision(s) or 0) > before[s] for s in moving)
        assert not ledger.violations, ledger.violations
