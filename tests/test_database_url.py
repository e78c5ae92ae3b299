"""``appservice.database`` through the real CLI: every URL form opens (the default beside the
config), and every database that cannot be used is one line naming the key, the file or
server and the cause, with exit status 2 for a bad value and 1 for a runtime failure."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from ruamel.yaml import YAML

from tests.conftest import write_config
from tests.harness.postgres import PostgresServer, start_postgres
from tests.harness.synapse import SynapseServer

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class _Nowhere:
    url: str = "http://127.0.0.1:9"
    server_name: str = "localhost"


_names = iter(range(1_000_000))


def _config(
    directory: Path, synapse: SynapseServer | None, as_port: int, database: str | None
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    # Failing before the homeserver is reached, any address will do.
    homeserver: Any = synapse or _Nowhere()
    write_config(path, homeserver, as_port, database or "", {"testnet": {}})
    doc: Any = YAML().load(path)
    if database is None:
        del doc["appservice"]["database"]
    doc["logging"] = {"level": "INFO"}
    with path.open("w") as f:
        YAML().dump(doc, f)
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _run(config: Path, cwd: Path, prefix: list[str] | None = None) -> tuple[int, str]:
    res = subprocess.run(
        [*(prefix or []), sys.executable, "-m", "bridge", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=120,
    )
    return res.returncode, res.stderr


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


async def _serve_then_stop(config: Path, cwd: Path, port: int) -> None:
    """Run the bridge until its API answers, then stop it; it must exit 0."""
    log_path = cwd / "bridge.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "-c",
            str(config),
            cwd=cwd,
            env=_env(),
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        for _ in range(300):
            if proc.returncode is not None:
                raise AssertionError(log_path.read_text()[-3000:])
            try:
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(f"http://127.0.0.1:{port}/_matrix/mau/live") as r,
                ):
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the bridge did not start")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            code = await proc.wait()
    assert code == 0, log_path.read_text()[-3000:]


def _sqlite_owner(path: Path) -> str:
    with sqlite3.connect(path) as c:
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"pending_event", "portal"} <= tables, tables
        return str(c.execute("SELECT owner FROM database_owner").fetchone()[0])


@pytest.mark.parametrize(
    "form", ["default", "sqlite:///abs", "sqlite:////abs", "sqlite:/abs", "sqlite:rel"]
)
async def test_sqlite_url_forms_open_the_file_they_name(
    tmp_path: Path, synapse: SynapseServer, as_port: int, form: str
) -> None:
    # Directory names with a space and a '#': the path is not read as URL syntax.
    conf_dir = tmp_path / "conf dir #1"
    elsewhere = tmp_path / "elsewhere"  # the working directory: relative paths ignore it
    elsewhere.mkdir()
    absolute = tmp_path / "abs dir" / "bridge.db"
    absolute.parent.mkdir()
    expected = {
        "default": (None, conf_dir / "mimi-bridge.db"),
        "sqlite:///abs": ("sqlite:///" + str(absolute).lstrip("/"), absolute),
        "sqlite:////abs": ("sqlite:///" + str(absolute), absolute),
        "sqlite:/abs": (f"sqlite:{absolute}", absolute),
        "sqlite:rel": ("sqlite:data/bridge.db", conf_dir / "data" / "bridge.db"),
    }
    value, db_file = expected[form]
    config = _config(conf_dir, synapse, as_port, value)
    (conf_dir / "data").mkdir()
    await _serve_then_stop(config, elsewhere, as_port)
    assert _sqlite_owner(db_file) == "mimi-bridge"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["bridge.log"]


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
async def test_postgres_urls_open(
    tmp_path: Path,
    synapse: SynapseServer,
    as_port: int,
    postgres: PostgresServer,
    scheme: str,
) -> None:
    n = next(_names)
    url = postgres.create_password_role(f"mimi_ok_{n}", "right-pass", f"mimi_url_{n}")
    url = scheme + url.removeprefix("postgres")
    await _serve_then_stop(_config(tmp_path, synapse, as_port, url), tmp_path, as_port)
    conn = await asyncpg.connect(postgres.url_for(f"mimi_url_{n}"))
    try:
        assert await conn.fetchval("SELECT owner FROM database_owner") == "mimi-bridge"
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        ("mysql://me@db/bridge", "must be sqlite:path/to/file.db or postgres://"),
        ("sqlite://tmp/bridge.db", "a SQLite URL names no host ('tmp')"),
        ("sqlite:", "names no database file"),
        ("sqlite:///", "names no database file"),
        ("postgres://127.0.0.1:99999/db", "is not a valid URL"),
        ("postgres://127.0.0.1", "needs a database name"),
        ("postgresql:///db", "needs a host"),
    ],
)
def test_bad_database_value_is_exit_2(tmp_path: Path, value: str, expect: str) -> None:
    code, stderr = _run(_config(tmp_path, None, 9, value), tmp_path)
    line = _one_line(stderr)
    assert code == 2, stderr
    assert line.startswith("mimi-bridge: config error: appservice.database: "), line
    assert expect in line, line


def _runtime_failure(config: Path, cwd: Path, *expect: str, prefix: list[str] | None = None) -> str:
    code, stderr = _run(config, cwd, prefix)
    line = _one_line(stderr)
    assert code == 1, stderr
    assert "cannot start: appservice.database: cannot open " in line, line
    for part in expect:
        assert part in line, line
    return line


def test_missing_directory(tmp_path: Path) -> None:
    db = tmp_path / "no such dir" / "bridge.db"
    _runtime_failure(
        _config(tmp_path, None, 9, f"sqlite:{db}"),
        tmp_path,
        str(db),
        f"directory {db.parent} does not exist",
    )
    assert not db.parent.exists()


def test_not_a_database(tmp_path: Path) -> None:
    db = tmp_path / "bridge.db"
    db.write_bytes(b"this is not SQLite" * 100)
    _runtime_failure(
        _config(tmp_path, None, 9, "sqlite:bridge.db"), tmp_path, str(db), "not a database"
    )


def test_no_permission(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        # Root passes every permission check: drop that power for the bridge process only.
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv not found: apt-get install util-linux"
        prefix = [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
        os.chown(locked, 65534, 65534)
        locked.chmod(0o755)
    else:
        locked.chmod(0o555)
    db = locked / "bridge.db"
    _runtime_failure(
        _config(tmp_path, None, 9, f"sqlite:{db}"),
        tmp_path,
        str(db),
        "permission denied",
        prefix=prefix,
    )
    assert not db.exists()


def test_wrong_postgres_password(tmp_path: Path, postgres: PostgresServer) -> None:
    n = next(_names)
    url = postgres.create_password_role(f"mimi_pw_{n}", "right-pass", f"mimi_pw_{n}")
    wrong = url.replace(":right-pass@", ":wrong-pass@")
    line = _runtime_failure(
        _config(tmp_path, None, 9, wrong),
        tmp_path,
        f"mimi_pw_{n}@127.0.0.1:{postgres.port}/mimi_pw_{n}",
        "password authentication failed",
    )
    assert "wrong-pass" not in line


def test_missing_postgres_database(tmp_path: Path, postgres: PostgresServer) -> None:
    _runtime_failure(
        _config(tmp_path, None, 9, postgres.url_for("no_such_db")),
        tmp_path,
        f"127.0.0.1:{postgres.port}/no_such_db",
        'database "no_such_db" does not exist',
    )


def test_postgres_down(tmp_path: Path) -> None:
    stopped = start_postgres(tmp_path / "pg")
    url = stopped.create_database("bridge")
    stopped.stop()
    _runtime_failure(
        _config(tmp_path, None, 9, url),
        tmp_path,
        f"127.0.0.1:{stopped.port}/bridge",
        "connection refused",
    )
