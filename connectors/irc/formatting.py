"""mIRC formatting codes <-> Matrix HTML.

IRC -> Matrix: bold ``\\x02``, italic ``\\x1d``, underline ``\\x1f``, strike ``\\x1e``,
monospace ``\\x11``, colour ``\\x03fg[,bg]``, hex colour ``\\x04RRGGBB[,RRGGBB]``, reverse
``\\x16`` (dropped) and reset ``\\x0f`` become ``<b> <i> <u> <del> <code>`` and
``<font data-mx-color data-mx-bg-color>``. The core sanitizes the HTML again.

Matrix -> IRC: ``<b>/<strong>``, ``<i>/<em>``, ``<u>``, ``<del>/<s>/<strike>`` and
``data-mx-color`` (nearest of the 16 standard colours) become codes; block elements become
lines; links become ``text (url)``; user pills become the nick the resolver gives; the reply
fallback ``<mx-reply>`` is dropped.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from html.parser import HTMLParser

BOLD = "\x02"
COLOR = "\x03"
HEX_COLOR = "\x04"
RESET = "\x0f"
MONOSPACE = "\x11"
REVERSE = "\x16"
ITALIC = "\x1d"
STRIKE = "\x1e"
UNDERLINE = "\x1f"
CODES = frozenset(
    BOLD + COLOR + HEX_COLOR + RESET + MONOSPACE + REVERSE + ITALIC + STRIKE + UNDERLINE
)

COLORS: list[str] = [
    "ffffff", "000000", "00007f", "009300", "ff0000", "7f0000", "9c009c", "fc7f00",
    "ffff00", "00fc00", "009393", "00ffff", "0000fc", "ff00ff", "7f7f7f", "d2d2d2",
    "470000", "472100", "474700", "324700", "004700", "00472c", "004747", "002747",
    "000047", "2e0047", "470047", "47002a", "740000", "743a00", "747400", "517400",
    "007400", "007449", "007474", "004074", "000074", "4b0074", "740074", "740045",
    "b50000", "b56300", "b5b500", "7db500", "00b500", "00b571", "00b5b5", "0063b5",
    "0000b5", "7500b5", "b500b5", "b5006b", "ff0000", "ff8c00", "ffff00", "b2ff00",
    "00ff00", "00ffa0", "00ffff", "008cff", "0000ff", "a500ff", "ff00ff", "ff0098",
    "ff5959", "ffb459", "ffff71", "cfff60", "6fff6f", "65ffc9", "6dffff", "59b4ff",
    "5959ff", "c459ff", "ff66ff", "ff59bc", "ff9c9c", "ffd39c", "ffff9c", "e2ff9c",
    "9cff9c", "9cffdb", "9cffff", "9cd3ff", "9c9cff", "dc9cff", "ff9cff", "ff94d3",
    "000000", "131313", "282828", "363636", "4d4d4d", "656565", "818181", "9f9f9f",
    "bcbcbc", "e2e2e2", "ffffff",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Style:
    bold: bool = False
    italic: bool = False
    underline: bool = False
    strike: bool = False
    mono: bool = False
    fg: str | None = None  # "#rrggbb"
    bg: str | None = None

    def codes(self) -> str:
        """The codes that open this style at the start of a line."""
        out = ""
        if self.bold:
            out += BOLD
        if self.italic:
            out += ITALIC
        if self.underline:
            out += UNDERLINE
        if self.strike:
            out += STRIKE
        if self.mono:
            out += MONOSPACE
        if self.fg or self.bg:
            fg = nearest_color(self.fg) if self.fg else 1
            out += f"{COLOR}{fg:02d}"
            if self.bg:
                out += f",{nearest_color(self.bg):02d}"
        return out


PLAIN = Style()
_DIGITS2 = re.compile(r"\d{1,2}")
_HEX6 = re.compile(r"[0-9a-fA-F]{6}")


def _irc_color(code: str) -> str | None:
    n = int(code)
    return "#" + COLORS[n] if n < len(COLORS) else None  # 99 = default colour


def tokenize(text: str) -> list[tuple[Style, str]]:
    """Split IRC-formatted text into (style, plain text) runs."""
    runs: list[tuple[Style, str]] = []
    style = PLAIN
    buf: list[str] = []
    i = 0
    n = len(text)

    def flush() -> None:
        if buf:
            runs.append((style, "".join(buf)))
            buf.clear()

    while i < n:
        ch = text[i]
        if ch not in CODES:
            buf.append(ch)
            i += 1
            continue
        flush()
        i += 1
        if ch == BOLD:
            style = replace(style, bold=not style.bold)
        elif ch == ITALIC:
            style = replace(style, italic=not style.italic)
        elif ch == UNDERLINE:
            style = replace(style, underline=not style.underline)
        elif ch == STRIKE:
            style = replace(style, strike=not style.strike)
        elif ch == MONOSPACE:
            style = replace(style, mono=not style.mono)
        elif ch == RESET:
            style = PLAIN
        elif ch == REVERSE:
            pass
        elif ch == COLOR:
            m = _DIGITS2.match(text, i)
            if not m:
                style = replace(style, fg=None, bg=None)
                continue
            fg = _irc_color(m.group())
            i = m.end()
            bg = style.bg
            if i + 1 < n and text[i] == ",":
                m2 = _DIGITS2.match(text, i + 1)
                if m2:
                    bg = _irc_color(m2.group())
                    i = m2.end()
            style = replace(style, fg=fg, bg=bg)
        elif ch == HEX_COLOR:
            m = _HEX6.match(text, i)
            if not m:
                style = replace(style, fg=None, bg=None)
                continue
            fg = "#" + m.group().lower()
            i = m.end()
            bg = style.bg
            if i + 1 < n and text[i] == ",":
                m2 = _HEX6.match(text, i + 1)
                if m2:
                    bg = "#" + m2.group().lower()
                    i = m2.end()
            style = replace(style, fg=fg, bg=bg)
    flush()
    return runs


def strip_formatting(text: str) -> str:
    return "".join(t for _, t in tokenize(text))


def has_formatting(text: str) -> bool:
    return any(c in CODES for c in text)


def _wrap(style: Style, inner: str) -> str:
    if style.mono:
        inner = f"<code>{inner}</code>"
    if style.strike:
        inner = f"<del>{inner}</del>"
    if style.underline:
        inner = f"<u>{inner}</u>"
    if style.italic:
        inner = f"<i>{inner}</i>"
    if style.bold:
        inner = f"<b>{inner}</b>"
    if style.fg or style.bg:
        attrs = ""
        if style.fg:
            attrs += f' data-mx-color="{style.fg}"'
        if style.bg:
            attrs += f' data-mx-bg-color="{style.bg}"'
        inner = f"<font{attrs}>{inner}</font>"
    return inner


def irc_to_html(text: str) -> tuple[str, str | None]:
    """(plain text, HTML or None when the text has no formatting)."""
    runs = tokenize(text)
    plain = "".join(t for _, t in runs)
    if not has_formatting(text):
        return plain, None
    merged: list[tuple[Style, str]] = []
    for style, chunk in runs:
        if merged and merged[-1][0] == style:
            merged[-1] = (style, merged[-1][1] + chunk)
        else:
            merged.append((style, chunk))
    return plain, "".join(_wrap(s, html.escape(t, quote=False)) for s, t in merged)


def end_style(text: str, start: Style = PLAIN) -> Style:
    """The style in force at the end of ``text`` when it starts in ``start``."""
    runs = tokenize(start.codes() + text + "\u0000")
    return runs[-1][0] if runs else start


def carry_formatting(lines: list[str]) -> list[str]:
    """Reopen at the start of each line the formatting still open at the end of the previous
    one (IRC clients reset formatting at the end of every message)."""
    out: list[str] = []
    style = PLAIN
    for line in lines:
        prefix = style.codes()
        out.append(prefix + line)
        style = end_style(line, style)
    return out


# --- HTML -> IRC -------------------------------------------------------------------------------


def _parse_rgb(value: str) -> tuple[int, int, int] | None:
    value = value.strip().lstrip("#")
    if len(value) == 3:
        value = "".join(c * 2 for c in value)
    if not _HEX6.fullmatch(value):
        return None
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def nearest_color(value: str) -> int:
    """The nearest of the 16 standard mIRC colours to ``#rrggbb``."""
    rgb = _parse_rgb(value)
    if rgb is None:
        return 1
    best, best_d = 1, 1 << 30
    for idx, hexv in enumerate(COLORS[:16]):
        c = _parse_rgb(hexv)
        assert c is not None
        d = sum((a - b) ** 2 for a, b in zip(rgb, c, strict=True))
        if d < best_d:
            best, best_d = idx, d
    return best


PillResolver = Callable[[str], str | None]  # Matrix user id -> nick (None: keep the text)
_MATRIX_TO_USER = re.compile(r"^https://matrix\.to/#/(@[^/?]+)")
_BLOCKS = frozenset(
    "p div pre blockquote ul ol li h1 h2 h3 h4 h5 h6 table tr hr details summary".split()
)
_TOGGLES = {
    "b": BOLD,
    "strong": BOLD,
    "i": ITALIC,
    "em": ITALIC,
    "u": UNDERLINE,
    "ins": UNDERLINE,
    "del": STRIKE,
    "s": STRIKE,
    "strike": STRIKE,
}


class _HTMLToIRC(HTMLParser):
    def __init__(self, resolve: PillResolver | None) -> None:
        super().__init__(convert_charrefs=True)
        self.resolve = resolve
        self.out: list[str] = []
        self.skip = 0  # inside <mx-reply> or a resolved pill
        self.pre = 0
        self.quote = 0
        self.lists: list[list[int]] = []  # [counter] per list, counter < 0: unordered
        self.colors: list[str | None] = []
        self.links: list[tuple[str | None, int]] = []  # (href to append, start in out)
        self.toggles: list[str] = []

    def _text(self) -> str:
        return "".join(self.out)

    def newline(self) -> None:
        text = self._text()
        if text and not text.endswith("\n"):
            self.out.append("\n")
        if self.quote:
            self.out.append("> " * self.quote)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "mx-reply":
            self.skip += 1
            return
        if self.skip:
            if tag in ("a", "mx-reply"):
                self.skip += 1
            return
        if tag == "br":
            self.newline()
            return
        if tag in _BLOCKS:
            self.newline()
        if tag in _TOGGLES:
            self.out.append(_TOGGLES[tag])
            self.toggles.append(tag)
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self.out.append(BOLD)
        elif tag == "pre":
            self.pre += 1
        elif tag == "blockquote":
            self.quote += 1
            self.out.append("> ")
        elif tag in ("ul", "ol"):
            start = a.get("start")
            self.lists.append(
                [int(start) if start and start.isdigit() else 1 if tag == "ol" else -1]
            )
        elif tag == "li":
            if self.lists and self.lists[-1][0] > 0:
                self.out.append(f"{self.lists[-1][0]}. ")
                self.lists[-1][0] += 1
            else:
                self.out.append("• ")
        elif tag == "hr":
            self.out.append("----")
        elif tag == "img":
            alt = a.get("alt") or a.get("title") or "image"
            self.out.append(alt)
        elif tag in ("font", "span"):
            color = a.get("data-mx-color") or a.get("color")
            self.colors.append(color)
            if color:
                bg = a.get("data-mx-bg-color")
                code = f"{COLOR}{nearest_color(color):02d}"
                if bg:
                    code += f",{nearest_color(bg):02d}"
                self.out.append(code)
        elif tag == "a":
            href = a.get("href") or ""
            m = _MATRIX_TO_USER.match(href)
            if m and self.resolve is not None:
                from urllib.parse import unquote

                nick = self.resolve(unquote(m.group(1)))
                if nick is not None:
                    self.out.append(nick)
                    self.skip += 1
                    return
            self.links.append((href or None, len(self.out)))

    def handle_endtag(self, tag: str) -> None:
        if self.skip:
            if tag in ("a", "mx-reply"):
                self.skip -= 1
            return
        if tag in _TOGGLES and tag in self.toggles:
            self.toggles.remove(tag)
            self.out.append(_TOGGLES[tag])
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self.out.append(BOLD)
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
        elif tag == "blockquote":
            self.quote = max(0, self.quote - 1)
        elif tag in ("ul", "ol"):
            if self.lists:
                self.lists.pop()
        elif tag in ("font", "span"):
            if self.colors:
                color = self.colors.pop()
                if color:
                    outer = next((c for c in reversed(self.colors) if c), None)
                    self.out.append(f"{COLOR}{nearest_color(outer):02d}" if outer else COLOR)
        elif tag == "a":
            if self.links:
                href, start = self.links.pop()
                label = "".join(self.out[start:]).strip()
                if (
                    href
                    and not href.startswith("https://matrix.to/")
                    and href
                    not in (
                        label,
                        "mailto:" + label,
                    )
                ):
                    self.out.append(f" ({href})" if label else href)
        if tag in _BLOCKS:
            self.newline()

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.pre:
            if self.quote:
                data = data.replace("\n", "\n" + "> " * self.quote)
            self.out.append(data)
            return
        data = re.sub(r"\s+", " ", data)
        text = self._text()
        if data == " " and (not text or text.endswith(("\n", " "))):
            return
        self.out.append(data)


def html_to_irc(source: str, resolve: PillResolver | None = None) -> str:
    """Matrix HTML -> IRC text with formatting codes; lines separated by ``\\n``."""
    parser = _HTMLToIRC(resolve)
    try:
        parser.feed(source)
        parser.close()
    except Exception:  # HTMLParser is lenient; this is a last resort
        return html.unescape(re.sub(r"<[^>]*>", "", source))
    text = parser._text()
    lines = [ln.rstrip(" ") for ln in text.split("\n")]
    while lines and not strip_formatting(lines[-1]).strip(" >"):
        lines.pop()
    while lines and not strip_formatting(lines[0]).strip():
        lines.pop(0)
    return "\n".join(lines)
