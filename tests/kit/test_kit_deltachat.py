"""The connector kit's standard scenarios against the Delta Chat connector, a loopback postfix
+ dovecot and a real Delta Chat profile (alice, in her own core) as the remote user. Each
scenario's room is a group alice creates; its invite link is the room's id, and the bridge's
account secure-joins it (by the ``join`` command, or before a portal is opened by alias). The
kit's Matrix users have no Delta Chat login, so the bridge's account relays them. Ids on the
network side are alice's own message ids."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bridge.testing import ConnectorScenarios, Kit
from tests.deltachat.conftest import Peer, Peers, dc_config
from tests.harness.mailstack import MailStack, start_mailstack

_n = itertools.count(1)
_BOLD = re.compile(r"\*\*(\S[^*\n]*?)\*\*")
_RELAYED = re.compile(r"^<[^>\n]+> ")
SELF = 1  # the core's contact id of the account itself


class DeltaChatDriver:
    connector = "deltachat"
    network = "deltachat"
    prefix = "deltachat_"
    capabilities = frozenset(
        {
            "formatting",
            "replies",
            "edits",
            "reactions",
            "redactions",
            "remote_formatting",
            "remote_replies",
            "remote_edits",
            "remote_reactions",
            "remote_redactions",
            "relay",
            "media",
            "remote_media",
        }
    )

    def __init__(self, stack: MailStack) -> None:
        self.stack = stack
        self.peers: Peers | None = None
        self.alice: Peer | None = None
        self.group = 0
        self.address = self.password = ""
        self.unseen = 0  # alice's message from before the bridge was in the group
        self.got: list[dict[str, Any]] = []
        self._texts: dict[int, str] = {}
        self._reactions: set[tuple[int, str]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._workdir: Path | None = None

    def room_for(self, tag: str) -> str:
        return f"kit-{tag}"  # replaced by the group's invite link in start()

    def config(self, workdir: Path) -> Mapping[str, Any]:
        return dc_config(self.stack, workdir, self.address, self.password)

    async def start(self, kit: Kit) -> None:
        n = next(_n)
        self.password = f"kitbridge{n}-pw"
        self.address = self.stack.add_user(f"kitbridge{n}", self.password)
        self.got, self._texts, self._reactions = [], {}, set()
        self._workdir = Path(tempfile.mkdtemp(prefix="mimi-kit-dc-"))
        self.peers = Peers(self.stack, self._workdir)
        await self.peers.rpc.start()
        self.alice = await self.peers.add(f"kitalice{n}", "Alice")
        self.group = int(await self.alice.call("create_group_chat", f"Kit {n}", False))
        self.unseen = await self.alice.send(self.group, "said before the bridge came")
        kit.room = str(await self.alice.call("get_chat_securejoin_qr_code", self.group))
        self._poller = asyncio.create_task(self._poll(self.alice))

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self.peers is not None:
            await self.peers.rpc.close()
            self.peers = self.alice = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    async def prepare_room(self, kit: Kit) -> None:
        connector: Any = kit.running().connectors["deltachat"]
        await connector.groups.join_link(kit.room)

    async def portal_ready(self, kit: Kit, room_id: str) -> None:
        pass

    def _a(self) -> Peer:
        assert self.alice is not None, "the driver is not started"
        return self.alice

    def _local(self, target: str) -> int:
        """Alice's id of ``target``; an id the kit made up is her message from before the
        bridge joined (one the bridge has never seen)."""
        return int(target) if target.isdigit() else self.unseen

    async def remote_message(
        self, kit: Kit, text: str, html: str | None = None, reply_to: str | None = None
    ) -> str | None:
        if html:
            text = re.sub(r"</?(b|strong)>", "**", html)
        extra = {"quotedMessageId": int(reply_to)} if reply_to else {}
        return str(await self._a().send(self.group, text, **extra))

    async def remote_edit(self, kit: Kit, target: str, text: str) -> None:
        await self._a().call("send_edit_request", self._local(target), text)

    async def remote_reaction(self, kit: Kit, target: str, key: str) -> None:
        await self._a().call("send_reaction", self._local(target), [key])

    async def remote_redaction(self, kit: Kit, target: str) -> None:
        await self._a().call("delete_messages_for_all", [self._local(target)])

    async def remote_image(self, kit: Kit, data: bytes, filename: str) -> str | None:
        assert self._workdir is not None
        path = self._workdir / filename
        await asyncio.to_thread(path.write_bytes, data)
        extra = {"file": str(path), "filename": filename, "viewtype": "Image"}
        return str(await self._a().send(self.group, "", **extra))

    def received(self, kit: Kit) -> list[dict[str, Any]]:
        return list(self.got)

    # --- what alice's core reports ----------------------------------------------------------

    async def _poll(self, alice: Peer) -> None:
        # One event at a time by index: events keep arriving while _record awaits the core,
        # and taking len() after a batch skipped them (a good message lost for good).
        seen = alice.mark()
        while True:
            events = alice.peers.events.get(alice.acc, [])
            while seen < len(events):
                ev = events[seen]
                seen += 1
                if ev.get("chatId") == self.group:
                    await self._record(alice, ev)
            await asyncio.sleep(0.05)

    async def _record(self, alice: Peer, ev: dict[str, Any]) -> None:
        kind, msg_id = ev["kind"], int(ev.get("msgId") or 0)
        if kind == "IncomingMsg":
            msg = await alice.call("get_message", msg_id)
            text = str(msg["text"])
            self._texts[msg_id] = text
            quote = msg.get("quote") or {}
            bold = _BOLD.sub(r"<strong>\1</strong>", text)
            self.got.append(
                {
                    "kind": "message",
                    "id": str(msg_id),
                    "text": text,
                    "html": bold if bold != text else None,
                    "reply_to": str(quote["messageId"]) if quote.get("messageId") else None,
                    "relayed": bool(_RELAYED.match(text)),
                    "file": msg.get("fileName"),
                }
            )
        elif kind == "MsgsChanged" and msg_id in self._texts:
            msg = await alice.call("get_message", msg_id)
            text = str(msg["text"])
            if text != self._texts[msg_id]:
                self._texts[msg_id] = text
                self.got.append({"kind": "edit", "target": str(msg_id), "text": text})
        elif kind == "MsgDeleted":
            self.got.append({"kind": "redaction", "target": str(msg_id)})
        elif kind == "ReactionsChanged" and ev.get("contactId") != SELF:
            got = await alice.call("get_message_reactions", msg_id) or {}
            for cid, keys in (got.get("reactionsByContact") or {}).items():
                for key in keys:
                    if int(cid) != SELF and (msg_id, key) not in self._reactions:
                        self._reactions.add((msg_id, key))
                        self.got.append({"kind": "reaction", "target": str(msg_id), "key": key})


@pytest.fixture(scope="module")
def mimi_driver() -> Iterator[DeltaChatDriver]:
    logging.getLogger("peers").setLevel(logging.INFO)
    stack = start_mailstack()
    yield DeltaChatDriver(stack)
    stack.stop(remove=True)


class TestDeltaChat(ConnectorScenarios, driver=DeltaChatDriver):
    pass
