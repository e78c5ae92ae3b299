"""Links to Matrix media that people on other networks can open.

Homeservers with authenticated media refuse anonymous downloads, so the bridge serves the
files itself under ``/_mimi/media/``, signed so that it opens only media it linked. A link
carries its expiry inside the signed part (``bridge.media_links.lifetime_days``), and files
over ``max_size_mb`` are refused: an open link must not turn the bridge into a free CDN."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
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
        *,
        lifetime_s: int = 30 * 86400,
        max_bytes: int = 100 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.public_address = public_address.rstrip("/")
        self.hs_address = hs_address
        self.as_token = as_token
        self._key = key.encode()
        self.session = session
        self.lifetime_s = lifetime_s  # 0: links never expire
        self.max_bytes = max_bytes  # 0: no limit
        self._clock = clock

    def add_routes(self, app: web.Application) -> None:
        for route in (ROUTE, ROUTE + "/{filename}"):
            app.router.add_get(route, self.serve)

    def url(self, mxc: str, filename: str = "") -> str:
        server, _, media_id = mxc.removeprefix("mxc://").partition("/")
        expires = int(self._clock()) + self.lifetime_s if self.lifetime_s else 0
        token = f"{expires:x}.{self._sig(mxc, expires)}"
        url = f"{self.public_address}/_mimi/media/"
        url += f"{quote(server, safe='')}/{quote(media_id, safe='')}/{token}"
        return url + (f"/{quote(filename, safe='')}" if filename else "")

    def _sig(self, mxc: str, expires: int) -> str:
        msg = b"media\0" + mxc.encode() + b"\0" + str(expires).encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:32]

    @staticmethod
    def _error(status: int, errcode: str, text: str) -> web.Response:
        return web.json_response({"errcode": errcode, "error": text}, status=status)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        mxc = f"mxc://{info['server']}/{info['media_id']}"
        expires_hex, _, sig = info["sig"].partition(".")
        try:
            expires = int(expires_hex, 16)
        except ValueError:
            expires = -1
        if (
            self.session is None
            or expires < 0
            or not hmac.compare_digest(sig, self._sig(mxc, expires))
        ):
            return self._error(404, "M_NOT_FOUND", "No such file")
        if expires and expires < self._clock():
            return self._error(410, "M_NOT_FOUND", "This link has expired")
        url = f"{self.hs_address}/_matrix/client/v1/media/download/"
        url += f"{quote(info['server'], safe='')}/{quote(info['media_id'], safe='')}"
        headers = {"Authorization": f"Bearer {self.as_token}"}
        async with self.session.get(url, headers=headers) as upstream:
            if upstream.status != 200:
                return self._error(404, "M_NOT_FOUND", "No such file")
            if self.max_bytes and (upstream.content_length or 0) > self.max_bytes:
                return self._error(413, "M_TOO_LARGE", "This file is too large to be served")
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
            sent = 0
            async for chunk in upstream.content.iter_chunked(65536):
                sent += len(chunk)
                if self.max_bytes and sent > self.max_bytes:
                    # No length was announced: cut the transfer rather than serve past the cap.
                    if request.transport is not None:
                        request.transport.close()
                    return resp
                await resp.write(chunk)
            await resp.write_eof()
            return resp
