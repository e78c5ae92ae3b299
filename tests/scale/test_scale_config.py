"""The scale section: absent or null means one process; set, it needs PostgreSQL; a worker
needs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import load
from tests.harness.ports import free_port
from tests.harness.postgres import PostgresServer
from tests.test_config_cli import example, run


def test_default_is_one_process(tmp_path: Path) -> None:
    cfg = load(example(tmp_path))
    assert cfg.scale.nats_url is None and not cfg.scale.enabled


def test_sqlite_is_refused_in_one_line(tmp_path: Path) -> None:
    path = example(tmp_path, "  nats_url: null", "  nats_url: nats://127.0.0.1:4222")
    res = run("-c", str(path))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "mimi-bridge: config error: scale.nats_url: scale-out mode needs PostgreSQL"
        " (appservice.database: postgres://...), not SQLite"
    ]


def test_postgres_and_nats(tmp_path: Path) -> None:
    path = example(tmp_path, "  nats_url: null", "  nats_url: nats://127.0.0.1:4222")
    text = path.read_text()
    db = next(line for line in text.splitlines() if line.strip().startswith("database:"))
    path.write_text(text.replace(db, "  database: postgres://u:p@127.0.0.1/mimi"))
    cfg = load(path)
    assert cfg.scale.nats_url == "nats://127.0.0.1:4222" and cfg.scale.unowned_notice_s == 60


def test_bad_url(tmp_path: Path) -> None:
    path = example(tmp_path, "  nats_url: null", "  nats_url: http://x")
    res = run("-c", str(path))
    assert res.returncode == 2 and "scale.nats_url: must be a nats://" in res.stderr


def test_worker_needs_nats(tmp_path: Path) -> None:
    res = run("-c", str(example(tmp_path)), "worker")
    assert res.returncode == 2
    assert "scale.nats_url: a worker needs the NATS server" in res.stderr


def _unreachable_nats(tmp_path: Path, postgres: PostgresServer) -> Path:
    path = example(tmp_path, "  nats_url: null", f"  nats_url: nats://127.0.0.1:{free_port()}")
    text = path.read_text()
    db = next(line for line in text.splitlines() if line.strip().startswith("database:"))
    url = postgres.create_database(f"scale_cfg_{free_port()}")
    text = text.replace(db, f"  database: {url}")
    for key in ("as_token", "hs_token", "credentials_key"):
        text = text.replace(f"{key}: generate", f"{key}: token-for-{key}-0123456789")
    path.write_text(text)
    return path


@pytest.mark.parametrize("role", [[], ["worker"]], ids=["core", "worker"])
def test_unreachable_nats_is_one_clear_line(
    tmp_path: Path, postgres: PostgresServer, role: list[str]
) -> None:
    res = run("-c", str(_unreachable_nats(tmp_path, postgres)), *role)
    assert res.returncode == 1, res.stderr
    assert "cannot start: scale.nats_url: cannot reach NATS at nats://127.0.0.1:" in res.stderr
    assert "Traceback" not in res.stderr


def test_lease_settings(tmp_path: Path) -> None:
    path = example(tmp_path, "  nats_url: null", "  nats_url: nats://127.0.0.1:4222")
    text = path.read_text()
    db = next(line for line in text.splitlines() if line.strip().startswith("database:"))
    text = text.replace(db, "  database: postgres://u:p@127.0.0.1/mimi")
    path.write_text(text.replace("  lease_ttl_s: 15 ", "  lease_ttl_s: 6 "))
    cfg = load(path).scale
    assert (cfg.lease_ttl_s, cfg.lease_renew_s, cfg.lease_claims_per_s) == (6, 5, 10)
