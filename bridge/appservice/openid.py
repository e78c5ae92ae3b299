"""Checking a Matrix OpenID token with the homeserver that issued it.

A client gets the token from ``/_matrix/client/v3/user/{userId}/openid/request_token``; the
homeserver answers ``/_matrix/federation/v1/openid/userinfo`` with the user it belongs to
(Synapse serves it where the listener has the ``openid`` resource). A verified token is
remembered for a short while, so a web page's burst of requests costs one lookup.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

import aiohttp

CACHE_SECONDS = 60.0
CACHE_SIZE = 1024
MAX_TOKEN_LENGTH = 1024
LOOKUP_TIMEOUT = aiohttp.ClientTimeout(total=10)


class TokenUnknown(Exception):
    """The homeserver does not know the token (or it expired)."""


class VerifierUnavailable(Exception):
    """The homeserver could not be asked; the message says why."""


class OpenIDVerifier:
    def __init__(
        self, hs_address: str, domain: str, session: aiohttp.ClientSession, log: logging.Logger
    ) -> None:
        self.url = hs_address.rstrip("/") + "/_matrix/federation/v1/openid/userinfo"
        self.domain = domain
        self.session = session
        self.log = log
        # token -> (user id, monotonic time the entry stops being trusted)
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def user_of(self, token: str) -> str:
        """The user id the token was issued to. Raises :class:`TokenUnknown` or
        :class:`VerifierUnavailable`."""
        if not token or len(token) > MAX_TOKEN_LENGTH or not token.isprintable():
            raise TokenUnknown
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is not None:
            if hit[1] > now:
                return hit[0]
            del self._cache[token]
        user_id = await self._lookup(token)
        self._cache[token] = (user_id, now + CACHE_SECONDS)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return user_id

    async def _lookup(self, token: str) -> str:
        try:
            async with self.session.get(
                self.url, params={"access_token": token}, timeout=LOOKUP_TIMEOUT
            ) as resp:
                if resp.status in (401, 403):
                    raise TokenUnknown
                if resp.status == 404:
                    raise VerifierUnavailable(
                        "the homeserver does not serve openid/userinfo"
                        " (Synapse: add `openid` to the listener's resources)"
                    )
                if resp.status != 200:
                    raise VerifierUnavailable(f"the homeserver answered {resp.status}")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise VerifierUnavailable(f"the homeserver could not be asked: {e}") from e
        sub = body.get("sub") if isinstance(body, dict) else None
        if not isinstance(sub, str) or not sub.endswith(":" + self.domain):
            self.log.warning("openid/userinfo answered without a local user: %r", body)
            raise VerifierUnavailable("the homeserver's answer named no local user")
        return sub
