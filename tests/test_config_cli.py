"""Config validation, the CLI's exit codes and registration generation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], capture_output=True, text=True, cwd=ROOT
    )


def example(tmp_path: Path, edit: str | None = None, new: str = "") -> Path:
    text = (ROOT / "config.example.yaml").read_text()
    text = text.replace("  irc:\n    enabled: false", "  testnet: {}\n  irc:\n    enabled: false")
    if edit is not None:
        assert edit in text, edit
        text = text.replace(edit, new)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_help_documents_every_option() -> None:
    res = run("--help")
    assert res.returncode == 0
    for opt in ("--config", "--generate-registration", "--registration", "Exit status"):
        assert opt in res.stdout


def test_version() -> None:
    res = run("--version")
    assert res.returncode == 0, res.stderr
    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert declared and res.stdout.strip() == f"mimi-bridge {declared.group(1)}"


def test_generate_registration(tmp_path: Path) -> None:
    cfg = example(tmp_path)
    reg_path = tmp_path / "registration.yaml"
    res = run("-c", str(cfg), "-g", "-r", str(reg_path))
    assert res.returncode == 0, res.stderr
    reg = YAML().load(reg_path)
    assert reg["rate_limited"] is False and reg["receive_ephemeral"] is True
    assert reg["sender_localpart"] == "mimibot" and reg["protocols"] == ["testnet"]
    # What end-to-bridge encryption needs from the homeserver (MSC3202, MSC4190).
    assert reg["org.matrix.msc3202"] is True and reg["io.element.msc4190"] is True
    users = [n["regex"] for n in reg["namespaces"]["users"]]
    aliases = [n["regex"] for n in reg["namespaces"]["aliases"]]
    assert all(n["exclusive"] for n in reg["namespaces"]["users"])
    assert re.fullmatch(users[1], "@testnet_bob:example.org")
    assert not re.fullmatch(users[1], "@testnet_bob:example.org.evil")
    assert re.fullmatch(aliases[0], "#testnet_=23room:example.org")
    saved = cfg.read_text()
    # Tokens are stored back into the config, comments kept.
    assert reg["as_token"] in saved and reg["hs_token"] in saved
    assert "# (required) Where the bridge reaches" in saved
    assert "credentials_key: generate" not in saved
    # Generating again rotates the tokens but keeps the credentials key.
    key = YAML().load(cfg)["bridge"]["credentials_key"]
    assert run("-c", str(cfg), "-g", "-r", str(reg_path)).returncode == 0
    assert YAML().load(cfg)["bridge"]["credentials_key"] == key
    # The provisioning secret is generated once and kept too: integrations hold it.
    secret = YAML().load(saved)["provisioning"]["shared_secret"]
    assert secret != "generate" and len(secret) >= 16
    assert YAML().load(cfg)["provisioning"]["shared_secret"] == secret
    assert YAML().load(reg_path)["as_token"] != reg["as_token"]


@pytest.mark.parametrize(
    ("edit", "new", "message"),
    [
        ("  domain: example.org\n", "", "homeserver.domain: missing"),
        ("  port: 29333", "  port: many", "appservice.port: must be an integer"),
        (
            "address: http://127.0.0.1:8008",
            "address: ftp://nowhere",
            "homeserver.address: must be an http(s) URL",
        ),
        (
            "database: sqlite:mimi-bridge.db",
            "database: mysql://x/y",
            "appservice.database: must be",
        ),
        ('    "*": relay', '    "*": superuser', "bridge.permissions.*: must be one of"),
        (
            "    lifetime_days: 30",
            "    lifetime_days: -1",
            "bridge.media_links.lifetime_days: must be 0 (no limit) or more",
        ),
        (
            "    default: false",
            "    default: true",
            "bridge.encryption.default: needs bridge.encryption.allow: true",
        ),
        ("    allow: false", "    allow: sure", "bridge.encryption.allow: must be true or false"),
        ("  testnet: {}", "  nosuchnet: {}", "connectors.nosuchnet: unknown connector"),
        (
            "  testnet: {}",
            "  testnet: {delay_seconds: soon}",
            "connectors.testnet.delay_seconds: must be a number",
        ),
        ("  level: INFO", "  level: [INFO", "is not valid YAML"),
        (
            "  listen: 127.0.0.1:9108",
            "  listen: localhost",
            "metrics.listen: must be host:port, not 'localhost'",
        ),
        (
            "  enabled: false\n  listen: 127.0.0.1:9108",
            "  enabled: true\n  listen: 127.0.0.1:29333",
            "metrics.listen: port 29333 is the appservice port",
        ),
        ("  enabled: false\n  listen:", "  enabled: yes please\n  listen:", "metrics.enabled"),
        (
            "  shared_secret: generate",
            "  shared_secret: short",
            "provisioning.shared_secret: must be at least 16 characters",
        ),
        (
            "  prefix: /_matrix/provision",
            "  prefix: provision",
            "provisioning.prefix: must be a URL path",
        ),
        ("  prefix: /_matrix/provision", "  prefix: /_matrix/app", "provisioning.prefix: "),
    ],
)
def test_bad_config_is_one_line_and_exit_2(
    tmp_path: Path, edit: str, new: str, message: str
) -> None:
    res = run("-c", str(example(tmp_path, edit, new)))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_ungenerated_tokens_are_a_config_error(tmp_path: Path) -> None:
    res = run("-c", str(example(tmp_path)))
    assert res.returncode == 2
    assert "appservice.as_token: not generated yet" in res.stderr


@pytest.mark.parametrize("name", ["irc", "xmpp", "deltachat", "webhooks"])
def test_example_connector_sections_are_valid(tmp_path: Path, name: str) -> None:
    """Each connector's documented example section passes its own validation."""
    from bridge.config import load
    from bridge.connectors_loader import load_connector_classes

    path = tmp_path / "config.yaml"
    doc = YAML().load((ROOT / "config.example.yaml").read_text())
    doc["connectors"][name]["enabled"] = True
    with path.open("w") as f:
        YAML().dump(doc, f)
    assert list(load_connector_classes(load(path))) == [name]
