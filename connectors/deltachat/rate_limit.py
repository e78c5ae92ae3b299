"""A sliding-window limit of incoming messages per remote sender."""

from __future__ import annotations

import time
from collections import deque


class RateLimiter:
    def __init__(self, messages: int, seconds: float) -> None:
        self.messages = messages
        self.seconds = seconds
        self._seen: dict[str, deque[float]] = {}
        self._warned: dict[str, float] = {}

    def allow(self, sender: str) -> bool:
        now = time.monotonic()
        q = self._seen.setdefault(sender, deque())
        while q and now - q[0] > self.seconds:
            q.popleft()
        if len(q) >= self.messages:
            return False
        q.append(now)
        return True

    def should_warn(self, sender: str) -> bool:
        now = time.monotonic()
        if now - self._warned.get(sender, -1e9) > self.seconds:
            self._warned[sender] = now
            return True
        return False
