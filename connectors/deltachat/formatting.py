"""Text formatting between Matrix and Delta Chat.

Delta Chat messages are plain text. Its apps make bare links, e-mail addresses and hashtags
clickable, and the desktop app also ``[labelled](https://links)``; nothing else is rendered.
So a formatted Matrix message goes out as light markdown rendered from its HTML
(``**bold**``, ``_italic_``, ```` `code` ````, ``[text](url)``, ``> `` quotes, ``- `` lists):
readable as it is, and never raw markup. The other way, a Delta Chat text with markdown-like
markers or links gets a ``formatted_body`` (links clickable), and plain text stays plain.
"""

from __future__ import annotations

from html import escape
from typing import Any

from bridge import formatting
from bridge.connector import MatrixSender, MessageContent


def to_deltachat(content: MessageContent, sender: MatrixSender, relay: Any = None) -> str:
    """The text Delta Chat gets for a Matrix message (``relay``: the bridge's relay
    settings, for relayed senders)."""
    if not content.html:
        return content.text
    html = _relay_prefix_escaped(content, sender, relay) if sender.relayed else content.html
    rendered = formatting.html_to_markdown(html).strip()
    return rendered or content.text


def to_matrix(text: str) -> str | None:
    """Matrix HTML for a Delta Chat text, or None when it has no links nor markers."""
    return formatting.markdown_to_html(text) if text else None


def _relay_prefix_escaped(content: MessageContent, sender: MatrixSender, relay: Any) -> str:
    """The HTML of a relayed message with the relay format's own text escaped.

    The bridge puts the relay format (``<{displayname}> {message}``) around the message's
    HTML with only the names escaped, so the format's ``<`` and ``>`` would read as a tag and
    the sender's name would vanish from the rendered text. Where the HTML starts and ends as
    that format would make it, the format's parts are replaced by their escaped text; any
    other HTML is left as it is."""
    assert content.html is not None
    html = content.html
    names = {"displayname": sender.display_name, "user_id": sender.user_id}
    escaped = {k: escape(v) for k, v in names.items()}
    for fmt in (getattr(relay, "message_format", None), getattr(relay, "emote_format", None)):
        if not isinstance(fmt, str) or fmt.count("{message}") != 1:
            continue
        head, tail = fmt.split("{message}")
        try:
            raw_head, raw_tail = head.format(**escaped), tail.format(**escaped)
            text_head, text_tail = head.format(**names), tail.format(**names)
        except (KeyError, IndexError, ValueError):
            continue
        if (
            html.startswith(raw_head)
            and html.endswith(raw_tail)
            and len(html) >= len(raw_head) + len(raw_tail)
        ):
            inner = html[len(raw_head) : len(html) - len(raw_tail)]
            return escape(text_head, quote=False) + inner + escape(text_tail, quote=False)
    return html
