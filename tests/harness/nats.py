"""A real NATS server with JetStream (Debian's ``nats-server``) on loopback.

``start_nats(workdir)`` starts ``nats-server -js -sd DIR -a 127.0.0.1 -p PORT`` and returns
once the port answers. JetStream's storage stays in ``workdir`` across ``restart()``, so
streams, consumers and key-value buckets survive a restart as they do in production;
``kill()`` is SIGKILL, for the crash cases."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .ports import free_port, port_is_open

INSTALL_HINT = (
    "nats-server not found: install Debian's nats-server package "
    "(apt-get install nats-server, or run scripts/setup)"
)


class NatsMissing(RuntimeError):
    pass


def nats_binary() -> str:
    path = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(path).exists():
        raise NatsMissing(INSTALL_HINT)
    return path


@dataclass
class NatsServer:
    host: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        store = self.workdir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "nats.log").open("ab")
        self.proc = subprocess.Popen(
            [
                nats_binary(),
                "-js",
                "-sd",
                str(store),
                "-a",
                self.host,
                "-p",
                str(self.port),
                # no HTTP monitor, no cluster: one node on loopback
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not port_is_open(self.host, self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}: {self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not listen in {timeout} s: {self.logs()}")
            time.sleep(0.05)

    def _end(self, sig: signal.Signals, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM): JetStream flushes its storage."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def logs(self, lines: int = 30) -> str:
        path = self.workdir / "nats.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start_nats(workdir: Path, host: str = "127.0.0.1") -> NatsServer:
    """Start a JetStream-enabled nats-server on a free loopback port, storage in ``workdir``."""
    nats_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    server = NatsServer(host=host, port=free_port(), workdir=workdir)
    server.start()
    return server
