"""A built-in ident server (RFC 1413) for the IRC connections the bridge holds.

Many IRC networks look up ident on port 113 of each connecting client and mark users without an
answer (``~user``). The server answers a query ``<port here> , <port there>`` with the USER name
of the one connection this process holds with that local port, to that remote port, on the
querying host's address, and ``NO-USER`` for anything else: it never tells about other sockets
of the host. Bad input gets an ``ERROR`` reply or a closed connection, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from dataclasses import dataclass, field

log = logging.getLogger("mimi.irc.identd")

MAX_LINE = 1000  # RFC 1413 queries are a few dozen bytes
READ_TIMEOUT = 10.0  # seconds a client may take to send its query
MAX_CLIENTS = 64  # concurrent clients; more are closed at once
MAX_QUERIES = 16  # queries per connection (the RFC allows several on one)


def normalize_host(host: str) -> str:
    """One spelling per address: ``::ffff:127.0.0.1`` (a v4 peer on a v6 socket) is 127.0.0.1."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


@dataclass(slots=True)
class IdentTable:
    """(local port, remote host, remote port) -> USER name of each open IRC connection."""

    entries: dict[tuple[int, str, int], str] = field(default_factory=dict)

    def add(self, local_port: int, remote_host: str, remote_port: int, username: str) -> None:
        self.entries[(local_port, normalize_host(remote_host), remote_port)] = username

    def remove(self, local_port: int, remote_host: str, remote_port: int) -> None:
        self.entries.pop((local_port, normalize_host(remote_host), remote_port), None)

    def lookup(self, local_port: int, remote_host: str, remote_port: int) -> str | None:
        return self.entries.get((local_port, normalize_host(remote_host), remote_port))


@dataclass(frozen=True, slots=True)
class Query:
    local_port: int
    remote_port: int


@dataclass(frozen=True, slots=True)
class BadQuery:
    """A line that is not a valid query; ``echo`` is what the reply may repeat of it."""

    error: str  # INVALID-PORT | UNKNOWN-ERROR
    echo: str


def parse_query(line: bytes) -> Query | BadQuery:
    """``<port-on-this-host> , <port-on-the-querying-host>`` (spaces allowed around each)."""
    text = line.decode("ascii", "replace").strip(" \t\r\n")
    parts = text.split(",")
    if len(parts) != 2:
        return BadQuery("UNKNOWN-ERROR", "0 , 0")
    a, b = (p.strip(" \t") for p in parts)
    if not (a.isascii() and a.isdigit() and b.isascii() and b.isdigit()) or len(a + b) > 10:
        # Echo only what is safe to repeat: digits, never the client's bytes.
        return BadQuery("INVALID-PORT", "0 , 0")
    pa, pb = int(a), int(b)
    if not (1 <= pa <= 65535 and 1 <= pb <= 65535):
        return BadQuery("INVALID-PORT", f"{pa} , {pb}")
    return Query(pa, pb)


def answer(table: IdentTable, peer_host: str, line: bytes) -> str:
    """The reply line (without CRLF) to one query line from ``peer_host``."""
    q = parse_query(line)
    if isinstance(q, BadQuery):
        return f"{q.echo} : ERROR : {q.error}"
    pair = f"{q.local_port} , {q.remote_port}"
    user = table.lookup(q.local_port, peer_host, q.remote_port)
    if user is None:
        return f"{pair} : ERROR : NO-USER"
    return f"{pair} : USERID : UNIX : {user}"


class IdentServer:
    """The asyncio ident server answering from one :class:`IdentTable`."""

    def __init__(
        self,
        table: IdentTable,
        host: str,
        port: int = 113,
        *,
        read_timeout: float = READ_TIMEOUT,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.table = table
        self.host = host
        self.port = port
        self.read_timeout = read_timeout
        self.max_clients = max_clients
        self.clients = 0
        self.answered = 0
        self.refused = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        # asyncio makes IPv6 sockets v6-only: "::" (any address) becomes every address of
        # both families, so IPv4 servers reach it too.
        host = None if self.host in ("::", "") else self.host
        self._server = await asyncio.start_server(self._client, host, self.port, limit=MAX_LINE + 2)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("identd listening on %s port %d", self.host, self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= self.max_clients:
            self.refused += 1
            writer.transport.abort()
            return
        self.clients += 1
        try:
            peer = writer.get_extra_info("peername")
            peer_host = str(peer[0]) if peer else ""
            for _ in range(MAX_QUERIES):
                try:
                    line = await asyncio.wait_for(reader.readuntil(b"\n"), self.read_timeout)
                except (asyncio.LimitOverrunError, asyncio.IncompleteReadError):
                    # Too long or cut off: not a query; nothing the client sent is echoed.
                    if not writer.is_closing():
                        writer.write(b"0 , 0 : ERROR : UNKNOWN-ERROR\r\n")
                    break
                except (TimeoutError, ConnectionError, OSError, ValueError):
                    break
                writer.write(answer(self.table, peer_host, line).encode() + b"\r\n")
                self.answered += 1
                await asyncio.wait_for(writer.drain(), self.read_timeout)
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            self.clients -= 1
            writer.close()
