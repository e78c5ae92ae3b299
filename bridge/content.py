"""Matrix event content <-> the connector message model (:class:`MessageContent`)."""

from __future__ import annotations

import mimetypes
from typing import Any

from . import formatting
from .connector import Attachment, MessageContent, MessageKind

_MSGTYPE_KIND = {
    "m.text": MessageKind.TEXT,
    "m.emote": MessageKind.EMOTE,
    "m.notice": MessageKind.NOTICE,
}
_KIND_MSGTYPE = {v: k for k, v in _MSGTYPE_KIND.items()}
_MEDIA_MSGTYPES = {"m.image", "m.file", "m.audio", "m.video"}


class UnsupportedContent(ValueError):
    """A Matrix event the bridge cannot turn into a message (the user is told why)."""


def from_matrix(content: dict[str, Any]) -> tuple[MessageContent, str | None]:
    """Turn ``m.room.message`` content into a MessageContent. Returns it and, for media, the
    mxc URI the caller must download (authenticated media needs the homeserver)."""
    msgtype = content.get("msgtype")
    body = content.get("body")
    if not isinstance(body, str):
        raise UnsupportedContent("the message has no text body")
    html = None
    if content.get("format") == "org.matrix.custom.html" and isinstance(
        content.get("formatted_body"), str
    ):
        html = content["formatted_body"]
    body, html = formatting.strip_reply_fallback(body, html)
    mentions: list[str] = []
    m_mentions = content.get("m.mentions")
    if isinstance(m_mentions, dict) and isinstance(m_mentions.get("user_ids"), list):
        mentions = [u for u in m_mentions["user_ids"] if isinstance(u, str)]
    if html:
        html = formatting.sanitize_html(html)
        for uid in formatting.extract_mentions(html):
            if uid not in mentions:
                mentions.append(uid)
    if msgtype in _MSGTYPE_KIND:
        return (
            MessageContent(text=body, html=html, kind=_MSGTYPE_KIND[msgtype], mentions=mentions),
            None,
        )
    if msgtype in _MEDIA_MSGTYPES:
        url = content.get("url")
        if not isinstance(url, str) or not url.startswith("mxc://"):
            if "file" in content:
                raise UnsupportedContent("encrypted files cannot be bridged")
            raise UnsupportedContent("the file has no mxc:// URL")
        info = content.get("info") if isinstance(content.get("info"), dict) else {}
        assert isinstance(info, dict)
        filename = content.get("filename") if isinstance(content.get("filename"), str) else body
        # Spec: body is a caption when filename is present and differs from it.
        caption = body if content.get("filename") and body != content.get("filename") else ""
        att = Attachment(
            filename=str(filename),
            mimetype=str(info.get("mimetype") or "application/octet-stream"),
            size=info.get("size") if isinstance(info.get("size"), int) else None,
            width=info.get("w") if isinstance(info.get("w"), int) else None,
            height=info.get("h") if isinstance(info.get("h"), int) else None,
            mxc=url,
        )
        return MessageContent(text=caption, attachments=[att], mentions=mentions), url
    if msgtype == "m.location":
        geo = content.get("geo_uri", "")
        return MessageContent(text=f"{body} ({geo})" if geo else body), None
    raise UnsupportedContent(f"messages of type {msgtype!r} cannot be bridged")


def text_content(msg: MessageContent, ghost_of: dict[str, str] | None = None) -> dict[str, Any]:
    """Matrix content for the text part of a remote message. ``ghost_of`` maps the remote
    user ids in ``msg.mentions`` to ghost user ids."""
    out: dict[str, Any] = {"msgtype": _KIND_MSGTYPE.get(msg.kind, "m.text"), "body": msg.text}
    if msg.html:
        out["format"] = "org.matrix.custom.html"
        out["formatted_body"] = formatting.sanitize_html(msg.html)
    user_ids = [ghost_of[m] for m in msg.mentions if ghost_of and m in ghost_of]
    if user_ids:
        out["m.mentions"] = {"user_ids": user_ids}
    elif "@room" in msg.text:
        out["m.mentions"] = {}  # a remote "@room" must not notify the whole room
    # Otherwise none: Matrix users named in plain words (an IRC "alice, look") are still
    # notified by their display-name keyword rule, as remote networks' users expect.
    return out


def media_content(att: Attachment, mxc: str) -> dict[str, Any]:
    msgtype = {"image": "m.image", "video": "m.video", "audio": "m.audio"}.get(att.kind, "m.file")
    info: dict[str, Any] = {"mimetype": att.mimetype}
    size = att.size if att.size is not None else (len(att.data) if att.data else None)
    if size is not None:
        info["size"] = size
    if att.width and att.height:
        info["w"], info["h"] = att.width, att.height
    return {
        "msgtype": msgtype,
        "body": att.filename,
        "filename": att.filename,
        "url": mxc,
        "info": info,
    }


def avatar_name(mimetype: str) -> str:
    """A file name with the right extension, for networks that store avatars as files."""
    return "avatar" + (mimetypes.guess_extension(mimetype) or "")


def sniff_image(data: bytes) -> str:
    """Member events carry no mimetype for the avatar; networks need one."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data.startswith(b"GIF8"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"
