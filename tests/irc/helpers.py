"""Shared helpers for the IRC integration tests."""

from __future__ import annotations

import itertools
from typing import Any

from bridge.connector import MatrixMessage, MatrixSender, MessageContent, MessageKind, PortalKey
from connectors.irc import IRCConnector
from tests.harness.ircd import IrcServer

from .conftest import FakeBridge, wait_for

NET = "irc_test"
_n = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}{next(_n)}"


def net_config(server: IrcServer, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "bot": {"nick": unique("bot")},
        "flood": {"burst": 50, "rate": 50},
        "reconnect": {"min_delay": 0.2, "max_delay": 1.0},
        "connects_per_second": 200,
        "ping_interval": 30,
        "register_timeout": 5,
    }
    cfg.update(over)
    return {"networks": {"test": cfg}}


async def start_connector(bridge: FakeBridge, server: IrcServer, **over: Any) -> IRCConnector:
    conn = IRCConnector(bridge, net_config(server, **over))
    await conn.start()
    net = conn.networks["test"]
    await wait_for(lambda: net.bot.registered, 10, "bot registration")
    return conn


def message(
    portal: PortalKey,
    user_id: str,
    text: str,
    kind: MessageKind = MessageKind.TEXT,
    html: str | None = None,
    name: str = "",
) -> MatrixMessage:
    return MatrixMessage(
        portal=portal,
        sender=MatrixSender(user_id, name or user_id[1:].split(":")[0]),
        event_id="$" + unique("ev"),
        content=MessageContent(text, html=html, kind=kind),
    )


class DatabaseOnly:
    """A BridgeAPI stand-in that has a database and nothing else (for the stores' tests)."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def database(self) -> Any:
        return self.db
