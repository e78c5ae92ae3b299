"""XEP-0393 message styling <-> Matrix HTML.

``styling_to_html`` turns a plain XMPP body into Matrix HTML when it carries styling (``*strong*``,
``_emphasis_``, ``~strike~``, `` `mono` ``, fenced ```` ``` ```` blocks, ``> `` quotes); it
returns None for unstyled text so plain messages stay plain. ``html_to_styling`` renders Matrix
HTML as a styled plain body for XMPP; Matrix reply fallbacks (``<mx-reply>``) are dropped and
``matrix.to`` mention links become their display text, so no Matrix ids reach XMPP bodies.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

_SPAN_CHARS = {"*": "strong", "_": "em", "~": "del", "`": "code"}


def _span_end(text: str, start: int, ch: str) -> int:
    """Index of the closing directive for a span opened at ``start``, or -1 (XEP-0393 §6.2)."""
    if start + 1 >= len(text) or text[start + 1].isspace():
        return -1
    pos = start + 1
    while True:
        pos = text.find(ch, pos + 1)
        if pos == -1:
            return -1
        if not text[pos - 1].isspace() and pos - 1 > start:
            return pos


def _spans(text: str) -> tuple[str, bool]:
    out: list[str] = []
    styled = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in _SPAN_CHARS and (i == 0 or text[i - 1].isspace() or text[i - 1] in "*_~`("):
            end = _span_end(text, i, ch)
            if end != -1:
                tag = _SPAN_CHARS[ch]
                inner = text[i + 1 : end]
                if tag == "code":
                    rendered = html.escape(inner, quote=False)
                else:
                    rendered, _ = _spans(inner)
                out.append(f"<{tag}>{rendered}</{tag}>")
                styled = True
                i = end + 1
                continue
        out.append(html.escape(ch, quote=False))
        i += 1
    return "".join(out), styled


def styling_to_html(text: str) -> str | None:
    """Matrix HTML for a styled XMPP body, or None when the body has no styling."""
    lines = text.split("\n")
    out: list[str] = []
    styled = False
    i = 0
    plain_run: list[str] = []

    def flush_plain() -> None:
        nonlocal styled
        if plain_run:
            rendered = []
            for line in plain_run:
                r, s = _spans(line)
                styled = styled or s
                rendered.append(r)
            out.append("<br>".join(rendered))
            plain_run.clear()

    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            # Preformatted block until a line that is exactly ``` (or the end).
            j = i + 1
            while j < len(lines) and lines[j] != "```":
                j += 1
            flush_plain()
            body = "\n".join(lines[i + 1 : j])
            out.append(f"<pre><code>{html.escape(body, quote=False)}</code></pre>")
            styled = True
            i = j + 1
            continue
        if line.startswith(">"):
            j = i
            quoted: list[str] = []
            while j < len(lines) and lines[j].startswith(">"):
                q = lines[j][1:]
                quoted.append(q[1:] if q.startswith(" ") else q)
                j += 1
            flush_plain()
            inner = styling_to_html("\n".join(quoted))
            if inner is None:
                inner = "<br>".join(html.escape(q, quote=False) for q in quoted)
            out.append(f"<blockquote>{inner}</blockquote>")
            styled = True
            i = j
            continue
        plain_run.append(line)
        i += 1
    flush_plain()
    return "".join(out) if styled else None


# --- Matrix HTML -> styled plain text ---------------------------------------------------------

_INLINE = {"strong": "*", "b": "*", "em": "_", "i": "_", "del": "~", "s": "~", "strike": "~"}
_MATRIX_TO = re.compile(r"^https://matrix\.to/#/[@!#]")


class _Renderer(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.stack: list[tuple[str, dict[str, str | None]]] = []
        self.skip = 0  # inside <mx-reply>
        self.pre = 0
        self.quote_starts: list[int] = []
        self.link_starts: list[tuple[int, str | None]] = []
        self.list_stack: list[list[int]] = []

    def _newline(self) -> None:
        if self.parts and not "".join(self.parts[-2:]).endswith("\n"):
            self.parts.append("\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "mx-reply":
            self.skip += 1
            return
        if self.skip:
            return
        a = dict(attrs)
        if tag in _INLINE and not self.pre:
            self.parts.append(_INLINE[tag])
        elif tag == "code" and not self.pre:
            self.parts.append("`")
        elif tag == "pre":
            self._newline()
            self.parts.append("```\n")
            self.pre += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag in ("p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "tr"):
            self._newline()
            if tag in ("ul", "ol"):
                self.list_stack.append([0 if tag == "ol" else -1])
        elif tag == "li":
            self._newline()
            if self.list_stack and self.list_stack[-1][0] >= 0:
                self.list_stack[-1][0] += 1
                self.parts.append(f"{self.list_stack[-1][0]}. ")
            else:
                self.parts.append("• ")
        elif tag == "blockquote":
            self._newline()
            self.quote_starts.append(len(self.parts))
        elif tag == "a":
            self.link_starts.append((len(self.parts), a.get("href")))
        elif tag == "img":
            alt = a.get("alt") or a.get("title") or ""
            self.parts.append(alt)
        if tag not in ("br", "img", "hr"):
            self.stack.append((tag, a))

    def handle_endtag(self, tag: str) -> None:
        if tag == "mx-reply":
            self.skip = max(0, self.skip - 1)
            return
        if self.skip:
            return
        # Pop to the matching tag (tolerates unbalanced HTML).
        while self.stack:
            t, _ = self.stack.pop()
            if t == tag:
                break
        if tag in _INLINE and not self.pre:
            self.parts.append(_INLINE[tag])
        elif tag == "code" and not self.pre:
            self.parts.append("`")
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
            if not "".join(self.parts[-1:]).endswith("\n"):
                self.parts.append("\n")
            self.parts.append("```\n")
        elif tag in ("p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "tr"):
            self._newline()
        elif tag in ("ul", "ol"):
            if self.list_stack:
                self.list_stack.pop()
            self._newline()
        elif tag == "blockquote" and self.quote_starts:
            start = self.quote_starts.pop()
            inner = "".join(self.parts[start:]).strip("\n")
            del self.parts[start:]
            self.parts.append("\n".join("> " + line for line in inner.split("\n")) + "\n")
        elif tag == "a" and self.link_starts:
            start, href = self.link_starts.pop()
            label = "".join(self.parts[start:])
            if href and not _MATRIX_TO.match(href) and href not in (label, f"mailto:{label}"):
                self.parts.append(f" <{href}>")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def html_to_styling(html_text: str) -> str:
    """Render Matrix HTML as an XMPP body with XEP-0393 styling."""
    r = _Renderer()
    try:
        r.feed(html_text)
        r.close()
    except Exception:  # HTMLParser is lenient; this is a last resort
        return re.sub(r"<[^>]*>", "", html_text)
    text = "".join(r.parts)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n")


def strip_matrix_reply_fallback(text: str) -> str:
    """Remove a Matrix plain-text reply fallback (``> <@user:hs> ...`` lines then a blank
    line) from a body."""
    lines = text.split("\n")
    if not lines or not lines[0].startswith("> <"):
        return text
    i = 0
    while i < len(lines) and lines[i].startswith(">"):
        i += 1
    if i < len(lines) and lines[i] == "":
        i += 1
    return "\n".join(lines[i:])
