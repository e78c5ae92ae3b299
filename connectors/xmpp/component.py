"""XML streams to the XMPP server with reconnection.

:class:`Stream` supervises one slixmpp stream: it connects, waits for the session, runs the
``on_ready`` callback (which rejoins MUCs and flushes queued messages), and after a drop
reconnects with exponential backoff (``reconnect.min_delay`` doubling up to ``max_delay``).
Stanzas are sent only while the session is up: :meth:`Stream.send` raises
:class:`NotConnected` otherwise, so that callers queue them and rejoin first (slixmpp's own
queue would deliver groupchat messages before the puppets are back in their rooms).

:func:`make_component` builds the XEP-0114 component; :func:`make_client` builds a c2s client
for a Matrix user's own account.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from xml.parsers import expat

from slixmpp import ClientXMPP, ComponentXMPP
from slixmpp.basexmpp import BaseXMPP
from slixmpp.stanza import Iq, Message, Presence
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from bridge.connector import ConnectionState

from .config import XMPPConfig

# Plugins for the stanza interfaces and protocol handling the bridge uses.
PLUGINS = [
    "xep_0030",  # service discovery
    "xep_0045",  # MUC stanzas
    "xep_0059",  # result set management (MAM paging)
    "xep_0066",  # out-of-band data (media links)
    "xep_0085",  # chat states
    "xep_0184",  # delivery receipts
    "xep_0199",  # ping
    "xep_0203",  # delayed delivery
    "xep_0297",  # forwarding (MAM results)
    "xep_0308",  # last message correction
    "xep_0313",  # message archive management
    "xep_0333",  # chat markers
    "xep_0334",  # processing hints
    "xep_0359",  # stanza and origin ids
    "xep_0421",  # occupant ids
    "xep_0422",  # fastening
    "xep_0424",  # retraction
    "xep_0425",  # moderation
    "xep_0428",  # fallback indication
    "xep_0444",  # reactions
    "xep_0461",  # replies
]

PLUGIN_CONFIG: dict[str, dict[str, Any]] = {
    # Receipts are answered by the bridge once a message has reached the core.
    "xep_0184": {"auto_ack": False, "auto_request": False},
    "xep_0199": {"keepalive": False},
}


class NotConnected(Exception):
    pass


def _register(xmpp: BaseXMPP) -> None:
    for name in PLUGINS:
        xmpp.register_plugin(name, PLUGIN_CONFIG.get(name))


KEEP = 1
DROP = 0
KEEP_IF_SELF = 2  # keep only if it carries the MUC status code 110 (the occupant's own)

_MUC_STATUS = "http://jabber.org/protocol/muc#user}status"


def _qname(name: str) -> str:
    """expat's ``ns}local`` as ElementTree's ``{ns}local``."""
    return "{" + name if "}" in name else name


def _qattrs(attrs: dict[str, str]) -> dict[str, str]:
    for key in attrs:
        if "}" in key:
            return {_qname(k): v for k, v in attrs.items()}
    return attrs


class _Refused(Exception):
    pass


MAX_STANZA_BYTES = 16 * 1024 * 1024
_PROLOG, _TOP, _STANZA, _EXPAT = range(4)  # where the stream cutter is
_MAX_TAG = 64 * 1024  # a start tag longer than this goes to expat as it is
_TAIL = 64
_ROOT_START = re.compile(rb"<(?![?!])[^>]*>")
_START_TAG = re.compile(
    rb"<([A-Za-z_][\w.:-]*)((?:\s+[^\s=/>]+\s*=\s*(?:'[^']*'|\"[^\"]*\"))*)\s*(/?)>"
)
_ATTR = re.compile(r"([^\s=]+)\s*=\s*(?:'([^']*)'|\"([^\"]*)\")")
_TO_ATTR = re.compile(rb"\sto\s*=\s*(['\"])")
_NOT_A_STANZA = b"/!?"
_end_tags: dict[bytes, bytes] = {}


def _end_tag(name: bytes) -> bytes:
    tag = b"</" + name + b">"
    if len(_end_tags) < 64:
        _end_tags[name] = tag
    return tag


def _not_self(buf: bytes, start: int, stop: int) -> bool:
    """Whether a stanza cannot carry the MUC status code 110 (nowhere the digits "110",
    no character references)."""
    return buf.find(b"110", start, stop) < 0 and buf.find(b"&#", start, stop) < 0


class _Copy:
    """The last dropped stanza, to recognize the next copies of it: a MUC sends the same
    stanza to each occupant, byte for byte except the ``to`` attribute."""

    __slots__ = ("attrib", "prefilter", "prefix", "suffix", "tag")

    def __init__(
        self,
        prefix: bytes,
        suffix: bytes,
        tag: str,
        attrib: dict[str, str],
        prefilter: Callable[[str, dict[str, str]], int],
    ) -> None:
        self.prefix = prefix  # up to the opening quote of the to attribute's value
        self.suffix = suffix  # from its closing quote to the end of the stanza
        self.tag = tag
        self.attrib = attrib
        self.prefilter = prefilter

    @classmethod
    def of(
        cls,
        buf: bytes,
        pos: int,
        end: int,
        stop: int,
        tag: str,
        attrib: dict[str, str],
        reader: StanzaReader,
    ) -> _Copy | None:
        m = _TO_ATTR.search(buf, pos, end)
        if m is None or reader.prefilter is None:
            return None
        close = buf.find(m.group(1), m.end(), end)
        if close < 0:
            return None
        return cls(buf[pos : m.end()], buf[close:stop], tag, attrib, reader.prefilter)

    def match(self, buf: bytes, pos: int) -> int:
        """Where a copy starting at ``pos`` ends (0: not a copy, or not complete)."""
        prefix = self.prefix
        if not buf.startswith(prefix, pos):
            return 0
        close = buf.find(self.suffix[:1], pos + len(prefix))
        if close < 0 or not buf.startswith(self.suffix, close):
            return 0
        return close + len(self.suffix)

    def verdict(self, to: bytes) -> int | None:
        """The prefilter's verdict on the copy for ``to`` (None: read it the long way)."""
        if b"&" in to or b"<" in to:
            return None
        attrib = dict(self.attrib)
        attrib["to"] = to.decode()
        return self.prefilter(self.tag, attrib)


_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_ENTITIES = [("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'"), ("&amp;", "&")]
_closers: dict[bytes, re.Pattern[bytes]] = {}


def _closer(name: bytes) -> re.Pattern[bytes]:
    """Tags named ``name`` (start or end), CDATA sections and comments."""
    pattern = _closers.get(name)
    if pattern is None:
        pattern = re.compile(b"<(/?)" + re.escape(name) + rb"(?=[\s/>])|<!\[CDATA\[|<!--")
        if len(_closers) < 64:
            _closers[name] = pattern
    return pattern


class StanzaReader:
    """An incremental XML stream reader (expat) that builds ElementTree elements only for the
    stanzas a ``prefilter`` keeps. The prefilter sees each top-level element's tag and
    attributes (``from``, ``to``, ``type``) and answers KEEP, DROP or KEEP_IF_SELF; the
    children of a dropped stanza are only counted, never built. DTDs and entity
    declarations are refused (RFC 6120 §11.1)."""

    _SKIP, _BUILD, _RECORD = 0, 1, 2

    def __init__(
        self,
        prefilter: Callable[[str, dict[str, str]], int] | None,
        default_ns: str = "jabber:component:accept",
    ) -> None:
        self.prefilter = prefilter
        self.ns_prefix = "{" + default_ns + "}"
        self._buf = b""
        self._cut = _PROLOG
        self._close: re.Pattern[bytes] = _closer(b"message")
        self._nest = 0
        self._size = 0
        self._skip = False
        self._pre_verdict: int | None = None
        self._copy: _Copy | None = None
        parser = expat.ParserCreate(namespace_separator="}")
        parser.buffer_text = True
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._data
        parser.StartDoctypeDeclHandler = self._refuse
        parser.EntityDeclHandler = self._refuse
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        self._parser = parser
        self.depth = 0
        self.mode = self._SKIP
        self.builder: Any = None
        self.record: list[tuple[int, Any, Any]] = []
        self.is_self = False
        self.out: list[tuple[str, ET.Element | None]] = []
        self.dropped = 0

    def _refuse(self, *_args: Any) -> None:
        raise _Refused("DTDs and entity declarations are not allowed in XMPP")

    def feed(self, data: bytes) -> list[tuple[str, ET.Element | None]]:
        """Parse a chunk; return what it completed: ("root", element), ("stanza",
        element) or ("end", None). Raises ValueError on malformed XML."""
        self._buf += data
        try:
            self._split()
        except (expat.ExpatError, _Refused) as e:
            raise ValueError(str(e)) from e
        out, self.out = self.out, []
        return out

    # The stream is cut into stanzas before expat sees it: a stanza's start tag is read with
    # a regular expression, the prefilter decides on it, and a dropped stanza's bytes are
    # skipped up to its end tag (same-named tags are counted, CDATA sections and comments
    # stepped over), never given to expat. What the cutter does not understand (a
    # namespace prefix or declaration on a stanza, character references in its
    # attributes) goes to expat whole, with the prefilter deciding there; anything else at
    # the top level (the end of the stream, or junk) makes expat read the rest.

    def _split(self) -> None:
        buf = self._buf
        n = len(buf)
        pos = 0
        parse = self._parser.Parse
        try:
            while pos < n:
                cut = self._cut
                if cut == _TOP:
                    if buf[pos] != 60:  # not "<": whitespace (or text) between stanzas
                        lt = buf.find(b"<", pos)
                        lt = n if lt < 0 else lt
                        if buf[pos:lt].strip():
                            parse(buf[pos:lt], False)  # expat ignores it
                        pos = lt
                        continue
                    copy = self._copy
                    if copy is not None:
                        stop = copy.match(buf, pos)
                        if stop:
                            to = buf[pos + len(copy.prefix) : stop - len(copy.suffix)]
                            verdict = copy.verdict(to)
                            if verdict == KEEP_IF_SELF and _not_self(buf, pos, stop):
                                verdict = DROP
                            if verdict is not None:
                                if verdict == DROP:
                                    self.dropped += 1
                                else:
                                    self._pre_verdict = verdict
                                    parse(buf[pos:stop], False)
                                pos = stop
                                continue
                    if pos + 1 >= n:
                        break
                    if buf[pos + 1] in _NOT_A_STANZA:  # "/", "!", "?"
                        self._cut = _EXPAT  # the end of the stream, or something to judge
                        continue
                    m = _START_TAG.match(buf, pos)
                    if m is None:
                        if buf.find(b">", pos) < 0 and n - pos <= _MAX_TAG:
                            break  # the start tag is not complete yet
                        self._cut = _EXPAT
                        continue
                    name, raw, empty = m.groups()
                    end = m.end()
                    found = self._verdict(name, raw)
                    verdict = found[0] if found else None
                    if empty:  # <presence .../>
                        if verdict == DROP or verdict == KEEP_IF_SELF:
                            self.dropped += 1
                        else:
                            self._pre_verdict = verdict
                            parse(buf[pos:end], False)
                        pos = end
                        continue
                    # Usually the end tag is near and nothing like it comes before.
                    close = _end_tags.get(name) or _end_tag(name)
                    j = buf.find(close, end)
                    if (
                        j >= 0
                        and buf.find(close[:1] + close[2:-1], end, j) < 0
                        and buf.find(b"<!", end, j) < 0
                    ):
                        stop = j + len(close)
                        if verdict == KEEP_IF_SELF and _not_self(buf, end, stop):
                            verdict = DROP
                        if verdict == DROP:
                            self.dropped += 1
                            assert found is not None
                            self._copy = _Copy.of(buf, pos, end, stop, found[1], found[2], self)
                        else:
                            self._pre_verdict = verdict
                            parse(buf[pos:stop], False)
                        pos = stop
                        continue
                    self._cut = _STANZA
                    self._close = _closer(name)
                    self._nest = 1
                    self._size = end - pos
                    self._skip = verdict == DROP
                    if self._skip:
                        self.dropped += 1
                    else:
                        self._pre_verdict = verdict
                        parse(buf[pos:end], False)
                    pos = end
                elif cut == _STANZA:
                    pos = self._stanza_body(buf, pos)
                    if self._cut == _STANZA:
                        break
                elif cut == _EXPAT:
                    parse(buf[pos:], False)
                    pos = n
                else:
                    m = _ROOT_START.search(buf, pos)
                    if m is None:
                        if n - pos > _MAX_TAG:
                            self._cut = _EXPAT
                            continue
                        break
                    parse(buf[pos : m.end()], False)
                    pos = m.end()
                    self._cut = _TOP if self.depth == 1 else _EXPAT
        finally:
            self._buf = buf[pos:] if pos < n else b""

    def _verdict(self, name: bytes, raw_attrs: bytes) -> tuple[int, str, dict[str, str]] | None:
        """The prefilter's verdict on a start tag, with the tag and attributes it saw; None:
        let expat read it and ask."""
        if self.prefilter is None or b":" in name:
            return None
        attrib: dict[str, str] = {}
        text = raw_attrs.decode()
        for key, v1, v2 in _ATTR.findall(text):
            value = v1 if v1 or not v2 else v2
            if ":" in key or key == "xmlns":
                if key != "xml:lang":
                    return None  # namespace declarations or prefixes
                key = _XML_LANG
            if "&" in value:
                if "&#" in value:
                    return None
                for ent, ch in _ENTITIES:
                    value = value.replace(ent, ch)
            attrib[key] = value
        tag = self.ns_prefix + name.decode()
        return self.prefilter(tag, attrib), tag, attrib

    def _stanza_body(self, buf: bytes, pos: int) -> int:
        """Scan the rest of a stanza from ``pos``; returns where the scan stopped (the end
        of the stanza, or where more data is needed)."""
        start = pos
        close = self._close
        n = len(buf)
        while True:
            m = close.search(buf, pos)
            if m is None:
                # Keep a tail that may be the start of a tag cut by the chunk.
                lt = buf.rfind(b"<", max(pos, n - _TAIL))
                return self._consume(buf, start, lt if lt >= 0 and buf.find(b">", lt) < 0 else n)
            token = m.group(0)
            if token == b"<![CDATA[" or token == b"<!--":
                stop = b"]]>" if token == b"<![CDATA[" else b"-->"
                j = buf.find(stop, m.end())
                if j < 0:
                    return self._consume(buf, start, m.start())
                pos = j + len(stop)
                continue
            gt = buf.find(b">", m.end())
            if gt < 0:
                return self._consume(buf, start, m.start())
            if m.group(1):  # an end tag
                self._nest -= 1
                if self._nest == 0:
                    self._cut = _TOP
                    return self._consume(buf, start, gt + 1)
            elif buf[gt - 1] != 47:  # not "/>"
                self._nest += 1
            pos = gt + 1

    def _consume(self, buf: bytes, start: int, upto: int) -> int:
        """Bytes ``start:upto`` belong to the current stanza: expat reads them unless it is
        dropped."""
        if upto > start and not self._skip:
            self._parser.Parse(buf[start:upto], False)
        self._size += upto - start
        if self._size > MAX_STANZA_BYTES:
            raise _Refused(f"a stanza of more than {MAX_STANZA_BYTES} bytes")
        return upto

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        depth = self.depth
        self.depth = depth + 1
        if depth > 1:
            mode = self.mode
            if mode == self._SKIP:
                return
            if mode == self._BUILD:
                self.builder.start(_qname(name), _qattrs(attrs))
            else:
                self.record.append((0, name, attrs))
                if name == _MUC_STATUS and attrs.get("code") == "110":
                    self.is_self = True
            return
        tag, attrib = _qname(name), _qattrs(attrs)
        if depth == 0:
            self.out.append(("root", ET.Element(tag, attrib)))
            return
        verdict = self._pre_verdict
        if verdict is None:
            verdict = KEEP if self.prefilter is None else self.prefilter(tag, attrib)
        else:
            self._pre_verdict = None
        if verdict == DROP:
            self.mode = self._SKIP
            self.dropped += 1
        elif verdict == KEEP_IF_SELF:
            self.mode = self._RECORD
            self.record = [(0, name, attrs)]
            self.is_self = False
        else:
            self.mode = self._BUILD
            self.builder = ET.TreeBuilder()
            self.builder.start(tag, attrib)

    def _data(self, text: str) -> None:
        if self.depth > 1:
            if self.mode == self._BUILD:
                self.builder.data(text)
            elif self.mode == self._RECORD:
                self.record.append((1, text, None))

    def _end(self, name: str) -> None:
        self.depth -= 1
        depth = self.depth
        mode = self.mode
        if depth > 1:
            if mode == self._BUILD:
                self.builder.end(_qname(name))
            elif mode == self._RECORD:
                self.record.append((2, name, None))
            return
        if depth == 0:
            self.out.append(("end", None))
            return
        if mode == self._BUILD:
            self.builder.end(_qname(name))
            self.out.append(("stanza", self.builder.close()))
        elif mode == self._RECORD:
            if self.is_self:
                self.record.append((2, name, None))
                self.out.append(("stanza", self._replay()))
            else:
                self.dropped += 1
        self.mode = self._SKIP
        self.builder = None
        self.record = []

    def _replay(self) -> ET.Element:
        builder = ET.TreeBuilder()
        for kind, a, b in self.record:
            if kind == 0:
                builder.start(_qname(a), _qattrs(b))
            elif kind == 1:
                builder.data(a)
            else:
                builder.end(_qname(a))
        element: ET.Element = builder.close()
        return element


class Component(ComponentXMPP):
    """The XEP-0114 component, reading its stream with :class:`StanzaReader`.

    In a MUC every occupant gets its own copy of each message and presence, so with N
    puppets in a room the component receives N copies of everything said there and N^2
    presences while they join. ``prefilter`` (set by the connector) looks at each stanza's
    top-level tag and attributes, and the copies nobody needs are skipped without building
    them or running slixmpp's handlers on them."""

    prefilter: Callable[[str, dict[str, str]], int] | None = None

    # slixmpp's answers to subscription stanzas and probes come from a roster in memory (a
    # probe from a contact it does not know is answered "unsubscribed", which cancels the
    # contact's subscription); the connector's roster.py answers them instead.
    def _handle_subscribe(self, pres: Presence) -> None:
        pass

    def _handle_subscribed(self, pres: Presence) -> None:
        pass

    def _handle_unsubscribe(self, pres: Presence) -> None:
        pass

    def _handle_unsubscribed(self, pres: Presence) -> None:
        pass

    def _handle_new_subscription(self, pres: Presence) -> None:
        pass

    def _handle_probe(self, pres: Presence) -> None:
        pass

    def init_parser(self) -> None:
        self.xml_depth = 0
        self.xml_root = None
        self.parser = StanzaReader(self.prefilter)  # type: ignore[assignment]

    def data_received(self, data: bytes | str) -> None:
        reader = self.parser
        if not isinstance(reader, StanzaReader):
            logging.getLogger(__name__).warning("data before the stream was set up: %r", data)
            return
        try:
            done = reader.feed(data.encode() if isinstance(data, str) else data)
        except ValueError as e:
            logging.getLogger(__name__).error("malformed XML from the server (%s); reconnecting", e)
            self.disconnect_reason = "malformed XML"
            self.abort()
            return
        for kind, xml in done:
            if kind == "stanza":
                assert xml is not None
                self._spawn_event(xml)
                if self.xml_root is not None:
                    self.xml_root.clear()
            elif kind == "root":
                self.xml_root = xml
                self.xml_depth = 1
                self.start_stream_handler(xml)
            else:
                self.xml_depth = 0
                self.disconnect_reason = "End of stream"
                self.abort()
                return


def serve_iq(xmpp: BaseXMPP, name: str, payload: str, handler: Callable[[Any], None]) -> None:
    """Call ``handler`` with every IQ whose payload element is ``payload`` (``{ns}tag``)."""
    xmpp.register_handler(
        Callback(f"mimi-bridge {name}", MatchXPath(f"{{{xmpp.default_ns}}}iq/{payload}"), handler)
    )


def make_component(cfg: XMPPConfig) -> Component:
    xmpp = Component(cfg.domain, cfg.secret, cfg.host, cfg.port)
    xmpp.enable_direct_tls = False
    _register(xmpp)
    return xmpp


def make_client(cfg: XMPPConfig, jid: str, password: str) -> ClientXMPP:
    plugin_config = {}
    if cfg.login_allow_plaintext:
        plugin_config["feature_mechanisms"] = {"unencrypted_scram": True}
    xmpp = ClientXMPP(jid, password, plugin_config=plugin_config)
    if cfg.login_allow_plaintext:
        xmpp.enable_plaintext = True
        xmpp.enable_starttls = False
        xmpp.enable_direct_tls = False
    _register(xmpp)
    xmpp.register_plugin("xep_0280")  # carbons: messages the user sends from other clients
    return xmpp


Handler = Callable[[], Awaitable[None]]
# A stream's new state, why it is down ("" when up) and whether the server refused the
# credentials; None once stopped.
StateHandler = Callable[[ConnectionState | None, str, bool], None]


class Stream:
    """Supervises one slixmpp stream; see the module docstring."""

    def __init__(
        self,
        xmpp: BaseXMPP,
        *,
        name: str,
        host: str | None,
        port: int | None,
        min_delay: float,
        max_delay: float,
        log: logging.Logger,
        connect_timeout: float = 20.0,
    ) -> None:
        self.xmpp = xmpp
        self.name = name
        self.host = host
        self.port = port
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.connect_timeout = connect_timeout
        self.log = log
        self.ready = asyncio.Event()
        self.on_ready: list[Handler] = []
        self.on_lost: list[Handler] = []
        self.connects = 0
        self.attempts = 0
        self.last_error: str | None = None
        self.on_state: StateHandler | None = None
        self._reported: ConnectionState | None = None
        self._auth_failed = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._failed = asyncio.Event()
        self._lost = asyncio.Event()
        xmpp.add_event_handler("session_start", self._on_session_start)
        xmpp.add_event_handler("disconnected", self._on_disconnected)
        xmpp.add_event_handler("connection_failed", self._on_failed)
        xmpp.add_event_handler("failed_auth", self._on_failed_auth)
        xmpp.add_event_handler("stream_error", self._on_stream_error)

    # --- slixmpp events -----------------------------------------------------------------

    def _on_session_start(self, _event: Any) -> None:
        self._started.set()

    def _on_disconnected(self, reason: Any) -> None:
        self.ready.clear()
        if reason:
            self.last_error = str(reason)
        self._failed.set()
        if self._started.is_set():
            self._lost.set()

    def _on_failed(self, reason: Any) -> None:
        self.last_error = str(reason)
        self._failed.set()

    def _on_failed_auth(self, _event: Any) -> None:
        self.last_error = "authentication failed"
        self._auth_failed = True
        self._failed.set()

    def _on_stream_error(self, err: Any) -> None:
        with contextlib.suppress(Exception):
            self.last_error = f"stream error: {err['condition']} {err['text']}".strip()

    @property
    def connection_state(self) -> ConnectionState | None:
        """For the bridge's metrics; None once stopped."""
        if self._stopping:
            return None
        if self.ready.is_set():
            return ConnectionState.CONNECTED
        # Not up: waiting to retry after a failure, or at a first attempt.
        return ConnectionState.DISCONNECTED if self.last_error else ConnectionState.CONNECTING

    def _report(self, state: ConnectionState | None) -> None:
        """Tell ``on_state`` of a change (retries that fail alike are one state)."""
        if state == self._reported or self.on_state is None:
            return
        self._reported = state
        reason = "" if state in (ConnectionState.CONNECTED, None) else (self.last_error or "")
        auth = state == ConnectionState.FAILED
        if auth:
            reason = "the server refused the password (authentication failed)"
        self.on_state(state, reason, auth)

    # --- control ------------------------------------------------------------------------

    async def connect_once(self) -> bool:
        """One connection attempt; True once the session is up."""
        self._started.clear()
        self._failed.clear()
        self._lost.clear()
        self._auth_failed = False
        self.attempts += 1
        if self._reported != ConnectionState.FAILED:
            self._report(ConnectionState.CONNECTING)  # a retry after a refusal stays failed
        self.xmpp.connect(self.host, self.port) if self.host else self.xmpp.connect()
        started = asyncio.ensure_future(self._started.wait())
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            await asyncio.wait(
                [started, failed], timeout=self.connect_timeout, return_when="FIRST_COMPLETED"
            )
        finally:
            started.cancel()
            failed.cancel()
        if self._started.is_set():
            self.connects += 1
            return True
        self.xmpp.cancel_connection_attempt()
        if self.xmpp.transport is not None:
            self.xmpp.abort()
        if self.last_error is None:
            self.last_error = "timed out"
        self._report(ConnectionState.FAILED if self._auth_failed else ConnectionState.DISCONNECTED)
        return False

    def start(self, first_attempt_done: bool = False) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                self._supervise(first_attempt_done), name=f"xmpp-{self.name}"
            )

    async def _run_callbacks(self, callbacks: list[Handler]) -> None:
        for cb in callbacks:
            try:
                await cb()
            except Exception:
                self.log.exception("%s: callback %s failed", self.name, cb)

    async def _supervise(self, connected: bool) -> None:
        delay = self.min_delay
        while not self._stopping:
            if not connected:
                connected = await self.connect_once()
            if not connected:
                if self._stopping:
                    break
                self.log.warning(
                    "%s: connection failed (%s); retrying in %.1f s",
                    self.name,
                    self.last_error,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay)
                continue
            delay = self.min_delay
            self.log.info("%s: session up (connection #%d)", self.name, self.connects)
            self.ready.set()
            self._report(ConnectionState.CONNECTED)
            await self._run_callbacks(self.on_ready)
            await self._lost.wait()
            self.ready.clear()
            connected = False
            if self._stopping:
                break
            self._report(ConnectionState.DISCONNECTED)
            self.log.warning("%s: connection lost (%s)", self.name, self.last_error)
            await self._run_callbacks(self.on_lost)
            await asyncio.sleep(self.min_delay)

    async def wait_ready(self, timeout: float) -> bool:  # noqa: ASYNC109
        if self.ready.is_set():
            return True
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        self._stopping = True
        self._report(None)
        self.xmpp.cancel_connection_attempt()
        if self.ready.is_set() or self.xmpp.transport is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.xmpp.disconnect(wait=1.0), 3)
        self.ready.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    def send(self, stanza: Message | Presence | Iq) -> None:
        if not self.ready.is_set():
            raise NotConnected(self.name)
        stanza.send()


class SerialInbox:
    """Runs jobs one at a time per key, in the order they were submitted; jobs of different
    keys run concurrently. Incoming stanzas are keyed by conversation (the sender's bare JID),
    so that a message that waits (for a download, the database, the homeserver) is never
    overtaken by the next one of the same room or chat."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._queues: dict[str, deque[Handler]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, key: str, job: Handler) -> None:
        queue = self._queues.get(key)
        if queue is not None:
            queue.append(job)
            return
        self._queues[key] = deque([job])
        task = asyncio.create_task(self._drain(key), name=f"xmpp-inbox-{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, key: str) -> None:
        queue = self._queues[key]
        try:
            while queue:
                job = queue.popleft()
                try:
                    await job()
                except Exception:
                    self.log.exception("handling a stanza from %s failed", key)
        finally:
            del self._queues[key]

    async def idle(self) -> None:
        """Wait until every submitted job has run."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._queues.clear()
