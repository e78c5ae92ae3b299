"""Who may bridge an IRC channel: the admin's ``exclude`` rules, and the channel's consent to
a ``link``. A link is the channel's business, not only the Matrix room's: it needs the
requesting user's own connection to be a channel operator there, or an operator's answer to
the bot's private request."""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.connector import MatrixUser

from .config import ExcludeRule

OP_MODES = frozenset("oaq")  # channel operator and above
YES = ("yes", "y")
NO = ("no", "n")


def exclusion(
    rules: list[ExcludeRule], fold: Callable[[str], str], channel: str
) -> ExcludeRule | None:
    """The first ``exclude`` rule whose pattern matches the channel, case-folded."""
    name = fold(channel)
    return next((r for r in rules if fnmatch.fnmatchcase(name, fold(r.channel))), None)


def refusal(rule: ExcludeRule | None, channel: str, user: MatrixUser | None) -> str | None:
    """Why ``user`` (None: someone unknown, as through an alias) may not bridge the channel."""
    if rule is None:
        return None
    if rule.mode == "never":
        return f"{channel} may not be bridged: the bridge's admin excluded it"
    if user is None or user.permission != "admin":
        return f"only bridge admins may bridge {channel}"
    return None


@dataclass(slots=True)
class Ask:
    """A link request waiting for an operator of ``channel`` (server-folded)."""

    channel: str
    name: str  # as IRC spells it
    answer: asyncio.Future[tuple[bool, str]]  # (agreed, the operator's nick)
    asked: set[str] = field(default_factory=set)


class ConsentDesk:
    """The requests of one network waiting for an answer on IRC."""

    def __init__(self) -> None:
        self.asks: list[Ask] = []

    def open(self, channel: str, name: str) -> Ask:
        """A request for ``channel``, answerable from now on (before anyone is asked)."""
        ask = Ask(channel, name, asyncio.get_running_loop().create_future())
        self.asks.append(ask)
        return ask

    async def wait(self, ask: Ask, timeout: float) -> tuple[bool, str] | None:  # noqa: ASYNC109
        """The first operator's answer; None when none came in time."""
        try:
            return await asyncio.wait_for(asyncio.shield(ask.answer), timeout)
        except TimeoutError:
            return None
        finally:
            self.asks.remove(ask)

    def answer(
        self, nick: str, text: str, fold: Callable[[str], str], is_op: Callable[[str], bool]
    ) -> str | None:
        """A private message to the bot: when it answers waiting requests, what to say back
        to ``nick``; None when it is no answer. ``is_op(channel)``: whether ``nick`` is an
        operator of the server-folded channel now (asked or not: any operator may answer)."""
        words = text.strip().split()
        if not words or words[0].lower().rstrip(".!") not in (*YES, *NO):
            return None
        agreed = words[0].lower().rstrip(".!") in YES
        named = fold(words[1]) if len(words) > 1 else None
        mine = [a for a in self.asks if is_op(a.channel) and not a.answer.done()]
        if named is not None:
            mine = [a for a in mine if a.channel == named]
        if not mine:
            if any(a.channel == named for a in self.asks):
                return f"Only operators of {words[1]} can answer its link request."
            return "No link request is waiting for you."
        channels = {a.channel for a in mine}
        if len(channels) > 1:
            names = ", ".join(sorted({a.name for a in mine}))
            return f"Several link requests wait ({names}): answer `yes #channel` or `no #channel`."
        for ask in mine:
            ask.answer.set_result((agreed, nick))
        name = mine[0].name
        if agreed:
            return f"Thanks: linking {name} goes ahead."
        return f"Thanks: {name} stays unbridged."
