"""The fixed-window chunker that ingestion uses until the learned segmenter ships, and that evaluation compares."""

from __future__ import annotations

import random

import pytest

from preprocess_model.document import Document
from ragless.baselines import FixedWindowConfig, FixedWindowSegmenter, fixed_windows


def random_text(seed: int, n_words: int = 1500) -> str:
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 12))) for _ in range(n_words)]
    out = []
    for w in words:
        out.append(w)
        out.append(rng.choice([" "] * 20 + [". ", "\n", "\n\n"]))
    return "".join(out)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("window,overlap", [(512, 64), (200, 0), (97, 31)])
def test_windows_cover_the_text_within_size_and_overlap(seed, window, overlap):
    text = random_text(seed)
    cfg = FixedWindowConfig(window_chars=window, overlap_chars=overlap)
    spans = fixed_windows(text, cfg)
    assert all(0 < e - s <= window for s, e in spans)
    covered = set()
    for s, e in spans:
        covered.update(range(s, e))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())  # nothing lost between windows
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        assert s1 < s2 and e1 < e2 and max(0, e1 - s2) <= overlap
    # words are whole at window ends when a break exists in the window's second half
    for _, e in spans[:-1]:
        assert text[e - 1].isspace() or text[e].isspace()


def test_a_word_longer_than_the_window_is_cut():
    text = "short " + "x" * 1300 + " tail"
    spans = fixed_windows(text, FixedWindowConfig())
    assert max(e - s for s, e in spans) == 512
    assert "".join(text[s:e] for s, e in spans).count("x") >= 1300


def test_segmenter_yields_exact_spans_and_sections():
    text = "Guide\n\nInstall\n" + random_text(1, 300) + "\nUsage\n" + random_text(2, 300)
    headings = [[0, 5, 1], [7, 14, 2], [text.index("\nUsage") + 1, text.index("\nUsage") + 6, 2]]
    doc = Document("d", "/d.md", text, "sha", meta={"headings": headings})
    (segments,) = FixedWindowSegmenter().segment([doc])
    assert [s.ordinal for s in segments] == list(range(len(segments)))
    for s in segments:
        assert s.text == text[s.char_start : s.char_end] and s.text == s.text.strip()
    assert segments[0].section == "Guide"
    assert segments[1].section == "Guide > Install"
    assert segments[-1].section == "Guide > Usage"
    assert len({s.seg_id for s in segments}) == len(segments)


def test_bad_config_is_refused():
    with pytest.raises(ValueError):
        FixedWindowConfig(window_chars=64, overlap_chars=64)
