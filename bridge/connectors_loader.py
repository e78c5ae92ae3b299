"""Turning the config's ``connectors`` sections into connector instances."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .config import BridgeConfig, ConfigError
from .connector import ConfigError as ConnectorConfigError
from .connector import NetworkConnector
from .connector.registry import UnknownConnector, available, load


def enabled_sections(cfg: BridgeConfig) -> dict[str, dict[str, Any]]:
    """Sections with ``enabled: false`` are kept in the file but not loaded; ``enabled`` is
    the core's key, the rest of the section belongs to the connector."""
    out: dict[str, dict[str, Any]] = {}
    for name, section in cfg.connectors.items():
        enabled = section.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"connectors.{name}.enabled", "must be true or false")
        if enabled:
            out[name] = {k: v for k, v in section.items() if k != "enabled"}
    return out


def load_connector_classes(cfg: BridgeConfig) -> dict[str, type[NetworkConnector]]:
    classes: dict[str, type[NetworkConnector]] = {}
    for name, section in enabled_sections(cfg).items():
        try:
            cls = load(name)
        except UnknownConnector:
            known = ", ".join(sorted(available())) or "none"
            raise ConfigError(
                f"connectors.{name}", f"unknown connector (available: {known})"
            ) from None
        except ImportError as e:
            raise ConfigError(f"connectors.{name}", f"cannot be loaded: {e}") from e
        try:
            cls.validate_config(section)
        except ConnectorConfigError as e:
            raise ConfigError(f"connectors.{name}.{e.key}", e.problem) from e
        classes[name] = cls
    return classes


class _OfflineBridge:
    """Enough of BridgeAPI for reading a connector's namespaces without starting it."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.log = logging.getLogger("mimi")


def offline_connectors(
    cfg: BridgeConfig, classes: Mapping[str, type[NetworkConnector]]
) -> list[NetworkConnector]:
    sections = enabled_sections(cfg)
    bridge: Any = _OfflineBridge(cfg.domain)
    return [cls(bridge, sections[name]) for name, cls in classes.items()]
