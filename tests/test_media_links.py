"""Links to Matrix media served to remote users, through a real Synapse: they open the file,
refuse forged or expired signatures, and refuse files over the size cap."""

from __future__ import annotations

import aiohttp

from tests.conftest import BridgeFactory
from tests.harness.synapse import SynapseServer
from tests.helpers import new_user


async def _upload(token: str, base: str, data: bytes) -> str:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{base}/_matrix/media/v3/upload",
            params={"filename": "notes.txt"},
            data=data,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
        ) as r,
    ):
        assert r.status == 200, await r.text()
        return str((await r.json())["content_uri"])


async def _get(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.read()


async def test_media_links_expire_and_respect_the_size_cap(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> None:
    bridge = await make_bridge(media_links={"lifetime_days": 1, "max_size_mb": 0.01})
    ada = new_user(synapse)
    small = b"a small file\n"
    big = b"x" * 20_000  # over the 0.01 MiB cap
    small_mxc = await _upload(ada.token, ada.url, small)
    big_mxc = await _upload(ada.token, ada.url, big)

    url = bridge.mxc_to_url(small_mxc, "notes.txt")
    assert url.endswith("/notes.txt")
    assert await _get(url) == (200, small)
    # A forged signature, or one for another file, opens nothing.
    forged = url.replace("/notes.txt", "").rsplit("/", 1)
    assert (await _get(forged[0] + "/0." + "0" * 32))[0] == 404
    other = bridge.mxc_to_url(big_mxc).rsplit("/", 1)[1]
    assert (await _get(forged[0] + "/" + other))[0] == 404
    # Over the cap: refused with a clear error.
    status, body = await _get(bridge.mxc_to_url(big_mxc))
    assert status == 413 and b"too large" in body
    # Two days later the one-day link has expired; a new link works again.
    links = bridge.media_links
    real_clock = links._clock
    links._clock = lambda: real_clock() + 2 * 86400
    status, body = await _get(url)
    assert status == 410 and b"expired" in body
    assert await _get(bridge.mxc_to_url(small_mxc)) == (200, small)
    await ada.close()
