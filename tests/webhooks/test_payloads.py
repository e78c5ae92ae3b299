"""Reading hook bodies: Slack mrkdwn to HTML and text, the payload shapes, and the refusals."""

from __future__ import annotations

import pytest

from connectors.webhooks import mrkdwn, payloads


def test_mrkdwn_styles_links_and_escapes() -> None:
    src = "*b* _i_ ~s~ `c*d*` <https://x.example/?a=1&amp;b=2|the &lt;link&gt;> <@U1> <!here>"
    html = mrkdwn.to_html(src)
    assert "<strong>b</strong> <em>i</em> <del>s</del> <code>c*d*</code>" in html
    assert '<a href="https://x.example/?a=1&amp;b=2">the &lt;link&gt;</a>' in html
    assert "@U1" in html and "@here" in html
    assert mrkdwn.to_text(src).endswith("the <link> (https://x.example/?a=1&b=2) @U1 @here")


def test_mrkdwn_never_passes_markup_or_unsafe_links() -> None:
    html = mrkdwn.to_html("<script>alert(1)</script> <javascript:alert(1)|click> a<b")
    assert "<script" not in html and "href" not in html
    assert "a&lt;b" in html and "click (javascript:alert(1))" in html


def test_mrkdwn_blocks_and_quotes() -> None:
    html = mrkdwn.to_html("> quoted *line*\nplain\n```\n*not bold*\n```")
    assert html.startswith("<blockquote>quoted <strong>line</strong></blockquote>plain")
    assert "<pre><code>*not bold*</code></pre>" in html


def test_shapes_are_recognised() -> None:
    assert payloads.parse({"text": "hi", "username": "CI"}).username == "CI"
    plain = payloads.parse({"text": "t", "html": "<b>t</b>"})
    assert (plain.text, plain.html) == ("t", "<b>t</b>")
    assert payloads.parse({"html": "<i>only</i> html"}).text == "only html"
    am = payloads.parse(
        {
            "groupKey": "g",
            "status": "resolved",
            "receiver": "r",
            "alerts": [{"status": "resolved", "labels": {"alertname": "Up"}}],
            "commonLabels": {"alertname": "Up"},
        }
    )
    assert am.resolved and am.alert_group == "r/g" and am.text.startswith("✅ RESOLVED: Up")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([1, 2], "JSON object"),
        ({"foo": 1}, "unknown payload"),
        ({"text": 5}, "'text' must be a string"),
        ({"text": ""}, "empty"),
        ({"attachments": "x"}, "'attachments' must be a list"),
        ({"blocks": [{"type": "section", "text": "bare"}]}, "text must be an object"),
        ({"groupKey": "g", "status": "odd", "alerts": []}, "needs 'groupKey' and a 'status'"),
    ],
)
def test_bad_payloads_say_why(data: object, reason: str) -> None:
    with pytest.raises(payloads.PayloadError, match=reason):
        payloads.parse(data)


def test_decode_json_and_form() -> None:
    assert payloads.decode(b'{"text": "a"}', "application/json") == {"text": "a"}
    form = b"payload=%7B%22text%22%3A%22b%22%7D"
    assert payloads.decode(form, "application/x-www-form-urlencoded; charset=utf-8") == {
        "text": "b"
    }
    with pytest.raises(payloads.PayloadError, match="UTF-8"):
        payloads.decode(b"\xff", "application/json")
    with pytest.raises(payloads.PayloadError, match="'payload' field"):
        payloads.decode(b"text=x", "application/x-www-form-urlencoded")
