"""The ``connectors.webhooks`` config section."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.connector import ConfigError

KEYS: dict[str, tuple[type | tuple[type, ...], object]] = {
    "max_body_kb": (int, 256),
    "rate_limit_per_minute": (int, 60),
    "outgoing_retries": (int, 5),
    "outgoing_backoff_seconds": ((int, float), 2.0),
    "outgoing_timeout_seconds": ((int, float), 10.0),
    "fetch_icons": (bool, True),
}


@dataclass(frozen=True, slots=True)
class WebhooksConfig:
    max_body: int
    rate_limit_per_minute: int
    outgoing_retries: int
    outgoing_backoff: float
    outgoing_timeout: float
    fetch_icons: bool


def validate(section: Mapping[str, Any]) -> WebhooksConfig:
    for key, value in section.items():
        if key not in KEYS:
            raise ConfigError(key, f"unknown key (known: {', '.join(sorted(KEYS))})")
        kind = KEYS[key][0]
        if isinstance(value, bool) and kind is not bool:
            raise ConfigError(key, "must be a number")
        if not isinstance(value, kind):
            raise ConfigError(key, "must be true or false" if kind is bool else "must be a number")
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ConfigError(key, "must not be negative")
    get: dict[str, Any] = {k: section.get(k, default) for k, (_, default) in KEYS.items()}
    if get["max_body_kb"] < 1:
        raise ConfigError("max_body_kb", "must be at least 1")
    if get["rate_limit_per_minute"] < 1:
        raise ConfigError("rate_limit_per_minute", "must be at least 1")
    return WebhooksConfig(
        max_body=int(get["max_body_kb"]) * 1024,
        rate_limit_per_minute=int(get["rate_limit_per_minute"]),
        outgoing_retries=int(get["outgoing_retries"]),
        outgoing_backoff=float(get["outgoing_backoff_seconds"]),
        outgoing_timeout=float(get["outgoing_timeout_seconds"]),
        fetch_icons=bool(get["fetch_icons"]),
    )
