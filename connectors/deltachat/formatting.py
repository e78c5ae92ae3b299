"""Text formatting between Matrix and Delta Chat.

Delta Chat messages are plain text. Its apps make bare links, e-mail addresses and hashtags
clickable, and the desktop app also ``[labelled](https://links)``; nothing else is rendered.
So a formatted Matrix message goes out as light markdown rendered from its HTML
(``**bold**``, ``_italic_``, ```` `code` ````, ``[text](url)``, ``> `` quotes, ``- `` lists):
readable as it is, and never raw markup. The other way, a Delta Chat text with markdown-like
markers or links gets a ``formatted_body`` (links clickable), and plain text stays plain.
"""

from __future__ import annotations

from bridge import formatting
from bridge.connector import MessageContent


def to_deltachat(content: MessageContent) -> str:
    """The text Delta Chat gets for a Matrix message."""
    if not content.html:
        return content.text
    rendered = formatting.html_to_markdown(content.html).strip()
    return rendered or content.text


def to_matrix(text: str) -> str | None:
    """Matrix HTML for a Delta Chat text, or None when it has no links nor markers."""
    return formatting.markdown_to_html(text) if text else None
