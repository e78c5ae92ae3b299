"""Fetching files that XMPP users share as links (XEP-0066 OOB, usually XEP-0363 uploads), so
that the core can re-upload them to the Matrix content repository.

A link is fetched with a size limit (``media.max_bytes``) and a time limit; only ``http`` and
``https`` links to public addresses are fetched (``media.allow_private_addresses`` lifts the
address check for servers on a private network or loopback). The address check is made on
every address the host name resolves to when the connection is made, so a name cannot be
re-pointed at a private address between the check and the download. A link that is not
fetched stays a link: the Matrix side then shows it as text.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from urllib.parse import urlparse

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver

from bridge.connector import Attachment

GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream"}


def is_public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return ip.is_global and not ip.is_multicast


class _PublicResolver(ThreadedResolver):
    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await super().resolve(host, port, family)
        public = [r for r in found if is_public(r["host"])]
        if not public:
            raise OSError(f"{host} has no public address")
        return public


class MediaFetcher:
    def __init__(
        self,
        max_bytes: int,
        allow_private: bool,
        log: logging.Logger,
        timeout: float = 30.0,
    ) -> None:
        self.max_bytes = max_bytes
        self.allow_private = allow_private
        self.timeout = timeout
        self.log = log
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=20, resolver=None if self.allow_private else _PublicResolver()
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": "mimi-bridge"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def allowed(self, url: str) -> bool:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            return False
        if self.allow_private:
            return True
        try:
            ipaddress.ip_address(parsed.hostname)
        except ValueError:
            return True  # a host name: its addresses are checked by the resolver
        return is_public(parsed.hostname)

    async def fill(self, attachments: list[Attachment]) -> None:
        """Download the attachments that are links (in place); the ones that cannot be
        downloaded keep their link."""
        if self.max_bytes <= 0:
            return
        for att in attachments:
            if att.data is None and att.url:
                await self._fetch(att)

    async def _fetch(self, att: Attachment) -> None:
        url = att.url or ""
        if not self.allowed(url):
            self.log.info("not fetching %s: not a public http(s) address", url)
            return
        try:
            async with self._get_session().get(url, allow_redirects=False) as resp:
                if resp.status != 200:
                    self.log.info("not fetching %s: HTTP %d", url, resp.status)
                    return
                if (resp.content_length or 0) > self.max_bytes:
                    self.log.info("not fetching %s: %s bytes", url, resp.content_length)
                    return
                data = await resp.content.read(self.max_bytes + 1)
                if len(data) > self.max_bytes:
                    self.log.info("not fetching %s: larger than %d bytes", url, self.max_bytes)
                    return
                ctype = resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
            self.log.info("could not fetch %s: %s", url, e)
            return
        att.data = data
        att.size = len(data)
        if att.mimetype in GENERIC_TYPES and ctype not in GENERIC_TYPES and "/" in ctype:
            att.mimetype = ctype
