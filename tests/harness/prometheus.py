"""A real Prometheus (Debian's ``prometheus``) on loopback that scrapes the bridge.

``start_prometheus(workdir, targets)`` writes a scrape config for ``targets`` (``host:port``
of the bridge's metrics listener) with a 1 s scrape interval, keeps its storage in
``workdir``, and returns once its HTTP API answers. ``query()`` runs an instant query through
``/api/v1/query``; ``wait_scraped()`` waits until a target's latest scrape is newer than a
given time, so a test sees the state after what it did."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ports import free_port, port_is_open


class PrometheusMissing(RuntimeError):
    pass


def prometheus_binary() -> str:
    path = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(path).exists():
        raise PrometheusMissing(
            "prometheus not found: install Debian's prometheus package "
            "(apt-get install --no-install-recommends prometheus, or run scripts/setup)"
        )
    return path


@dataclass
class PrometheusServer:
    host: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _get(self, path: str, params: dict[str, str]) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus answered {body}")
        return body["data"]

    def query(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant vector: labels (sorted pairs, ``__name__`` left out) -> value."""
        data = self._get("/api/v1/query", {"query": expr})
        out: dict[tuple[tuple[str, str], ...], float] = {}
        for item in data["result"]:
            labels = tuple(sorted((k, v) for k, v in item["metric"].items() if k != "__name__"))
            out[labels] = float(item["value"][1])
        return out

    def value(self, expr: str) -> float | None:
        """The value of a query expected to give one series (None when it gives none)."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) != 1:
            raise AssertionError(f"{expr} gave {len(result)} series: {result}")
        return next(iter(result.values()))

    def targets(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/targets", {"state": "active"})["activeTargets"])

    def wait_scraped(self, after: float, timeout: float = 30.0) -> None:
        """Wait until every target was scraped successfully after the wall-clock ``after``."""
        deadline = time.monotonic() + timeout
        last: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            last = self.targets()
            if last and all(
                t["health"] == "up" and _parse_time(t["lastScrape"]) > after for t in last
            ):
                return
            time.sleep(0.2)
        raise TimeoutError(f"prometheus did not scrape after {after}: {last}")

    def stop(self) -> None:
        """Stop the server this object started (and only that process)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _parse_time(text: str) -> float:
    """Prometheus' RFC 3339 timestamps with nanoseconds, as epoch seconds."""
    from datetime import datetime

    head, _, frac = text.rstrip("Z").partition(".")
    base = datetime.fromisoformat(head[:19] + "+00:00").timestamp()
    digits = "".join(ch for ch in frac if ch.isdigit())
    return base + (float("0." + digits) if digits else 0.0)


def start_prometheus(workdir: Path, targets: list[str]) -> PrometheusServer:
    binary = prometheus_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML: no YAML writer needed
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {"job_name": "mimi-bridge", "static_configs": [{"targets": targets}]}
                ],
            }
        )
    )
    host, port = "127.0.0.1", free_port()
    server = PrometheusServer(host, port, workdir)
    log = open(workdir / "prometheus.log", "ab")
    server.proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={host}:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    deadline = time.monotonic() + 60
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"prometheus exited with {server.proc.returncode}; see {workdir}/prometheus.log"
            )
        if port_is_open(host, port, 0.2):
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return server
            except OSError:
                pass
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError(f"prometheus did not become ready on {host}:{port}")
        time.sleep(0.2)
