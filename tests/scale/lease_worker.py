"""A worker process holding shard leases, for the crash tests: prints ``ready``, then a line
per gain and loss (``gain <shard> <revision>``), flushed at once, until it is killed.

    python lease_worker.py NATS_URL WORKER_ID TTL RENEW_EVERY CLAIMS_PER_SECOND SHARDS"""

from __future__ import annotations

import asyncio
import sys

import nats

from bridge.scale.leases import ShardLeases
from bridge.scale.shards import all_shards


async def main(url: str, worker: str, ttl: float, renew: float, rate: float, shards: int) -> None:
    nc = await nats.connect(url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)

    async def gain(shard: str) -> None:
        print("gain", shard, leases.revision(shard), flush=True)

    async def lose(shard: str) -> None:
        print("lose", shard, flush=True)

    leases = ShardLeases(
        nc.jetstream(timeout=5),
        worker,
        all_shards("irc", shards),
        on_gain=gain,
        on_lose=lose,
        ttl=ttl,
        renew_every=renew,
        claims_per_second=rate,
    )
    await leases.start()
    print("ready", flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    url, worker, ttl, renew, rate, shards = sys.argv[1:]
    asyncio.run(main(url, worker, float(ttl), float(renew), float(rate), int(shards)))
