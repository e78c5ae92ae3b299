"""The scale section: absent or null means one process; set, it needs PostgreSQL; a worker
needs it."""

from __future__ import annotations

from pathlib import Path

from bridge.config import load
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
