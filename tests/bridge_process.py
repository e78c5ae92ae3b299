"""The bridge as its own process (``python -m bridge -c config``), for tests that kill it."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from ruamel.yaml import YAML

from tests.conftest import write_config
from tests.harness.ports import free_port
from tests.harness.synapse import SynapseServer


class BridgeProcess:
    """One bridge process at a time on one config; its output goes to ``<config>.log``."""

    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.port = port
        self.log_path = config.parent / f"{config.stem}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, until_started: bool = False, limit_s: float = 90.0) -> None:
        """Start it and wait until the appservice API answers, or ``until_started``, until
        it has logged that its connectors have started too."""
        logged = self.log_path.stat().st_size if self.log_path.exists() else 0
        # Output to a file: an unread pipe fills up and blocks the bridge's logging.
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "-c", str(self.config), stdout=log, stderr=log
            )
        url = f"http://127.0.0.1:{self.port}/_matrix/mau/live"
        async with aiohttp.ClientSession() as session:
            for _ in range(int(limit_s * 10)):
                if (code := self.proc.returncode) is not None:
                    raise AssertionError(f"bridge exited with {code}:\n{self.tail()}")
                try:
                    async with session.get(url) as r:
                        if r.status == 200 and (not until_started or self.started(logged)):
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"bridge did not start:\n{self.tail()}")

    async def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as in a crash or an OOM kill."""
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()
        self.proc = None

    async def stop(self) -> int:
        """SIGTERM and the exit code (-9 if it had to be killed)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.returncode is not None:
            return proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return -9

    def started(self, offset: int = 0) -> bool:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return b"bridge started with" in f.read()

    def tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


class HomeserverProxy:
    """Passes the bridge's requests on to the homeserver. With ``hold_s`` set, holds the
    bot's display-name request (the last step of start-up before the connectors start) that
    long: events the homeserver pushes at once (it redelivers on the start-up ping) then
    surely arrive before the connectors have started, as they may on a loaded machine."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.hold_s = 0.0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        if self.hold_s and request.method == "PUT" and request.path.endswith("/displayname"):
            await asyncio.sleep(self.hold_s)
        skip = {"host", "content-length", "transfer-encoding", "connection"}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=await request.read(),
            headers=headers,
            allow_redirects=False,
        ) as r:
            body = await r.read()
            out = {k: v for k, v in r.headers.items() if k.lower() not in skip}
            return web.Response(status=r.status, body=body, headers=out)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


def bridge_config(
    path: Path, synapse: SynapseServer, as_port: int, connectors: dict[str, Any], hs_url: str
) -> Path:
    """A bridge config on an SQLite database next to ``path`` whose homeserver is at
    ``hs_url`` (a :class:`HomeserverProxy` in front of ``synapse``)."""
    write_config(path, synapse, as_port, f"sqlite://{path.with_suffix('.db')}", connectors)
    yaml = YAML()
    cfg = yaml.load(path.read_text())
    cfg["homeserver"]["address"] = hs_url
    with path.open("w") as f:
        yaml.dump(cfg, f)
    return path
