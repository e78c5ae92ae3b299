"""The CPU floor of the bridge's HTTP library: an aiohttp server answering appservice-style
PUTs (a one-event transaction, parsed, answered ``{}``) and an aiohttp client making them, in
two processes on loopback, one request at a time over one kept-alive connection. Every bridged
message crosses at least one such request (Matrix -> remote: the transaction; remote -> Matrix:
the send, and its echo coming back as a transaction), so this bounds what the bridge's own
CPU per message can get down to with aiohttp.

    python bench/http_floor.py [-n 3000]

Prints CPU per request (user + system) of the serving and of the requesting process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BODY = json.dumps(
    {
        "events": [
            {
                "type": "m.room.message",
                "content": {"body": "hello there, a line of chat", "msgtype": "m.text"},
                "event_id": "$abcdefghijklmnopqrstuvwxyz0123456789abcdefg",
                "room_id": "!abcdefghijklmnop:localhost",
                "sender": "@alice:localhost",
                "origin_server_ts": 1,
            }
        ]
    }
)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def serve(port: int) -> None:
    async def put(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.json_response({})

    async def cpu_used(request: web.Request) -> web.Response:
        return web.json_response({"cpu": cpu()})

    app = web.Application()
    app.router.add_put("/_matrix/app/v1/transactions/{txn}", put)
    app.router.add_get("/cpu", cpu_used)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def drive(port: int, n: int) -> tuple[float, float]:
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": "Bearer token", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s:

        async def put(i: int | str) -> None:
            url = f"{base}/_matrix/app/v1/transactions/{i}"
            async with s.put(url, data=BODY, headers=headers) as r:
                await r.json()

        for i in range(200):  # warm-up
            await put(f"w{i}")
        async with s.get(base + "/cpu") as r:
            s0 = (await r.json())["cpu"]
        c0 = cpu()
        for i in range(n):
            await put(i)
        c1 = cpu()
        async with s.get(base + "/cpu") as r:
            s1 = (await r.json())["cpu"]
    return (s1 - s0) / n, (c1 - c0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000, help="requests measured")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    from tests.harness.ports import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            sys.exit("the server did not start")
        t0 = time.monotonic()
        served, made = asyncio.run(drive(port, args.n))
        wall = time.monotonic() - t0
    finally:
        server.terminate()
        server.wait()
    print(f"aiohttp {aiohttp.__version__}, {args.n} requests in {wall:.1f} s, one at a time")
    print(f"  CPU per request served: {served * 1000:.3f} ms")
    print(f"  CPU per request made:   {made * 1000:.3f} ms")


if __name__ == "__main__":
    main()
