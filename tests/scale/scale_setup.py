"""A core and workers in scale-out mode, in this process, through real NATS, PostgreSQL and
Synapse (the fault tests run them as processes instead)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from bridge.bridge import Bridge
from bridge.config import load as load_config
from bridge.connector import NetworkConnector
from bridge.scale.shards import shard_of
from bridge.scale.worker import Worker
from tests.conftest import write_config
from tests.harness.nats import NatsServer
from tests.harness.synapse import SynapseServer

_dbs = itertools.count(1)


def scale_config(
    path: Path,
    synapse: SynapseServer,
    as_port: int,
    database: str,
    nats: NatsServer,
    connectors: dict[str, Any],
    **scale: Any,
) -> Path:
    write_config(path, synapse, as_port, database, connectors)
    yaml = YAML()
    cfg = yaml.load(path.read_text())
    cfg["scale"] = {
        "nats_url": nats.url,
        "request_timeout_s": 5,
        "unowned_notice_s": 3,
        # A network's 257 shards are claimed in about a second, not 26.
        "lease_claims_per_s": 500,
        **scale,
    }
    with path.open("w") as f:
        yaml.dump(cfg, f)
    return path


class Deployment:
    """One core and named workers on one config."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.core: Bridge | None = None
        self.workers: dict[str, Worker] = {}

    async def start_core(self) -> Bridge:
        self.core = Bridge(load_config(self.config))
        await self.core.start()
        return self.core

    async def stop_core(self) -> None:
        core, self.core = self.core, None
        if core is not None:
            await core.stop()

    async def start_worker(self, name: str) -> Worker:
        cfg = load_config(self.config)
        cfg.scale.worker_id = name
        worker = Worker(cfg)
        await worker.start()
        self.workers[name] = worker
        return worker

    async def stop_worker(self, name: str, release: bool = True) -> None:
        worker = self.workers.pop(name)
        await worker.stop(release=release)

    def holder(self, connector: str) -> Worker | None:
        """The worker running the connector's own part (all of it, unless it runs split)."""
        for worker in self.workers.values():
            running = worker.running.get(connector)
            if running is not None and running.main:
                return worker
        return None

    def connector(self, name: str) -> NetworkConnector:
        worker = self.holder(name)
        assert worker is not None, f"no worker runs {name}"
        return worker.running[name].connector

    def user_holder(self, connector: str, network: str, user_id: str) -> Worker | None:
        """The worker holding a Matrix user's shard of the network."""
        shard = shard_of(network, user_id)
        for worker in self.workers.values():
            running = worker.running.get(connector)
            if running is not None and (running.shards is None or shard in running.shards):
                return worker
        return None

    def owned(self, name: str) -> frozenset[str]:
        """The shards the worker's leases hold."""
        leases = self.workers[name].leases
        assert leases is not None
        return leases.owned()

    def shared_out(self, network: str, shards: int = 256) -> bool:
        """Every shard of the network held, by one worker each, shared within one."""
        held = [{s for s in self.owned(n) if s.startswith(network + ".")} for n in self.workers]
        everything = {f"{network}.{n}" for n in range(shards)} | {f"{network}.main"}
        counts = sorted(len(h) for h in held)
        return (
            set().union(*held) == everything
            and sum(counts) == len(everything)
            and counts[-1] - counts[0] <= 1
        )

    def split_holder(self, connector: str, network: str, user_id: str) -> str | None:
        """The name of the worker whose instance of a split connector holds the user."""
        shard = shard_of(network, user_id)
        for name, worker in self.workers.items():
            running = worker.running.get(connector)
            if running is not None and running.shards is not None and shard in running.shards:
                return name
        return None

    async def close(self) -> None:
        await self.stop_core()
        for name in list(self.workers):
            await self.stop_worker(name)


def recorded(record: Path, kind: str, **match: Any) -> Callable[[], list[dict[str, Any]]]:
    """What the test network's instances recorded (``record_file``: every worker that ran it
    appends to it)."""

    def find() -> list[dict[str, Any]]:
        if not record.exists():
            return []
        entries = [json.loads(line) for line in record.read_text().splitlines() if line]
        return [
            e for e in entries if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())
        ]

    return find


def new_database(postgres: Any) -> str:
    return str(postgres.create_database(f"scale_{next(_dbs)}"))
