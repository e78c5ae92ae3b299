"""The Delta Chat connector (through the official Delta Chat core, deltachat-rpc-server)."""

from .connector import DeltaChatConnector

__all__ = ["DeltaChatConnector"]
