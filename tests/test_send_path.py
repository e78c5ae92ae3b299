"""The send path's quoted prefix, cached per room and event type."""

from __future__ import annotations

from bridge.matrix.homeserver import _send_prefix


def test_send_prefix_quotes_room_and_type() -> None:
    prefix = _send_prefix("!a/b?c:example.org", "m.room.message")
    assert prefix == "/_matrix/client/v3/rooms/%21a%2Fb%3Fc%3Aexample.org/send/m.room.message/"
    # The cached answer is per (room, type): another room gets its own path.
    assert _send_prefix("!d:example.org", "m.room.message") == (
        "/_matrix/client/v3/rooms/%21d%3Aexample.org/send/m.room.message/"
    )
    assert _send_prefix("!a/b?c:example.org", "m.reaction").endswith("/send/m.reaction/")
