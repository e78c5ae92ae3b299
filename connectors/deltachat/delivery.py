"""Delivery of messages sent from Matrix: while the mail server has not taken them the core is
nudged to retry now and then, and the Matrix sender hears about a message that failed.

A failure is told in the message's room: in a group by the bridge's bot, in a DM by the
contact's ghost as a notice replying to the message (the bot is not in a DM the user opened by
inviting the ghost). The mail server's refusal comes before the message is in the outgoing
queue's records when it is quick (a recipient refused at ``RCPT TO``): such an outcome waits
for :meth:`Deliveries.sent`."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from bridge.connector import MessageContent, MessageKind, PortalKey, RemoteMessage, Sender

from .rpc import Rpc, RpcDown, RpcError

_REMEMBERED = 10_000  # senders of the latest messages, for failure notices
_EARLY = 1_000  # outcomes of messages whose sender is not known (yet)
_REFUSED = "the mail server refused it"
_SMTP_PERMANENT = re.compile(r"^Permanent SMTP error:\s*(?:permanent:\s*)?", re.IGNORECASE)


def summary(text: str | None) -> str:
    """The start of a message's text, to name it in a notice."""
    line = next((s.strip() for s in (text or "").splitlines() if s.strip()), "")
    if not line:
        return "file"
    return line if len(line) <= 60 else line[:59] + "…"


def failure_reason(error: str | None) -> str:
    """The core's error for a failed message as one readable line."""
    line = next((s.strip() for s in (error or "").splitlines() if s.strip()), "")
    if not line:
        return _REFUSED
    detail = _SMTP_PERMANENT.sub("", line)
    if detail != line:
        line = f"{_REFUSED} ({detail})" if detail else _REFUSED
    return line if len(line) <= 300 else line[:299] + "…"


class Deliveries:
    def __init__(self, rpc: Rpc, bridge: Any) -> None:
        self.rpc = rpc
        self.bridge = bridge
        self._undelivered: set[tuple[int, int]] = set()
        self._sent_by: dict[tuple[int, int], tuple[str, PortalKey, str, str]] = {}
        # Outcomes before :meth:`sent` (or of messages not from Matrix): True when failed.
        self._early: dict[tuple[int, int], bool] = {}
        self._nudger: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._nudger = asyncio.create_task(self._nudge_loop(), name="deltachat-nudge")

    def stop(self) -> None:
        if self._nudger:
            self._nudger.cancel()

    async def sent(
        self, account: int, msg_id: int, user_id: str, portal: PortalKey, mid: str, text: str
    ) -> None:
        """A Matrix user's message (Message-ID ``mid``) is in the core's outgoing queue."""
        key = (account, msg_id)
        self._sent_by[key] = (user_id, portal, mid, summary(text))
        if len(self._sent_by) > _REMEMBERED:
            self._sent_by.pop(next(iter(self._sent_by)))
        outcome = self._early.pop(key, None)
        if outcome is None:
            self._undelivered.add(key)
        elif outcome:
            await self._tell(key)

    def delivered(self, account: int, msg_id: int) -> None:
        key = (account, msg_id)
        self._undelivered.discard(key)
        if key not in self._sent_by:
            self._remember_early(key, False)

    async def failed(self, account: int, msg_id: int) -> None:
        key = (account, msg_id)
        self._undelivered.discard(key)
        if key not in self._sent_by:
            self._remember_early(key, True)  # not from Matrix, or :meth:`sent` comes later
            return
        await self._tell(key)

    def _remember_early(self, key: tuple[int, int], failed: bool) -> None:
        self._early[key] = failed or self._early.get(key, False)
        if len(self._early) > _EARLY:
            self._early.pop(next(iter(self._early)))

    async def _tell(self, key: tuple[int, int]) -> None:
        user_id, portal, mid, what = self._sent_by[key]
        try:
            msg = await self.rpc.call("get_message", *key)
            reason = failure_reason(msg.get("error"))
        except (RpcError, RpcDown):
            reason = _REFUSED
        text = f"Your message “{what}” was not delivered: {reason}"
        if not portal.receiver:
            await self.bridge.notify(user_id, text, portal)
            return
        await self.bridge.emit(
            RemoteMessage(
                portal=portal,
                sender=Sender(portal.remote_id),
                id=f"{mid}#not-delivered",
                content=MessageContent(text, kind=MessageKind.NOTICE),
                reply_to=mid,
            )
        )

    async def _nudge_loop(self) -> None:
        """While sent messages wait for the mail server, ask the core to retry now and then
        (with backoff) instead of waiting for its own longer timers."""
        delay = 2.0
        while True:
            await asyncio.sleep(delay)
            if not self._undelivered or not self.rpc.is_up:
                delay = 2.0
                continue
            with contextlib.suppress(RpcError, RpcDown):
                await self.rpc.call("maybe_network")
            delay = min(delay * 2, 60.0)
