"""Users hear about their own connections once per drop, failure and recovery: the tracker
alone (a fake clock in the changes), then through a real Synapse with the test network, where
``list``, ``ping`` and the provisioning API show each login's state and since when."""

from __future__ import annotations

from typing import Any

from bridge.connection_status import FLAP_LIMIT, ConnectionStatus, LoginStatus, duration
from bridge.connector import ConnectionChange, ConnectionState
from tests.conftest import BridgeFactory
from tests.harness.synapse import SynapseServer
from tests.helpers import ask, command, management_room, new_user, notices, until

C, G, D, F = (
    ConnectionState.CONNECTED,
    ConnectionState.CONNECTING,
    ConnectionState.DISCONNECTED,
    ConnectionState.FAILED,
)
T0 = 1_800_000_000.0


def tracker(quiet: float = 600.0) -> tuple[ConnectionStatus, list[str]]:
    told: list[str] = []

    def name(st: LoginStatus) -> str:
        return f"Your connection to {st.network}"

    def hint(st: LoginStatus) -> str:
        return f"Log in again: `login {st.network} ...`."

    return ConnectionStatus(lambda user, text: told.append(text), name, hint, quiet), told


def change(state: ConnectionState | None, at: float, reason: str = "", **kw: Any) -> Any:
    return ConnectionChange("@u:x", "net", "l1", state, reason, at=T0 + at, **kw)


async def test_a_drop_is_told_once_and_the_recovery_once() -> None:
    status, told = tracker()
    status.update(change(G, 0))
    status.update(change(C, 1))
    assert told == []  # connecting at start-up is no news
    status.update(change(D, 10, "connection reset"))
    for n in range(5):  # every reconnect attempt fails
        status.update(change(G, 11 + n * 10))
        status.update(change(D, 12 + n * 10, "connection refused"))
    assert told == [
        "Your connection to net was lost: connection reset. Reconnecting; I will tell you "
        "when it is back."
    ]
    st = status.get("@u:x", "net", "l1")
    assert st is not None and st.state == D and st.since == T0 + 10
    status.update(change(G, 130))
    status.update(change(C, 131))
    assert told[1:] == ["Your connection to net is back (after 2 min)."]
    assert st.since == T0 + 131 and st.reason == ""
    status.update(change(C, 140))  # the same state again: nothing new
    assert len(told) == 2


async def test_an_auth_failure_is_told_once_with_what_to_do() -> None:
    status, told = tracker()
    for n in range(4):  # a connector that retries with the refused password
        status.update(change(G, n * 10))
        status.update(
            change(F, n * 10 + 1, "authentication failed: bad password", auth_failed=True)
        )
    assert told == [
        "Your connection to net failed: authentication failed: bad password. "
        "Log in again: `login net ...`."
    ]
    status.update(change(C, 100))
    assert told[1:] == ["Your connection to net is back (after 1 min)."]


async def test_a_first_connection_that_cannot_connect_is_told_once() -> None:
    status, told = tracker()
    for n in range(3):
        status.update(change(G, n))
        status.update(change(D, n + 0.5, "no route to host"))
    assert told == [
        "Your connection to net cannot connect: no route to host. Retrying; I will tell you "
        "when it is up."
    ]


async def test_a_flapping_connection_is_told_once_then_quiet() -> None:
    status, told = tracker()
    status.update(change(C, 0))
    for n in range(10):  # a drop and a recovery every 20 s
        status.update(change(D, 20 * n + 10))
        status.update(change(C, 20 * n + 20))
    lost = [t for t in told if "was lost" in t]
    back = [t for t in told if "is back (" in t]
    flapping = [t for t in told if "keeps dropping" in t]
    assert len(lost) == FLAP_LIMIT and len(back) == FLAP_LIMIT
    assert flapping == [
        "Your connection to net keeps dropping (4 times in 10 min). I will not mention it "
        "again for 10 min; `ping` shows its state."
    ]
    assert len(told) == 2 * FLAP_LIMIT + 1
    status.close()


async def test_after_the_quiet_period_one_notice_says_where_it_stands() -> None:
    status, told = tracker(quiet=0.2)
    status.update(change(C, 0))
    for n in range(FLAP_LIMIT + 1):  # the changes' clock runs with the timer's here
        status.update(change(D, 0.02 * n + 0.01))
        status.update(change(C, 0.02 * n + 0.02))
    status.update(change(D, 0.1, "connection reset"))  # quiet: not told now
    assert len(told) == 2 * FLAP_LIMIT + 1
    await until(lambda: len(told) > 2 * FLAP_LIMIT + 1, 10, "the end of the quiet period")
    assert told[-1].startswith("Your connection to net is disconnected since ")
    assert told[-1].endswith(": connection reset.")
    status.update(change(C, 300))  # the recovery after it is told again
    assert told[-1] == "Your connection to net is back (after 4 min)."
    status.close()


async def test_a_closed_connection_is_forgotten_silently() -> None:
    status, told = tracker()
    status.update(change(C, 0))
    status.update(change(None, 5))
    assert status.of_user("@u:x") == [] and told == []


def test_durations_read_well() -> None:
    assert [duration(s) for s in (5, 125, 3600, 7500, 90000)] == [
        "5 s",
        "2 min",
        "1 h",
        "2 h 5 min",
        "1 d 1 h",
    ]
    st = LoginStatus("@u:x", "net", "l1", C, since=T0)
    assert st.describe(T0 + 180) == "connected since 08:00 UTC (3 min)"


# --- through the bridge ----------------------------------------------------------------------


async def test_the_management_room_hears_once_and_list_shows_since(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> None:
    bridge = await make_bridge()
    testnet: Any = bridge.connectors["testnet"]
    ann = new_user(synapse)
    mgmt = await management_room(ann)
    await command(ann, mgmt, "login testnet ann-remote", "Logged in")
    reply = await ask(ann, mgmt, "list", "Logins:")
    assert "- testnet ann-remote: connected since " in reply and "UTC (" in reply
    reply = await ask(ann, mgmt, "ping", "Pong")
    assert "testnet/ann-remote: connected since " in reply

    for _ in range(4):  # the network drops the connection; reconnecting fails a few times
        testnet.set_connection(ann.user_id, "ann-remote", D, "connection reset")
        testnet.set_connection(ann.user_id, "ann-remote", G)
    testnet.set_connection(ann.user_id, "ann-remote", D, "connection refused")
    await ann.wait_for_event(
        mgmt, timeout=30, predicate=lambda e: "was lost" in e["content"].get("body", "")
    )
    reply = await ask(ann, mgmt, "list", "ann-remote: disconnected")
    assert "disconnected since " in reply and "connection refused" in reply
    testnet.set_connection(ann.user_id, "ann-remote", C)
    await ann.wait_for_event(
        mgmt, timeout=30, predicate=lambda e: "is back (" in e["content"].get("body", "")
    )
    # A marker after the notices: everything before it has arrived.
    await ask(ann, mgmt, "ping", "testnet/ann-remote: connected since")
    assert await notices(ann, mgmt, "was lost") == [
        "Your connection to Test Network as ann-remote was lost: connection reset. "
        "Reconnecting; I will tell you when it is back."
    ]
    back = await notices(ann, mgmt, "is back (")
    assert len(back) == 1 and back[0].startswith(
        "Your connection to Test Network as ann-remote is back (after "
    )

    # A refused login: one notice, saying how to log in again, whatever the retries.
    for _ in range(3):
        testnet.set_connection(ann.user_id, "ann-remote", G)
        testnet.set_connection(
            ann.user_id, "ann-remote", F, "authentication failed: bad token", True
        )
    await ann.wait_for_event(
        mgmt, timeout=30, predicate=lambda e: "failed:" in e["content"].get("body", "")
    )
    await ask(ann, mgmt, "ping", "testnet/ann-remote: failed since")
    failed = await notices(ann, mgmt, "as ann-remote failed:")
    assert failed == [
        "Your connection to Test Network as ann-remote failed: authentication failed: bad "
        "token. Log in again: `login testnet ...` (`help` shows how)."
    ]
