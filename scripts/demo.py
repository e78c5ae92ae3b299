"""Bring up a local Synapse and the bridge on loopback, and say how to try it.

Used by ``scripts/demo``. Runs until Ctrl-C; everything lives in ./demo-data/."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.ports import free_port  # noqa: E402
from tests.harness.synapse import start_synapse  # noqa: E402


def main() -> int:
    data = ROOT / "demo-data"
    data.mkdir(exist_ok=True)
    port = free_port()
    cfg_path = data / "config.yaml"
    cfg = YAML().load((ROOT / "config.example.yaml").read_text())
    cfg["homeserver"]["domain"] = "localhost"
    cfg["appservice"]["address"] = f"http://127.0.0.1:{port}"
    cfg["appservice"]["port"] = port
    cfg["appservice"]["database"] = f"sqlite://{data / 'bridge.db'}"
    cfg["bridge"]["permissions"] = {"*": "relay", "localhost": "user", "@admin:localhost": "admin"}
    cfg["connectors"] = {"testnet": {}}
    with cfg_path.open("w") as f:
        YAML().dump(cfg, f)
    reg = data / "registration.yaml"
    py = sys.executable
    subprocess.run([py, "-m", "bridge", "-c", str(cfg_path), "-g", "-r", str(reg)], check=True)
    synapse = start_synapse(data / "synapse", [reg])
    # Synapse needs to know where the bridge is before it starts: config first, then reload.
    cfg = YAML().load(cfg_path)
    cfg["homeserver"]["address"] = synapse.url
    with cfg_path.open("w") as f:
        YAML().dump(cfg, f)
    for user, admin in (("alice", False), ("admin", True)):
        try:
            synapse.register_user(user, f"{user}-password", admin=admin)
        except RuntimeError:
            pass  # registered in an earlier run
    bridge = subprocess.Popen([py, "-m", "bridge", "-c", str(cfg_path)])
    print(
        f"""
mimi-bridge demo is running.
  Homeserver: {synapse.url}   (server name: localhost)
  Users:      alice / alice-password,  admin / admin-password
  Bridge:     {cfg_path}, log on this terminal

Try it with any Matrix client pointed at {synapse.url}:
  1. log in as alice, start a DM with @mimibot:localhost, type `help`;
  2. `login testnet alice-remote`, then `join testnet #lobby`;
  3. messages you send in #testnet_=23lobby:localhost reach the test network connector
     (see the bridge log); `unlink`, `list`, `ping` work in the DM.
Press Ctrl-C to stop.""",
        flush=True,
    )
    try:
        return bridge.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if bridge.poll() is None:
            bridge.send_signal(signal.SIGTERM)
            bridge.wait(timeout=20)
        synapse.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
