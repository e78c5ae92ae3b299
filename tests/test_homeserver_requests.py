"""The homeserver client's requests: identity assertion, errors and retries (a small aiohttp
server stands in for the homeserver; the end-to-end tests run them against Synapse)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from bridge.matrix import homeserver as hsmod
from bridge.matrix.homeserver import Homeserver, HomeserverUnreachable, MatrixError
from tests.harness.ports import free_port


@pytest.fixture
async def fake_hs() -> AsyncIterator[tuple[str, list[Any], list[web.Response]]]:
    seen: list[Any] = []
    answers: list[web.Response] = []

    async def any_route(request: web.Request) -> web.Response:
        body = await request.text()
        raw = request.raw_path.split("?")[0]
        seen.append(
            (request.method, raw, dict(request.query), request.headers.get("Authorization"), body)
        )
        return answers.pop(0) if answers else web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_route)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", seen, answers
    await runner.cleanup()


async def _hs(address: str) -> Homeserver:
    hs = Homeserver(address, "x", "as-token", "@bot:x", logging.getLogger("test"))
    await hs.open()
    return hs


async def test_requests_assert_the_user_and_quote_the_path(fake_hs: Any) -> None:
    address, seen, _ = fake_hs
    hs = await _hs(address)
    try:
        await hs.invite("!room:x", "@ghost:x", as_user="@irc_a:x")
        assert await hs.request("GET", "/_matrix/client/versions") == {"ok": True}
    finally:
        await hs.close()
    method, path, query, auth, body = seen[0]
    assert method == "POST" and auth == "Bearer as-token"
    assert path == "/_matrix/client/v3/rooms/%21room%3Ax/invite"
    assert query == {"user_id": "@irc_a:x"}
    assert body == '{"user_id": "@ghost:x"}'
    assert seen[1][:3] == ("GET", "/_matrix/client/versions", {"user_id": "@bot:x"})


async def test_error_answers_raise_with_the_errcode(fake_hs: Any) -> None:
    address, seen, answers = fake_hs
    hs = await _hs(address)
    try:
        answers.append(web.json_response({"errcode": "M_FORBIDDEN", "error": "no"}, status=403))
        with pytest.raises(MatrixError) as err:
            await hs.join("!room:x", "@irc_a:x")
        assert (err.value.errcode, err.value.status) == ("M_FORBIDDEN", 403)
        answers.append(web.Response(status=500, text="<html>oops</html>"))
        with pytest.raises(MatrixError) as err:
            await hs.request("GET", "/_matrix/client/versions")
        assert (err.value.errcode, err.value.status) == ("M_UNKNOWN", 500)
        assert len(seen) == 2  # neither is retried
    finally:
        await hs.close()


async def test_gateway_errors_and_lost_connections_are_retried(
    fake_hs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    address, seen, answers = fake_hs
    monkeypatch.setattr(hsmod, "_FIRST_BACKOFF_S", 0.01)
    hs = await _hs(address)
    try:
        answers += [web.Response(status=503), web.Response(status=502)]
        assert await hs.request("GET", "/_matrix/client/versions") == {"ok": True}
        assert len(seen) == 3
        answers += [web.Response(status=503)]
        with pytest.raises(MatrixError):
            await hs.request("GET", "/_matrix/client/versions", retries=0)
    finally:
        await hs.close()
    gone = await _hs(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    try:
        with pytest.raises(HomeserverUnreachable):
            await gone.request("GET", "/_matrix/client/versions", retries=1)
    finally:
        await gone.close()
