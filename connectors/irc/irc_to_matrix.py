"""IRC lines -> RemoteEvents.

Only the listener connection of a network (the bot) feeds channel traffic here, so each channel
event becomes exactly one RemoteEvent however many puppets are in the channel. Lines from our
own puppets (echoes of Matrix messages, their joins and parts) are skipped: they started on
Matrix. A puppet feeds only the private messages addressed to it (:meth:`private_message`).

Netsplits: a QUIT whose reason names two servers (``irc.a.net irc.b.net``), or one inside an
IRCv3 ``netsplit`` batch, is held for ``netsplit_window`` seconds: a user back within it (the
netjoin) never left Matrix; the others' ghosts leave when the window ends (:meth:`expire_splits`,
called by the network's timer). So a split and its heal cost Matrix no membership events.

Power levels: the highest channel prefix mode maps through ``power_levels`` (default
owner ``q`` / admin ``a`` / op ``o`` -> 50, halfop ``h`` -> 25, voice ``v`` -> 10, none -> 0).
Member snapshots (``RemoteChatInfo.members``) list the IRC users (ghosts) and, with
``is_from_me`` and their Matrix user, the Matrix users whose puppets are in the channel, so that a
puppet's +o/+v can become its Matrix user's power level; never the bot. A level a Matrix user
set through the bridge (:mod:`.ranks`) stays while the modes stand for the same rank.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from html import escape, unescape

from bridge.connector.events import (
    ChatMember,
    Membership,
    MessageContent,
    MessageKind,
    RemoteAccess,
    RemoteChatInfo,
    RemoteEvent,
    RemoteMembership,
    RemoteMessage,
    RemotePresence,
    RemoteProfile,
    Sender,
)
from bridge.connector.ids import PortalKey

from .client import IRCConnection
from .formatting import irc_to_html
from .ids import folded_specials
from .protocol import Line, casefold, parse_ctcp
from .ranks import rank

# Words that may be nicks: runs of nick characters. URLs are matched whole so that no nick is
# found inside them.
_WORDS = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*://|www\.)[^\s<>]*|[A-Za-z0-9\[\]\\`_^{|}-]+")
_TAGS = re.compile(r"(<[^>]*>)")
# "irc.a.net irc.b.net" (or "*.net *.split" on networks that hide their servers).
_NETSPLIT = re.compile(r"^[^\s.]+(?:\.[^\s.]+)+ [^\s.]+(?:\.[^\s.]+)+$")
MIN_PILL_LENGTH = 2  # a one-letter nick is no mention ("a", "I"), as in Heisenbridge


@dataclass(slots=True)
class Member:
    nick: str
    modes: set[str] = field(default_factory=set)
    # The power level a Matrix user gave the member (see IrcToMatrix.level); pending until
    # the MODE it asked for is known to have reached the listener.
    matrix_level: int | None = None
    level_pending: bool = False


@dataclass(slots=True)
class Split:
    """A user who quit in a netsplit: the channels they were in, until they come back."""

    nick: str
    since: float
    reason: str
    channels: dict[str, Member]  # canonical channel -> the member as it was


@dataclass(slots=True)
class ChannelState:
    name: str
    topic: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    names_buffer: dict[str, Member] | None = None
    # The channel modes Matrix can express (ACCESS_MODES), once the server told them.
    modes: set[str] | None = None


# +i: invite join rule; +m: posting needs voice; +s, +p, +k: never in the room directory.
ACCESS_MODES = frozenset("imspk")
HIDDEN_MODES = frozenset("spk")


def server_time(line: Line) -> int | None:
    value = line.tags.get("time")
    if not value:
        return None
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def key_change(conn: IRCConnection, line: Line) -> str | None:
    """The channel key a MODE line leaves (``+k new``: ``new``; ``-k``: ""), None when it
    does not change the key, or hides the new one (``+k *``)."""
    chanmodes = conn.isupport.get("CHANMODES", "beI,k,l,imnpst").split(",")
    always = set(chanmodes[0] if chanmodes else "") | set(
        chanmodes[1] if len(chanmodes) > 1 else ""
    )
    always |= set(conn.prefixes.values())
    on_set = set(chanmodes[2] if len(chanmodes) > 2 else "")
    args = list(line.params[2:])
    key: str | None = None
    adding = True
    for ch in line.param(1):
        if ch in "+-":
            adding = ch == "+"
            continue
        arg = args.pop(0) if (ch in always or (ch in on_set and adding)) and args else None
        if ch == "k":
            if not adding:
                key = ""
            elif arg and arg != "*":
                key = arg
    return key


class IrcToMatrix:
    def __init__(
        self,
        network: str,
        *,
        puppet_user: Callable[[str], str | None],
        ghost_user_id: Callable[[str], str],
        account_user: Callable[[str], str | None] = lambda account: None,
        id_of: Callable[[str], str] = casefold,
        power_levels: dict[str, int],
        netsplit_window: float = 60.0,
        publish: bool = False,
    ) -> None:
        self.network = network
        # Two folds: the server's (conn.fold) keys what this class keeps and looks up; the
        # network's id form (id_of) names users and channels in events for the core.
        self.puppet_user = puppet_user  # nick folded by the server -> Matrix user of a puppet
        self.account_user = account_user  # services account -> Matrix user logged into it
        self.ghost_user_id = ghost_user_id  # remote user id -> ghost Matrix id
        self.id_of = id_of  # a nick or channel as IRC spells it -> its remote id
        self.power_levels = power_levels
        self.publish = publish  # portals listed in the room directory, unless hidden
        self.channels: dict[str, ChannelState] = {}
        self.expected_kicks: set[tuple[str, str]] = set()  # (channel, nick) kicked from Matrix
        self._left: dict[str, ChannelState] = {}  # channels the bot was kicked from
        self.netsplit_window = netsplit_window
        self.splits: dict[str, Split] = {}  # canonical nick -> held netsplit QUIT
        self._batches: dict[str, str] = {}  # open IRCv3 batch reference -> type
        self._seq = itertools.count()

    # --- helpers -------------------------------------------------------------------------------

    def portal(self, conn: IRCConnection, channel: str) -> PortalKey:
        return PortalKey(self.network, self.id_of(channel))

    def channel_portal(self, canon_chan: str) -> PortalKey:
        """The portal of a channel known by its server-folded name."""
        state = self.channels.get(canon_chan)
        return PortalKey(self.network, self.id_of(state.name if state else canon_chan))

    def sender(self, conn: IRCConnection, nick: str) -> Sender:
        user = self.puppet_user(conn.fold(nick))
        if user is not None:
            return Sender(self.id_of(nick), nick, is_from_me=True, matrix_user=user)
        return Sender(self.id_of(nick), nick)

    def rekey(self, fold: Callable[[str], str]) -> None:
        """Re-fold what is kept with a new server mapping (announced after a (re)connect)."""

        def members(old: dict[str, Member]) -> dict[str, Member]:
            return {fold(m.nick): m for m in old.values()}

        def states(old: dict[str, ChannelState]) -> dict[str, ChannelState]:
            out = {}
            for state in old.values():
                state.members = members(state.members)
                if state.names_buffer is not None:
                    state.names_buffer = members(state.names_buffer)
                out[fold(state.name)] = state
            return out

        self.channels = states(self.channels)
        self._left = states(self._left)
        self.splits = {
            fold(held.nick): Split(
                held.nick, held.since, held.reason, {fold(c): m for c, m in held.channels.items()}
            )
            for held in self.splits.values()
        }
        self.expected_kicks = {(fold(c), fold(n)) for c, n in self.expected_kicks}

    def power(self, modes: set[str]) -> int:
        return max((self.power_levels.get(m, 0) for m in modes), default=0)

    def level(self, member: Member) -> int | None:
        """The member's power level for a snapshot: None (leave the room's level alone) while
        a level a Matrix user set through the bridge stands, that is while the channel modes
        stand for its rank (a Matrix 75 stays 75 under +o, a 20 stays 20 under +v: the echo of
        the MODE it asked for does not undo it) or while that MODE is on its way; else the
        level of the modes."""
        power = self.power(member.modes)
        wanted = member.matrix_level
        if wanted is None:
            return power
        if member.level_pending or rank(wanted) == rank(power):
            return None
        member.matrix_level = None  # the channel has changed the rank since
        return power

    def snapshot(
        self, conn: IRCConnection, state: ChannelState, puppets: bool = True
    ) -> list[ChatMember]:
        """The channel's members with their power levels (``puppets``: also our puppets)."""
        out = []
        me = conn.fold(conn.nick)
        for canon, member in state.members.items():
            if canon == me:
                continue
            user = self.puppet_user(canon)
            if user is None:
                sender = Sender(self.id_of(member.nick), member.nick)
                out.append(ChatMember(sender, self.level(member)))
            elif puppets:
                sender = Sender(
                    self.id_of(member.nick), member.nick, is_from_me=True, matrix_user=user
                )
                out.append(ChatMember(sender, self.level(member)))
        # Users held after a netsplit QUIT are still members until their window ends (a
        # snapshot is complete: whoever it leaves out leaves the Matrix room).
        canon_chan = conn.fold(state.name)
        for canon, held in self.splits.items():
            was = held.channels.get(canon_chan)
            if was is not None and canon not in state.members and canon != me:
                if self.puppet_user(canon) is None:
                    sender = Sender(self.id_of(held.nick), held.nick)
                    out.append(ChatMember(sender, self.level(was)))
        return out

    def member(self, channel: str, canon_nick: str) -> Member | None:
        state = self.channels.get(channel)
        return state.members.get(canon_nick) if state is not None else None

    def member_modes(self, channel: str, canon_nick: str) -> set[str] | None:
        member = self.member(channel, canon_nick)
        return member.modes if member is not None else None

    def nick_of_id(self, remote_id: str, fold: Callable[[str], str]) -> str | None:
        """The nick, as IRC spells it, of a channel member whose remote id is ``remote_id``
        (``fold``: the server's). The id may fold more than the server does (``{m}`` for
        ``[m]`` on an ascii server): then the members are searched."""
        for state in self.channels.values():
            member = state.members.get(fold(remote_id))
            if member is not None and self.id_of(member.nick) == remote_id:
                return member.nick
        if not folded_specials(remote_id):
            return None
        for state in self.channels.values():
            for member in state.members.values():
                if self.id_of(member.nick) == remote_id:
                    return member.nick
        return None

    def new_id(self, line: Line, ts: int) -> str:
        return line.tags.get("msgid") or f"{ts}.{next(self._seq)}"

    def content(
        self, conn: IRCConnection, text: str, kind: MessageKind, channel: str | None
    ) -> MessageContent:
        plain, html = irc_to_html(text)
        state = self.channels.get(channel) if channel is not None else None
        if state is None or not state.members:
            return MessageContent(text=plain, html=html, kind=kind)
        members = state.members
        me = conn.fold(conn.nick)
        fold = conn.fold
        mentions: dict[str, str] = {}  # mention (canonical nick or Matrix user id) -> user id

        def target(word: str) -> str | None:
            """The Matrix user a word names: a channel member's nick, exactly (case-folded)."""
            if len(word) < MIN_PILL_LENGTH or "." in word or "/" in word:
                return None
            canon = fold(word)
            member = members.get(canon)
            if member is None or canon == me:
                return None
            user = self.puppet_user(canon)
            remote_id = self.id_of(member.nick)
            mentions.setdefault(user or remote_id, user or self.ghost_user_id(remote_id))
            return user or self.ghost_user_id(remote_id)

        if not any([target(m.group()) for m in _WORDS.finditer(plain)]):
            return MessageContent(text=plain, html=html, kind=kind)

        def linkify(text: str) -> str:
            """Escaped HTML of ``text`` with its mentions as pills."""
            out, last = [], 0
            for m in _WORDS.finditer(text):
                uid = target(m.group())
                if uid is not None:
                    out.append(escape(text[last : m.start()], quote=False))
                    out.append(f'<a href="https://matrix.to/#/{uid}">{m.group()}</a>')
                    last = m.end()
            out.append(escape(text[last:], quote=False))
            return "".join(out)

        if html is None:
            html = linkify(plain)
        else:
            parts = _TAGS.split(html)
            depth = 0  # inside a link already
            for i, part in enumerate(parts):
                if i % 2:
                    if part.startswith("<a ") or part == "<a>":
                        depth += 1
                    elif part == "</a>":
                        depth = max(0, depth - 1)
                elif part and not depth:
                    parts[i] = linkify(unescape(part))
            html = "".join(parts)
        return MessageContent(text=plain, html=html, kind=kind, mentions=list(mentions))

    def message(
        self, conn: IRCConnection, line: Line, portal: PortalKey, channel: str | None
    ) -> RemoteMessage | None:
        text = line.param(1)
        kind = MessageKind.NOTICE if line.command == "NOTICE" else MessageKind.TEXT
        ctcp = parse_ctcp(text)
        if ctcp is not None:
            if ctcp[0] != "ACTION":
                return None
            text, kind = ctcp[1], MessageKind.EMOTE
        ts = server_time(line) or int(time.time() * 1000)
        return RemoteMessage(
            portal=portal,
            sender=Sender(self.id_of(line.nick), line.nick),
            timestamp=ts,
            id=self.new_id(line, ts),
            content=self.content(conn, text, kind, channel),
            fresh_id="msgid" not in line.tags,
        )

    def private_message(
        self, conn: IRCConnection, line: Line, receiver: str
    ) -> RemoteMessage | None:
        """A PRIVMSG/NOTICE to a puppet: a message in the DM portal of (sender, receiver)."""
        if not line.source or "!" not in line.source:
            return None  # server notices
        portal = PortalKey(self.network, self.id_of(line.nick), receiver=receiver)
        return self.message(conn, line, portal, None)

    # --- the listener -------------------------------------------------------------------------

    def handle(self, conn: IRCConnection, line: Line) -> list[RemoteEvent]:
        fn = getattr(self, "_on_" + line.command, None)
        if fn is None:
            return []
        result: list[RemoteEvent] = fn(conn, line)
        return result

    def _is_bot(self, conn: IRCConnection, nick: str) -> bool:
        return conn.fold(nick) == conn.fold(conn.nick)

    def _on_PRIVMSG(self, conn: IRCConnection, line: Line) -> list[RemoteEvent]:
        target = line.param(0).lstrip("".join(conn.prefixes))  # STATUSMSG: @#chan
        if (
            not conn.is_channel(target)
            or len(line.params) < 2
            or not line.nick
            or not line.params[1]
        ):
            return []
        canon = conn.fold(line.nick)
        if self._is_bot(conn, line.nick) or self.puppet_user(canon) is not None:
            return []
        channel = conn.fold(target)
        msg = self.message(conn, line, self.portal(conn, target), channel)
        if msg is None:
            return []
        account = line.tags.get("account")
        user = self.account_user(account) if account else None
        if user is not None:
            # Another client logged into the services account of a Matrix user's puppet (the
            # server vouches for the tag): the user's own IRC client, shown as the user.
            msg.sender = Sender(
                self.id_of(line.nick),
                line.nick,
                is_from_me=True,
                matrix_user=user,
                from_other_client=True,
            )
        return [msg]

    _on_NOTICE = _on_PRIVMSG

    def _on_JOIN(self, conn: IRCConnection, line: Line) -> list[RemoteEvent]:
        channel = line.param(0)
        canon_chan = conn.fold(channel)
        if self._is_bot(conn, line.nick):
            # Rejoining (after a reconnect or a kick): the members seen before stay until the
            # NAMES reply, which tells who left meanwhile (see _on_366).
            old = self.channels.get(canon_chan) or self._left.pop(canon_chan, None)
            self.channels[canon_chan] = ChannelState(
                channel, old.topic if old else None, old.members if old else {}
            )
            return []
        state = self.channels.setdefault(canon_chan, ChannelState(channel))
        canon = conn.fold(line.nick)
        held = self.splits.get(canon)
        if held is not None and canon_chan in held.channels:
            # Back from a netsplit: the ghost never left the room.
            member = held.channels.pop(canon_chan)
            if not held.channels:
                del self.splits[canon]
            member.nick = line.nick
            state.members[canon] = member
            return []
        state.members[canon] = Member(line.nick)
        if self.puppet_user(canon) is not None:
            return []
        return [
            RemoteMembership(
                portal=self.portal(conn, channel),
                sender=Sender(self.id_of(line.nick), line.nick),
                membership=Membership.JOIN,
                timestamp=server_time(line) or int(time.time() * 1000),
            )
        ]

    def _leave(
        self, conn: IRCConnection, line: Line, channel: str, nick: str, reason: str | None
    ) -> list[RemoteEvent]:
        canon_chan = conn.fold(channel)
        state = self.channels.get(canon_chan)
        canon = conn.fold(nick)
        if state is not None:
            state.members.pop(canon, None)
        if self.puppet_user(canon) is not None:
            return []
        return [
            RemoteMembership(
                portal=PortalKey(self.network, self.id_of(state.name if state else channel)),
                sender=Sender(self.id_of(nick), nick),
                membership=Membership.LEAVE,
                reason=reason or None,
                timestamp=server_time(line) or int(time.time() * 1000),
            )
        ]

    def _on_PART(self, conn: IRCConnection, line: Line) -> list[RemoteEvent]:
        if self._is_bot(conn, line.nick):
            self.channels.pop(conn.fold(line.param(0)), None)
            return []
        return self._leave(conn, line, line.param(0), line.nick, line.param(1) or None)

    def _on_BATCH(self, conn: IRCConnection, line: Line) -> list[RemoteEvent]:
        ref = line.param(0)
        if ref.startswith("+"):
            self._batches[ref[1:]] = line.param(1).lower()
        elif ref.startswith("-"):
            self._batches.pop(ref[1:], None)
        return []

    def _is_netsplit(self, line: Line, reason: str) -> bool:
        batch = line.tags.get("batch")
        if batch is not None and self._batches.get(batch) == "netsplit":
            return True
        return bool(_NETSPLIT.match(reason))

    def expire_splits(
        self, now: float | None = None, *, everyone: bool = False
    ) -> list[RemoteEvent]:
        """The LEAVEs of netsplit QUITs whose window has passed (``everyone``: all held)."""
        now = time.monotonic() if now is None else now
        out: list[RemoteEvent] = []
        ts = int(time.time() * 1000)
        for canon, held in list(self.splits.items()):
            # The same sum as next_split_expiry: at that instant the window has passed
            # (now - since may round below the window).
            if not everyone and now < held.since + self.netsplit_window:
                continue
            del self.splits[canon]
            for canon_chan in held.channels:
                out.append(
                    RemoteMembership(
                        portal=self.channel_portal(canon_chan),
                        sender=Sender(self.id_of(held.nick), held.nick),
                        membership=Membership.LEAVE,
                        reason=f"Quit: {held.reason} (netsplit)",
                        timestamp=ts,
                    )
                )
        return out

    def next_split_expiry(self) -> float | None:
        """When (monotonic) the oldest held netsplit QUIT is due, None when none is held."""
        if not self.splits:
            return None
        return min(h.since for h in self.splits.values()) + self.netsplit_window

    def _on_QUIT(self, conn: IRCConnection, line: Line) -> list[RemoteEvent]:
        canon = conn.fold(line.nick)
        out: list[RemoteEvent] = []
        reason = line.param(0)
        if (
            self.netsplit_window > 0
            and self._is_netsplit(line, reason)
            and self.puppet_user(canon) is None
        ):
            gone = {}
            for canon_chan, state in self.channels.items():
                member = state.members.pop(canon, None)
                if member is not None:
                    gone[canon_chan] = member
            if gone:
                held = self.splits.get(canon)
                if held is not None:
                    gone = {**held.channels, **gone}
                self.splits[canon] = Split(line.nick, time.monotonic(), reason, gone)
            return []
        for state in list(self.channels.values()):
            if canon in state.members:
                out += self._leave(conn, line, state.name, line.nick, f"Quit: {reason}".strip())
        return out

    def _on_KICK(self, conn: IRCConnection, line: Line) -> list[RemoteEvent]:
        channel, nick = line.param(0), line.param(1)
        canon_chan, canon = conn.fold(channel), conn.fold(nick)
        state = self.channels.get(canon_chan)
        if self._is_bot(conn, nick):
            kept = self.channels.pop(canon_chan, None)
            if kept is not None:
                self._left[canon_chan] = kept  # the bot rejoins: see _on_JOIN
            return []
        if state is not None:
            state.members.pop(canon, None)
        if (canon_chan, canon) in self.expected_kicks:
            self.expected_kicks.discard((canon_chan, canon))
            return []
        return [
            RemoteMembership(
                portal=self.portal(conn, channel),
                sender=self.sender(conn, line.nick),
                membership=Membership.KICK,
                target=self.sender(conn, nick),
                reason=line.param(2) or None,
                timestamp=server_time(line) or int(time.time() * 1000),
            )
        ]

    def _on_NICK(self, conn: IRCConnection, line: Line) -> list[RemoteEvent]:
        old, new = line.nick, line.param(0)
        old_canon, new_canon = conn.fold(old), conn.fold(new)
        out: list[RemoteEvent] = []
        is_puppet = self.puppet_user(old_canon) is not None or self.puppet_user(new_canon)
        for state in self.channels.values():
            member = state.members.pop(old_canon, None)
            if member is None:
                continue
            member.nick = new
            state.members[new_canon] = member
            if is_puppet or self._is_bot(conn, new):
                continue
            portal = PortalKey(self.network, self.id_of(state.name))
            old_id, new_id = self.id_of(old), self.id_of(new)
            out.append(
                RemoteProfile(
                    portal=portal,
                    sender=Sender(old_id, old),
                    display_name=new,
                    new_remote_id=new_id if new_id != old_id else None,
                )
            )
            if member.modes and new_id != old_id:
                # The new ghost takes the old one's place: give it the operator's power too.
                out.append(
                    RemoteChatInfo(
                        portal=portal,
                        sender=Sender(new_id, new),
                        members=self.snapshot(conn, state),
                    )
                )
        return out

    def _on_TOPIC(self, conn: IRCConnection, line: Line) -> list[RemoteEvent]:
        channel = line.param(0)
        state = self.channels.setdefault(conn.fold(channel), ChannelState(channel))
        state.topic = line.param(1)
        if self.puppet_user(conn.fold(line.nick)) is not None:
            return []
        return [
            RemoteChatInfo(
                portal=self.portal(conn, channel),
                sender=self.sender(conn, line.nick),
                topic=state.topic,
            )
        ]

    def _on_332(self, conn: IRCConnection, line: Line) -> list[RemoteEvent]:
        channel = line.param(1)
        state = self.channels.setdefault(conn.fold(channel), ChannelState(channel))
        state.topic = line.param(2)
        return [
            RemoteChatInfo(
                portal=self.portal(conn, channel),
                sender=Sender(self.id_of(line.nick or "server"), line.nick or None),
                topic=state.topic,
            )
        ]

    def _on_353(self, conn: IRCConnection, line: Line) -> list[RemoteEvent]:
        channel = line.param(2)
        state = self.channels.setdefault(conn.fold(channel), ChannelState(channel))
        if state.names_buffer is None:
            state.names_buffer = {}
        prefixes = conn.prefixes
        for item in line.param(-1).split():
            modes = set()
            i = 0
            while i < len(item) and item[i] in prefixes:
                modes.add(prefixes[item[i]])
                i += 1
            nick = item[i:].split("!", 1)[0]  # userhost-in-names
            if nick:
                state.names_buffer[conn.fold(nick)] = Member(nick, modes)
        return []

    def _on_366(self, conn: IRCConnection, line: Line) -> list[RemoteEvent]:
        channel = line.param(1)
        state = self.channels.get(conn.fold(channel))
        if state is None or state.names_buffer is None:
            return []
        before = state.members
        state.members = state.names_buffer
        state.names_buffer = None
        for canon, member in state.members.items():
            was = before.get(canon)
            if was is not None:  # levels set from Matrix outlive a NAMES refresh
                member.matrix_level, member.level_pending = was.matrix_level, was.level_pending
        canon_chan = conn.fold(channel)
        for canon in [c for c in self.splits if c in state.members]:
            # Back from a netsplit while the bridge did not see the JOIN.
            held = self.splits[canon]
            held.channels.pop(canon_chan, None)
            if not held.channels:
                del self.splits[canon]
        portal = self.portal(conn, channel)
        out: list[RemoteEvent] = [
            RemoteChatInfo(
                portal=portal,
                sender=Sender(self.id_of(conn.nick), conn.nick, is_from_me=True),
                members=self.snapshot(conn, state),
            )
        ]
        # Whoever the bridge knew in the channel and NAMES no longer lists left while the
        # bridge could not see it (its connection was down, a netsplit): the ghost leaves.
        me = conn.fold(conn.nick)
        now = int(time.time() * 1000)
        for canon, member in before.items():
            if canon in state.members or canon == me or self.puppet_user(canon) is not None:
                continue
            out.append(
                RemoteMembership(
                    portal=portal,
                    sender=Sender(self.id_of(member.nick), member.nick),
                    membership=Membership.LEAVE,
                    reason="no longer in the channel",
                    timestamp=now,
                )
            )
        return out

    def access(
        self, conn: IRCConnection, state: ChannelState, changed: set[str] | None = None
    ) -> RemoteAccess | None:
        """The channel's access modes as Matrix says them: all of them, or those whose
        letters ``changed``. None before the server told the modes."""
        if state.modes is None:
            return None
        modes, only = state.modes, changed if changed is not None else ACCESS_MODES
        post = self.power_levels.get("v", 10)
        evt = RemoteAccess(
            portal=self.portal(conn, state.name),
            sender=Sender(self.id_of(conn.nick), conn.nick, is_from_me=True),
        )
        if "i" in only:
            evt.invite_only = "i" in modes
        if "m" in only and (changed is not None or "m" in modes):
            evt.post_level = post if "m" in modes else 0
        if only & HIDDEN_MODES:
            evt.listed = self.publish and not modes & HIDDEN_MODES
        return evt

    def _on_324(self, conn: IRCConnection, line: Line) -> list[RemoteEvent]:
        """RPL_CHANNELMODEIS, the answer to the bot's MODE query after it joined."""
        state = self.channels.get(conn.fold(line.param(1)))
        if state is None:
            return []
        state.modes = set(line.param(2).lstrip("+")) & ACCESS_MODES
        evt = self.access(conn, state)
        return [evt] if evt is not None else []

    def _on_MODE(self, conn: IRCConnection, line: Line) -> list[RemoteEvent]:
        channel = line.param(0)
        if not conn.is_channel(channel):
            return []
        state = self.channels.get(conn.fold(channel))
        if state is None:
            return []
        chanmodes = conn.isupport.get("CHANMODES", "beI,k,l,imnpst").split(",")
        always = set(chanmodes[0] if chanmodes else "") | set(
            chanmodes[1] if len(chanmodes) > 1 else ""
        )
        on_set = set(chanmodes[2] if len(chanmodes) > 2 else "")
        prefix_modes = set(conn.prefixes.values())
        args = line.params[2:]
        changed = False
        access: set[str] = set()
        adding = True
        for ch in line.param(1):
            if ch in "+-":
                adding = ch == "+"
                continue
            if ch in prefix_modes:
                if not args:
                    break
                nick = args.pop(0)
                member = state.members.get(conn.fold(nick))
                if member is not None:
                    (member.modes.add if adding else member.modes.discard)(ch)
                    changed = True
            else:
                if ch in always or (ch in on_set and adding):
                    if args:
                        args.pop(0)
                if ch in ACCESS_MODES and state.modes is not None:
                    (state.modes.add if adding else state.modes.discard)(ch)
                    access.add(ch)
        out: list[RemoteEvent] = []
        evt = self.access(conn, state, access) if access else None
        if evt is not None:
            out.append(evt)
        if changed:
            out.append(
                RemoteChatInfo(
                    portal=self.portal(conn, channel),
                    sender=self.sender(conn, line.nick),
                    members=self.snapshot(conn, state),
                )
            )
        return out

    def _on_AWAY(self, conn: IRCConnection, line: Line) -> list[RemoteEvent]:
        canon = conn.fold(line.nick)
        if self.puppet_user(canon) is not None:
            return []
        for state in self.channels.values():
            if canon in state.members:
                away = bool(line.params and line.param(0))
                return [
                    RemotePresence(
                        portal=PortalKey(self.network, self.id_of(state.name)),
                        sender=Sender(self.id_of(line.nick), line.nick),
                        presence="unavailable" if away else "online",
                        status=line.param(0) if away else None,
                    )
                ]
        return []
