"""Tests for bridge.formatting."""

from __future__ import annotations

import html
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.formatting import (
    ALLOWED_ATTRIBUTES,
    ALLOWED_TAGS,
    LINK_SCHEMES,
    MAX_NESTING_DEPTH,
    extract_mentions,
    html_to_markdown,
    html_to_styling,
    html_to_text,
    markdown_to_html,
    mention_pill,
    sanitize_html,
    strip_reply_fallback,
    text_to_html,
)

# --------------------------------------------------------------------------------------------
# A strict checker for sanitizer output
# --------------------------------------------------------------------------------------------

_TAG_RE = re.compile(r'<(/?)([a-z0-9-]+)((?: [a-z-]+="[^"<>]*")*)(/?)>')
_ATTR_RE = re.compile(r' ([a-z-]+)="([^"<>]*)"')
_ENTITY_RE = re.compile(r"&(?:amp|lt|gt|quot|#x27);")
_VOID = {"br", "hr", "img"}


def assert_safe_markup(markup: str) -> None:
    """Every ``<`` starts a permitted, well-nested tag; text contains no raw markup."""
    assert "<script" not in markup.lower()
    stack: list[str] = []
    pos = 0
    text: list[str] = []
    while (lt := markup.find("<", pos)) >= 0:
        text.append(markup[pos:lt])
        match = _TAG_RE.match(markup, lt)
        assert match is not None, f"stray '<' at {lt} in {markup!r}"
        closing, tag, attrs, self_closing = match.groups()
        assert tag in ALLOWED_TAGS, tag
        if closing:
            assert not attrs and not self_closing
            assert stack and stack[-1] == tag, f"unbalanced </{tag}> in {markup!r}"
            stack.pop()
        else:
            if tag in _VOID:
                assert self_closing, markup
            else:
                assert not self_closing, markup
                stack.append(tag)
            names = []
            for name, raw in _ATTR_RE.findall(attrs):
                names.append(name)
                assert not name.startswith("on")
                assert name in ALLOWED_ATTRIBUTES.get(tag, frozenset()), (tag, name)
                value = html.unescape(raw)
                assert not value.strip().lower().startswith(("javascript:", "data:", "vbscript:"))
                if name == "href":
                    scheme = value.split(":", 1)[0].lower()
                    assert ":" in value and scheme in LINK_SCHEMES, value
                    assert value == value.strip() and not set(value) & {"\t", "\n", "\r"}
                if name == "src":
                    assert value.startswith("mxc://"), value
                if name in ("color", "data-mx-color", "data-mx-bg-color"):
                    assert re.fullmatch(r"#[0-9a-fA-F]{6}", value), value
            assert len(names) == len(set(names)), "duplicate attribute"
        pos = match.end()
    text.append(markup[pos:])
    assert not stack, f"unclosed {stack} in {markup!r}"
    for chunk in text:
        assert ">" not in chunk, chunk
        assert "&" not in _ENTITY_RE.sub("", chunk), chunk


def nesting_depth(markup: str) -> int:
    depth = deepest = 0
    for match in _TAG_RE.finditer(markup):
        if match.group(1):
            depth -= 1
        elif match.group(2) not in _VOID:
            depth += 1
            deepest = max(deepest, depth)
    return deepest


# --------------------------------------------------------------------------------------------
# sanitize_html
# --------------------------------------------------------------------------------------------


class TestSanitizeTags:
    def test_plain_text_is_escaped(self) -> None:
        assert sanitize_html("a < b > c & d") == "a &lt; b &gt; c &amp; d"

    def test_entities_are_decoded_and_re_escaped(self) -> None:
        assert sanitize_html("&lt;b&gt; &amp;amp; &#x41;&#66;&eacute;") == "&lt;b&gt; &amp;amp; ABé"

    @pytest.mark.parametrize(
        "tag",
        sorted(ALLOWED_TAGS - {"br", "hr", "img", "mx-reply"}),
    )
    def test_allowed_tags_are_kept(self, tag: str) -> None:
        assert sanitize_html(f"<{tag}>x</{tag}>") == f"<{tag}>x</{tag}>"

    def test_mx_reply_is_kept(self) -> None:
        markup = "<mx-reply><blockquote>q</blockquote></mx-reply>answer"
        assert sanitize_html(markup) == markup

    def test_void_tags_are_self_closed(self) -> None:
        assert sanitize_html("a<br>b<hr>c<BR/>d") == "a<br/>b<hr/>c<br/>d"

    def test_tag_names_are_lowercased(self) -> None:
        assert sanitize_html("<B>x</B><StRoNg>y</strong>") == "<b>x</b><strong>y</strong>"

    def test_disallowed_tags_are_unwrapped(self) -> None:
        assert sanitize_html("<section><b>x</b> <marquee>y</marquee></section>") == "<b>x</b> y"
        assert sanitize_html("<html><body><p>hi</p></body></html>") == "<p>hi</p>"

    @pytest.mark.parametrize(
        "tag",
        ["script", "style", "title", "textarea", "noscript", "template", "iframe", "object"],
    )
    def test_non_text_tags_are_dropped_with_content(self, tag: str) -> None:
        assert sanitize_html(f"a<{tag}>secret <b>x</b></{tag}>b") == "ab"

    def test_script_with_markup_inside(self) -> None:
        assert sanitize_html("<script>if (a < b) { x('</b>') }</script>ok") == "ok"

    def test_unclosed_script_drops_the_rest(self) -> None:
        assert sanitize_html("ok<script>alert(1)") == "ok"

    def test_head_is_dropped(self) -> None:
        markup = "<html><head><title>t</title><style>p{}</style></head><body>hi</body></html>"
        assert sanitize_html(markup) == "hi"
        assert sanitize_html("<head><title>t</title><body>hi") == "hi"

    def test_comments_doctypes_and_processing_instructions_are_dropped(self) -> None:
        markup = "<!DOCTYPE html><?xml version='1.0'?>a<!-- <b>c</b> -->b<![CDATA[x<y]]>c"
        assert sanitize_html(markup) == "abc"

    def test_unknown_marked_section_does_not_crash(self) -> None:
        assert sanitize_html("x<![foo[ bar ]]>y") == "xy"
        assert_safe_markup(sanitize_html("x<![foo[ bar"))

    def test_unclosed_tags_are_closed(self) -> None:
        assert sanitize_html("<b>bold <i>both") == "<b>bold <i>both</i></b>"

    def test_stray_end_tags_are_ignored(self) -> None:
        assert sanitize_html("a</b></p></br>b") == "ab"

    def test_misnested_tags_are_repaired(self) -> None:
        assert sanitize_html("<b><i>x</b>y</i>") == "<b><i>x</i></b>y"

    def test_self_closing_non_void_tag_is_empty(self) -> None:
        assert sanitize_html("<b/>x") == "<b></b>x"

    def test_block_closes_paragraph(self) -> None:
        assert sanitize_html("<p>a<div>b</div>c</p>") == "<p>a</p><div>b</div>c"
        assert sanitize_html("<p>a<p>b") == "<p>a</p><p>b</p>"

    def test_list_items_close_each_other(self) -> None:
        assert (
            sanitize_html("<ul><li>a<li>b<ul><li>c</ul></ul>")
            == "<ul><li>a</li><li>b<ul><li>c</li></ul></li></ul>"
        )

    def test_table_rows_and_cells_close_each_other(self) -> None:
        assert sanitize_html("<table><tr><td>a<td>b<tr><th>c</table>") == (
            "<table><tr><td>a</td><td>b</td></tr><tr><th>c</th></tr></table>"
        )

    def test_nesting_is_limited(self) -> None:
        markup = "<b>" * 5000 + "deep" + "</b>" * 5000
        result = sanitize_html(markup)
        assert "deep" in result
        assert nesting_depth(result) == MAX_NESTING_DEPTH
        assert_safe_markup(result)

    def test_deep_script_content_does_not_leak(self) -> None:
        markup = "<b>" * (MAX_NESTING_DEPTH + 5) + "<script>" * 500 + "alert(1)"
        assert "alert" not in sanitize_html(markup)
        assert "alert" not in html_to_text(markup)

    def test_large_input_is_fast(self) -> None:
        markup = "<title>" * 20000 + "<li><b>" * 20000 + "<" * 20000
        start = time.perf_counter()
        sanitize_html(markup)
        assert time.perf_counter() - start < 5


class TestSanitizeAttributes:
    def test_event_handlers_and_style_are_removed(self) -> None:
        assert sanitize_html('<b onclick="x()" style="color:red" class="c">x</b>') == "<b>x</b>"

    def test_attribute_values_are_escaped(self) -> None:
        assert (
            sanitize_html("<a href='https://e.com/?a=1&b=\"2\"<'>x</a>")
            == '<a href="https://e.com/?a=1&amp;b=&quot;2&quot;&lt;">x</a>'
        )

    def test_first_duplicate_attribute_wins(self) -> None:
        assert (
            sanitize_html('<a href="https://a.example" href="https://b.example">x</a>')
            == '<a href="https://a.example">x</a>'
        )
        assert sanitize_html('<a href="javascript:x" href="https://b.example">x</a>') == "<a>x</a>"

    @pytest.mark.parametrize("scheme", sorted(LINK_SCHEMES))
    def test_allowed_link_schemes(self, scheme: str) -> None:
        markup = f'<a href="{scheme}:target">x</a>'
        assert sanitize_html(markup) == markup

    def test_scheme_is_case_insensitive(self) -> None:
        assert sanitize_html('<a href="HTTPS://e.com">x</a>') == '<a href="HTTPS://e.com">x</a>'

    @pytest.mark.parametrize(
        "href",
        [
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            " javascript:alert(1)",
            "\x01javascript:alert(1)",
            "java\tscript:alert(1)",
            "java\nscript:alert(1)",
            "&#106;avascript:alert(1)",
            "&#x6A;avascript&colon;alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "vbscript:msgbox",
            "file:///etc/passwd",
            "/relative/path",
            "//evil.example/x",
            "#fragment",
            "",
        ],
    )
    def test_disallowed_links_lose_href(self, href: str) -> None:
        assert sanitize_html(f'<a href="{href}">x</a>') == "<a>x</a>"

    def test_link_whitespace_is_cleaned(self) -> None:
        assert (
            sanitize_html('<a href=" https://e.\nexample/a\tb ">x</a>')
            == '<a href="https://e.example/ab">x</a>'
        )

    def test_link_name_and_target(self) -> None:
        markup = '<a name="n" target="_blank" href="https://e.com">x</a>'
        assert sanitize_html(markup) == markup

    def test_colors(self) -> None:
        markup = '<font color="#ff0000" data-mx-color="#00FF00" data-mx-bg-color="#0000ff">x</font>'
        assert sanitize_html(markup) == markup
        assert sanitize_html('<font color="red" data-mx-color="#fff">x</font>') == "<font>x</font>"
        assert sanitize_html('<font color="#ff0000;background:url(x)">x</font>') == "<font>x</font>"
        assert (
            sanitize_html('<span data-mx-color=" #123456 ">x</span>')
            == '<span data-mx-color="#123456">x</span>'
        )

    def test_color_attribute_only_on_font(self) -> None:
        assert sanitize_html('<span color="#ff0000">x</span>') == "<span>x</span>"

    def test_spoiler_and_maths(self) -> None:
        assert (
            sanitize_html("<span data-mx-spoiler>x</span>") == '<span data-mx-spoiler="">x</span>'
        )
        markup = '<span data-mx-spoiler="reason &amp; &quot;more&quot;">x</span>'
        assert sanitize_html(markup) == markup
        markup = '<div data-mx-maths="x^2"><code>x^2</code></div><span data-mx-maths="y">y</span>'
        assert sanitize_html(markup) == markup

    def test_images(self) -> None:
        markup = '<img src="mxc://example.org/abc" alt="cat" title="t" width="64" height="32"/>'
        assert sanitize_html(markup) == markup
        assert sanitize_html('<img src="MXC://example.org/abc">') == (
            '<img src="MXC://example.org/abc"/>'
        )

    def test_images_need_mxc_source(self) -> None:
        assert sanitize_html('a<img src="https://evil.example/pixel.png" alt="cat">b') == "acatb"
        assert sanitize_html('<img alt="<x>">') == "&lt;x&gt;"
        assert sanitize_html('<img src="mxc://">') == ""
        assert sanitize_html('<img src="javascript:alert(1)" onerror="alert(1)">') == ""

    def test_image_dimensions_must_be_numbers(self) -> None:
        assert sanitize_html('<img src="mxc://s/m" width="100%" height="x">') == (
            '<img src="mxc://s/m"/>'
        )

    def test_ordered_list_start(self) -> None:
        assert sanitize_html('<ol start="3"><li>x</li></ol>') == '<ol start="3"><li>x</li></ol>'
        assert sanitize_html('<ol start="007">x</ol>') == '<ol start="7">x</ol>'
        assert sanitize_html('<ol start="-2">x</ol>') == '<ol start="-2">x</ol>'
        assert sanitize_html('<ol start="two">x</ol>') == "<ol>x</ol>"
        assert sanitize_html('<ul start="3">x</ul>') == "<ul>x</ul>"

    def test_code_class_keeps_only_languages(self) -> None:
        assert (
            sanitize_html('<code class="language-python">x</code>')
            == '<code class="language-python">x</code>'
        )
        assert (
            sanitize_html('<code class="hljs language-c++ evil">x</code>')
            == '<code class="language-c++">x</code>'
        )
        assert sanitize_html('<code class="evil">x</code>') == "<code>x</code>"
        assert sanitize_html('<code class="language-">x</code>') == "<code>x</code>"

    def test_output_of_typical_client_message_is_unchanged(self) -> None:
        markup = (
            "<p>Hello <strong>world</strong>, see "
            '<a href="https://matrix.to/#/@alice:example.org">Alice</a></p>\n'
            '<pre><code class="language-python">print(1 &lt; 2)\n</code></pre>\n'
            "<ul>\n<li>one</li>\n<li><del>two</del></li>\n</ul>\n"
        )
        assert sanitize_html(markup) == markup


# --------------------------------------------------------------------------------------------
# html_to_text / html_to_markdown / html_to_styling
# --------------------------------------------------------------------------------------------

_RICH = (
    '<mx-reply><blockquote><a href="https://matrix.to/#/!room:s/$event">In reply to</a> '
    '<a href="https://matrix.to/#/@bob:s">@bob:s</a><br>original</blockquote></mx-reply>'
    "<p>Hi <b>there</b> &amp; <i>you</i></p>\n"
    "<ul>\n<li>one</li>\n<li>two<ul><li>nested</li></ul></li>\n</ul>\n"
    '<ol start="5"><li>five</li><li>six</li></ol>'
    "<blockquote><p>quote</p><p>more</p></blockquote>"
    '<pre><code class="language-python">def f():\n    return 1\n</code></pre>'
    '<p><code>x*y</code> <del>gone</del> <a href="https://e.com">https://e.com</a> '
    '<a href="https://e.com">site</a></p>'
    "<h2>Head</h2>"
)


class TestHtmlToText:
    def test_rich_message(self) -> None:
        assert html_to_text(_RICH) == (
            "Hi there & you\n"
            "- one\n"
            "- two\n"
            "  - nested\n"
            "5. five\n"
            "6. six\n"
            "> quote\n"
            "> more\n"
            "def f():\n"
            "    return 1\n"
            "x*y gone https://e.com site (https://e.com)\n"
            "Head"
        )

    def test_plain_text_passes_through(self) -> None:
        assert html_to_text("just text") == "just text"

    def test_entities_are_decoded(self) -> None:
        assert html_to_text("&lt;b&gt; &amp; &quot;q&quot; &#x1F600; &nbsp;") == '<b> & "q" 😀 \xa0'

    def test_paragraphs_and_breaks(self) -> None:
        assert html_to_text("<p>a</p><p>b</p>") == "a\nb"
        assert html_to_text("<p>a</p>\n\n<p>b</p>\n") == "a\nb"
        assert html_to_text("a<br>b<br/><br/>c") == "a\nb\n\nc"
        assert html_to_text("x<div>y</div>z") == "x\ny\nz"

    def test_whitespace_is_kept(self) -> None:
        assert html_to_text("a  b\tc") == "a  b\tc"

    def test_lists(self) -> None:
        assert html_to_text("<ul><li>a</li><li>b</li></ul>") == "- a\n- b"
        assert html_to_text("<ol><li>a</li><li>b</li></ol>") == "1. a\n2. b"
        assert html_to_text('<ol start="9"><li>a</li><li>b<br>c</li></ol>') == "9. a\n10. b\n    c"
        assert html_to_text("<li>loose</li>") == "- loose"
        assert html_to_text("<ul><li><p>para</p></li></ul>") == "- para"

    def test_blockquote(self) -> None:
        assert html_to_text("<blockquote>a<br>b</blockquote>c") == "> a\n> b\nc"
        assert html_to_text("<blockquote>a<blockquote>b</blockquote></blockquote>") == (
            "> a\n> > b"
        )
        assert html_to_text("<blockquote>a<br><br>b</blockquote>") == "> a\n>\n> b"

    def test_links(self) -> None:
        assert html_to_text('<a href="https://e.com">site</a>') == "site (https://e.com)"
        assert html_to_text('<a href="https://e.com">https://e.com</a>') == "https://e.com"
        assert html_to_text('<a href="https://e.com"></a>') == "https://e.com"
        assert html_to_text('<a href="mailto:a@b.c">a@b.c</a>') == "a@b.c"
        assert html_to_text("<a>anchor</a>") == "anchor"

    def test_unsafe_link_targets_are_not_shown(self) -> None:
        assert html_to_text('<a href="javascript:alert(1)">click</a>') == "click"

    def test_reply_fallback_is_removed(self) -> None:
        assert html_to_text("<mx-reply><blockquote>old</blockquote></mx-reply>new") == "new"

    def test_code_is_verbatim(self) -> None:
        assert html_to_text("<pre><code>  a\n\n  <b>b</b>\n</code></pre>") == "  a\n\n  b"
        assert html_to_text("run <code>a  &lt;b&gt;</code>") == "run a  <b>"

    def test_images_render_as_alt_text(self) -> None:
        assert html_to_text('hi <img src="mxc://s/m" alt=":wave:">') == "hi :wave:"

    def test_script_and_style_content_is_dropped(self) -> None:
        assert html_to_text("<style>p { }</style>a<script>x()</script>") == "a"

    def test_tables(self) -> None:
        markup = "<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>"
        assert html_to_text(markup) == "a | b\n1 | 2"

    def test_horizontal_rule(self) -> None:
        assert html_to_text("a<hr>b") == "a\n---\nb"

    def test_empty(self) -> None:
        assert html_to_text("") == ""
        assert html_to_text("<p></p>") == ""


class TestHtmlToMarkdown:
    def test_rich_message(self) -> None:
        assert html_to_markdown(_RICH) == (
            "Hi **there** & _you_\n"
            "- one\n"
            "- two\n"
            "  - nested\n"
            "5. five\n"
            "6. six\n"
            "> quote\n"
            "> more\n"
            "```python\n"
            "def f():\n"
            "    return 1\n"
            "```\n"
            "`x*y` ~~gone~~ https://e.com [site](https://e.com)\n"
            "## Head"
        )

    def test_inline_styles(self) -> None:
        assert html_to_markdown("<strong>a</strong><em>b</em><s>c</s><u>d</u>") == (
            "**a**_b_~~c~~d"
        )

    def test_whitespace_stays_outside_markers(self) -> None:
        assert html_to_markdown("a<b> bold </b>b") == "a **bold** b"
        assert html_to_markdown("<b> </b>") == " "
        assert html_to_markdown("<b>one<br>two</b>") == "**one**\n**two**"

    def test_code_spans_with_backticks(self) -> None:
        assert html_to_markdown("<code>a`b</code>") == "``a`b``"
        assert html_to_markdown("<code>`a</code>") == "`` `a ``"
        assert html_to_markdown("<code><b>not bold</b></code>") == "`not bold`"

    def test_code_block_fence_is_longer_than_content(self) -> None:
        assert html_to_markdown("<pre>```\nx\n```</pre>") == "````\n```\nx\n```\n````"

    def test_links(self) -> None:
        assert html_to_markdown('<a href="https://e.com/a(b) c">[x]</a>') == (
            "[\\[x\\]](https://e.com/a%28b%29%20c)"
        )
        assert html_to_markdown('<a href="javascript:x()">click</a>') == "click"

    def test_spoiler(self) -> None:
        assert html_to_markdown("<span data-mx-spoiler>boo</span>") == "||boo||"

    def test_reply_fallback_is_removed(self) -> None:
        assert html_to_markdown("<mx-reply>old</mx-reply><b>new</b>") == "**new**"


class TestHtmlToStyling:
    def test_rich_message(self) -> None:
        assert html_to_styling(_RICH) == (
            "Hi *there* & _you_\n"
            "- one\n"
            "- two\n"
            "  - nested\n"
            "5. five\n"
            "6. six\n"
            "> quote\n"
            "> more\n"
            "```\n"
            "def f():\n"
            "    return 1\n"
            "```\n"
            "`x*y` ~gone~ https://e.com site (https://e.com)\n"
            "*Head*"
        )

    def test_spans_do_not_cross_lines(self) -> None:
        assert html_to_styling("<i>one<br>two</i>") == "_one_\n_two_"

    def test_nested_styles(self) -> None:
        assert html_to_styling("<b><i>x</i></b> <del>y</del>") == "*_x_* ~y~"


# --------------------------------------------------------------------------------------------
# text_to_html / markdown_to_html
# --------------------------------------------------------------------------------------------


class TestTextToHtml:
    def test_escapes_and_breaks(self) -> None:
        assert text_to_html("a <b> & c\nd") == "a &lt;b&gt; &amp; c<br/>d"

    def test_carriage_returns_are_newlines(self) -> None:
        assert text_to_html("a\r\nb\rc") == "a<br/>b<br/>c"

    def test_quotes_are_not_escaped(self) -> None:
        assert text_to_html('"it\'s"') == '"it\'s"'


class TestMarkdownToHtml:
    @pytest.mark.parametrize(
        "text",
        [
            "plain text",
            "",
            "multi\nline\n\ntext",
            "snake_case_name and __init__",
            "2*3*4 = 24",
            "a * b * c",
            "** not bold **",
            "<b>raw html</b> & <script>alert(1)</script>",
            "price: ~5 ~ 6",
            "```\nunclosed fence",
            "empty `` code",
        ],
    )
    def test_no_formatting_returns_none(self, text: str) -> None:
        assert markdown_to_html(text) is None

    def test_inline_styles(self) -> None:
        assert markdown_to_html("**b** *i* _u_ ~~s~~ `c`") == (
            "<strong>b</strong> <em>i</em> <em>u</em> <del>s</del> <code>c</code>"
        )

    def test_nested_styles(self) -> None:
        assert markdown_to_html("**bold _and italic_**") == (
            "<strong>bold <em>and italic</em></strong>"
        )
        assert markdown_to_html("*a **b** c*") == "<em>a <strong>b</strong> c</em>"

    def test_code_spans_are_literal(self) -> None:
        assert markdown_to_html("`**x** <b>`") == "<code>**x** &lt;b&gt;</code>"
        assert markdown_to_html("``a`b``") == "<code>a`b</code>"
        assert markdown_to_html("`` `x` ``") == "<code>`x`</code>"

    def test_raw_html_is_escaped(self) -> None:
        assert markdown_to_html('**<img src=x onerror="alert(1)">**') == (
            '<strong>&lt;img src=x onerror="alert(1)"&gt;</strong>'
        )

    def test_newlines_become_breaks(self) -> None:
        assert markdown_to_html("**a**\nb") == "<strong>a</strong><br/>b"

    def test_spans_do_not_cross_lines(self) -> None:
        assert markdown_to_html("**a\nb**") is None

    def test_links(self) -> None:
        assert markdown_to_html("see https://e.com/a?b=1&c=2.") == (
            'see <a href="https://e.com/a?b=1&amp;c=2">https://e.com/a?b=1&amp;c=2</a>.'
        )
        assert markdown_to_html("(http://e.com/wiki/A_(b))") == (
            '(<a href="http://e.com/wiki/A_(b)">http://e.com/wiki/A_(b)</a>)'
        )
        assert markdown_to_html("https://e.com/a_b_c") == (
            '<a href="https://e.com/a_b_c">https://e.com/a_b_c</a>'
        )
        assert markdown_to_html('https://e.com/"><script>') == (
            '<a href="https://e.com/">https://e.com/</a>"&gt;&lt;script&gt;'
        )

    def test_only_http_links(self) -> None:
        assert markdown_to_html("javascript:alert(1) ftp://x.y") is None
        assert markdown_to_html("https://") is None

    def test_code_block(self) -> None:
        assert markdown_to_html("before\n```python\nif a < b:\n    **x**\n```\nafter") == (
            'before<pre><code class="language-python">if a &lt; b:\n    **x**\n</code></pre>after'
        )

    def test_code_block_blank_lines_around(self) -> None:
        assert markdown_to_html("a\n\n```\nx\n```\n\nb") == "a<pre><code>x\n</code></pre>b"

    def test_code_block_longer_fence(self) -> None:
        assert markdown_to_html("````\n```\n````") == "<pre><code>```\n</code></pre>"

    def test_code_block_language_is_restricted(self) -> None:
        assert markdown_to_html('``` "><script>\nx\n```') is None

    def test_output_is_sanitizer_fixed_point(self) -> None:
        html_ = markdown_to_html("**a** https://e.com/?q='x'&y `<c>`\n```js\n<d>\n```")
        assert html_ is not None
        assert sanitize_html(html_) == html_

    def test_pathological_input_is_fast(self) -> None:
        start = time.perf_counter()
        for text in ("*a " * 20000, "**a " * 20000, "_a " * 20000, "`a " * 20000, "*_~" * 20000):
            markdown_to_html(text)
        assert time.perf_counter() - start < 10

    def test_deep_nesting_does_not_recurse_forever(self) -> None:
        text = "".join("**_" for _ in range(500)) + "x" + "".join("_**" for _ in range(500))
        result = markdown_to_html(text)
        assert result is not None
        assert_safe_markup(result)


# --------------------------------------------------------------------------------------------
# Replies
# --------------------------------------------------------------------------------------------


class TestStripReplyFallback:
    BODY = "> <@alice:example.org> original\n> second line\n\nmy reply\n\n> my own quote"
    HTML = (
        "<mx-reply><blockquote>"
        '<a href="https://matrix.to/#/!r:example.org/$e">In reply to</a> '
        '<a href="https://matrix.to/#/@alice:example.org">@alice:example.org</a>'
        "<br>original</blockquote></mx-reply>my <b>reply</b>"
    )

    def test_strips_both(self) -> None:
        assert strip_reply_fallback(self.BODY, self.HTML) == (
            "my reply\n\n> my own quote",
            "my <b>reply</b>",
        )

    def test_body_only(self) -> None:
        assert strip_reply_fallback(self.BODY, None) == ("my reply\n\n> my own quote", None)

    def test_emote_fallback(self) -> None:
        assert strip_reply_fallback("> * <@a:b> waves\n\nhi", None) == ("hi", None)

    def test_empty_quote_lines_in_fallback(self) -> None:
        body = "> <@a:b> one\n>\n> three\n\nreply"
        assert strip_reply_fallback(body, None) == ("reply", None)

    def test_user_quote_is_kept_without_fallback_signs(self) -> None:
        body = "> a quote I wrote\n\nmy answer"
        assert strip_reply_fallback(body, None) == (body, None)
        assert strip_reply_fallback(body, "<blockquote>a quote</blockquote>") == (
            body,
            "<blockquote>a quote</blockquote>",
        )

    def test_mx_reply_marks_body_quote_as_fallback(self) -> None:
        assert strip_reply_fallback("> quote\n\nreply", "<mx-reply>q</mx-reply>reply") == (
            "reply",
            "reply",
        )

    def test_quote_without_blank_line_is_kept(self) -> None:
        body = "> <@a:b> x\nreply"
        assert strip_reply_fallback(body, None) == (body, None)

    def test_no_fallback(self) -> None:
        assert strip_reply_fallback("hello", "<b>hello</b>") == ("hello", "<b>hello</b>")
        assert strip_reply_fallback("hello", None) == ("hello", None)

    def test_rest_of_html_is_untouched(self) -> None:
        html_ = "<MX-REPLY class=x>a\n<mx-reply>b</mx-reply>\nc</mx-reply >\n<p  id=x>keep</P>"
        assert strip_reply_fallback("x", html_) == ("x", "\n<p  id=x>keep</P>")

    def test_self_closing_and_multiple(self) -> None:
        html_ = "a<mx-reply/>b<mx-reply>c</mx-reply>d"
        assert strip_reply_fallback("x", html_) == ("x", "abd")

    def test_unclosed_reply_runs_to_end(self) -> None:
        assert strip_reply_fallback("x", "keep<mx-reply>quoted") == ("x", "keep")

    def test_reply_tag_in_attribute_or_comment_is_not_a_reply(self) -> None:
        html_ = '<a title="<mx-reply>">x</a><!-- <mx-reply> -->y'
        assert strip_reply_fallback("x", html_) == ("x", html_)

    def test_only_fallback_gives_no_html(self) -> None:
        assert strip_reply_fallback("x", "<mx-reply>q</mx-reply>\n") == ("x", None)


# --------------------------------------------------------------------------------------------
# Mentions
# --------------------------------------------------------------------------------------------


class TestMentions:
    def test_pill(self) -> None:
        assert mention_pill("@alice:example.org", "Alice") == (
            '<a href="https://matrix.to/#/@alice:example.org">Alice</a>'
        )

    def test_pill_escaping(self) -> None:
        pill = mention_pill('@a"b/c?d#e&f:example.org', '<Evil> & "Co"')
        assert pill == (
            '<a href="https://matrix.to/#/@a%22b%2Fc%3Fd%23e%26f:example.org">'
            '&lt;Evil&gt; &amp; "Co"</a>'
        )
        assert extract_mentions(pill) == ['@a"b/c?d#e&f:example.org']

    def test_pill_without_display_name(self) -> None:
        assert mention_pill("@a:b", "") == '<a href="https://matrix.to/#/@a:b">@a:b</a>'

    def test_pill_survives_sanitizing(self) -> None:
        pill = mention_pill("@ü ser:example.org", "Ü")
        assert sanitize_html(pill) == pill

    def test_extract(self) -> None:
        markup = (
            '<a href="https://matrix.to/#/@alice:example.org">Alice</a> '
            '<a href="https://matrix.to/#/%40bob%3Aexample.org?via=example.org">Bob</a> '
            '<a href="matrix:u/carol:example.org?action=chat">Carol</a> '
            '<a href="https://matrix.to/#/@alice:example.org">again</a> '
            '<a href="https://matrix.to/#/#room:example.org">room</a> '
            '<a href="https://matrix.to/#/!room:example.org/$event">event</a> '
            '<a href="https://example.org/#/@mallory:example.org">not matrix.to</a> '
            '<a href="https://matrix.to/#/@nohost">bad</a>'
        )
        assert extract_mentions(markup) == [
            "@alice:example.org",
            "@bob:example.org",
            "@carol:example.org",
        ]

    def test_mentions_in_reply_fallback_are_ignored(self) -> None:
        markup = (
            '<mx-reply><a href="https://matrix.to/#/@old:s">old</a></mx-reply>'
            '<a href="https://matrix.to/#/@new:s">new</a>'
        )
        assert extract_mentions(markup) == ["@new:s"]

    def test_no_mentions(self) -> None:
        assert extract_mentions("plain <b>text</b>") == []


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

_FRAGMENTS = [
    "<", ">", "</", "/>", "=", '"', "'", " ", "\n", "\t", "&", ";", "#",
    "<script>", "</script>", "<script", "<SCRIPT SRC=", "<style>", "</style>", "<title>",
    "<textarea>", "<iframe src=", "<svg onload=alert(1)>", "<math>", "<object>",
    "<b>", "</b>", "<i>", "<p>", "</p>", "<div>", "<ul>", "<ol start=", "<li>", "</li>",
    "<table>", "<tr>", "<td>", "<pre>", "<code class=", "language-py", "<br>", "<hr/>",
    "<a href=", "</a>", "<img src=", "<font color=", "<span data-mx-spoiler>",
    "<span data-mx-color=", "#ff00ff", "<mx-reply>", "</mx-reply>", " onclick=", " onerror=",
    " ONLOAD=", " style=", "javascript:", "JaVaScRiPt:alert(1)", "java\tscript:",
    "&#106;avascript:", "&#x6A;", "&colon;", "data:text/html,", "vbscript:", "\x00", "\x01",
    "https://e.com/", "mxc://s/m", "mailto:a@b", "<!--", "-->", "<!", "<![CDATA[", "]]>",
    "<![foo[", "<?", "?>", "<!DOCTYPE html>", "&amp;", "&lt;", "&gt;", "&quot;", "&#",
]  # fmt: skip

html_ish = st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=4)), max_size=60).map(
    "".join
)
any_markup = st.one_of(html_ish, st.text())
printable = st.text(
    alphabet=st.one_of(
        st.characters(blacklist_categories=("Cs", "Cc")), st.sampled_from(["\n", "\t"])
    )
)


@given(any_markup)
@settings(max_examples=500)
def test_sanitize_output_is_safe(markup: str) -> None:
    result = sanitize_html(markup)
    assert "<script" not in result.lower()
    assert not re.search(r"<[^>]*\son\w*\s*=", result, re.IGNORECASE)
    assert not re.search(r"=\"\s*javascript:", result, re.IGNORECASE)
    assert_safe_markup(result)


@given(any_markup)
@settings(max_examples=500)
def test_sanitize_is_idempotent(markup: str) -> None:
    once = sanitize_html(markup)
    assert sanitize_html(once) == once


@given(printable)
@settings(max_examples=300)
def test_text_round_trips_through_html(text: str) -> None:
    assert html_to_text(text_to_html(text)) == text


@given(st.text())
def test_text_to_html_is_safe_and_stable(text: str) -> None:
    result = text_to_html(text)
    assert_safe_markup(result)
    assert sanitize_html(result) == result


@given(any_markup)
def test_renderers_accept_anything(markup: str) -> None:
    for render in (html_to_text, html_to_markdown, html_to_styling):
        assert isinstance(render(markup), str)
    assert isinstance(extract_mentions(markup), list)
    body, stripped = strip_reply_fallback(markup, markup)
    assert isinstance(body, str)
    assert stripped is None or isinstance(stripped, str)


@given(st.text())
def test_renderers_do_not_run_script_content(text: str) -> None:
    markup = f"<script>{html.escape(text)}</script>"
    assert html_to_text(markup) == ""
    assert sanitize_html(markup) == ""


_markdown_text = st.lists(
    st.one_of(
        st.sampled_from(
            ["*", "**", "_", "~~", "`", "```", "```py", "\n", " ", "https://e.com/x", "<b>",
             "&", '"', "'", "(", ")", "a", "word"]
        ),
        st.text(max_size=3),
    ),
    max_size=40,
).map("".join)  # fmt: skip


@given(_markdown_text)
@settings(max_examples=300)
def test_markdown_to_html_is_safe(text: str) -> None:
    result = markdown_to_html(text)
    if result is not None:
        assert_safe_markup(result)
        assert sanitize_html(result) == result


@given(
    st.from_regex(r"@[^:\s\x00-\x1f]{1,20}:[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True),
    st.text(),
)
def test_mention_pill_round_trips(user_id: str, name: str) -> None:
    pill = mention_pill(user_id, name)
    assert extract_mentions(pill) == [user_id]
    assert sanitize_html(pill) == pill
