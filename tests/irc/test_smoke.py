from bridge.connector import MatrixUser, PortalKey, RemoteMessage

from .conftest import wait_for
from .helpers import NET, message, start_connector, unique


async def test_smoke(bridge, ngircd, irc_users) -> None:
    chan = "#" + unique("smoke")
    alice = await irc_users(unique("alice"))
    await alice.join(chan)
    conn = await start_connector(bridge, ngircd)
    try:
        portal = PortalKey(NET, chan)
        info = await conn.resolve_portal(portal, None)
        assert info is not None and alice.nick.lower() in info.members
        bob = MatrixUser("@bob:example.org", "Bob", "user")
        client = await conn.client_for(bob, portal)
        await client.handle_matrix_message(message(portal, bob.user_id, "hello from matrix"))
        line = await alice.expect(
            lambda ln: ln.command == "PRIVMSG" and ln.param(1) == "hello from matrix"
        )
        assert line.nick == "Bob[m]"
        alice.send(f"PRIVMSG {chan} :hi bob")
        await wait_for(lambda: bridge.of_type(RemoteMessage))
    finally:
        await conn.stop()
