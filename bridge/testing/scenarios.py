"""The standard scenarios. A connector's test module subclasses :class:`ConnectorScenarios`
and provides a module-scoped ``mimi_driver`` fixture; each scenario runs against a real
Synapse and the bridge with the connector. Scenarios that need a remote feature the driver
does not declare are not generated for that driver at all (the subclass is built from the
driver's capabilities, so nothing is collected only to be skipped); a Matrix feature the
connector does not declare must give the core's "cannot carry" notice, which is checked
instead."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from .kit import BOT, ContractError, Event, Kit, body, png

CANNOT_CARRY = "cannot carry"


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _from_ghost(kit: Kit, text: str) -> Any:
    prefix = f"@{kit.driver.prefix}"
    return lambda e: e["sender"].startswith(prefix) and text in body(e)


_F = TypeVar("_F", bound=Callable[..., Any])
_REQUIRES = "__mimi_kit_requires__"


def requires(*any_of: str) -> Callable[[_F], _F]:
    """A scenario that exists only for drivers declaring at least one of ``any_of``: the
    remote side must be able to produce what it checks."""

    def mark(fn: _F) -> _F:
        setattr(fn, _REQUIRES, frozenset(any_of))
        return fn

    return mark


async def _remote_in_matrix(kit: Kit, room: str, text: str, **kw: Any) -> tuple[str | None, Event]:
    rid = await kit.driver.remote_message(kit, text, **kw)
    evt = await kit.wait_event(
        room, _from_ghost(kit, text), f"a ghost's message {text!r} after a remote message"
    )
    return rid, evt


async def _cannot_carry(kit: Kit, room: str, what: str) -> None:
    """The core's notice: "<network> cannot carry ..." when the client lacks the capability,
    "Your ... was not bridged: <why>" when the connector raised NotSupported."""
    await kit.wait_event(
        room,
        lambda e: (
            e["sender"] == f"@{BOT}:localhost"
            and (CANNOT_CARRY in body(e) or "was not bridged:" in body(e))
        ),
        f"a 'cannot carry' notice for the {what} (the connector does not declare it)",
    )


async def _own_identity(kit: Kit) -> None:
    hook = getattr(kit.driver, "own_identity", None)
    if hook is None:
        raise ContractError(
            "has a driver without own_identity()",
            "own_identity(kit) in a driver declaring typing or receipts",
        )
    await hook(kit)


class ConnectorScenarios:
    """Subclass me with the driver's class in a test module that defines the ``mimi_driver``
    fixture: ``class TestMyNet(ConnectorScenarios, driver=MyNetDriver)``. Scenarios for a
    remote feature the driver does not declare are left out of the subclass."""

    capabilities: frozenset[str] = frozenset()

    def __init_subclass__(cls, driver: type[Any] | None = None, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if driver is None:
            raise TypeError(
                f"{cls.__name__}: name the driver class, "
                "class TestMyNet(ConnectorScenarios, driver=MyNetDriver)"
            )
        cls.capabilities = frozenset(driver.capabilities)
        for name in dir(ConnectorScenarios):
            needed = getattr(getattr(ConnectorScenarios, name), _REQUIRES, None)
            if needed is not None and not needed & cls.capabilities:
                setattr(cls, name, None)  # not a function: pytest does not collect it

    @pytest.fixture(autouse=True)
    def _same_capabilities(self, mimi_driver: Any) -> None:
        if frozenset(mimi_driver.capabilities) != self.capabilities:
            raise pytest.UsageError(
                f"the mimi_driver fixture declares {sorted(mimi_driver.capabilities)}, the "
                f"class {type(self).__name__} was built for {sorted(self.capabilities)}"
            )

    # --- opening portals ---------------------------------------------------------------

    async def test_portal_by_alias(self, kit: Kit) -> None:
        room = await kit.open_portal()
        state = await kit.user.get_state(
            room, "m.bridge", f"mimi-bridge/{kit.driver.network}/{kit.room}"
        )
        if not state or state.get("protocol", {}).get("id") != kit.driver.connector:
            raise ContractError(
                f"opened {room} with bridge info {state!r}",
                f"m.bridge naming the protocol {kit.driver.connector!r}",
            )

    async def test_portal_by_command(self, kit: Kit) -> None:
        mgmt = await kit.management_room()
        reply = await kit.command(mgmt, f"join {kit.driver.network} {kit.room}", "Invited you")
        room = await kit.user.join(kit.alias())
        if room not in reply:
            raise ContractError(f"answered {reply!r}", f"an invitation to the portal {room}")

    # --- messages -----------------------------------------------------------------------

    async def test_text_both_ways(self, kit: Kit) -> None:
        room = await kit.open_portal()
        tag = _tag()
        await kit.user.send_text(room, f"to the network {tag}")
        await kit.wait_received("message", f"a message with 'to the network {tag}'", text=tag)
        await _remote_in_matrix(kit, room, f"from the network {tag}")

    async def test_formatting_both_ways(self, kit: Kit) -> None:
        room = await kit.open_portal()
        tag = _tag()
        await kit.user.send_event(
            room,
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": f"**bold** {tag}",
                "format": "org.matrix.custom.html",
                "formatted_body": f"<strong>bold</strong> {tag}",
            },
        )
        got = await kit.wait_received("message", f"the formatted message {tag}", text=tag)
        if "formatting" in kit.driver.capabilities and "<strong>bold</strong>" not in str(
            got.get("html")
        ):
            raise ContractError(f"delivered {got!r}", "the Matrix HTML (<strong>bold</strong>)")
        if "remote_formatting" in kit.driver.capabilities:
            html = f"<strong>remote bold</strong> {tag}"
            await kit.driver.remote_message(kit, f"remote bold {tag}", html=html)
            # The body is the plain fallback, which may keep the network's markup (**bold**).
            evt = await kit.wait_event(
                room,
                lambda e: (
                    e["sender"].startswith(f"@{kit.driver.prefix}")
                    and tag in body(e)
                    and "remote bold" in body(e)
                ),
                f"a ghost's formatted message 'remote bold {tag}'",
            )
            if not re.search(
                r"<(b|strong)>remote bold</\1>", evt["content"].get("formatted_body", "")
            ):
                raise ContractError(f"posted {evt['content']!r}", "the remote formatting as HTML")

    async def test_replies(self, kit: Kit) -> None:
        """A Matrix reply reaches the network: as a reply where declared, else as a message."""
        room = await kit.open_portal()
        tag = _tag()
        rid, evt = await _remote_in_matrix(kit, room, f"reply to me {tag}")
        await kit.user.reply(room, evt["event_id"], f"my reply {tag}")
        got = await kit.wait_received("message", "the Matrix reply", text=f"my reply {tag}")
        if "replies" in kit.driver.capabilities and rid is not None and got.get("reply_to") != rid:
            raise ContractError(f"delivered {got!r}", f"a reply to the remote id {rid!r}")

    @requires("remote_replies")
    async def test_remote_replies(self, kit: Kit) -> None:
        room = await kit.open_portal()
        tag = _tag()
        await kit.user.send_text(room, f"answer this {tag}")
        mine = await kit.wait_received("message", "the Matrix message", text=f"answer this {tag}")
        own = await kit.wait_event(room, lambda e: body(e) == f"answer this {tag}", "own event")
        _, evt = await _remote_in_matrix(kit, room, f"remote answer {tag}", reply_to=mine["id"])
        target = evt["content"].get("m.relates_to", {}).get("m.in_reply_to", {})
        if target.get("event_id") != own["event_id"]:
            raise ContractError(
                f"posted the remote reply with relation {target!r}",
                f"m.in_reply_to {own['event_id']}",
            )

    async def test_edits(self, kit: Kit) -> None:
        room = await kit.open_portal()
        tag = _tag()
        await kit.user.send_text(room, f"before edit {tag}")
        sent = await kit.wait_received("message", "the message to edit", text=tag)
        own = await kit.wait_event(room, lambda e: body(e) == f"before edit {tag}", "own event")
        await kit.user.edit(room, own["event_id"], f"after edit {tag}")
        if "edits" in kit.driver.capabilities:
            await kit.wait_received(
                "edit", f"an edit of {sent.get('id')!r}", target=sent.get("id"), text="after edit"
            )
        else:
            await _cannot_carry(kit, room, "edit")
        if "remote_edits" in kit.driver.capabilities:
            rid, evt = await _remote_in_matrix(kit, room, f"remote before {tag}")
            assert rid is not None, "the driver must return the remote id of its messages"
            await kit.driver.remote_edit(kit, rid, f"remote after {tag}")
            await kit.wait_event(
                room,
                lambda e: (
                    e["content"].get("m.relates_to", {}).get("event_id") == evt["event_id"]
                    and e["content"]["m.relates_to"].get("rel_type") == "m.replace"
                ),
                f"an m.replace of {evt['event_id']}",
            )

    async def test_reactions(self, kit: Kit) -> None:
        room = await kit.open_portal()
        tag = _tag()
        rid, evt = await _remote_in_matrix(kit, room, f"react to me {tag}")
        await kit.user.react(room, evt["event_id"], "👍")
        if "reactions" in kit.driver.capabilities:
            await kit.wait_received("reaction", "the Matrix reaction", key="👍", target=rid)
        else:
            await _cannot_carry(kit, room, "reaction")
        if "remote_reactions" in kit.driver.capabilities:
            assert rid is not None, "the driver must return the remote id of its messages"
            await kit.driver.remote_reaction(kit, rid, "🎉")
            await kit.wait_event(
                room,
                lambda e: (
                    e["type"] == "m.reaction"
                    and e["content"].get("m.relates_to", {}).get("key") == "🎉"
                ),
                "the remote reaction as m.reaction",
            )

    @requires("typing", "remote_typing")
    async def test_typing(self, kit: Kit) -> None:
        room = await kit.open_portal()
        # A message first, so the network knows the remote user and the portal is live.
        _, evt = await _remote_in_matrix(kit, room, f"about to type {_tag()}")
        if "typing" in kit.driver.capabilities:
            await _own_identity(kit)
            await kit.user.typing(room, True)
            await kit.wait_received("typing", "typing started from Matrix", typing=True)
            await kit.user.typing(room, False)
            await kit.wait_received("typing", "typing stopped from Matrix", typing=False)
        if "remote_typing" in kit.driver.capabilities:
            ghost = evt["sender"]
            seen: set[str] = set()

            async def typing(want: bool) -> bool:
                seen.clear()
                seen.update(await kit.typing_users(room))
                return (ghost in seen) == want

            await kit.driver.remote_typing(kit, True)
            await kit.until_async(
                lambda: typing(True), lambda: f"showed {sorted(seen)} typing", f"{ghost} typing"
            )
            await kit.driver.remote_typing(kit, False)
            await kit.until_async(
                lambda: typing(False),
                lambda: f"showed {sorted(seen)} typing",
                f"{ghost} no longer typing",
            )

    @requires("receipts", "remote_receipts")
    async def test_read_receipts(self, kit: Kit) -> None:
        room = await kit.open_portal()
        tag = _tag()
        if "receipts" in kit.driver.capabilities:
            await _own_identity(kit)
            rid, evt = await _remote_in_matrix(kit, room, f"read me {tag}")
            await kit.user.read_receipt(room, evt["event_id"])
            await kit.wait_received("receipt", f"a read receipt of {rid!r}", target=rid)
        if "remote_receipts" in kit.driver.capabilities:
            _, ghost_evt = await _remote_in_matrix(kit, room, f"a ghost speaks {tag}")
            ghost = ghost_evt["sender"]
            await kit.user.send_text(room, f"did you read this {tag}")
            sent = await kit.wait_received("message", "the message to read", text=tag)
            own = await kit.wait_event(
                room, lambda e: body(e) == f"did you read this {tag}", "own event"
            )
            if sent.get("id") is None:
                raise ContractError(f"delivered {sent!r}", "a remote id for the message")
            readers: set[str] = set()

            async def read() -> bool:
                readers.clear()
                readers.update(await kit.read_by(room, own["event_id"]))
                return ghost in readers

            await kit.driver.remote_receipt(kit, str(sent["id"]))
            await kit.until_async(
                read,
                lambda: f"showed {own['event_id']} read by {sorted(readers)}",
                f"a read receipt of {ghost} on {own['event_id']}",
            )

    async def test_redactions(self, kit: Kit) -> None:
        room = await kit.open_portal()
        tag = _tag()
        await kit.user.send_text(room, f"delete me {tag}")
        sent = await kit.wait_received("message", "the message to delete", text=tag)
        own = await kit.wait_event(room, lambda e: body(e) == f"delete me {tag}", "own event")
        await kit.user.redact(room, own["event_id"])
        if "redactions" in kit.driver.capabilities:
            await kit.wait_received("redaction", "the Matrix redaction", target=sent.get("id"))
        else:
            await _cannot_carry(kit, room, "redaction")
        if "remote_redactions" in kit.driver.capabilities:
            rid, evt = await _remote_in_matrix(kit, room, f"remote delete {tag}")
            assert rid is not None
            await kit.driver.remote_redaction(kit, rid)
            await kit.wait_event(
                room,
                lambda e: (
                    e["type"] == "m.room.redaction"
                    and evt["event_id"] in (e.get("redacts"), e["content"].get("redacts"))
                ),
                f"a redaction of {evt['event_id']}",
            )

    async def test_relay(self, kit: Kit) -> None:
        """A Matrix user with only the "relay" permission: relayed where declared, else told
        in the room that the message was not sent (and the network gets nothing)."""
        room = await kit.open_portal()
        relay_user = await kit.relay_user()
        # The bridge's bot invites: a portal's members have no invite rights of their own.
        await kit.running().hs.invite(room, relay_user.user_id)
        await relay_user.join(room)
        tag = _tag()
        await relay_user.send_text(room, f"relay me {tag}")
        if "relay" in kit.driver.capabilities:
            got = await kit.wait_received("message", "the relayed message", text=tag)
            if got.get("relayed") is not True:
                raise ContractError(f"delivered {got!r}", "a relayed message (relayed: true)")
            return
        await kit.wait_event(
            room,
            lambda e: e["sender"] == f"@{BOT}:localhost" and "was not sent" in body(e),
            "a notice that the relay user's message was not sent (no relay declared)",
        )
        await kit.settle()
        if kit.count_received("message", text=tag):
            raise ContractError("delivered a relay user's message", "nothing (no relay)")

    # --- media -----------------------------------------------------------------------------

    @requires("media")
    async def test_media(self, kit: Kit) -> None:
        """A Matrix image reaches the network as a file."""
        room = await kit.open_portal()
        tag = _tag()
        data, name = png(), f"kit-{tag}.png"
        mxc = await kit.upload(data, "image/png", name)
        info = {"mimetype": "image/png", "size": len(data), "w": 16, "h": 16}
        await kit.user.send_event(
            room, "m.room.message", {"msgtype": "m.image", "body": name, "url": mxc, "info": info}
        )
        # Some networks name images themselves (Delta Chat: image_<date>.png); the room is
        # the scenario's own, so any file in it is this one.
        await kit.wait_received(
            "message", f"the Matrix image {name} as a file", file=lambda f: bool(f)
        )

    @requires("remote_media")
    async def test_remote_media(self, kit: Kit) -> None:
        """A remote image reaches the room as an m.image whose content is an image."""
        room = await kit.open_portal()
        tag = _tag()
        await kit.driver.remote_image(kit, png(rgb=(200, 30, 30)), f"remote-{tag}.png")
        evt = await kit.wait_event(
            room,
            lambda e: (
                e["sender"].startswith(f"@{kit.driver.prefix}")
                and e["content"].get("msgtype") == "m.image"
            ),
            "a ghost's m.image after a remote image",
        )
        url = evt["content"].get("url")
        if not isinstance(url, str) or not url.startswith("mxc://"):
            raise ContractError(f"posted the image with url {url!r}", "an mxc:// URI")
        got = await kit.download(url)
        if not got.startswith((b"\x89PNG", b"\xff\xd8\xff", b"RIFF")):
            raise ContractError(f"posted {len(got)} bytes starting {got[:8]!r}", "an image")

    # --- membership ----------------------------------------------------------------------

    @requires("membership")
    async def test_membership(self, kit: Kit) -> None:
        """A Matrix user who joins the portal appears on the network, and goes on leaving."""
        room = await kit.open_portal()
        member = await kit.other_user()
        localpart = member.user_id[1:].split(":")[0]

        def named(who: Any) -> bool:
            return isinstance(who, str) and localpart in who.lower()

        await kit.running().hs.invite(room, member.user_id)
        await member.join(room)
        await kit.wait_received("membership", f"{localpart} joining", membership="join", who=named)
        await member.leave(room)
        await kit.wait_received("membership", f"{localpart} leaving", membership="leave", who=named)

    # --- robustness ---------------------------------------------------------------------

    async def test_restart_keeps_mapping(self, kit: Kit) -> None:
        room = await kit.open_portal()
        tag = _tag()
        rid, first = await _remote_in_matrix(kit, room, f"before restart {tag}")
        await kit.settle()
        await kit.restart_bridge()
        _, second = await _remote_in_matrix(kit, room, f"after restart {tag}")
        events = await kit.user.messages(room, limit=100)
        copies = [e for e in events if body(e) == f"before restart {tag}"]
        if len(copies) != 1:
            raise ContractError(f"posted the first message {len(copies)} times", "exactly once")
        if "remote_edits" in kit.driver.capabilities and rid is not None:
            await kit.driver.remote_edit(kit, rid, f"edited after restart {tag}")
            await kit.wait_event(
                room,
                lambda e: e["content"].get("m.relates_to", {}).get("event_id") == first["event_id"],
                "the edit of a message from before the restart to find its event",
            )
        await kit.user.send_text(room, f"matrix after restart {tag}")
        await kit.wait_received(
            "message", "a message after the restart", text=f"matrix after restart {tag}"
        )
        assert second["room_id"] == room

    async def test_replayed_transaction(self, kit: Kit) -> None:
        room = await kit.open_portal()
        tag = _tag()
        evt = kit.fake_event(room, {"msgtype": "m.text", "body": f"replayed {tag}"})
        for _ in range(2):
            status = await kit.put_transaction(f"kit-{tag}", [evt])
            if status != 200:
                raise ContractError(f"answered the transaction with {status}", "200")
        await kit.wait_received("message", "the transaction's message", text=f"replayed {tag}")
        await kit.settle()
        n = kit.count_received("message", text=f"replayed {tag}")
        if n != 1:
            raise ContractError(f"delivered a replayed event {n} times", "exactly once")

    async def test_malformed_events(self, kit: Kit) -> None:
        room = await kit.open_portal()
        tag = _tag()
        bad = [
            kit.fake_event(room, {"msgtype": "m.text", "body": 42}),
            kit.fake_event(room, {"body": f"no msgtype {tag}"}),
            kit.fake_event(room, {"msgtype": "m.text"}),
            {**kit.fake_event(room, {"msgtype": "m.text", "body": "x"}), "room_id": 7},
            kit.fake_event("!unknown:localhost", {"msgtype": "m.text", "body": f"nowhere {tag}"}),
            kit.fake_event(
                room,
                {
                    "msgtype": "m.text",
                    "body": f"reply to nothing {tag}",
                    "m.relates_to": {"m.in_reply_to": {"event_id": "$unknown"}},
                },
            ),
        ]
        status = await kit.put_transaction(f"kit-bad-{tag}", bad)
        if status != 200:
            raise ContractError(f"answered {status} to malformed events", "200 (and no crash)")
        await kit.user.send_text(room, f"still alive {tag}")
        await kit.wait_received(
            "message", "a good message after malformed ones", text=f"still alive {tag}"
        )
        for text in (f"no msgtype {tag}", f"nowhere {tag}"):
            if kit.count_received("message", text=text):
                raise ContractError(f"delivered the malformed event {text!r}", "nothing")

    @requires("remote_edits", "remote_reactions", "remote_redactions")
    async def test_unknown_remote_ids(self, kit: Kit) -> None:
        room = await kit.open_portal()
        tag = _tag()
        before = len(await kit.user.messages(room, limit=100))
        caps = kit.driver.capabilities
        if "remote_edits" in caps:
            await kit.driver.remote_edit(kit, f"kit-unknown-{tag}", "edit of nothing")
        if "remote_reactions" in caps:
            await kit.driver.remote_reaction(kit, f"kit-unknown-{tag}", "👀")
        if "remote_redactions" in caps:
            await kit.driver.remote_redaction(kit, f"kit-unknown-{tag}")
        await _remote_in_matrix(kit, room, f"after unknown ids {tag}")
        events = (await kit.user.messages(room, limit=100))[before:]
        stray = [e for e in events if e["type"] in ("m.reaction", "m.room.redaction")]
        stray += [e for e in events if "edit of nothing" in str(e.get("content"))]
        if stray:
            raise ContractError(f"posted {stray!r} for unknown remote ids", "nothing")

    @requires("remote_large_messages")
    async def test_remote_message_too_large(self, kit: Kit) -> None:
        room = await kit.open_portal()
        tag = _tag()
        text = f"huge {tag} " + "x" * 70_000
        await kit.driver.remote_message(kit, text)
        evt = await kit.wait_event(
            room, _from_ghost(kit, f"huge {tag}"), "the oversized remote message, shortened"
        )
        size = len(body(evt).encode())
        tail = body(evt)[-200:].lower()
        if size > 65_000 or not ("…" in tail or "cut" in tail or "truncat" in tail):
            raise ContractError(
                f"posted a body of {size} bytes ending {body(evt)[-10:]!r}",
                "a body under Matrix's 64 KiB limit that says it was cut ('…', 'cut')",
            )
