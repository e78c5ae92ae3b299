"""Links to Matrix media that people on other networks can open.

Homeservers with authenticated media refuse anonymous downloads, so the bridge serves the
files itself under ``/_mimi/media/``, signed so that it opens only media it linked."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote

import aiohttp
from aiohttp import web

ROUTE = "/_mimi/media/{server}/{media_id}/{sig}"


class MediaLinks:
    def __init__(
        self,
        public_address: str,
        hs_address: str,
        as_token: str,
        key: str,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.public_address = public_address.rstrip("/")
        self.hs_address = hs_address
        self.as_token = as_token
        self._key = key.encode()
        self.session = session

    def add_routes(self, app: web.Application) -> None:
        for route in (ROUTE, ROUTE + "/{filename}"):
            app.router.add_get(route, self.serve)

    def url(self, mxc: str, filename: str = "") -> str:
        server, _, media_id = mxc.removeprefix("mxc://").partition("/")
        url = f"{self.public_address}/_mimi/media/"
        url += f"{quote(server, safe='')}/{quote(media_id, safe='')}/{self._sig(mxc)}"
        return url + (f"/{quote(filename, safe='')}" if filename else "")

    def _sig(self, mxc: str) -> str:
        return hmac.new(self._key, b"media\0" + mxc.encode(), hashlib.sha256).hexdigest()[:32]

    async def serve(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        mxc = f"mxc://{info['server']}/{info['media_id']}"
        not_found = web.json_response(
            {"errcode": "M_NOT_FOUND", "error": "No such file"}, status=404
        )
        if self.session is None or not hmac.compare_digest(info["sig"], self._sig(mxc)):
            return not_found
        url = f"{self.hs_address}/_matrix/client/v1/media/download/"
        url += f"{quote(info['server'], safe='')}/{quote(info['media_id'], safe='')}"
        headers = {"Authorization": f"Bearer {self.as_token}"}
        async with self.session.get(url, headers=headers) as upstream:
            if upstream.status != 200:
                return not_found
            resp = web.StreamResponse(
                headers={
                    "Content-Type": upstream.headers.get(
                        "Content-Type", "application/octet-stream"
                    ),
                    "Content-Disposition": upstream.headers.get(
                        "Content-Disposition", "attachment"
                    ),
                    "Content-Security-Policy": "sandbox; default-src 'none'",
                    "X-Content-Type-Options": "nosniff",
                    "Cache-Control": "public, max-age=86400",
                }
            )
            await resp.prepare(request)
            async for chunk in upstream.content.iter_chunked(65536):
                await resp.write(chunk)
            await resp.write_eof()
            return resp
