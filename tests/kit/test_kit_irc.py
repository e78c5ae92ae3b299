"""The connector kit's standard scenarios against the IRC connector and a real ngircd. Edits
and reactions are configured off (IRC has neither: the kit checks the notice); redactions are
refused by the connector; a relay-only Matrix user speaks through the bridge's bot. A remote
user is a plain IRC client in each scenario's channel."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bridge.testing import ConnectorScenarios, Kit
from tests.harness.ircd import IrcServer, start_ngircd
from tests.irc.conftest import RawIRC

_n = itertools.count(1)
_CODES = re.compile(r"[\x02\x1d\x1f\x1e\x11\x16\x0f]|\x03\d{0,2}(,\d{1,2})?")


class IrcDriver:
    connector = "irc"
    network = "irc_test"
    prefix = "irc_test_"
    capabilities = frozenset({"formatting", "remote_formatting", "relay", "membership"})

    def __init__(self, server: IrcServer) -> None:
        self.server = server
        self.remy: RawIRC | None = None

    def room_for(self, tag: str) -> str:
        return f"#kit{tag}"

    def config(self, workdir: Path) -> Mapping[str, Any]:
        net = {
            "host": self.server.host,
            "port": self.server.port,
            "bot": {"nick": f"kitbot{next(_n)}"},
            "flood": {"burst": 50, "rate": 50},
            "reconnect": {"min_delay": 0.2, "max_delay": 1.0},
            "connects_per_second": 200,
            "register_timeout": 5,
            "edits": "off",
            "reactions": "off",
        }
        return {"networks": {"test": net}}

    async def start(self, kit: Kit) -> None:
        self.remy = None

    async def stop(self) -> None:
        if self.remy is not None:
            await self.remy.close()
            self.remy = None

    async def prepare_room(self, kit: Kit) -> None:
        pass

    async def portal_ready(self, kit: Kit, room_id: str) -> None:
        self.remy = await RawIRC(self.server.host, self.server.port, f"remy{next(_n)}").connect()
        await self.remy.join(kit.room)

    def _remy(self) -> RawIRC:
        assert self.remy is not None, "no portal opened yet"
        return self.remy

    async def remote_message(
        self, kit: Kit, text: str, html: str | None = None, reply_to: str | None = None
    ) -> str | None:
        if html:
            text = re.sub(r"</?(b|strong)>", "\x02", html)
        # IRC keeps no history: speak once the bridge's bot is in the channel (again, after a
        # restart).
        bot = kit.running().connectors["irc"].networks["test"].bot  # type: ignore[attr-defined]
        await kit.until_true(lambda: kit.room.lower() in bot.joined, "the bot in the channel")
        self._remy().send(f"PRIVMSG {kit.room} :{text}")
        return None  # IRC messages have no ids

    async def remote_edit(self, kit: Kit, target: str, text: str) -> None:
        raise NotImplementedError("IRC has no edits")

    async def remote_reaction(self, kit: Kit, target: str, key: str) -> None:
        raise NotImplementedError("IRC has no reactions")

    async def remote_redaction(self, kit: Kit, target: str) -> None:
        raise NotImplementedError("IRC has no deletions")

    async def remote_image(self, kit: Kit, data: bytes, filename: str) -> str | None:
        raise NotImplementedError("not declared: remote_media")

    def received(self, kit: Kit) -> list[dict[str, Any]]:
        if self.remy is None:
            return []
        out: list[dict[str, Any]] = []
        for line in self.remy.lines:
            if line.command in ("JOIN", "PART", "QUIT") and line.nick != self.remy.nick:
                if line.command == "QUIT" or line.param(0).lower() == kit.room.lower():
                    kind = "join" if line.command == "JOIN" else "leave"
                    out.append({"kind": "membership", "membership": kind, "who": line.nick})
                continue
            if line.command not in ("PRIVMSG", "NOTICE"):
                continue
            if line.param(0).lower() != kit.room.lower():
                continue
            raw = line.param(1)
            bold = re.sub(r"\x02(.*?)\x02", r"<strong>\1</strong>", raw)
            out.append(
                {
                    "kind": "message",
                    "text": _CODES.sub("", raw),
                    "html": bold if bold != raw else None,
                    "id": None,
                    "relayed": raw.startswith("<"),
                }
            )
        return out


@pytest.fixture(scope="module")
def mimi_driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IrcDriver]:
    server = start_ngircd(Path(tmp_path_factory.mktemp("kit-ngircd")))
    yield IrcDriver(server)
    server.stop()


class TestIrc(ConnectorScenarios, driver=IrcDriver):
    pass
