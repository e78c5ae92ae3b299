"""Reversible escaping of remote identifiers into Matrix localparts."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.connector.ids import InvalidEscape, escape_localpart, unescape_localpart


@given(st.text())
def test_round_trip_and_alphabet(value: str) -> None:
    escaped = escape_localpart(value)
    assert re.fullmatch(r"[a-z0-9._=\-/]*", escaped)
    assert unescape_localpart(escaped) == value


def test_examples() -> None:
    assert escape_localpart("Bob[m]") == "_bob=5bm=5d"
    assert escape_localpart("a_b") == "a__b"
    assert escape_localpart("#python") == "=23python"


@pytest.mark.parametrize("forged", ["=zz", "_", "=61", "A", "=c3", "x y"])
def test_forged_localparts_are_rejected(forged: str) -> None:
    with pytest.raises(InvalidEscape):
        unescape_localpart(forged)
