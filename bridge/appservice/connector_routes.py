"""Serving connectors' ``HttpRoutes`` on the bridge's port, under ``/_mimi/<connector>/``.

The connector sees plain dataclasses (``HttpRequest`` / ``HttpResponse``); aiohttp stays here.
Bodies are read up to the route's limit and refused with 413 past it, so a connector never
holds more than it asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from ..connector import NetworkConnector
from ..connector.capabilities import HttpRequest, HttpRoute, HttpRoutes

PREFIX = "/_mimi"


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None when it is over ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _handler(
    route: HttpRoute, log: logging.Logger
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        body = await _read_body(request, route.max_body)
        if body is None:
            return _json_error(413, f"the body is over {route.max_body} bytes")
        req = HttpRequest(
            method=request.method,
            path_params=dict(request.match_info),
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            remote=request.remote,
        )
        resp = await route.handler(req)
        return web.json_response(resp.body, status=resp.status, headers=resp.headers)

    return handle


def add_connector_routes(
    app: web.Application, connectors: Iterable[NetworkConnector], log: logging.Logger
) -> None:
    for connector in connectors:
        if not isinstance(connector, HttpRoutes):
            continue
        for route in connector.http_routes():
            path = f"{PREFIX}/{connector.name}/{route.path.lstrip('/')}"
            app.router.add_route(route.method.upper(), path, _handler(route, log))
            log.info("serving %s %s for %s", route.method.upper(), path, connector.name)
