"""Finding connectors: the built-ins under ``connectors/`` and third-party plugins that
register a ``NetworkConnector`` subclass under the ``mimi_bridge.connectors`` entry points.

The built-in names are reserved: a plugin registering one of them is ignored, so that loading
a built-in never reads the installed distributions' metadata (``importlib.metadata`` and the
scan of site-packages hold about 2 MiB for the life of the process)."""

from __future__ import annotations

import importlib
from typing import Any

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


def _entry_points() -> Any:
    from importlib.metadata import entry_points

    return entry_points(group=ENTRY_POINT_GROUP)


def available() -> dict[str, str]:
    """Every known connector name -> where it comes from."""
    found = dict(BUILTIN)
    for ep in _entry_points():
        found.setdefault(ep.name, ep.value)
    return found


def load(name: str) -> type[NetworkConnector]:
    if name in BUILTIN:
        return _load(BUILTIN[name])
    for ep in _entry_points():
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, NetworkConnector)):
                raise TypeError(f"entry point {ep.value} is not a NetworkConnector subclass")
            return cls
    raise UnknownConnector(name)
