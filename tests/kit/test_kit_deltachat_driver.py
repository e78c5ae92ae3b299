"""The Delta Chat kit driver's own bookkeeping, with a small fake of alice's core: events that
arrive while the driver is asking the core about an earlier one are recorded too."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers import until
from tests.kit.test_kit_deltachat import DeltaChatDriver

GROUP = 10


class FakePeers:
    def __init__(self) -> None:
        self.events: dict[int, list[dict[str, Any]]] = {1: []}


class FakeAlice:
    """Answers get_message slowly, and the bridge's next mail lands during the answer."""

    def __init__(self) -> None:
        self.peers = FakePeers()
        self.acc = 1
        self.pending: list[dict[str, Any]] = []

    def mark(self) -> int:
        return len(self.peers.events[self.acc])

    async def call(self, method: str, *params: Any) -> Any:
        assert method == "get_message"
        await asyncio.sleep(0.01)
        while self.pending:
            self.peers.events[self.acc].append(self.pending.pop(0))
        await asyncio.sleep(0.01)
        return {"text": f"text of {params[0]}"}


async def test_poller_keeps_events_arriving_during_a_core_call() -> None:
    driver = DeltaChatDriver(stack=None)  # type: ignore[arg-type]
    driver.group = GROUP
    alice = FakeAlice()
    first = {"kind": "IncomingMsg", "chatId": GROUP, "msgId": 1}
    alice.pending = [{"kind": "IncomingMsg", "chatId": GROUP, "msgId": 2}]
    poller = asyncio.create_task(driver._poll(alice))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0)  # the poller takes its mark of the (empty) log
        alice.peers.events[1].append(first)
        await until(lambda: len(driver.got) == 2, 10, "both messages recorded")
        assert [m["text"] for m in driver.got] == ["text of 1", "text of 2"]
    finally:
        poller.cancel()
