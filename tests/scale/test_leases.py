"""Shard leases through a real nats-server: claim and renew, balance between workers, hand-over
on a clean stop, takeover after a crash or a cut-off, a NATS restart, fencing revisions."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import nats.js.errors
import pytest

from bridge.scale.leases import ShardLeases
from bridge.scale.shards import all_shards
from tests.harness.nats import NatsServer
from tests.helpers import until
from tests.scale.leasing import FreezableProxy, Ledger, connect, disjoint, shares, workers_on

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


async def test_a_killed_worker_s_shards_are_taken_over_once_its_leases_expire(
    nats_server: NatsServer,
) -> None:
    ledger = Ledger()
    opts = {"ttl": 6.0, "renew_every": 0.5, "claims_per_second": 100.0}
    held: dict[str, int] = {}  # the killed worker's shards and the revision it claimed them at
    loop = asyncio.get_running_loop()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER_SCRIPT),
        nats_server.url,
        "k",
        str(opts["ttl"]),
        str(opts["renew_every"]),
        str(opts["claims_per_second"]),
        "256",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    stdout = proc.stdout

    async def follow() -> None:
        while line := (await stdout.readline()).decode().split():
            if line[0] == "gain":
                held[line[1]] = int(line[2])
            elif line[0] == "lose":
                del held[line[1]]

    reader = asyncio.create_task(follow())
    try:
        async with workers_on(nats_server.url, ledger, **opts) as pool:
            b = await pool.start("b", SHARDS)
            await until(
                lambda: (
                    sorted([len(held), len(b.owned())]) == [128, 129] and not set(held) & b.owned()
                ),
                60,
                "k and b share the shards",
            )
            moved = dict(held)
            killed = loop.time()
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            await until(lambda: b.owned() == set(SHARDS), 60, "b takes every shard over")
            gains = [e for e in ledger.of("b", "gain") if e.shard in moved and e.at > killed]
            assert sorted(e.shard for e in gains) == sorted(moved)
            first = min(e.at for e in gains) - killed
            last = max(e.at for e in gains) - killed
            print(f"SIGKILL: {len(moved)} shards taken over after {first:.2f}-{last:.2f} s")
            # k renewed at most a round before it died: its keys outlived it by nearly a TTL,
            # and nothing was taken from it before they expired
            assert first > opts["ttl"] - opts["renew_every"] - 2.0
            # fencing: every takeover wrote a revision above the dead holder's
            assert all((e.revision or 0) > moved[e.shard] for e in gains)
            assert not ledger.violations, ledger.violations
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await reader


async def test_a_worker_cut_off_from_nats_lets_go_before_another_takes_over(
    nats_server: NatsServer,
) -> None:
    ledger = Ledger()
    opts = {"ttl": 4.0, "renew_every": 0.5, "claims_per_second": 100.0}
    proxy = FreezableProxy(nats_server.host, nats_server.port)
    await proxy.start()
    loop = asyncio.get_running_loop()
    try:
        async with workers_on(nats_server.url, ledger, **opts) as pool:
            a = await pool.start("a", SHARDS, url=proxy.url)
            b = await pool.start("b", SHARDS)
            await until(lambda: shares(a, b) == [128, 129], 60, "a and b share the shards")
            cut = a.owned()
            proxy.freeze()  # a's link hangs: no error, no answer
            frozen = loop.time()
            await until(lambda: b.owned() == set(SHARDS), 60, "b takes every shard over")
            assert not a.owned()
            lost = {e.shard: e.at for e in ledger.of("a", "lose")}
            gained = {e.shard: e.at for e in ledger.of("b", "gain") if e.shard in cut}
            assert set(lost) == set(gained) == cut
            # a closed each shard's connections before b opened them
            assert all(lost[s] < gained[s] for s in cut)
            assert not ledger.violations, ledger.violations
            print(
                f"cut off: a let go after {max(lost.values()) - frozen:.2f} s, "
                f"b took over after {min(gained.values()) - frozen:.2f}"
                f"-{max(gained.values()) - frozen:.2f} s"
            )
            proxy.thaw()
            await until(lambda: shares(a, b) == [128, 129], 90, "a gets its share back")
            assert disjoint(a, b) and not ledger.violations
    finally:
        proxy.thaw()
        await proxy.close()


async def test_leases_survive_a_nats_restart(nats_server: NatsServer) -> None:
    ledger = Ledger()
    opts = {"ttl": 10.0, "renew_every": 1.0, "claims_per_second": 100.0}
    async with workers_on(nats_server.url, ledger, **opts) as pool:
        a = await pool.start("a", SHARDS)
        b = await pool.start("b", SHARDS)
        await until(lambda: shares(a, b) == [128, 129], 60, "a and b share the shards")
        owned = {w.name: w.owned() for w in (a, b)}
        revisions = {s: w.leases.revision(s) or 0 for w in (a, b) for s in w.owned()}
        await asyncio.to_thread(nats_server.restart)

        def renewed() -> bool:
            return all(
                (w.leases.revision(s) or 0) > revisions[s] for w in (a, b) for s in owned[w.name]
            )

        await until(renewed, 60, "every lease renewed on the restarted server")
        assert {w.name: w.owned() for w in (a, b)} == owned
        assert not ledger.of("a", "lose") and not ledger.of("b", "lose")
        assert not ledger.violations, ledger.violations


async def test_callback_errors_are_logged_and_the_leases_carry_on(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[str, str]] = []

    async def gain(shard: str) -> None:
        calls.append(("gain", shard))
        raise RuntimeError("cannot connect")

    async def lose(shard: str) -> None:
        calls.append(("lose", shard))
        raise RuntimeError("cannot disconnect")

    shards = all_shards("irc", 4)
    nc = await connect(nats_server.url)
    leases = ShardLeases(nc.jetstream(), "a", shards, on_gain=gain, on_lose=lose, **FAST)
    try:
        with caplog.at_level(logging.ERROR, logger="bridge.scale.leases"):
            await leases.start()
            await until(lambda: len(calls) == len(shards), 30, "on_gain for every shard")
            await asyncio.sleep(2 * FAST["ttl"])  # still renewed after the errors
            assert leases.owned() == set(shards)
            await leases.stop()
        assert sorted(calls) == sorted(
            [("gain", s) for s in shards] + [("lose", s) for s in shards]
        )
        assert "on_gain failed for shard irc.main" in caplog.text
        assert "on_lose failed for shard irc.main" in caplog.text
        kv = await nc.jetstream().key_value("mimi_shards")
        for shard in shards:  # released: deleted, not left to expire
            with pytest.raises(nats.js.errors.KeyNotFoundError):
                await kv.get(shard)
    finally:
        await leases.stop()
        await nc.close()


def test_a_ttl_too_short_for_the_renewals_is_refused() -> None:
    async def nothing(shard: str) -> None:
        pass

    with pytest.raises(ValueError, match="renew more often or use a longer TTL"):
        ShardLeases(None, "a", ["irc.0"], on_gain=nothing, on_lose=nothing, ttl=3, renew_every=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot be a NATS key"):
        ShardLeases(None, "a b", ["irc.0"], on_gain=nothing, on_lose=nothing)  # type: ignore[arg-type]
