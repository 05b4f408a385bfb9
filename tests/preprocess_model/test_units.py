"""Units: lines, long lines cut into sentences, long sentences at whitespace; spans exact and never over a newline."""

from __future__ import annotations

import pytest

from preprocess_model.units import text_units


def pieces(text: str, **kw) -> list[str]:
    return [text[s:e] for s, e in text_units(text, **kw)]


def test_short_lines_are_units_and_blank_lines_are_not():
    text = "Title\n\nFirst line.\n   \nSecond line with été and 中文."
    assert pieces(text) == ["Title", "First line.", "Second line with été and 中文."]


def test_a_long_line_is_cut_into_sentences_then_at_whitespace():
    sentence = "This sentence is about twenty words long, so that a few of them make a line longer than the limit."
    line = " ".join([sentence] * 3) + " " + "word " * 40 + "end."
    units = text_units(line, max_chars=120)
    got = [line[s:e] for s, e in units]
    assert got[:3] == [sentence] * 3
    assert all(len(u) <= 120 for u in got) and "".join(got[3:]).replace(" ", "") == ("word" * 40 + "end.")
    assert all(e <= s2 for (_, e), (s2, _) in zip(units, units[1:]))  # ordered, never overlapping


def test_cjk_sentences_split_without_spaces_and_unbroken_text_is_cut_hard():
    text = "这是第一句。这是第二句！" * 10
    got = pieces(text, max_chars=30)
    assert got[:2] == ["这是第一句。", "这是第二句！"] and "".join(got) == text
    blob = "x" * 95
    assert pieces(blob, max_chars=40) == ["x" * 40, "x" * 40, "x" * 15]


def test_units_never_cross_a_line_break_and_offsets_are_exact():
    text = "a" * 50 + "\n" + "Short.\n" + "b " * 300
    for s, e in text_units(text, max_chars=64):
        assert "\n" not in text[s:e] and text[s:e] == text[s:e].strip() and e > s


def test_max_chars_must_be_positive():
    with pytest.raises(ValueError):
        text_units("x", max_chars=0)
