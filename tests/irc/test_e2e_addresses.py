"""``bind_prefix`` (one IPv6 source address per Matrix user) through the real servers, in a
network namespace made here: ``netns_addresses.py`` holds the test, run by pytest in a child
under ``unshare --net --mount`` (root; ``unshare -rn`` is not enough: the private
``/etc/hosts`` needs a mount namespace owned by root). In the namespace: ``lo`` up, the prefix
routed to it, ``ircd.test`` naming both ``127.0.0.1`` and ``::1``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
INNER = Path(__file__).with_name("netns_addresses.py")

SETUP = """set -e
mount --bind "$HOSTS_FILE" /etc/hosts
ip link set lo up
ip -6 route add local 2001:db8:1::/64 dev lo
exec "$@"
"""


def test_puppets_connect_from_their_own_addresses(tmp_path: Path) -> None:
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if not unshare or not ip:
        pytest.fail("install util-linux and iproute2: apt-get install util-linux iproute2")
    if os.geteuid() != 0:
        pytest.fail("needs root: it makes a network and a mount namespace (unshare --net)")
    probe = subprocess.run([unshare, "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"this machine forbids network namespaces: unshare --net: {probe.stderr}")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 ircd.test\n::1 ircd.test\n")
    env = dict(os.environ, MIMI_IRC_NETNS="1", HOSTS_FILE=str(hosts))
    argv = [
        unshare, "--net", "--mount", "sh", "-c", SETUP, "sh",
        sys.executable, "-m", "pytest", str(INNER), "-q", "-x", "-p", "no:cacheprovider",
        "--basetemp", str(tmp_path / "inner"),
    ]  # fmt: skip
    run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"inner run failed:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    assert re.search(r"\b1 passed", run.stdout), run.stdout[-3000:]
