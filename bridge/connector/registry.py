"""Finding connectors: the built-ins under ``connectors/`` and third-party plugins that
register a ``NetworkConnector`` subclass under the ``mimi_bridge.connectors`` entry points."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from .base import NetworkConnector

ENTRY_POINT_GROUP = "mimi_bridge.connectors"

# name -> "module:Class" of the connectors that ship with the bridge.
BUILTIN: dict[str, str] = {
    "irc": "connectors.irc:IRCConnector",
    "xmpp": "connectors.xmpp:XMPPConnector",
    "deltachat": "connectors.deltachat:DeltaChatConnector",
    "webhooks": "connectors.webhooks:WebhooksConnector",
}


class UnknownConnector(LookupError):
    pass


def _load(spec: str) -> type[NetworkConnector]:
    module, _, attr = spec.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, NetworkConnector)):
        raise TypeError(f"{spec} is not a NetworkConnector subclass")
    return cls


def available() -> dict[str, str]:
    """Every known connector name -> where it comes from."""
    found = {name: spec for name, spec in BUILTIN.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def load(name: str) -> type[NetworkConnector]:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, NetworkConnector)):
                raise TypeError(f"entry point {ep.value} is not a NetworkConnector subclass")
            return cls
    if name in BUILTIN:
        return _load(BUILTIN[name])
    raise UnknownConnector(name)
