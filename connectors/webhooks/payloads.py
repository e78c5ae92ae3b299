"""Reading what a hook receives: Slack-compatible payloads (``text`` in mrkdwn, ``username``,
``icon_url``/``icon_emoji``, ``attachments``, ``blocks``), the plain ``{"text", "html"}``
form, and Prometheus Alertmanager's webhook notifications. Anything else is a
:class:`PayloadError` with the reason, answered 400."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from . import mrkdwn


class PayloadError(ValueError):
    pass


@dataclass(slots=True)
class Incoming:
    text: str
    html: str | None
    username: str | None = None
    icon_url: str | None = None
    icon_emoji: str | None = None
    # Alertmanager: the group this notification is about, and whether it is resolved.
    alert_group: str | None = None
    resolved: bool = False


def decode(body: bytes, content_type: str) -> Any:
    """JSON, or Slack's form encoding (``payload=<json>``)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("the body is not UTF-8") from None
    if content_type.split(";")[0].strip() == "application/x-www-form-urlencoded":
        form = parse_qs(text)
        if "payload" not in form:
            raise PayloadError("a form body needs a 'payload' field holding JSON")
        text = form["payload"][0]
    try:
        return json.loads(text)
    except ValueError as e:
        raise PayloadError(f"the body is not JSON: {e}") from None


def parse(data: Any) -> Incoming:
    if not isinstance(data, dict):
        raise PayloadError("the body must be a JSON object")
    if isinstance(data.get("alerts"), list) and "groupKey" in data:
        return _alertmanager(data)
    if "html" in data:
        return _plain(data)
    if any(k in data for k in ("text", "attachments", "blocks")):
        return _slack(data)
    raise PayloadError(
        "unknown payload: expected Slack-style 'text'/'attachments'/'blocks', "
        "'text' with 'html', or an Alertmanager notification"
    )


def _str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(f"'{key}' must be a string")
    return value


# --- plain ------------------------------------------------------------------------------------


def _plain(data: dict[str, Any]) -> Incoming:
    text, markup = _str(data, "text"), _str(data, "html")
    if not (text or markup):
        raise PayloadError("'text' or 'html' must not be empty")
    return Incoming(
        text=text or _strip_tags(markup or ""),
        html=markup,
        username=_str(data, "username"),
        icon_url=_str(data, "icon_url"),
    )


def _strip_tags(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


# --- Slack ------------------------------------------------------------------------------------


def _slack(data: dict[str, Any]) -> Incoming:
    texts: list[str] = []
    htmls: list[str] = []
    text = _str(data, "text")
    blocks = data.get("blocks")
    if blocks is not None:
        if not isinstance(blocks, list):
            raise PayloadError("'blocks' must be a list")
        for block in blocks:
            t, h = _block(block)
            texts.append(t)
            htmls.append(h)
    elif text:
        # With blocks, Slack shows the blocks and keeps ``text`` as the notification fallback.
        texts.append(mrkdwn.to_text(text))
        htmls.append(mrkdwn.to_html(text))
    attachments = data.get("attachments")
    if attachments is not None:
        if not isinstance(attachments, list):
            raise PayloadError("'attachments' must be a list")
        for att in attachments:
            t, h = _attachment(att)
            texts.append(t)
            htmls.append(h)
    if not any(t.strip() for t in texts):
        raise PayloadError("the message is empty")
    return Incoming(
        text="\n".join(t for t in texts if t),
        html="".join(htmls),
        username=_str(data, "username"),
        icon_url=_str(data, "icon_url"),
        icon_emoji=_str(data, "icon_emoji"),
    )


def _text_obj(obj: Any) -> tuple[str, str]:
    """A Block Kit text object (``{"type": "mrkdwn"|"plain_text", "text": ...}``)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise PayloadError("a block's text must be an object with a 'text' string")
    if obj.get("type") == "mrkdwn":
        return mrkdwn.to_text(obj["text"]), mrkdwn.to_html(obj["text"])
    return obj["text"], html.escape(obj["text"]).replace("\n", "<br>")


def _block(block: Any) -> tuple[str, str]:
    if not isinstance(block, dict):
        raise PayloadError("each block must be an object")
    kind = block.get("type")
    if kind == "header":
        t, h = _text_obj(block.get("text"))
        return t, f"<h4>{h}</h4>"
    if kind == "section":
        texts, htmls = [], []
        if "text" in block:
            t, h = _text_obj(block["text"])
            texts.append(t)
            htmls.append(f"<p>{h}</p>")
        fields = block.get("fields") or []
        if not isinstance(fields, list):
            raise PayloadError("a section's 'fields' must be a list")
        if fields:
            pairs = [_text_obj(f) for f in fields]
            texts.extend(t for t, _ in pairs)
            htmls.append("<ul>" + "".join(f"<li>{h}</li>" for _, h in pairs) + "</ul>")
        return "\n".join(texts), "".join(htmls)
    if kind == "divider":
        return "---", "<hr>"
    if kind == "context":
        elements = block.get("elements") or []
        pairs = [_text_obj(e) for e in elements if isinstance(e, dict) and "text" in e]
        return " ".join(t for t, _ in pairs), "<p><sub>" + " ".join(
            h for _, h in pairs
        ) + "</sub></p>"
    if kind == "image":
        url, alt = block.get("image_url"), block.get("alt_text") or "image"
        if not isinstance(url, str) or not isinstance(alt, str):
            raise PayloadError("an image block needs 'image_url' and 'alt_text' strings")
        return (
            f"{alt}: {url}",
            f'<p><a href="{html.escape(url, quote=True)}">{html.escape(alt)}</a></p>',
        )
    raise PayloadError(f"unsupported block type {kind!r}")


def _attachment(att: Any) -> tuple[str, str]:
    if not isinstance(att, dict):
        raise PayloadError("each attachment must be an object")
    texts: list[str] = []
    htmls: list[str] = []
    for key in ("pretext", "author_name"):
        value = _str(att, key)
        if value:
            texts.append(mrkdwn.to_text(value))
            htmls.append(f"<p>{mrkdwn.to_html(value)}</p>")
    title, link = _str(att, "title"), _str(att, "title_link")
    if title:
        texts.append(title if not link else f"{title} ({link})")
        inner = html.escape(title)
        if link and link.startswith(("http://", "https://")):
            inner = f'<a href="{html.escape(link, quote=True)}">{inner}</a>'
        htmls.append(f"<p><strong>{inner}</strong></p>")
    body = _str(att, "text") or ("" if title or att.get("fields") else _str(att, "fallback"))
    if body:
        texts.append(mrkdwn.to_text(body))
        htmls.append(f"<p>{mrkdwn.to_html(body)}</p>")
    fields = att.get("fields") or []
    if not isinstance(fields, list):
        raise PayloadError("an attachment's 'fields' must be a list")
    items = []
    for f in fields:
        if not isinstance(f, dict):
            raise PayloadError("each field must be an object")
        name, value = str(f.get("title") or ""), str(f.get("value") or "")
        texts.append(f"{name}: {mrkdwn.to_text(value)}")
        items.append(f"<li><strong>{html.escape(name)}</strong>: {mrkdwn.to_html(value)}</li>")
    if items:
        htmls.append("<ul>" + "".join(items) + "</ul>")
    for key in ("image_url", "footer"):
        value = _str(att, key)
        if value:
            texts.append(value)
            htmls.append(f"<p><sub>{html.escape(value)}</sub></p>")
    color = _str(att, "color") or ""
    colour = f' data-mx-border-color="{html.escape(color, quote=True)}"' if color else ""
    return "\n".join(texts), f"<blockquote{colour}>{''.join(htmls)}</blockquote>"


# --- Alertmanager -----------------------------------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _alertmanager(data: dict[str, Any]) -> Incoming:
    group_key = data.get("groupKey")
    status = data.get("status")
    if not isinstance(group_key, str) or status not in ("firing", "resolved"):
        raise PayloadError("an Alertmanager notification needs 'groupKey' and a 'status'")
    alerts = [a for a in data["alerts"] if isinstance(a, dict)]
    common = _dict(data.get("commonLabels"))
    name = str(common.get("alertname") or "alerts")
    firing = [a for a in alerts if a.get("status") == "firing"]
    resolved = status == "resolved"
    head = f"RESOLVED: {name}" if resolved else f"FIRING ({len(firing) or len(alerts)}): {name}"
    icon = "✅" if resolved else "🔥"
    texts = [f"{icon} {head}"]
    items = []
    for alert in alerts:
        labels = _dict(alert.get("labels"))
        notes = _dict(alert.get("annotations"))
        state = str(alert.get("status") or status)
        label_text = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname")
        summary = str(notes.get("summary") or notes.get("description") or "")
        line = f"[{state}] {labels.get('alertname', name)}"
        line += f" {{{label_text}}}" if label_text else ""
        line += f": {summary}" if summary else ""
        texts.append("- " + line)
        alert_name = html.escape(str(labels.get("alertname", name)))
        item = f"<strong>[{html.escape(state)}]</strong> {alert_name}"
        if label_text:
            item += f" <code>{html.escape(label_text)}</code>"
        if summary:
            item += f": {html.escape(summary)}"
        items.append(f"<li>{item}</li>")
    colour = "#2eb886" if resolved else "#d50000"
    markup = f'<p><font color="{colour}"><strong>{icon} {html.escape(head)}</strong></font></p>' + (
        "<ul>" + "".join(items) + "</ul>" if items else ""
    )
    url = data.get("externalURL")
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        markup += f'<p><a href="{html.escape(url, quote=True)}">Alertmanager</a></p>'
    return Incoming(
        text="\n".join(texts),
        html=markup,
        username="Alertmanager",
        alert_group=f"{data.get('receiver', '')}/{group_key}",
        resolved=resolved,
    )
