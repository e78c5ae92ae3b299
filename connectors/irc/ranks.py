"""Matrix power levels to IRC channel modes, set by the Matrix user's own connection: 50 and
above is operator (``+o``), 1 to 49 voice (``+v``, taking ``+o`` away from a former operator),
0 and below neither. The channel decides: a connection without ops gets 482 and the Matrix user
is told. The server's MODE comes back to the listener like any other; the level the Matrix user
chose stays as long as the channel's modes stand for the same rank (see
:meth:`~connectors.irc.irc_to_matrix.IrcToMatrix.level`), so a Matrix 75 is not turned into the
50 of ``+o``."""

from __future__ import annotations

OPERATOR = 50
MANAGED = "ov"

# Numerics that refuse a channel MODE (naming the channel or the nick).
MODE_ERRORS = frozenset({"401", "403", "441", "442", "472", "482"})


def rank(level: int) -> str:
    """The mode letter a Matrix power level stands for: "o", "v" or ""."""
    if level >= OPERATOR:
        return "o"
    return "v" if level > 0 else ""


def mode_change(level: int, previous: int, held: set[str] | None = None) -> tuple[str, str]:
    """(modes to add, modes to take) for a member whose level went from ``previous`` to
    ``level``; ``held`` is what the listener last saw the member hold (o and v it holds that
    the new level does not stand for go too)."""
    add = rank(level)
    if add == "o":
        return "o", ""
    take = set()
    if add == "v":
        if previous >= OPERATOR:
            take.add("o")
        if held and "o" in held:
            take.add("o")
    else:
        take.update(rank(previous))
        take.update(m for m in (held or ()) if m in MANAGED)
    return add, "".join(m for m in MANAGED if m in take)


def mode_params(channel: str, nick: str, add: str, take: str) -> list[str]:
    """The parameters of one MODE line: ``#chan -o+v nick nick``."""
    modes = (f"-{take}" if take else "") + (f"+{add}" if add else "")
    return [channel, modes, *[nick] * (len(take) + len(add))]
