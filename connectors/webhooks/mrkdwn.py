"""Slack's mrkdwn to Matrix HTML (the core sanitizes the result) and to plain text.

Handled: ``*bold*``, ``_italic_``, ``~strike~``, ```` `code` ````, ```` ```blocks``` ````,
``> quotes``, links ``<url|label>`` and ``<url>``, mentions ``<@U1>`` / ``<#C1|name>`` /
``<!here>`` (shown as text: they name Slack ids, not Matrix users), and the ``&amp;`` ``&lt;``
``&gt;`` escapes Slack requires.
"""

from __future__ import annotations

import html
import re

_ANGLE = re.compile(r"<([^<>]+)>")
_CODE_BLOCK = re.compile(r"```(.*?)```", re.S)
_CODE = re.compile(r"`([^`\n]+)`")
_STYLES = [
    (re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])"), "strong"),
    (re.compile(r"(?<![\w_])_(?=\S)([^_\n]+?)(?<=\S)_(?![\w_])"), "em"),
    (re.compile(r"(?<![\w~])~(?=\S)([^~\n]+?)(?<=\S)~(?![\w~])"), "del"),
]
_SAFE_SCHEMES = ("http://", "https://", "mailto:")


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _angle_text(inner: str) -> str:
    """What ``<...>`` shows as plain text."""
    target, _, label = inner.partition("|")
    if target.startswith("!"):
        return "@" + (label or target[1:].split("^")[0])
    if target.startswith(("@", "#")):
        return (target[0] + label) if label else target
    return f"{label} ({target})" if label and label != target else target


def _angle_html(inner: str) -> str:
    target, _, label = inner.partition("|")
    if target.startswith(_SAFE_SCHEMES):
        href = html.escape(_unescape(target), quote=True)
        return f'<a href="{href}">{html.escape(_unescape(label or target))}</a>'
    return html.escape(_unescape(_angle_text(inner)))


def to_text(mrkdwn: str) -> str:
    return _unescape(_ANGLE.sub(lambda m: _angle_text(m.group(1)), mrkdwn))


def _inline(text: str) -> str:
    """One line (outside code blocks) to HTML."""
    out: list[str] = []
    pos = 0
    # Code spans and links first: nothing inside them is styled.
    for m in re.finditer(r"`([^`\n]+)`|<([^<>]+)>", text):
        out.append(_styled(text[pos : m.start()]))
        if m.group(1) is not None:
            out.append(f"<code>{html.escape(_unescape(m.group(1)))}</code>")
        else:
            out.append(_angle_html(m.group(2)))
        pos = m.end()
    out.append(_styled(text[pos:]))
    return "".join(out)


def _styled(text: str) -> str:
    escaped = html.escape(_unescape(text), quote=False)
    for pattern, tag in _STYLES:
        escaped = pattern.sub(rf"<{tag}>\1</{tag}>", escaped)
    return escaped


def to_html(mrkdwn: str) -> str:
    parts: list[str] = []
    pos = 0
    for m in _CODE_BLOCK.finditer(mrkdwn):
        parts.append(_lines(mrkdwn[pos : m.start()]))
        parts.append(f"<pre><code>{html.escape(_unescape(m.group(1).strip(chr(10))))}</code></pre>")
        pos = m.end()
    parts.append(_lines(mrkdwn[pos:]))
    return "".join(parts)


def _lines(text: str) -> str:
    out: list[str] = []
    quote: list[str] = []
    for line in text.split("\n"):
        if line.startswith(("&gt;", ">")):
            quote.append(_inline(line.split(";", 1)[1] if line.startswith("&gt;") else line[1:]))
            continue
        if quote:
            out.append("<blockquote>" + "<br>".join(q.strip() for q in quote) + "</blockquote>")
            quote = []
        out.append(_inline(line))
    if quote:
        out.append("<blockquote>" + "<br>".join(q.strip() for q in quote) + "</blockquote>")
    html_text = ""
    for i, piece in enumerate(out):
        if i and not piece.startswith("<blockquote>") and not out[i - 1].startswith("<blockquote>"):
            html_text += "<br>"
        html_text += piece
    return html_text
