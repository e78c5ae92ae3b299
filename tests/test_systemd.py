"""The systemd units in contrib/systemd (the bridge, and the template of a scale-out
connection worker): valid for systemd (``systemd-analyze verify``: no
unknown keys, a command that exists) and hardened (``systemd-analyze security``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = sorted((ROOT / "contrib" / "systemd").glob("*.service"))
HINT = "systemd-analyze not found: apt-get install systemd (scripts/setup installs it)"


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    assert tool, HINT
    return tool


def _installed_copy(unit: Path, tmp_path: Path) -> Path:
    """The unit as an admin installs it: ExecStart= pointing at the installed command. For a
    template, its first instance (systemd checks a template's keys only through an instance)."""
    command = Path(sys.executable).parent / "mimi-bridge"
    assert command.is_file(), f"{command} missing: pip install -e . in the virtualenv"
    text = unit.read_text()
    assert "/opt/mimi-bridge/bin/mimi-bridge" in text
    copy = tmp_path / unit.name
    copy.write_text(text.replace("/opt/mimi-bridge/bin/mimi-bridge", str(command)))
    if unit.name.endswith("@.service"):
        return tmp_path / unit.name.replace("@.", "@1.")
    return copy


# Each unit writes only its own state directory (workers: one per instance).
STATE = {
    "mimi-bridge.service": "StateDirectory=mimi-bridge",
    "mimi-bridge-worker@.service": "StateDirectory=mimi-bridge-worker/%i",
}


def test_there_is_a_unit() -> None:
    assert [u.name for u in UNITS] == ["mimi-bridge-worker@.service", "mimi-bridge.service"]


def test_the_worker_unit_runs_a_worker() -> None:
    text = (ROOT / "contrib" / "systemd" / "mimi-bridge-worker@.service").read_text()
    assert re.search(r"^ExecStart=\S+/mimi-bridge -c %d/config\.yaml worker$", text, re.MULTILINE)


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_verifies_without_a_warning(unit: Path, tmp_path: Path) -> None:
    copy = _installed_copy(unit, tmp_path)
    res = subprocess.run(
        [_analyze(), "verify", str(copy)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and not res.stderr.strip() and not res.stdout.strip(), (
        res.stdout + res.stderr
    )


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_is_hardened(unit: Path, tmp_path: Path) -> None:
    text = unit.read_text()
    for line in ("DynamicUser=yes", "ProtectSystem=strict", STATE[unit.name]):
        assert re.search(rf"^{re.escape(line)}$", text, re.MULTILINE), line
    res = subprocess.run(
        [
            _analyze(),
            "security",
            "--offline=yes",
            "--no-pager",
            str(_installed_copy(unit, tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout + res.stderr)
    assert found, res.stdout + res.stderr
    # systemd rates 0-10; up to 2 is "OK" (most of its checks pass).
    assert float(found.group(1)) <= 2.0, res.stdout
