"""Formatting helpers shared by every connector.

Matrix carries rich text as ``org.matrix.custom.html``; remote networks speak plain text,
markdown-ish text or XEP-0393 message styling. This module converts between them and is the
single place where HTML coming from a connector is made safe before it reaches Matrix.

Everything is built on :mod:`html.parser` from the standard library. HTML is parsed into a
small tree with a few of the browser's implicit-close rules (``<p>`` before a block, ``<li>``
before ``<li>``, table rows and cells), and every output is produced from that tree, so

* :func:`sanitize_html` always returns well-formed markup that contains only the tags and
  attributes the Matrix specification recommends, with all text escaped, and is idempotent;
* the text renderers (:func:`html_to_text`, :func:`html_to_markdown`,
  :func:`html_to_styling`) never see raw markup, only decoded text.

Nothing here keeps state between calls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html import escape
from html.parser import HTMLParser
from types import MappingProxyType
from typing import Final, TypeAlias
from urllib.parse import quote, unquote

__all__ = [
    "ALLOWED_ATTRIBUTES",
    "ALLOWED_TAGS",
    "LINK_SCHEMES",
    "MAX_NESTING_DEPTH",
    "extract_mentions",
    "html_to_markdown",
    "html_to_styling",
    "html_to_text",
    "markdown_to_html",
    "mention_pill",
    "sanitize_html",
    "strip_reply_fallback",
    "text_to_html",
]

# --------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------

#: Tags the Matrix specification suggests clients permit in ``org.matrix.custom.html``.
ALLOWED_TAGS: Final = frozenset(
    {
        "font", "del", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "p", "a", "ul",
        "ol", "sup", "sub", "li", "b", "i", "u", "strong", "em", "s", "code", "hr", "br",
        "div", "table", "thead", "tbody", "tr", "th", "td", "caption", "pre", "span", "img",
        "details", "summary", "mx-reply",
    }
)  # fmt: skip

#: Attributes permitted per tag; values are further validated (see :func:`sanitize_html`).
ALLOWED_ATTRIBUTES: Final = MappingProxyType(
    {
        "font": frozenset({"data-mx-bg-color", "data-mx-color", "color"}),
        "span": frozenset(
            {"data-mx-bg-color", "data-mx-color", "data-mx-spoiler", "data-mx-maths"}
        ),
        "a": frozenset({"name", "target", "href"}),
        "img": frozenset({"width", "height", "alt", "title", "src"}),
        "ol": frozenset({"start"}),
        "code": frozenset({"class"}),
        "div": frozenset({"data-mx-maths"}),
    }
)

#: URL schemes permitted in ``<a href>``.
LINK_SCHEMES: Final = frozenset({"https", "http", "ftp", "mailto", "magnet", "matrix"})

#: Elements nested deeper than this are unwrapped (their content is kept).
MAX_NESTING_DEPTH: Final = 100

# Elements that never have content or an end tag.
_VOID_TAGS: Final = frozenset(
    {
        "area", "base", "br", "col", "embed", "hr", "img", "input", "keygen", "link", "meta",
        "param", "source", "track", "wbr",
    }
)  # fmt: skip

# Disallowed elements whose content is not text meant for the reader: dropped with it.
_DROP_CONTENT_TAGS: Final = frozenset(
    {
        "script", "style", "template", "noscript", "noembed", "noframes", "title", "head",
        "textarea", "select", "option", "object", "applet", "iframe", "frame", "frameset",
        "xmp", "plaintext",
    }
)  # fmt: skip

# Starting one of these closes an open <p> (HTML's "close a p element" rule).
_CLOSES_P: Final = frozenset(
    {
        "address", "article", "aside", "blockquote", "center", "details", "dialog", "dir",
        "div", "dl", "dd", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1",
        "h2", "h3", "h4", "h5", "h6", "header", "hgroup", "hr", "li", "listing", "main",
        "menu", "nav", "ol", "p", "pre", "search", "section", "summary", "table", "ul",
    }
)  # fmt: skip
# The implicit-close rules only look at allowed tags: a disallowed tag is unwrapped by the
# sanitizer, so a rule that depended on it would parse the sanitizer's own output differently
# (and sanitize_html would not be idempotent).
_P_SCOPE_BOUNDARY: Final = frozenset({"table", "td", "th", "caption"})
_LIST_TAGS: Final = frozenset({"ul", "ol"})
_ROW_SCOPE_BOUNDARY: Final = frozenset({"table", "thead", "tbody"})
_CELL_TAGS: Final = frozenset({"td", "th"})
_CELL_SCOPE_BOUNDARY: Final = frozenset({"tr", "table"})

# Elements rendered on lines of their own by the text renderers.
_BLOCK_TAGS: Final = _CLOSES_P | frozenset(
    {"caption", "table", "thead", "tbody", "tfoot", "tr", "mx-reply", "body", "html"}
)
# Containers whose whitespace-only text is layout, not content.
_CONTAINER_TAGS: Final = frozenset({"ul", "ol", "dl", "table", "thead", "tbody", "tfoot", "tr"})
_HEADING_TAGS: Final = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})

_ASCII_WS: Final = " \t\n\r\f"
_COLOR_RE: Final = re.compile(r"#[0-9a-fA-F]{6}")
_DIMENSION_RE: Final = re.compile(r"[0-9]{1,5}")
_INTEGER_RE: Final = re.compile(r"-?[0-9]{1,9}")
_LANGUAGE_CLASS_RE: Final = re.compile(r"language-[A-Za-z0-9_+#.-]+")
_SCHEME_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
# What browsers ignore in a URL: leading/trailing C0 controls and spaces, and tab/LF/CR anywhere.
_URL_STRIP: Final = "".join(chr(c) for c in range(0x21))
_URL_DELETE: Final = str.maketrans("", "", "\t\n\r")
_USER_ID_RE: Final = re.compile(r"@[^:\s]+:\S+")
_MATRIX_TO_PREFIXES: Final = ("https://matrix.to/#/", "http://matrix.to/#/")
_MATRIX_URI_USER_PREFIX: Final = "matrix:u/"


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Element:
    tag: str
    attrs: dict[str, str | None]
    children: list[_Node] = field(default_factory=list)


_Node: TypeAlias = "_Element | str"


class _TreeBuilder(HTMLParser):
    """Builds an :class:`_Element` tree; tolerant of any input."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Element("", {})
        self._stack: list[_Element] = [self.root]
        self._text: list[str] = []

    # -- HTMLParser callbacks --

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs, self_closing=False)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs, self_closing=True)

    def handle_endtag(self, tag: str) -> None:
        self._flush_text()
        for index in range(len(self._stack) - 1, 0, -1):
            if self._stack[index].tag == tag:
                del self._stack[index:]
                return

    def handle_data(self, data: str) -> None:
        if data:
            self._text.append(data)

    def parse_marked_section(self, i: int, report: bool = True) -> int:
        # The base class raises AssertionError on unknown marked sections (``<![foo[``);
        # browsers treat them as bogus comments, and so do we.
        end = self.rawdata.find("]]>", i + 3)
        return -1 if end < 0 else end + 3

    # -- tree building --

    def finish(self) -> _Element:
        self._flush_text()
        return self.root

    def _flush_text(self) -> None:
        if not self._text:
            return
        text = "".join(self._text)
        self._text.clear()
        children = self._stack[-1].children
        if children and isinstance(children[-1], str):
            children[-1] += text
        else:
            children.append(text)

    def _start(self, tag: str, attrs: list[tuple[str, str | None]], self_closing: bool) -> None:
        self._flush_text()
        self._implicit_close(tag)
        depth = len(self._stack)
        # Past the limit only elements whose content is dropped are still opened (so that a
        # deep <script> does not leak its text), and only up to twice the limit: everything
        # open past the limit is then such an element, and whatever is deeper is dropped too.
        if depth > MAX_NESTING_DEPTH and (
            tag not in _DROP_CONTENT_TAGS or depth > 2 * MAX_NESTING_DEPTH
        ):
            return
        unique: dict[str, str | None] = {}
        for name, value in attrs:
            unique.setdefault(name, value)  # the first occurrence wins, as in browsers
        element = _Element(tag, unique)
        self._stack[-1].children.append(element)
        if not self_closing and tag not in _VOID_TAGS:
            self._stack.append(element)

    def _implicit_close(self, tag: str) -> None:
        if tag in _CLOSES_P:
            self._close_in_scope({"p"}, _P_SCOPE_BOUNDARY)
        if tag == "li":
            self._close_in_scope({"li"}, _LIST_TAGS)
        elif tag == "tr":
            self._close_in_scope({"tr"}, _ROW_SCOPE_BOUNDARY)
        elif tag in _CELL_TAGS:
            self._close_in_scope(_CELL_TAGS, _CELL_SCOPE_BOUNDARY)
        elif tag == "body":
            self._close_in_scope({"head"}, frozenset())

    def _close_in_scope(self, targets: set[str] | frozenset[str], boundary: frozenset[str]) -> None:
        for index in range(len(self._stack) - 1, 0, -1):
            tag = self._stack[index].tag
            if tag in targets:
                del self._stack[index:]
                return
            if tag in boundary:
                return


def _parse(markup: str) -> _Element:
    builder = _TreeBuilder()
    try:
        builder.feed(markup)
        builder.close()
    except AssertionError:
        # html.parser signals a few malformed constructs this way. Fall back to treating the
        # whole input as text: always safe, merely unformatted.
        return _Element("", {}, [markup] if markup else [])
    return builder.finish()


def _iter_elements(root: _Element) -> list[_Element]:
    """Elements in document order, skipping reply fallbacks and non-text content."""
    found: list[_Element] = []
    pending: list[_Node] = list(reversed(root.children))
    while pending:
        node = pending.pop()
        if isinstance(node, str) or node.tag in _DROP_CONTENT_TAGS or node.tag == "mx-reply":
            continue
        found.append(node)
        pending.extend(reversed(node.children))
    return found


# --------------------------------------------------------------------------------------------
# Sanitizing
# --------------------------------------------------------------------------------------------


def _clean_url(value: str) -> str:
    return value.translate(_URL_DELETE).strip(_URL_STRIP)


def _url_scheme(url: str) -> str | None:
    match = _SCHEME_RE.match(url)
    return match.group(1).lower() if match else None


def _safe_link(value: str | None) -> str | None:
    """The link target if it uses a permitted scheme, cleaned as a browser would read it."""
    if value is None:
        return None
    url = _clean_url(value)
    return url if _url_scheme(url) in LINK_SCHEMES else None


def _clean_attribute(name: str, value: str | None) -> str | None:
    """The value to emit for a permitted attribute, or None to drop it."""
    if name in ("color", "data-mx-color", "data-mx-bg-color"):
        color = (value or "").strip(_ASCII_WS)
        return color if _COLOR_RE.fullmatch(color) else None
    if name == "href":
        return _safe_link(value)
    if name == "src":
        url = _clean_url(value or "")
        return url if url[:6].lower() == "mxc://" and len(url) > 6 else None
    if name in ("width", "height"):
        number = (value or "").strip(_ASCII_WS)
        return number if _DIMENSION_RE.fullmatch(number) else None
    if name == "start":
        number = (value or "").strip(_ASCII_WS)
        return str(int(number)) if _INTEGER_RE.fullmatch(number) else None
    if name == "class":
        languages = [c for c in (value or "").split() if _LANGUAGE_CLASS_RE.fullmatch(c)]
        return " ".join(languages) if languages else None
    # Free text: name, target, alt, title, data-mx-spoiler (the reason), data-mx-maths.
    return value or ""


def _serialize(nodes: list[_Node], out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(escape(node, quote=False))
            continue
        tag = node.tag
        if tag in _DROP_CONTENT_TAGS:
            continue
        if tag not in ALLOWED_TAGS:
            _serialize(node.children, out)
            continue
        permitted = ALLOWED_ATTRIBUTES.get(tag, frozenset())
        attrs: list[tuple[str, str]] = []
        for name, raw in node.attrs.items():
            if name in permitted:
                value = _clean_attribute(name, raw)
                if value is not None:
                    attrs.append((name, value))
        if tag == "img" and not any(name == "src" for name, _ in attrs):
            # Only media on the homeserver may be embedded; otherwise keep the description.
            out.append(escape(node.attrs.get("alt") or "", quote=False))
            continue
        rendered = "".join(f' {name}="{escape(value)}"' for name, value in attrs)
        if tag in _VOID_TAGS:
            out.append(f"<{tag}{rendered}/>")
            continue
        out.append(f"<{tag}{rendered}>")
        _serialize(node.children, out)
        out.append(f"</{tag}>")


def sanitize_html(html: str) -> str:
    """Reduce ``html`` to the ``org.matrix.custom.html`` subset the Matrix spec recommends.

    Disallowed tags are unwrapped (their text is kept, escaped) except for those whose content
    is not reader text (``script``, ``style``, ``title``, ...), which are dropped with their
    content. Comments, doctypes and processing instructions are dropped. Attributes are kept
    only where the spec allows them and only with valid values: colours must be ``#rrggbb``,
    ``<a href>`` must use one of :data:`LINK_SCHEMES`, ``<img src>`` must be ``mxc://`` (an
    image without one is replaced by its alt text), ``<code class>`` keeps only
    ``language-*`` classes, ``<ol start>`` and image dimensions must be integers.

    The result is re-serialized from a parse tree: it is always well-formed, every ``<`` in it
    starts a permitted tag, and ``sanitize_html(sanitize_html(x)) == sanitize_html(x)``.
    """
    out: list[str] = []
    _serialize(_parse(html).children, out)
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Rendering HTML as text
# --------------------------------------------------------------------------------------------


def _is_blank(text: str) -> bool:
    return not text.strip(_ASCII_WS)


def _is_block(node: _Node | None) -> bool:
    return isinstance(node, _Element) and node.tag in _BLOCK_TAGS


def _prefix_lines(first: str, text: str, rest: str | None = None) -> str:
    """Prefix the first line with ``first`` and the others with ``rest`` (default: spaces)."""
    if rest is None:
        rest = " " * len(first)
    lines = text.split("\n")
    out = [(first + lines[0]) if lines[0] else first.rstrip()]
    out.extend((rest + line) if line else rest.rstrip() for line in lines[1:])
    return "\n".join(out)


def _wrap(text: str, opening: str, closing: str) -> str:
    """Wrap each line's non-blank core in markers, keeping surrounding whitespace outside."""
    out: list[str] = []
    for line in text.split("\n"):
        core = line.strip(_ASCII_WS)
        if not core:
            out.append(line)
            continue
        lead = len(line) - len(line.lstrip(_ASCII_WS))
        out.append(f"{line[:lead]}{opening}{core}{closing}{line[lead + len(core) :]}")
    return "\n".join(out)


def _longest_run(text: str, char: str) -> int:
    return max((len(run) for run in re.findall(re.escape(char) + "+", text)), default=0)


def _code_language(pre: _Element) -> str:
    for child in pre.children:
        if isinstance(child, _Element) and child.tag == "code":
            for cls in (child.attrs.get("class") or "").split():
                if _LANGUAGE_CLASS_RE.fullmatch(cls):
                    return cls.removeprefix("language-")
    return ""


class _PlainRenderer:
    """Plain text. Subclasses override the style hooks."""

    def render(self, root: _Element) -> str:
        return self._children(root.children, pre=False)

    # -- style hooks --

    def bold(self, text: str) -> str:
        return text

    def italic(self, text: str) -> str:
        return text

    def strike(self, text: str) -> str:
        return text

    def spoiler(self, text: str) -> str:
        return text

    def code(self, text: str) -> str:
        return text

    def preformatted(self, text: str, language: str) -> str:
        return text

    def heading(self, level: int, text: str) -> str:
        return text

    def link(self, text: str, url: str | None) -> str:
        if url is None:
            return text
        if _is_blank(text):
            return url
        if text == url or (url[:7].lower() == "mailto:" and text == url[7:]):
            return text
        return f"{text} ({url})"

    # -- structure --

    def _children(self, children: list[_Node], pre: bool) -> str:
        out = ""
        after_block = False
        last = len(children) - 1
        for index, child in enumerate(children):
            if isinstance(child, str):
                if (
                    not pre
                    and _is_blank(child)
                    and (
                        _is_block(children[index - 1] if index > 0 else None)
                        or _is_block(children[index + 1] if index < last else None)
                    )
                ):
                    continue
                piece, block = child, False
            else:
                piece, block = self._element(child, pre)
            if block:
                if out and not out.endswith("\n"):
                    out += "\n"
                out += piece
                after_block = True
            elif piece:
                if after_block and out and not out.endswith("\n"):
                    out += "\n"
                after_block = False
                out += piece
        return out

    def _inner(self, element: _Element) -> str:
        return self._children(element.children, pre=False)

    def _element(self, element: _Element, pre: bool) -> tuple[str, bool]:
        tag = element.tag
        if tag in _DROP_CONTENT_TAGS or tag == "mx-reply":
            return "", False
        if tag == "br":
            return "\n", False
        if tag == "img":
            return element.attrs.get("alt") or "", False
        if pre:
            # Inside preformatted text everything is verbatim.
            return self._children(element.children, pre=True), False
        if tag == "hr":
            return "---", True
        if tag == "pre":
            content = _PlainRenderer()._children(element.children, pre=True)
            return self.preformatted(content.removesuffix("\n"), _code_language(element)), True
        if tag == "code":
            return self.code(_PlainRenderer()._children(element.children, pre=True)), False
        if tag == "a":
            return self.link(self._inner(element), _safe_link(element.attrs.get("href"))), False
        if tag in ("b", "strong"):
            return self.bold(self._inner(element)), False
        if tag in ("i", "em"):
            return self.italic(self._inner(element)), False
        if tag in ("del", "s", "strike"):
            return self.strike(self._inner(element)), False
        if tag == "span" and "data-mx-spoiler" in element.attrs:
            return self.spoiler(self._inner(element)), False
        if tag in _HEADING_TAGS:
            return self.heading(int(tag[1]), self._inner(element).strip(_ASCII_WS)), True
        if tag == "blockquote":
            return _prefix_lines("> ", self._inner(element).strip(_ASCII_WS), "> "), True
        if tag in _LIST_TAGS:
            return self._list(element), True
        if tag == "li":
            return _prefix_lines("- ", self._inner(element).strip(_ASCII_WS)), True
        if tag == "tr":
            return self._row(element), True
        if tag in _BLOCK_TAGS:
            return self._inner(element).strip(_ASCII_WS), True
        return self._inner(element), False

    def _list(self, element: _Element) -> str:
        ordered = element.tag == "ol"
        start = element.attrs.get("start") or ""
        number = int(start) if ordered and _INTEGER_RE.fullmatch(start.strip()) else 1
        items: list[str] = []
        for child in element.children:
            if isinstance(child, str):
                if not _is_blank(child):
                    items.append(child.strip(_ASCII_WS))
            elif child.tag == "li":
                marker = f"{number}. " if ordered else "- "
                number += 1
                items.append(_prefix_lines(marker, self._inner(child).strip(_ASCII_WS)))
            else:
                piece, _ = self._element(child, pre=False)
                if piece:
                    items.append(piece)
        return "\n".join(items)

    def _row(self, element: _Element) -> str:
        cells: list[str] = []
        for child in element.children:
            if isinstance(child, str):
                if not _is_blank(child):
                    cells.append(child.strip(_ASCII_WS))
            elif child.tag in _CELL_TAGS:
                cells.append(self._inner(child).strip(_ASCII_WS).replace("\n", " "))
            else:
                piece, _ = self._element(child, pre=False)
                if piece:
                    cells.append(piece)
        return " | ".join(cells)


class _MarkdownRenderer(_PlainRenderer):
    def bold(self, text: str) -> str:
        return _wrap(text, "**", "**")

    def italic(self, text: str) -> str:
        return _wrap(text, "_", "_")

    def strike(self, text: str) -> str:
        return _wrap(text, "~~", "~~")

    def spoiler(self, text: str) -> str:
        return _wrap(text, "||", "||")

    def code(self, text: str) -> str:
        if not text:
            return ""
        fence = "`" * (_longest_run(text, "`") + 1)
        pad = " " if text.startswith("`") or text.endswith("`") else ""
        return f"{fence}{pad}{text}{pad}{fence}"

    def preformatted(self, text: str, language: str) -> str:
        fence = "`" * max(3, _longest_run(text, "`") + 1)
        return f"{fence}{language}\n{text}\n{fence}"

    def heading(self, level: int, text: str) -> str:
        return f"{'#' * level} {text}"

    def link(self, text: str, url: str | None) -> str:
        if url is None:
            return text
        if _is_blank(text) or text == url:
            return url
        label = text.replace("[", "\\[").replace("]", "\\]")
        target = url.replace(" ", "%20").replace("(", "%28").replace(")", "%29")
        return f"[{label}]({target})"


class _StylingRenderer(_PlainRenderer):
    """XEP-0393 message styling: spans never cross lines, links stay plain text."""

    def bold(self, text: str) -> str:
        return _wrap(text, "*", "*")

    def italic(self, text: str) -> str:
        return _wrap(text, "_", "_")

    def strike(self, text: str) -> str:
        return _wrap(text, "~", "~")

    def code(self, text: str) -> str:
        return _wrap(text, "`", "`")

    def preformatted(self, text: str, language: str) -> str:
        return f"```\n{text}\n```"

    def heading(self, level: int, text: str) -> str:
        return self.bold(text)


def html_to_text(html: str) -> str:
    """Render ``html`` as plain text.

    Paragraphs, headings and other blocks start on a new line, ``<br>`` is a newline, list
    items get ``- `` or ``1. `` (honouring ``<ol start>``), blockquote lines get ``> ``, links
    become ``text (url)`` unless the text already is the url, images become their alt text,
    and ``<mx-reply>`` fallbacks are removed. Entities are decoded and whitespace in text is
    kept as is (``<pre>`` and ``<code>`` content verbatim); only whitespace-only text between
    blocks (source indentation) is dropped.
    """
    return _PlainRenderer().render(_parse(html))


def html_to_markdown(html: str) -> str:
    """Render ``html`` as light markdown: ``**bold**``, ``_italic_``, ``~~strike~~``,
    ```` `code` ````, fenced ``` blocks, ``[text](url)``, ``> `` quotes, ``#`` headings,
    ``- `` / ``1. `` lists and ``||spoilers||``. Text is not markdown-escaped."""
    return _MarkdownRenderer().render(_parse(html))


def html_to_styling(html: str) -> str:
    """Render ``html`` as XEP-0393 message styling: ``*bold*``, ``_italic_``, ``~strike~``,
    ```` `code` ````, ``` blocks and ``> `` quotes; links as ``text (url)``."""
    return _StylingRenderer().render(_parse(html))


# --------------------------------------------------------------------------------------------
# Text to HTML
# --------------------------------------------------------------------------------------------


def _normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def text_to_html(text: str) -> str:
    """Escape plain ``text`` for HTML and turn its newlines (``\\n``, ``\\r\\n``, ``\\r``) into
    ``<br/>``. The result is a fixed point of :func:`sanitize_html`."""
    return escape(_normalize_newlines(text), quote=False).replace("\n", "<br/>")


_SPAN_LIMIT: Final = 2000  # longest inline span considered, keeps matching linear-ish
_INLINE_RE: Final = re.compile(
    rf"""
    (?P<code>(?<!`)(?P<ticks>`+)(?!`)(?P<code_body>[^\n]{{1,{_SPAN_LIMIT}}}?)(?<!`)(?P=ticks)(?!`))
    | (?P<url>\bhttps?://[^\s<>"\x00-\x1f\x7f]+)
    | \*\*(?P<bold>[^\s*](?:[^\n]{{0,{_SPAN_LIMIT}}}?\S)?)\*\*
    | ~~(?P<strike>[^\s~](?:[^\n]{{0,{_SPAN_LIMIT}}}?[^\s~])?)~~
    | (?<![\w*])\*(?P<em_star>[^\s*](?:[^\n]{{0,{_SPAN_LIMIT}}}?[^\s*])?)\*(?![\w*])
    | (?<![\w_])_(?P<em_under>[^\s_](?:[^\n]{{0,{_SPAN_LIMIT}}}?[^\s_])?)_(?![\w_])
    """,
    re.VERBOSE,
)
_FENCE_OPEN_RE: Final = re.compile(r"(`{3,})[ \t]*([A-Za-z0-9_+#.-]*)[ \t]*")
_FENCE_CLOSE_RE: Final = re.compile(r"(`{3,})[ \t]*")
_URL_TRAILING: Final = ".,:;!?'\"*_~"
_MAX_INLINE_NESTING: Final = 16


def _trim_url(url: str) -> str:
    """Drop trailing punctuation that belongs to the sentence, not the link."""
    while url:
        if url[-1] in _URL_TRAILING:
            url = url[:-1]
        elif url[-1] == ")" and url.count(")") > url.count("("):
            url = url[:-1]
        else:
            break
    return url


def _inline_markdown(text: str, depth: int = 0) -> tuple[str, bool]:
    if depth > _MAX_INLINE_NESTING:
        return escape(text, quote=False), False
    out: list[str] = []
    formatted = False
    pos = 0
    while (match := _INLINE_RE.search(text, pos)) is not None:
        out.append(escape(text[pos : match.start()], quote=False))
        pos = match.end()
        if match.group("code") is not None:
            body = match.group("code_body")
            if len(body) > 2 and body[0] == " " and body[-1] == " " and body.strip(" "):
                body = body[1:-1]
            out.append(f"<code>{escape(body, quote=False)}</code>")
        elif match.group("url") is not None:
            url = _trim_url(match.group("url"))
            if len(url) <= len(url.split("://", 1)[0]) + 3:
                out.append(escape(match.group("url"), quote=False))
                continue
            pos = match.start() + len(url)
            out.append(f'<a href="{escape(url)}">{escape(url, quote=False)}</a>')
        else:
            for group, tag in (
                ("bold", "strong"),
                ("strike", "del"),
                ("em_star", "em"),
                ("em_under", "em"),
            ):
                inner = match.group(group)
                if inner is not None:
                    rendered, _ = _inline_markdown(inner, depth + 1)
                    out.append(f"<{tag}>{rendered}</{tag}>")
                    break
        formatted = True
    out.append(escape(text[pos:], quote=False))
    return "".join(out), formatted


def markdown_to_html(text: str) -> str | None:
    """Convert a small, safe markdown subset to HTML, or return None if ``text`` has none.

    Supported: ``**bold**``, ``*italic*`` / ``_italic_`` (not inside words, so ``snake_case``
    and ``2*3*4`` stay as they are), ``~~strike~~``, ```` `code` ````, fenced ``` blocks
    (with an optional language) and bare ``http(s)://`` links. Inline spans do not cross
    lines. Everything else, raw HTML included, is escaped; newlines outside code blocks become
    ``<br/>``. The result is a fixed point of :func:`sanitize_html`.
    """
    lines = _normalize_newlines(text).split("\n")
    segments: list[tuple[str, str, str]] = []  # (kind, language, content)
    paragraph: list[str] = []
    index = 0
    while index < len(lines):
        opening = _FENCE_OPEN_RE.fullmatch(lines[index])
        if opening is not None:
            for end in range(index + 1, len(lines)):
                closing = _FENCE_CLOSE_RE.fullmatch(lines[end])
                if closing is not None and len(closing.group(1)) >= len(opening.group(1)):
                    segments.append(("text", "", "\n".join(paragraph)))
                    paragraph = []
                    segments.append(("code", opening.group(2), "\n".join(lines[index + 1 : end])))
                    index = end + 1
                    break
            else:
                paragraph.append(lines[index])
                index += 1
            continue
        paragraph.append(lines[index])
        index += 1
    segments.append(("text", "", "\n".join(paragraph)))

    out: list[str] = []
    formatted = False
    for position, (kind, language, content) in enumerate(segments):
        if kind == "code":
            formatted = True
            cls = f' class="language-{language}"' if language else ""
            body = escape(content + "\n" if content else "", quote=False)
            out.append(f"<pre><code{cls}>{body}</code></pre>")
            continue
        if position > 0:
            content = content.lstrip("\n")
        if position < len(segments) - 1:
            content = content.rstrip("\n")
        if not content:
            continue
        rendered, has_format = _inline_markdown(content)
        formatted = formatted or has_format
        out.append(rendered.replace("\n", "<br/>"))
    return "".join(out) if formatted else None


# --------------------------------------------------------------------------------------------
# Replies and mentions
# --------------------------------------------------------------------------------------------

_FALLBACK_FIRST_LINE_RE: Final = re.compile(r"> (?:\* )?<[^>\s]+>")


class _ReplyLocator(HTMLParser):
    """Finds the source spans of top-level ``<mx-reply>`` elements."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self._source = source
        self._line_starts = [0]
        for offset, char in enumerate(source):
            if char == "\n":
                self._line_starts.append(offset + 1)
        self._depth = 0
        self._start = 0
        self.spans: list[tuple[int, int]] = []

    def _offset(self) -> int:
        line, column = self.getpos()
        return self._line_starts[line - 1] + column

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "mx-reply":
            if self._depth == 0:
                self._start = self._offset()
            self._depth += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "mx-reply" and self._depth == 0:
            start = self._offset()
            end = self._source.find(">", start)
            self.spans.append((start, end + 1 if end >= 0 else len(self._source)))

    def handle_endtag(self, tag: str) -> None:
        if tag == "mx-reply" and self._depth > 0:
            self._depth -= 1
            if self._depth == 0:
                start = self._offset()
                end = self._source.find(">", start)
                self.spans.append((self._start, end + 1 if end >= 0 else len(self._source)))

    def parse_marked_section(self, i: int, report: bool = True) -> int:
        end = self.rawdata.find("]]>", i + 3)
        return -1 if end < 0 else end + 3

    def locate(self) -> list[tuple[int, int]]:
        try:
            self.feed(self._source)
            self.close()
        except AssertionError:
            return []
        if self._depth > 0:  # unclosed: the reply runs to the end, as a browser would read it
            self.spans.append((self._start, len(self._source)))
        return self.spans


def _strip_body_fallback(body: str, html_had_reply: bool) -> str:
    lines = body.split("\n")
    quoted = 0
    while quoted < len(lines) and (lines[quoted].startswith("> ") or lines[quoted] == ">"):
        quoted += 1
    if quoted == 0 or quoted >= len(lines) or lines[quoted] != "":
        return body
    if not html_had_reply and not _FALLBACK_FIRST_LINE_RE.match(lines[0]):
        return body
    return "\n".join(lines[quoted + 1 :])


def strip_reply_fallback(body: str, html: str | None) -> tuple[str, str | None]:
    """Remove a Matrix rich-reply fallback from a message's ``body`` and formatted ``html``.

    In ``html`` every ``<mx-reply>`` element is cut out of the source (the rest of the markup
    is returned untouched, not re-serialized); if nothing but whitespace remains the html is
    returned as None. In ``body`` the leading ``> `` lines and the blank line after them are
    removed, but only when they look like a fallback: the quote must be followed by a blank
    line, and either the html contained ``<mx-reply>`` or the first line is the fallback's
    ``> <@sender:server>`` form. These checks keep a message that merely starts with a quote
    intact, so calling this on every message is safe; the fallback itself is optional since
    Matrix v1.13, so its absence is normal.
    """
    new_html = html
    had_reply = False
    if html is not None:
        spans = _ReplyLocator(html).locate()
        if spans:
            had_reply = True
            pieces: list[str] = []
            cursor = 0
            for start, end in spans:
                pieces.append(html[cursor:start])
                cursor = end
            pieces.append(html[cursor:])
            new_html = "".join(pieces)
            if _is_blank(new_html):
                new_html = None
    return _strip_body_fallback(body, had_reply), new_html


def mention_pill(user_id: str, display_name: str) -> str:
    """An HTML mention ("pill") of ``user_id``: ``<a href="https://matrix.to/#/@u:s">name</a>``.

    The user id is percent-encoded for the URL fragment (``@`` and ``:`` kept as is) and the
    display name is HTML-escaped; an empty display name falls back to the user id.
    """
    href = _MATRIX_TO_PREFIXES[0] + quote(user_id, safe="@:")
    return f'<a href="{escape(href)}">{escape(display_name or user_id, quote=False)}</a>'


def _user_id_from_link(href: str | None) -> str | None:
    if href is None:
        return None
    url = _clean_url(href)
    lowered = url.lower()
    for prefix in _MATRIX_TO_PREFIXES:
        if lowered.startswith(prefix):
            identifier = url[len(prefix) :]
            break
    else:
        if not lowered.startswith(_MATRIX_URI_USER_PREFIX):
            return None
        identifier = "@" + url[len(_MATRIX_URI_USER_PREFIX) :]
    identifier = unquote(identifier.split("?", 1)[0].split("/", 1)[0])
    return identifier if _USER_ID_RE.fullmatch(identifier) else None


def extract_mentions(html: str) -> list[str]:
    """User ids mentioned by pills in ``html``, in order, without duplicates.

    Recognizes ``https://matrix.to/#/@user:server`` links (percent-encoded or not, with or
    without a ``?via=`` query) and ``matrix:u/user:server`` URIs. Links inside a reply
    fallback (``<mx-reply>``) are ignored.
    """
    found: list[str] = []
    for element in _iter_elements(_parse(html)):
        if element.tag == "a":
            user_id = _user_id_from_link(element.attrs.get("href"))
            if user_id is not None and user_id not in found:
                found.append(user_id)
    return found
