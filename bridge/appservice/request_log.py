"""The log aiohttp's HTTP protocol layer writes to (malformed requests, dropped connections).

aiohttp logs a request it cannot parse with a full traceback at ERROR. Whoever reaches the
port can send such requests in a loop, so here each becomes one short line, and at most one
line is written per interval; the next line written says how many were left out."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

MAX_DETAIL = 200


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_DETAIL else flat[: MAX_DETAIL - 3] + "..."


class RequestErrorLog(logging.LoggerAdapter[logging.Logger]):
    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(logger, {})
        self.interval_s = interval_s
        self._clock = clock
        self._quiet_until = float("-inf")
        self._left_out = 0

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        # A malformed request is the client's fault, not the bridge's: at most a warning.
        level = min(level, logging.WARNING)
        if not self.logger.isEnabledFor(level):
            return
        now = self._clock()
        if now < self._quiet_until:
            self._left_out += 1
            return
        self._quiet_until = now + self.interval_s
        text = str(msg) % args if args else str(msg)
        exc = kwargs.get("exc_info")
        if exc is True:
            exc = sys.exc_info()[1]
        elif isinstance(exc, tuple):
            exc = exc[1]
        if isinstance(exc, BaseException):
            text += f": {type(exc).__name__}: {exc}"
        line = _one_line(text)
        if self._left_out:
            line += f" (and {self._left_out} more since the last such line, not logged)"
            self._left_out = 0
        self.logger.log(level, "%s", line)
