"""Each Matrix user's own connections (their puppets and logins): the state of each and since
when, and what the user is told about them in the management room.

Connectors push every change (``BridgeAPI.connection_changed``), retries included; this
module turns that stream into few notices: a drop is told once per outage (not once per
reconnect attempt), a failure once with what to do, the recovery once with how long it took.
A connection that keeps dropping is told once that it is flapping, then not again for a while.

The states live in memory only: each describes a connection of this process, so after a
restart every connection is a new one and its "since" is when this run reached it; a login
still down or refused after a restart is told again by the first failure of the new run.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .connector import ConnectionChange, ConnectionState

# More outage notices than this within FLAP_WINDOW: the connection is flapping; the user is
# told so once and hears nothing more about it for QUIET_SECONDS.
FLAP_LIMIT = 3
FLAP_WINDOW = 600.0
QUIET_SECONDS = 600.0

_DOWN = (ConnectionState.CONNECTING, ConnectionState.DISCONNECTED)

Key = tuple[str, str, str]  # user id, network, login id
Tell = Callable[[str, str], None]  # user id, text: queued, sent in order per user


@dataclass(slots=True)
class LoginStatus:
    """One connection of a Matrix user, as the bridge last heard of it."""

    user_id: str
    network: str
    login_id: str
    state: ConnectionState
    since: float  # Unix time the connection became up, down or failed
    reason: str = ""
    remote_name: str = ""
    auth_failed: bool = False
    advice: str = ""
    ever_up: bool = False
    outage_since: float | None = None  # first moment down in the current outage
    told: str = ""  # what the user heard of the current outage: "" | "down" | "failed"
    notices: deque[float] = field(default_factory=deque)  # when outage notices went out
    quiet_until: float = 0.0

    def describe(self, now: float | None = None) -> str:
        """``connected since 04:12 UTC (3 min)``; a reason after a down state."""
        now = time.time() if now is None else now
        words = {
            ConnectionState.CONNECTED: "connected",
            ConnectionState.CONNECTING: "reconnecting" if self.ever_up else "connecting",
            ConnectionState.DISCONNECTED: "disconnected",
            ConnectionState.FAILED: "failed",
        }[self.state]
        text = f"{words} since {clock(self.since, now)} ({duration(now - self.since)})"
        if self.state != ConnectionState.CONNECTED and self.reason:
            text += f": {self.reason}"
        return text


def _phase(state: ConnectionState | None) -> str:
    if state is None:
        return ""
    if state in _DOWN:
        return "down"
    return str(state)


def clock(at: float, now: float) -> str:
    """A wall-clock time in UTC, with the date when it is not today's."""
    t = datetime.fromtimestamp(at, UTC)
    if t.date() == datetime.fromtimestamp(now, UTC).date():
        return t.strftime("%H:%M UTC")
    return t.strftime("%Y-%m-%d %H:%M UTC")


def duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    m = s // 60
    if m < 60:
        return f"{m} min"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(h, 24)
    return f"{d} d {h} h" if h else f"{d} d"


class ConnectionStatus:
    """The users' connections. ``describe_login`` names a connection in a notice ("IRC
    (libera) as alice"); ``relogin_hint`` says how to log in again after an authentication
    failure; ``tell`` sends a notice to the user's management room, in order per user."""

    def __init__(
        self,
        tell: Tell,
        describe_login: Callable[[LoginStatus], str],
        relogin_hint: Callable[[LoginStatus], str],
        quiet_seconds: float = QUIET_SECONDS,
    ) -> None:
        self._quiet = quiet_seconds
        self._tell = tell
        self._describe = describe_login
        self._hint = relogin_hint
        self._status: dict[Key, LoginStatus] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}

    # --- what the bridge shows --------------------------------------------------------------

    def of_user(self, user_id: str) -> list[LoginStatus]:
        return sorted(
            (s for s in self._status.values() if s.user_id == user_id),
            key=lambda s: (s.network, s.login_id),
        )

    def get(self, user_id: str, network: str, login_id: str) -> LoginStatus | None:
        return self._status.get((user_id, network, login_id))

    def find(self, user_id: str, login_id: str, networks: set[str]) -> LoginStatus | None:
        """A login's connection, when only the connector's networks are known (login rows
        name the connector, connections the network)."""
        for s in self._status.values():
            if s.user_id == user_id and s.login_id == login_id and s.network in networks:
                return s
        return None

    # --- what connectors report -------------------------------------------------------------

    def update(self, change: ConnectionChange) -> None:
        key = (change.user_id, change.network, change.login_id)
        if change.state is None:
            self._status.pop(key, None)
            timer = self._timers.pop(key, None)
            if timer is not None:
                timer.cancel()
            return
        st = self._status.get(key)
        prev: ConnectionState | None = None
        if st is None:
            st = self._status[key] = LoginStatus(
                change.user_id, change.network, change.login_id, change.state, change.at
            )
        else:
            prev = st.state
        if _phase(prev) != _phase(change.state):
            st.since = change.at
        if change.reason or _phase(prev) != _phase(change.state):
            st.reason = change.reason
        if change.remote_name:
            st.remote_name = change.remote_name
        st.auth_failed = change.auth_failed
        st.advice = change.advice
        st.state = change.state
        text = self._notice(st, prev, change.at)
        if text:
            self._send(st.user_id, text)

    def _notice(self, st: LoginStatus, prev: ConnectionState | None, now: float) -> str:
        """What the user is told about this change, if anything (and the bookkeeping)."""
        name = self._describe(st)
        reason = f": {st.reason}" if st.reason else ""
        if st.state == ConnectionState.CONNECTED:
            st.ever_up = True
            outage, told = st.outage_since, st.told
            st.outage_since, st.told = None, ""
            if told and outage is not None:
                return f"{name} is back (after {duration(now - outage)})."
            return ""
        if st.outage_since is None:
            st.outage_since = now
        if st.state == ConnectionState.FAILED:
            if st.told == "failed":
                return ""  # a retry failing the same way
            st.told = "failed"
            text = f"{name} failed{reason}."
            if st.advice:
                text += " " + st.advice
            elif st.auth_failed:
                text += " " + self._hint(st)
            return text
        if st.told:
            return ""  # already told of this outage: a reconnect attempt
        if st.state == ConnectionState.CONNECTING and prev != ConnectionState.CONNECTED:
            return ""  # a first attempt, or the next one after a told failure
        if now < st.quiet_until:
            return ""
        while st.notices and st.notices[0] < now - FLAP_WINDOW:
            st.notices.popleft()
        if len(st.notices) >= FLAP_LIMIT:
            st.quiet_until = now + self._quiet
            self._after_quiet((st.user_id, st.network, st.login_id), self._quiet)
            return (
                f"{name} keeps dropping ({len(st.notices) + 1} times in "
                f"{duration(FLAP_WINDOW)}). I will not mention it again for "
                f"{duration(self._quiet)}; `ping` shows its state."
            )
        st.told = "down"
        st.notices.append(now)
        if st.ever_up:
            return f"{name} was lost{reason}. Reconnecting; I will tell you when it is back."
        return f"{name} cannot connect{reason}. Retrying; I will tell you when it is up."

    def _after_quiet(self, key: Key, delay: float) -> None:
        """At the end of a quiet period, one word on where the connection stands."""
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()

        def check() -> None:
            self._timers.pop(key, None)
            st = self._status.get(key)
            if st is None:
                return
            if st.state != ConnectionState.CONNECTED and not st.told:
                st.told = "down"  # the recovery gets its notice
            self._send(st.user_id, f"{self._describe(st)} is {st.describe()}.")

        self._timers[key] = asyncio.get_running_loop().call_later(delay, check)

    def _send(self, user_id: str, text: str) -> None:
        self._tell(user_id, text)

    def close(self) -> None:
        """The bridge stops: its connections end with it."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._status.clear()
