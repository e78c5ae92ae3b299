"""A bridge set up the way the README tells a new admin to: ``cp config.example.yaml
config.yaml``, edit the addresses, ports, domains and secrets, ``mimi-bridge -c config.yaml -g
-r registration.yaml``, load that registration into the homeserver, run ``mimi-bridge -c
config.yaml``.

:class:`AdminSetup` does exactly that in a directory of its own: it reads the repository's
example with ruamel.yaml (comments kept, as the admin's editor would), changes only the keys a
test names, and refuses an edit of a key the example does not have. Every other default stays.
Because ``-g`` writes fresh random tokens, the generated registration cannot be loaded into the
session's Synapse (Synapse reads registrations only at start-up, and that one already holds
the tests' fixed tokens): each setup starts a Synapse of its own that loads the generated file.
The bridge runs as ``python -m bridge -c /path/to/config.yaml``, a subprocess started from
another directory (as a service manager starts it), stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import copy
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from ruamel.yaml import YAML

from .ports import free_port
from .synapse import SynapseServer, start_synapse

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "config.example.yaml"
#: Keys ``-g`` writes into the config (the tokens, the credentials key, the provisioning secret).
GENERATED = {
    ("appservice", "as_token"),
    ("appservice", "hs_token"),
    ("bridge", "credentials_key"),
    ("provisioning", "shared_secret"),
}
KeyPath = tuple[str, ...]


def _yaml() -> YAML:
    y = YAML()  # round-trip: comments and key order kept
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def load_example() -> Any:
    with EXAMPLE.open(encoding="utf-8") as f:
        return _yaml().load(f)


def leaves(doc: Any, prefix: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    """Every scalar (and empty mapping) of a document with its key path; lists are leaves."""
    if isinstance(doc, Mapping) and doc:
        for key, value in doc.items():
            yield from leaves(value, (*prefix, str(key)))
    else:
        yield prefix, doc


def changed_paths(before: Any, after: Any) -> set[KeyPath]:
    """The key paths whose values differ (present in one document only counts as changed)."""
    a, b = dict(leaves(before)), dict(leaves(after))
    return {p for p in a.keys() | b.keys() if a.get(p, KeyError) != b.get(p, KeyError)}


def apply_edits(
    doc: Any, edits: Mapping[KeyPath, Any], renames: Mapping[KeyPath, str] | None = None
) -> None:
    """Set each edited key (it must exist in the example) and rename mapping keys in place
    (``renames``: path of the old key -> new key name, position kept)."""
    for path, value in edits.items():
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if path[-1] not in parent:
            raise KeyError(f"config.example.yaml has no {'.'.join(path)}: not an admin's edit")
        parent[path[-1]] = copy.deepcopy(value)
    for path, new in (renames or {}).items():
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        old = path[-1]
        if old not in parent:
            raise KeyError(f"config.example.yaml has no {'.'.join(path)}: not an admin's edit")
        position = list(parent).index(old)
        value = parent.pop(old)
        parent.insert(position, new, value)


class AdminSetup:
    """One admin's installation in ``workdir``: config.yaml, registration.yaml, a Synapse
    loading that registration, and the bridge process."""

    def __init__(self, workdir: Path, domain: str = "localhost") -> None:
        self.workdir = workdir
        self.domain = domain
        self.config = workdir / "config.yaml"
        self.registration = workdir / "registration.yaml"
        self.log = workdir / "bridge.log"
        self.elsewhere = workdir / "elsewhere"  # the bridge's working directory
        self.as_port = free_port()
        self.hs_port = free_port()
        self.synapse: SynapseServer | None = None
        self.process: subprocess.Popen[bytes] | None = None
        #: The key paths that differ from the example once -g has run.
        self.changed: set[KeyPath] = set()

    @property
    def as_url(self) -> str:
        return f"http://127.0.0.1:{self.as_port}"

    def core_edits(self) -> dict[KeyPath, Any]:
        """The homeserver and appservice addresses of this installation."""
        return {
            ("homeserver", "address"): f"http://127.0.0.1:{self.hs_port}",
            ("homeserver", "domain"): self.domain,
            ("appservice", "address"): self.as_url,
            ("appservice", "port"): self.as_port,
        }

    def permission_renames(self) -> dict[KeyPath, str]:
        """The example's permissions name its domain example.org: the admin puts theirs."""
        return {
            ("bridge", "permissions", "example.org"): self.domain,
            ("bridge", "permissions", "@admin:example.org"): f"@admin:{self.domain}",
        }

    def write(self, connector_edits: Mapping[KeyPath, Any]) -> None:
        """config.yaml from the example with the core edits, the permissions' domain and
        ``connector_edits`` (paths under ``connectors``), then ``-g``."""
        doc = load_example()
        edits = {**self.core_edits(), **{("connectors", *p): v for p, v in connector_edits.items()}}
        apply_edits(doc, edits, self.permission_renames())
        with self.config.open("w", encoding="utf-8") as f:
            _yaml().dump(doc, f)
        res = subprocess.run(
            [sys.executable, "-m", "bridge", "-c", "config.yaml", "-g", "-r", "registration.yaml"],
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert res.returncode == 0, f"-g failed ({res.returncode}): {res.stdout}{res.stderr}"
        with self.config.open(encoding="utf-8") as f:
            self.changed = changed_paths(load_example(), _yaml().load(f))
        renamed = {p for p, _ in leaves(load_example()) if p[:3] in self.permission_renames()}
        renamed |= {(*p[:2], new) for p, new in self.permission_renames().items()}
        beyond = self.changed - (set(edits) | GENERATED | renamed)
        assert not beyond, f"config.yaml differs from the example in {sorted(beyond)}"
        assert self.changed >= GENERATED, "-g did not write the tokens"

    def start_synapse(self) -> SynapseServer:
        """A homeserver that loads the generated registration (blocking: run in a thread)."""
        self.synapse = start_synapse(
            self.workdir / "synapse", [self.registration], self.domain, port=self.hs_port
        )
        return self.synapse

    async def start_bridge(self) -> None:
        """``python -m bridge -c config.yaml`` in the config's directory, until it listens."""
        assert self.process is None or self.process.poll() is not None
        self.process = self._spawn()
        loop = asyncio.get_running_loop()
        end = loop.time() + 60
        async with aiohttp.ClientSession() as s:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"the bridge exited with {self.process.returncode}:\n{self.log_tail()}"
                    )
                try:
                    async with s.get(self.as_url + "/_matrix/mau/live") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if loop.time() > end:
                    raise AssertionError(f"the bridge did not listen:\n{self.log_tail()}")
                await asyncio.sleep(0.2)
        # The example's database, sqlite:mimi-bridge.db, lives beside config.yaml.
        assert (self.workdir / "mimi-bridge.db").is_file(), sorted(self.workdir.iterdir())
        assert not any(self.elsewhere.iterdir()), sorted(self.elsewhere.iterdir())

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Output to a file: an unread pipe fills up and blocks the bridge's logging.
        with self.log.open("ab") as out:
            out.write(f"--- start {time.strftime('%H:%M:%S')} ---\n".encode())
            out.flush()
            # Started from another directory, as a service manager does: whatever the config
            # names relative to itself (the database) must still land beside it.
            self.elsewhere.mkdir(exist_ok=True)
            return subprocess.Popen(
                [sys.executable, "-m", "bridge", "-c", str(self.config)],
                cwd=self.elsewhere,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    async def stop_bridge(self) -> int:
        """SIGTERM, as a service manager stops it; the exit status (0 is a clean stop)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc is not None else 0
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
            raise AssertionError(
                f"the bridge did not stop on SIGTERM:\n{self.log_tail()}"
            ) from None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.synapse is not None:
            self.synapse.stop()
