"""The OpenID token check on its own, against a small loopback HTTP server standing in for the
homeserver's ``openid/userinfo``: a verified token is remembered briefly, an unknown one is
refused, and a homeserver that cannot answer is told apart from a bad token."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from bridge.appservice import openid
from bridge.appservice.openid import OpenIDVerifier, TokenUnknown, VerifierUnavailable
from tests.harness.ports import free_port


class FakeHomeserver:
    def __init__(self) -> None:
        self.hits: list[str] = []
        self.status = 200

    async def userinfo(self, request: web.Request) -> web.Response:
        token = request.query.get("access_token", "")
        self.hits.append(token)
        if self.status != 200:
            return web.json_response({"errcode": "M_UNKNOWN"}, status=self.status)
        if token == "good":
            return web.json_response({"sub": "@ann:example.org"})
        if token == "foreign":
            return web.json_response({"sub": "@ann:elsewhere.org"})
        return web.json_response({"errcode": "M_UNKNOWN_TOKEN"}, status=401)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeHomeserver, OpenIDVerifier]]:
    hs = FakeHomeserver()
    app = web.Application()
    app.router.add_get("/_matrix/federation/v1/openid/userinfo", hs.userinfo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    session = aiohttp.ClientSession()
    verifier = OpenIDVerifier(
        f"http://127.0.0.1:{port}", "example.org", session, logging.getLogger("test")
    )
    yield hs, verifier
    await session.close()
    await runner.cleanup()


async def test_verified_tokens_are_remembered_briefly(
    fake: tuple[FakeHomeserver, OpenIDVerifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    hs, verifier = fake
    assert await verifier.user_of("good") == "@ann:example.org"
    assert await verifier.user_of("good") == "@ann:example.org"
    assert hs.hits == ["good"]
    # Past the cache's lifetime the homeserver is asked again.
    monkeypatch.setattr(openid, "CACHE_SECONDS", -1.0)
    verifier._cache.clear()
    await verifier.user_of("good")
    await verifier.user_of("good")
    assert hs.hits == ["good"] * 3


async def test_unknown_and_unusable_tokens(fake: tuple[FakeHomeserver, OpenIDVerifier]) -> None:
    hs, verifier = fake
    with pytest.raises(TokenUnknown):
        await verifier.user_of("bad")
    # Malformed tokens never reach the homeserver.
    for token in ("", "x" * 5000, "new\nline"):
        with pytest.raises(TokenUnknown):
            await verifier.user_of(token)
    assert hs.hits == ["bad"]
    # A user of another server is not ours to act for.
    with pytest.raises(VerifierUnavailable):
        await verifier.user_of("foreign")
    hs.status = 404
    with pytest.raises(VerifierUnavailable, match="openid"):
        await verifier.user_of("good")
    hs.status = 500
    with pytest.raises(VerifierUnavailable, match="500"):
        await verifier.user_of("good")
