"""The base of the connector's parts (joins, presence_in, messages_in, ...): each holds the
connector (``self.c``), whose state the parts share, and its config and log."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connector import XMPPConnector


class Part:
    def __init__(self, c: XMPPConnector) -> None:
        self.c = c
        self.cfg = c.cfg
        self.log = c.log
