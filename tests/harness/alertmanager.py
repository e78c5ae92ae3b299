"""A real Prometheus Alertmanager (Debian's ``prometheus-alertmanager``) on loopback, with one
webhook receiver, for the webhooks connector's end-to-end test.

Grouping is by ``alertname`` with ``group_wait``/``group_interval`` of one second, so a fired
alert is notified within about a second and its resolution (an alert pushed again with
``endsAt`` in the past) at the next group interval. Clustering is off (no gossip port).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

from .ports import free_port, port_is_open

BINARY_NAMES = ("prometheus-alertmanager", "alertmanager")


class AlertmanagerMissing(RuntimeError):
    pass


def find_alertmanager() -> str:
    for name in BINARY_NAMES:
        path = shutil.which(name) or (
            f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
        )
        if path:
            return path
    raise AlertmanagerMissing(
        "Alertmanager is not installed: apt-get install prometheus-alertmanager "
        "(scripts/setup installs it)"
    )


@dataclass
class Alertmanager:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        return (self.workdir / "alertmanager.log").read_text(errors="replace")


def start_alertmanager(workdir: Path, webhook_url: str) -> Alertmanager:
    binary = find_alertmanager()
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"resolve_timeout": "1m"},
        "route": {
            "receiver": "mimi",
            "group_by": ["alertname"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {"name": "mimi", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}
        ],
    }
    with (workdir / "alertmanager.yml").open("w") as f:
        YAML().dump(config, f)
    port = free_port()
    argv = [
        binary,
        f"--config.file={workdir / 'alertmanager.yml'}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=debug",
    ]
    log = (workdir / "alertmanager.log").open("ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    am = Alertmanager(port, workdir, proc)
    deadline = time.monotonic() + 30
    while not port_is_open("127.0.0.1", port, 0.2):
        if proc.poll() is not None:
            raise RuntimeError(f"alertmanager exited with {proc.returncode}:\n{am.log()}")
        if time.monotonic() > deadline:
            am.stop()
            raise TimeoutError(f"alertmanager did not listen on 127.0.0.1:{port}")
        time.sleep(0.05)
    return am
