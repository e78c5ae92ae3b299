"""mIRC codes <-> Matrix HTML."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from connectors.irc.formatting import (
    carry_formatting,
    html_to_irc,
    irc_to_html,
    nearest_color,
    strip_formatting,
)


def test_plain_text_has_no_html() -> None:
    assert irc_to_html("just <text> & stuff") == ("just <text> & stuff", None)


def test_bold_italic_underline_strike_mono() -> None:
    plain, html = irc_to_html("a \x02b\x02 \x1di\x1d \x1fu\x1f \x1es\x1e \x11m\x11")
    assert plain == "a b i u s m"
    assert html == "a <b>b</b> <i>i</i> <u>u</u> <del>s</del> <code>m</code>"


def test_colors_and_reset() -> None:
    plain, html = irc_to_html("\x0304,01red on black\x0f plain \x02\x0312blue bold")
    assert plain == "red on black plain blue bold"
    assert html == (
        '<font data-mx-color="#ff0000" data-mx-bg-color="#000000">red on black</font> plain '
        '<font data-mx-color="#0000fc"><b>blue bold</b></font>'
    )


def test_hex_color_and_bare_color_code() -> None:
    _, html = irc_to_html("\x04FF8800orange\x03 none")
    assert html == '<font data-mx-color="#ff8800">orange</font> none'


def test_html_escaped_in_output() -> None:
    _, html = irc_to_html("\x02<script>alert(1)</script>")
    assert html == "<b>&lt;script&gt;alert(1)&lt;/script&gt;</b>"


def test_reverse_is_dropped_and_color_99() -> None:
    assert irc_to_html("\x16rev\x16")[0] == "rev"
    assert irc_to_html("\x0399,99x")[1] == "x"


def test_html_to_irc_basic() -> None:
    assert html_to_irc("<b>bold</b> <i>it</i> <u>u</u> <del>s</del>") == (
        "\x02bold\x02 \x1dit\x1d \x1fu\x1f \x1es\x1e"
    )


def test_html_to_irc_colors() -> None:
    assert html_to_irc('<font data-mx-color="#ff0000">red</font>x') == "\x0304red\x03x"
    assert nearest_color("#fe0101") == 4


def test_html_to_irc_blocks_links_lists() -> None:
    html = (
        "<p>first</p><p>second<br>third</p><ul><li>one</li><li>two</li></ul>"
        '<ol start="3"><li>three</li></ol><blockquote>quoted</blockquote>'
        '<a href="https://example.com/x">a link</a> <a href="https://e.com">https://e.com</a>'
    )
    assert html_to_irc(html).split("\n") == [
        "first",
        "second",
        "third",
        "• one",
        "• two",
        "3. three",
        "> quoted",
        "a link (https://example.com/x) https://e.com",
    ]


def test_html_to_irc_drops_reply_fallback_and_resolves_pills() -> None:
    html = (
        "<mx-reply><blockquote>old stuff</blockquote></mx-reply>"
        '<a href="https://matrix.to/#/@irc_libera_bob=5b1=5d:example.org">Bob</a>: hi '
        '<a href="https://matrix.to/#/@someone:example.org">Someone</a>'
    )

    def resolve(uid: str) -> str | None:
        return "Bob[1]" if uid == "@irc_libera_bob=5b1=5d:example.org" else None

    assert html_to_irc(html, resolve) == "Bob[1]: hi Someone"


def test_html_to_irc_pre_keeps_lines() -> None:
    assert html_to_irc("<pre><code>a  b\n  c</code></pre>") == "a  b\n  c"


def test_carry_formatting_reopens_styles() -> None:
    assert carry_formatting(["\x02bold start", "continues", "\x02end"]) == [
        "\x02bold start",
        "\x02continues",
        "\x02\x02end",
    ]
    assert carry_formatting(["\x0304red", "more"]) == ["\x0304red", "\x0304more"]


@given(st.text(max_size=200))
def test_irc_to_html_never_raises_and_strips(text: str) -> None:
    plain, html = irc_to_html(text)
    assert plain == strip_formatting(text)
    if html is not None:
        assert "<script" not in html.lower() or "&lt;" in html


@given(st.text(max_size=200))
def test_html_to_irc_never_raises(text: str) -> None:
    html_to_irc(text)
