"""Writing the appservice registration file the homeserver loads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from . import config as cfgmod
from .connector import Namespace


def namespaces_regexes(
    domain: str, bot_username: str, namespaces: list[Namespace]
) -> dict[str, list[dict[str, Any]]]:
    # POSIX ERE and Python agree on this subset: literal text escaped, then ".*".
    dom = re.escape(domain)
    users = [{"exclusive": True, "regex": f"@{re.escape(bot_username)}:{dom}"}]
    aliases = []
    for ns in namespaces:
        users.append({"exclusive": True, "regex": f"@{re.escape(ns.prefix)}.*:{dom}"})
        aliases.append({"exclusive": True, "regex": f"#{re.escape(ns.prefix)}.*:{dom}"})
    return {"users": users, "aliases": aliases, "rooms": []}


def build(
    cfg: cfgmod.BridgeConfig, protocols: list[str], namespaces: list[Namespace]
) -> dict[str, Any]:
    return {
        "id": cfg.appservice_id,
        "url": cfg.as_address,
        "as_token": cfg.as_token,
        "hs_token": cfg.hs_token,
        "sender_localpart": cfg.bot_username,
        "rate_limited": False,
        # To-device messages (room keys) come with the ephemeral events (MSC2409).
        "receive_ephemeral": cfg.ephemeral_events or cfg.encryption.allow,
        "de.sorunome.msc2409.push_ephemeral": cfg.ephemeral_events or cfg.encryption.allow,
        # End-to-bridge encryption: the bridge creates its bot's device itself (MSC4190) and
        # gets device lists and one-time-key counts in transactions (MSC3202). Harmless while
        # bridge.encryption.allow is off, so turning it on needs no new registration.
        "org.matrix.msc3202": True,
        "io.element.msc4190": True,
        "protocols": protocols,
        "namespaces": namespaces_regexes(cfg.domain, cfg.bot_username, namespaces),
    }


def generate(config_path: Path, registration_path: Path) -> dict[str, Any]:
    """Fresh tokens into the config (comments kept), then the registration from it."""
    from .connectors_loader import load_connector_classes, offline_connectors

    doc = cfgmod.load_document(config_path)
    # Validate before touching anything, so a bad config is not half rewritten.
    cfg = cfgmod.parse(doc, config_path)
    classes = load_connector_classes(cfg)
    doc["appservice"]["as_token"] = cfgmod.new_token()
    doc["appservice"]["hs_token"] = cfgmod.new_token()
    if "bridge" not in doc or doc["bridge"] is None:
        doc["bridge"] = {}
    if doc["bridge"].get("credentials_key", cfgmod.GENERATE) == cfgmod.GENERATE:
        # Kept across re-generation: it decrypts stored credentials.
        doc["bridge"]["credentials_key"] = cfgmod.new_token()
    if "provisioning" not in doc or doc["provisioning"] is None:
        doc["provisioning"] = {}
    if doc["provisioning"].get("shared_secret", cfgmod.GENERATE) == cfgmod.GENERATE:
        # Kept across re-generation: integrations hold it.
        doc["provisioning"]["shared_secret"] = cfgmod.new_token()
    cfgmod.save_document(config_path, doc)
    cfg = cfgmod.parse(doc, config_path)
    namespaces = [ns for c in offline_connectors(cfg, classes) for ns in c.namespaces()]
    reg = build(cfg, sorted(classes), namespaces)
    y = YAML()
    y.default_flow_style = False
    with registration_path.open("w", encoding="utf-8") as f:
        y.dump(reg, f)
    return reg
