"""The component's stream reader: the elements it builds equal ElementTree's, whatever the
chunking; dropped stanzas are skipped whole; hostile XML is refused."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.xmpp.component import DROP, KEEP, KEEP_IF_SELF, StanzaReader

HEADER = (
    b"<stream:stream xmlns='jabber:component:accept' "
    b"xmlns:stream='http://etherx.jabber.org/streams' id='abc' from='matrix.localhost'>"
)
STANZAS = [
    b"<message from='r@muc/a' to='p\\40x@c/m' type='groupchat' id='1' xml:lang='en'>"
    b"<body>hi &amp; &lt;bye&gt; \xc3\xa9</body>"
    b"<stanza-id xmlns='urn:xmpp:sid:0' id='s1' by='r@muc'/>"
    b"</message>",
    b"<presence from='r@muc/b' to='p\\40x@c/m'><x xmlns='http://jabber.org/protocol/muc#user'>"
    b"<item affiliation='none' role='participant'/><status code='110'/></x></presence>",
    b"<presence from='r@muc/c' to='p\\40x@c/m'><x xmlns='http://jabber.org/protocol/muc#user'>"
    b"<item affiliation='none' role='participant'/></x></presence>",
    b"<iq type='get' id='q' from='a@b/c' to='c'><ping xmlns='urn:xmpp:ping'/></iq>",
    b"<message from='a@b' to='c'><body><![CDATA[<not> a tag]]></body>text tail</message>",
    # A message inside a message (MAM, carbons), double quotes, entities in attributes.
    b'<message from="r@muc/d &amp; e" to="c" type=\'groupchat\'><result xmlns="urn:xmpp:mam:2">'
    b"<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='x@y'>"
    b"<body>inner</body></message><message/></forwarded></result></message>",
    b"<presence from='r@muc/&apos;q&apos;' to='c' type='unavailable'/>",
    # A namespace declaration on the stanza and a character reference: expat decides.
    b"<iq xmlns:foo='urn:foo' type='result' id='r1' from='a&#64;b' to='c'><foo:q/></iq>",
    b"\n  ",
]
# Copies of the first message for other occupants (a MUC sends one to each): byte for byte the
# same but for the recipient, one with an entity in it.
STANZAS += [
    STANZAS[0].replace(b"to='p\\40x@c/m'", b"to='" + to + b"'")
    for to in (b"q\\40x@c/m", b"r&amp;s@c/m", b"t@c")
]


def reference(data: bytes) -> list[ET.Element]:
    root = ET.fromstring(data + b"</stream:stream>")
    return list(root)


def same(a: ET.Element, b: ET.Element) -> bool:
    return (
        a.tag == b.tag
        and a.attrib == b.attrib
        and (a.text or "") == (b.text or "")
        and (a.tail or "").strip() == (b.tail or "").strip()
        and len(a) == len(b)
        and all(same(x, y) for x, y in zip(a, b, strict=True))
    )


def read(data: bytes, cuts: list[int], prefilter: object = None) -> list[tuple[str, object]]:
    reader = StanzaReader(prefilter)  # type: ignore[arg-type]
    out: list[tuple[str, object]] = []
    pos = 0
    for cut in [*sorted(cuts), len(data)]:
        out += reader.feed(data[pos:cut])
        pos = cut
    return out


@given(
    order=st.lists(st.integers(0, len(STANZAS) - 1), max_size=8),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
)
def test_builds_what_elementtree_builds_for_any_chunking(order: list[int], cuts: list[int]) -> None:
    body = b"".join(STANZAS[i] for i in order)
    data = HEADER + body
    events = read(data, [c for c in cuts if c <= len(data)])
    assert events[0][0] == "root"
    root = events[0][1]
    assert isinstance(root, ET.Element) and root.get("id") == "abc"
    built = [e for kind, e in events[1:] if kind == "stanza"]
    expected = reference(data)
    assert len(built) == len(expected)
    assert all(same(a, b) for a, b in zip(built, expected, strict=True))  # type: ignore[arg-type]


def test_dropped_and_self_only_stanzas() -> None:
    verdicts = iter([DROP, KEEP_IF_SELF, KEEP_IF_SELF, KEEP, KEEP])
    seen: list[tuple[str, str | None]] = []

    def prefilter(tag: str, attrib: dict[str, str]) -> int:
        seen.append((tag, attrib.get("from")))
        return next(verdicts)

    events = read(HEADER + b"".join(STANZAS[:5]) + b"</stream:stream>", [], prefilter)
    kinds = [k for k, _ in events]
    assert kinds == ["root", "stanza", "stanza", "stanza", "end"]
    built = [e for k, e in events if isinstance(e, ET.Element) and k == "stanza"]
    # The message was dropped; of the two presences only the one with status 110 is kept.
    assert [e.get("from") for e in built] == ["r@muc/b", "a@b/c", "a@b"]
    assert same(built[0], reference(HEADER + STANZAS[1])[0])
    assert seen[0] == ("{jabber:component:accept}message", "r@muc/a")


@pytest.mark.parametrize(
    "data",
    [
        b"<!DOCTYPE x [<!ENTITY a 'aaaa'>]>" + HEADER,
        HEADER + b"<message><body>&undefined;</body></message>",
        HEADER + b"<message></presence>",
    ],
)
def test_hostile_or_malformed_xml_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        read(data, [])


@settings(max_examples=400)
@given(
    order=st.lists(st.integers(0, len(STANZAS) - 1), max_size=12),
    drops=st.lists(st.sampled_from([DROP, KEEP, KEEP_IF_SELF]), min_size=10, max_size=10),
    cuts=st.lists(st.integers(0, 3000), max_size=8),
)
def test_dropping_any_stanzas_for_any_chunking(
    order: list[int], drops: list[int], cuts: list[int]
) -> None:
    """The stanzas the prefilter keeps come out exactly as ElementTree builds them, whatever
    it drops and however the stream is cut; it sees each stanza's tag and routing
    attributes as expat reports them."""
    body = b"".join(STANZAS[i] for i in order)
    data = HEADER + body
    expected = reference(data)
    asked: list[tuple[str, dict[str, str]]] = []

    def prefilter(tag: str, attrib: dict[str, str]) -> int:
        index = len(asked)
        asked.append((tag, attrib))
        return drops[index % len(drops)]

    events = read(data, [c for c in cuts if c <= len(data)], prefilter)
    built = [e for kind, e in events[1:] if kind == "stanza"]
    assert len(asked) == len(expected)

    def is_self(e: ET.Element) -> bool:
        return any(
            status.get("code") == "110"
            for status in e.iter("{http://jabber.org/protocol/muc#user}status")
        )

    kept = [
        e
        for i, e in enumerate(expected)
        if drops[i % len(drops)] == KEEP or (drops[i % len(drops)] == KEEP_IF_SELF and is_self(e))
    ]
    assert len(built) == len(kept)
    assert all(same(a, b) for a, b in zip(built, kept, strict=True))  # type: ignore[arg-type]
    for (tag, attrib), element in zip(asked, expected, strict=True):
        assert tag == element.tag
        for key in ("from", "to", "type"):
            assert attrib.get(key) == element.get(key)
