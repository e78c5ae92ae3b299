"""The IRC connector: per-user puppet connections on plain asyncio, one listener per network."""

from .connector import IRCClient, IRCConnector

__all__ = ["IRCClient", "IRCConnector"]
