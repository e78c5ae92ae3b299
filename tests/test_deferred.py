"""bridge/deferred.py: asyncpg, aiodns and aiohttp's CA certificates loaded only when used."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers import run_python as run


def test_asyncpg_runs_at_the_first_name_read() -> None:
    out = run(
        """
import sys
import bridge, mautrix.util.async_db, bridge.db
print("protocol" if "asyncpg.protocol" in sys.modules else "deferred")
import asyncpg
from asyncpg import Record
print(asyncpg.PostgresError.__module__, Record.__name__, type(asyncpg).__name__)
print("protocol" if "asyncpg.protocol" in sys.modules else "deferred")
"""
    )
    assert out.splitlines() == [
        "deferred",
        "asyncpg.exceptions._base Record module",
        "protocol",
    ]


def test_aiohttp_uses_the_system_resolver_and_aiodns_stays_importable() -> None:
    out = run(
        """
import sys
import bridge, aiohttp.resolver
print(aiohttp.resolver.DefaultResolver.__name__, "aiodns" in sys.modules)
import aiodns
print(aiodns.DNSResolver.__name__)
"""
    )
    assert out.splitlines() == ["ThreadedResolver False", "DNSResolver"]


def test_certificates_are_read_at_the_first_handshake_and_still_verify(tmp_path: Path) -> None:
    """A self-signed server: before any TLS use aiohttp's verified context holds no CA; the
    first request reads the system's CAs and refuses the certificate (verification is on)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    out = run(
        """
import asyncio, ssl, sys
import bridge, aiohttp, aiohttp.connector
from aiohttp import web
ctx = aiohttp.connector._SSL_CONTEXT_VERIFIED
print(ctx.cert_store_stats()["x509_ca"])

async def main():
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    app = web.Application()
    app.router.add_get("/", lambda r: web.Response(text="hi"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as s:
        try:
            async with s.get(f"https://127.0.0.1:{port}/") as r:
                print("accepted", r.status)
        except aiohttp.ClientConnectorCertificateError:
            print("refused")
    await runner.cleanup()

asyncio.run(main())
print(ctx.cert_store_stats()["x509_ca"] > 0)
""",
        str(cert),
        str(key),
    )
    assert out.splitlines() == ["0", "refused", "True"]


def test_load_deferred_certificates_reads_them_beforehand() -> None:
    out = run(
        """
import bridge, aiohttp.connector
from bridge.deferred import load_deferred_certificates
ctx = aiohttp.connector._SSL_CONTEXT_VERIFIED
print(ctx.cert_store_stats()["x509_ca"] == 0)
load_deferred_certificates()
print(ctx.cert_store_stats()["x509_ca"] > 0, "wrap_bio" in vars(ctx))
"""
    )
    assert out.splitlines() == ["True", "True False"]


def test_a_dunder_name_loads_the_module_too() -> None:
    out = run(
        """
import bridge, asyncpg
print(asyncpg.__version__ == __import__("importlib.metadata").metadata.version("asyncpg"))
"""
    )
    assert out == "True"
