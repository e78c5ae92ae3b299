"""The provisioning API end to end, on a running bridge with a real Synapse: logins, joining,
linking and unlinking through HTTP with the shared secret and with users' OpenID tokens, the
same permission rules as the commands, the error codes for wrong or missing credentials, and
schemathesis run against docs/provisioning.yaml (no 5xx, every response as documented)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from ruamel.yaml import YAML

from bridge.bridge import Bridge
from bridge.config import load as load_config
from bridge.connector import ConnectionState
from tests.conftest import write_config
from tests.harness.synapse import MatrixClient, SynapseServer
from tests.helpers import command, management_room, new_user, until

ROOT = Path(__file__).resolve().parent.parent
SECRET = "provisioning-secret-for-tests-0123456789"
SCHEMA = ROOT / "docs" / "provisioning.yaml"

Starter = Callable[..., Awaitable[Bridge]]


@pytest.fixture
async def start_bridge(
    tmp_path: Path, synapse: SynapseServer, as_port: int
) -> AsyncIterator[Starter]:
    """A bridge with the provisioning API and a shared secret; ``permissions`` replace the
    tests' usual ones."""
    running: list[Bridge] = []

    async def factory(
        permissions: dict[str, str] | None = None, provisioning: dict[str, Any] | None = None
    ) -> Bridge:
        path = write_config(
            tmp_path / f"config-{len(running)}.yaml",
            synapse,
            as_port,
            f"sqlite://{tmp_path / 'bridge.db'}",
            {"testnet": {}},
        )
        yaml = YAML()
        doc = yaml.load(path)
        doc["provisioning"] = provisioning or {"shared_secret": SECRET}
        if permissions is not None:
            doc["bridge"]["permissions"] = permissions
        with path.open("w") as f:
            yaml.dump(doc, f)
        bridge = Bridge(load_config(path))
        await bridge.start()
        running.append(bridge)
        return bridge

    yield factory
    for bridge in running:
        await bridge.stop()


class Api:
    """The provisioning API as a web page or an integration calls it."""

    def __init__(self, as_port: int) -> None:
        self.base = f"http://127.0.0.1:{as_port}/_matrix/provision"
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = SECRET,
        user_id: str | None = None,
        body: Any = None,
        raw: bytes | None = None,
        authorization: str | None = None,
    ) -> tuple[int, Any]:
        headers = {}
        if authorization is not None:
            headers["Authorization"] = authorization
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        params = {"user_id": user_id} if user_id is not None else {}
        async with self.session.request(
            method,
            self.base + path,
            params=params,
            headers=headers,
            json=body if raw is None and body is not None else None,
            data=raw,
        ) as resp:
            assert resp.headers.get("Access-Control-Allow-Origin") == "*"
            return resp.status, await resp.json(content_type=None)

    async def close(self) -> None:
        await self.session.close()


@pytest.fixture
async def api(as_port: int) -> AsyncIterator[Api]:
    client = Api(as_port)
    yield client
    await client.close()


async def openid_token(client: MatrixClient) -> str:
    """What the user's Matrix client hands a web page."""
    body = await client.call(
        "POST", f"/_matrix/client/v3/user/{quote(client.user_id, safe='')}/openid/request_token", {}
    )
    return str(body["access_token"])


async def invited_rooms(client: MatrixClient) -> set[str]:
    body = await client.call("GET", "/_matrix/client/v3/sync", params={"timeout": 0})
    return set((body.get("rooms") or {}).get("invite") or {})


def _body(evt: dict[str, Any]) -> str:
    return str(evt["content"].get("body", ""))


async def test_login_and_logout_through_the_api(
    start_bridge: Starter, api: Api, synapse: SynapseServer
) -> None:
    bridge = await start_bridge()
    ann = new_user(synapse)
    uid = ann.user_id
    status, flow = await api.call(
        "POST", "/v1/logins/start", user_id=uid, body={"network": "testnet"}
    )
    assert status == 200, flow
    assert flow["network"] == "testnet" and flow["step"]["type"] == "arguments"
    assert flow["step"]["instructions"] == "<remote name>"
    # Wrong arguments: the network's reason, and the flow stays open for another try.
    status, err = await api.call(
        "POST", "/v1/logins/finish", user_id=uid, body={"flow_id": flow["flow_id"], "arguments": []}
    )
    assert (status, err["errcode"]) == (400, "M_INVALID_PARAM") and "usage" in err["error"]
    # Another user cannot finish ann's flow.
    other = new_user(synapse)
    status, err = await api.call(
        "POST",
        "/v1/logins/finish",
        user_id=other.user_id,
        body={"flow_id": flow["flow_id"], "arguments": ["stolen"]},
    )
    assert (status, err["errcode"]) == (404, "M_NOT_FOUND")
    status, done = await api.call(
        "POST",
        "/v1/logins/finish",
        user_id=uid,
        body={"flow_id": flow["flow_id"], "step_id": "arguments", "arguments": ["ann-remote"]},
    )
    assert status == 200, done
    assert done["login"] == {
        "network": "testnet",
        "login_id": "ann-remote",
        "remote_name": "ann-remote",
        "state": "ok",
    }
    # The flow is used up.
    status, _ = await api.call(
        "POST",
        "/v1/logins/finish",
        user_id=uid,
        body={"flow_id": flow["flow_id"], "arguments": ["x"]},
    )
    assert status == 404
    # The login is the one the commands see and the connector speaks with.
    status, logins = await api.call("GET", "/v1/logins", user_id=uid)
    assert status == 200 and [lg["login_id"] for lg in logins["logins"]] == ["ann-remote"]
    assert [lg.user_id for lg in await bridge.logins("testnet")] == [uid]
    mgmt = await management_room(ann)
    await command(ann, mgmt, "list", "testnet ann-remote")
    # Logout, then nothing is left to log out of.
    status, out = await api.call("POST", "/v1/logout", user_id=uid, body={"network": "testnet"})
    assert (status, out) == (200, {"network": "testnet", "logged_out": ["ann-remote"]})
    assert await bridge.logins("testnet") == []
    status, err = await api.call("POST", "/v1/logout", user_id=uid, body={"network": "testnet"})
    assert (status, err["errcode"]) == (404, "M_NOT_FOUND")
    assert err["error"] == "You have no Test Network login."
    await ann.close()
    await other.close()


async def test_logins_show_their_connection_state_and_since(
    start_bridge: Starter, api: Api, synapse: SynapseServer
) -> None:
    bridge = await start_bridge()
    testnet: Any = bridge.connectors["testnet"]
    bob = new_user(synapse)
    mgmt = await management_room(bob)
    await command(bob, mgmt, "login testnet bob-remote", "Logged in")
    status, body = await api.call("GET", "/v1/logins", user_id=bob.user_id)
    assert status == 200, body
    [login] = body["logins"]
    assert (login["login_id"], login["state"], login["reason"]) == ("bob-remote", "connected", None)
    before = time.time()
    testnet.set_connection(bob.user_id, "bob-remote", ConnectionState.DISCONNECTED, "reset")
    status, body = await api.call("GET", "/v1/logins", user_id=bob.user_id)
    [login] = body["logins"]
    assert (login["state"], login["reason"]) == ("disconnected", "reset")
    assert before - 1 <= login["since"] / 1000 <= time.time() + 1
    await bob.close()


async def test_join_a_portal_with_an_openid_token(
    start_bridge: Starter, api: Api, synapse: SynapseServer
) -> None:
    await start_bridge()
    bea = new_user(synapse)
    token = await openid_token(bea)
    status, me = await api.call("GET", "/v1/whoami", token=token)
    assert (status, me) == (200, {"user_id": bea.user_id, "permission": "user"})
    status, networks = await api.call("GET", "/v1/networks", token=token)
    assert status == 200
    [net] = networks["networks"]
    assert net["id"] == "testnet" and net["connector"] == "testnet"
    assert "login" in net["capabilities"] and "direct_messages" in net["capabilities"]
    status, joined = await api.call(
        "POST",
        "/v1/portals/join",
        token=token,
        body={"network": "testnet", "remote_id": "#apijoin"},
    )
    assert status == 200, joined
    portal = joined["portal"]
    assert portal["alias"] == "#testnet_=23apijoin:localhost" and portal["plumbed"] is False
    # bea is invited, sees it in her own sync, joins, and then the portal is listed as hers.
    await until(lambda: _has(invited_rooms(bea), portal["room_id"]), what="bea invited")
    await bea.join(portal["room_id"])

    async def listed() -> bool:
        status, mine = await api.call("GET", "/v1/portals", token=token)
        assert status == 200
        return [p["room_id"] for p in mine["portals"]] == [portal["room_id"]]

    await until(listed, what="the portal listed as bea's")
    # A conversation the network does not have.
    status, err = await api.call(
        "POST",
        "/v1/portals/join",
        token=token,
        body={"network": "testnet", "remote_id": "#missing"},
    )
    assert (status, err["errcode"]) == (404, "M_NOT_FOUND")
    status, err = await api.call(
        "POST", "/v1/portals/join", token=token, body={"network": "nowhere", "remote_id": "#x"}
    )
    assert (status, err["errcode"]) == (404, "M_NOT_FOUND") and "unknown network" in err["error"]
    await bea.close()


async def _has(rooms: Awaitable[set[str]], room_id: str) -> bool:
    return room_id in await rooms


async def test_link_and_unlink_an_existing_room(
    start_bridge: Starter, api: Api, synapse: SynapseServer
) -> None:
    bridge = await start_bridge()
    ivy = new_user(synapse)
    room = await ivy.create_room(
        name="Ivy's room",
        invite=["@mimibot:localhost"],
        power_level_content_override={"users": {"@mimibot:localhost": 100}},
    )
    await until(lambda: bridge.hs.is_joined(room, "@mimibot:localhost"), what="bot joined")
    joe = new_user(synapse)
    await ivy.invite(room, joe.user_id)
    await joe.join(room)
    link = {"network": "testnet", "remote_id": "#apiplumbed", "room": room}
    # A member without power may not link, as with the command.
    status, err = await api.call(
        "POST", "/v1/portals/link", token=await openid_token(joe), body=link
    )
    assert (status, err) == (
        403,
        {"errcode": "M_FORBIDDEN", "error": "Only room admins may link a room."},
    )
    ivy_token = await openid_token(ivy)
    status, linked = await api.call("POST", "/v1/portals/link", token=ivy_token, body=link)
    assert status == 200, linked
    assert linked["portal"]["room_id"] == room and linked["portal"]["plumbed"] is True
    assert linked["note"] is None
    info = await ivy.get_state(room, "m.bridge", "mimi-bridge/testnet/#apiplumbed")
    assert info and info["channel"]["id"] == "#apiplumbed"
    # Linked twice: a conflict; the room is still bridged to the first.
    status, err = await api.call(
        "POST", "/v1/portals/link", token=ivy_token, body={**link, "remote_id": "#other"}
    )
    assert (status, err["errcode"]) == (409, "M_CONFLICT") and "already bridged" in err["error"]
    # joe may not unlink either; ivy may.
    status, err = await api.call(
        "POST", "/v1/portals/unlink", token=await openid_token(joe), body={"room": room}
    )
    assert (status, err["error"]) == (403, "Only room admins may unlink a room.")
    status, gone = await api.call(
        "POST", "/v1/portals/unlink", token=ivy_token, body={"room": room}
    )
    assert status == 200 and gone["portal"]["remote_id"] == "#apiplumbed"
    assert await ivy.get_state(room, "m.bridge", "mimi-bridge/testnet/#apiplumbed") == {}
    assert await bridge.portal_store.by_room(room) is None
    status, err = await api.call("POST", "/v1/portals/unlink", token=ivy_token, body={"room": room})
    assert (status, err["errcode"]) == (404, "M_NOT_FOUND")
    # A room the bot is not in: the homeserver's refusal, not a crash.
    private = await ivy.create_room(name="no bot here")
    status, err = await api.call(
        "POST", "/v1/portals/link", token=ivy_token, body={**link, "room": private}
    )
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"
    await ivy.close()
    await joe.close()


async def test_wrong_or_missing_credentials(
    start_bridge: Starter, api: Api, synapse: SynapseServer
) -> None:
    await start_bridge(permissions={"localhost": "user"})
    kai = new_user(synapse)
    token = await openid_token(kai)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"token": None}, 401, "M_MISSING_TOKEN"),
        ({"authorization": f"Basic {SECRET}"}, 401, "M_MISSING_TOKEN"),
        ({"authorization": "Bearer "}, 401, "M_MISSING_TOKEN"),
        ({"token": "not-a-token"}, 403, "M_UNKNOWN_TOKEN"),
        ({"token": SECRET[:-1] + "x", "user_id": kai.user_id}, 403, "M_UNKNOWN_TOKEN"),
        ({"token": SECRET}, 400, "M_MISSING_PARAM"),
        ({"token": SECRET, "user_id": "kai"}, 400, "M_INVALID_PARAM"),
        ({"token": token, "user_id": "@someone-else:localhost"}, 403, "M_FORBIDDEN"),
        # Users the bridge does not serve, and its own users.
        ({"token": SECRET, "user_id": "@kai:elsewhere.test"}, 403, "M_FORBIDDEN"),
        ({"token": SECRET, "user_id": "@testnet_bob:localhost"}, 403, "M_FORBIDDEN"),
        ({"token": SECRET, "user_id": "@mimibot:localhost"}, 403, "M_FORBIDDEN"),
        ({"token": SECRET, "user_id": "@nobody-registered:localhost"}, 404, "M_NOT_FOUND"),
    ]
    for kwargs, status, errcode in cases:
        got, body = await api.call("GET", "/v1/whoami", **kwargs)
        assert (got, body.get("errcode")) == (status, errcode), (kwargs, body)
        assert isinstance(body.get("error"), str) and body["error"]
    # A page on another origin may ask first (CORS preflight, no credentials).
    async with api.session.options(
        api.base + "/v1/portals/join",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    ) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    # The right credentials, both ways.
    assert (await api.call("GET", "/v1/whoami", token=token))[0] == 200
    assert (await api.call("GET", "/v1/whoami", token=token, user_id=kai.user_id))[0] == 200
    assert (await api.call("GET", "/v1/whoami", user_id=kai.user_id))[0] == 200
    # Bad bodies are 400s that say what is wrong.
    for raw, errcode in ((b"{not json", "M_NOT_JSON"), (b"[1, 2]", "M_BAD_JSON")):
        got, body = await api.call("POST", "/v1/portals/join", user_id=kai.user_id, raw=raw)
        assert (got, body["errcode"]) == (400, errcode)
    got, body = await api.call(
        "POST", "/v1/portals/join", user_id=kai.user_id, body={"network": "testnet"}
    )
    assert (got, body) == (400, {"errcode": "M_MISSING_PARAM", "error": "remote_id is missing"})
    got, body = await api.call(
        "POST",
        "/v1/portals/link",
        user_id=kai.user_id,
        body={"network": "testnet", "remote_id": "#x", "room": "not a room"},
    )
    assert (got, body["errcode"]) == (400, "M_INVALID_PARAM")
    await kai.close()


async def test_prefix_and_switch(start_bridge: Starter, api: Api, synapse: SynapseServer) -> None:
    bridge = await start_bridge(provisioning={"prefix": "/provision/", "shared_secret": SECRET})
    nia = new_user(synapse)
    async with api.session.get(
        api.base.replace("/_matrix/provision", "/provision") + "/v1/whoami",
        params={"user_id": nia.user_id},
        headers={"Authorization": f"Bearer {SECRET}"},
    ) as resp:
        assert resp.status == 200 and (await resp.json())["user_id"] == nia.user_id
    async with api.session.get(api.base + "/v1/whoami") as resp:
        assert resp.status == 404  # nothing at the default prefix any more
    await bridge.stop()
    await start_bridge(provisioning={"enabled": False, "shared_secret": SECRET})
    async with api.session.get(api.base + "/v1/networks") as resp:
        assert resp.status == 404
        assert (await resp.json())["errcode"] == "M_UNRECOGNIZED"
    await nia.close()


async def test_relay_user_is_refused_where_the_commands_refuse(
    start_bridge: Starter, api: Api, synapse: SynapseServer
) -> None:
    lou = synapse.new_client(f"relay-{uuid.uuid4().hex[:8]}")
    await start_bridge(permissions={"localhost": "user", lou.user_id: "relay"})
    mgmt = await management_room(lou)
    said = await command(lou, mgmt, "login testnet lou-remote", "needs the")
    token = await openid_token(lou)
    status, err = await api.call(
        "POST", "/v1/logins/start", token=token, body={"network": "testnet"}
    )
    assert (status, err) == (403, {"errcode": "M_FORBIDDEN", "error": said})
    for path, body in (
        ("/v1/portals/join", {"network": "testnet", "remote_id": "#x"}),
        ("/v1/portals/link", {"network": "testnet", "remote_id": "#x", "room": "!r:localhost"}),
        ("/v1/portals/unlink", {"room": "!r:localhost"}),
        ("/v1/logout", {"network": "testnet"}),
    ):
        status, err = await api.call("POST", path, token=token, body=body)
        assert (status, err["errcode"]) == (403, "M_FORBIDDEN"), path
        assert "needs the `user` permission; you have `relay`" in err["error"]
    status, err = await api.call("GET", "/v1/logins", token=token)
    assert status == 403
    # What relay users may do with commands (help, ping) they may do here.
    assert (await api.call("GET", "/v1/networks", token=token))[0] == 200
    status, me = await api.call("GET", "/v1/whoami", token=token)
    assert (status, me["permission"]) == (200, "relay")
    await lou.close()


async def _schemathesis(base_url: str, config: Path, *args: str) -> tuple[int, str]:
    # Run beside the config: schemathesis keeps a cache directory where it runs.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        str(SCHEMA),
        "--url",
        base_url,
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,negative_data_rejection,ignored_auth",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "40",
        "--seed",
        "20261202",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=config.parent,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


async def test_schemathesis_against_the_running_bridge(
    start_bridge: Starter, synapse: SynapseServer, as_port: int, tmp_path: Path
) -> None:
    try:
        import schemathesis  # noqa: F401
    except ImportError:
        pytest.fail("schemathesis is missing: pip install -e '.[test]'")
    bridge = await start_bridge()
    mia = new_user(synapse)
    # A room mia administers with the bot in it, so that link and unlink get to their work.
    room = await mia.create_room(
        invite=["@mimibot:localhost"],
        power_level_content_override={"users": {"@mimibot:localhost": 100}},
    )
    await until(lambda: bridge.hs.is_joined(room, "@mimibot:localhost"), what="bot joined")
    base = f"http://127.0.0.1:{as_port}/_matrix/provision"
    # Valid requests, often with real values so that they reach the work behind the checks:
    # many conversations, so that some are still free to link when others were joined.
    remote_ids = json.dumps([f"#fuzz{n}" for n in range(100)] + ["#missing", "olga"])
    real = tmp_path / "real.toml"
    real.write_text(
        "[dictionaries.networks]\n"
        'values = ["testnet"]\n'
        "[dictionaries.remote]\n"
        f"values = {remote_ids}\n"
        "[dictionaries.rooms]\n"
        f'values = ["{room}"]\n'
        "[parameters]\n"
        f'"query.user_id" = "{mia.user_id}"\n'
        '"body.network" = { dictionary = "networks", probability = 0.9 }\n'
        '"body.remote_id" = { dictionary = "remote", probability = 0.9 }\n'
        '"body.room" = { dictionary = "rooms", probability = 0.9 }\n'
    )
    rc, out = await _schemathesis(
        base, real, "--mode", "positive", "--header", f"Authorization: Bearer {SECRET}"
    )
    assert rc == 0 and "Tested: 10" in out, out[-8000:]
    opened = [p.key.remote_id for p in await bridge.portal_store.all()]
    assert any(r.startswith("#fuzz") for r in opened), "no generated join reached the network"
    # Valid and invalid requests with mia's own OpenID token (an invalid one must be a 4xx).
    generated = tmp_path / "generated.toml"
    generated.write_text(f'[parameters]\n"query.user_id" = "{mia.user_id}"\n')
    token = await openid_token(mia)
    rc, out = await _schemathesis(
        base, generated, "--mode", "all", "--header", f"Authorization: Bearer {token}"
    )
    assert rc == 0 and "Tested: 10" in out, out[-8000:]
    assert "Authentication failed" not in out, out[-8000:]
    await mia.close()
