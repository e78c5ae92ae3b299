"""The connection to NATS shared by a process's scale-out parts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError

from .subjects import EVENTS_PREFIX, EVENTS_STREAM

FIRST_CONNECT_S = 15.0


class BusUnavailable(Exception):
    """NATS could not be reached at start-up (one line, for the admin)."""


async def connect(
    url: str,
    name: str,
    log: logging.Logger,
    on_reconnect: Callable[[], None] | None = None,
) -> Client:
    """Connect, and keep reconnecting for as long as the process runs: a NATS restart is a
    pause, not a failure. Raises :class:`BusUnavailable` when the first connection fails.
    ``on_reconnect`` is called each time the connection is back."""

    async def disconnected() -> None:
        log.warning("NATS connection lost; reconnecting")

    async def reconnected() -> None:
        log.info("NATS connection back")
        if on_reconnect is not None:
            on_reconnect()

    async def error(e: Exception) -> None:
        log.debug("NATS: %s", e)

    try:
        # The client retries a first connection forever too: bound it, for a clear error.
        return await asyncio.wait_for(
            _connect(url, name, disconnected, reconnected, error), FIRST_CONNECT_S
        )
    except TimeoutError as e:
        raise BusUnavailable(
            f"scale.nats_url: cannot reach NATS at {url} (no answer in {FIRST_CONNECT_S:.0f} s)"
        ) from e
    except Exception as e:  # refused, DNS, TLS...
        reason = str(e) or type(e).__name__
        raise BusUnavailable(f"scale.nats_url: cannot reach NATS at {url} ({reason})") from e


async def _connect(url: str, name: str, disconnected: Any, reconnected: Any, error: Any) -> Client:
    return await nats.connect(
        url,
        name=name,
        connect_timeout=5,
        reconnect_time_wait=0.5,
        max_reconnect_attempts=-1,
        allow_reconnect=True,
        ping_interval=5,
        max_outstanding_pings=3,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=error,
    )


async def ensure_events_stream(js: JetStreamContext) -> None:
    """The stream of remote events, on disk, deduplicated by ``Nats-Msg-Id`` for 2 min."""
    config = StreamConfig(
        name=EVENTS_STREAM,
        subjects=[f"{EVENTS_PREFIX}.>"],
        storage=StorageType.FILE,
        duplicate_window=120.0,
        max_age=7 * 86400.0,  # a core away for a week has more to fix than its backlog
    )
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)
