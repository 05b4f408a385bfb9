"""Retrieval pairs (`synth_pipeline.pairs`): claim-like queries made from a segment's sentences, the evidence with or
without the sentence, hard negatives from a real (word-overlap) retriever; rows a retriever trainer reads."""

from __future__ import annotations

import random

import pyarrow.parquet as pq
import pytest

from retrieve_generate_model.records import Source
from retrieve_generate_model.retriever import _examples
from synth_pipeline.pairs import PairsConfig, make_pairs, restate
from synth_pipeline.qa import QAConfig, content_words, write_examples

TEXTS = [
    ("Vitamin D", "Vitamin D supplements taken daily lowered the risk of hip fractures in elderly women. The trial "
                  "followed nine thousand women for five years in three countries. Women with low blood levels at "
                  "the start gained the most from the daily supplements."),
    ("Sleep", "Short sleep in adolescence was linked to higher blood pressure in early adulthood. The cohort of "
              "students wore activity trackers for two weeks every year. Each hour of lost sleep raised the "
              "systolic pressure by about two points."),
    ("Orchards", "Normandy orchards grow old varieties of cider apples on tall trees. The harvest runs from late "
                 "September to the first frosts of November. Farmers press the apples within days of picking them "
                 "from the grass."),
    ("Short", "One sentence only, and far too short."),
]


def segments() -> list[Source]:
    return [Source(f"seg{n}", f"doc{n}", 0.0, text, 0, len(text), title=title)
            for n, (title, text) in enumerate(TEXTS)]


def overlap_retrieve(queries: list[str], k: int) -> list[list[Source]]:
    """Segments ranked by content words shared with the query."""
    out = []
    for q in queries:
        words = content_words(q, "en")
        out.append(sorted(segments(), key=lambda s: (-len(words & content_words(s.text, "en")), s.seg_id))[:k])
    return out


def test_pairs_are_claims_of_their_segment_with_hard_negatives_and_deterministic(tmp_path):
    cfg = PairsConfig(per_segment=2, k=3, cut_fraction=0.5, drop_words=0.3)
    rows = list(make_pairs(segments(), overlap_retrieve, cfg, seed=0))
    again = list(make_pairs(list(reversed(segments())), overlap_retrieve, cfg, seed=0))
    assert {r["example_id"]: r for r in rows} == {r["example_id"]: r for r in again}  # order does not matter
    assert len(rows) == 6 and "seg3" not in {r["seg_id"] for r in rows}  # 2 per long segment; a one-liner: none
    origins = {r["question_origin"] for r in rows}
    assert origins == {"claim", "claim-cut"}
    for r in rows:
        assert r["kind"] == "claim" and r["answerable"] and r["answer"] == "" and r["answer_start"] == -1
        assert 2 <= len(r["sources"]) <= cfg.k and len({s["seg_id"] for s in r["sources"]}) == len(r["sources"])
        gold = r["sources"][r["relied"][0]]
        assert gold["seg_id"] == r["seg_id"] and r["relied"] == [r["relied"][0]]
        original = TEXTS[int(r["seg_id"][3:])][1]
        query_words = content_words(r["question"], "en")
        assert len(query_words) >= cfg.min_content and query_words <= content_words(original, "en")
        # the query restates one sentence of the segment: cut out of the evidence, or kept in it
        sentence = next(s.strip() for s in original.split(". ") if query_words <= content_words(s, "en"))
        assert (sentence.rstrip(".") not in gold["text"]) == (r["question_origin"] == "claim-cut")
        assert gold["text"] != original or r["question_origin"] == "claim"
    assert write_examples(rows, tmp_path / "pairs.parquet", QAConfig(), 0) == len(rows)
    read = pq.read_table(tmp_path / "pairs.parquet").to_pylist()
    assert [q for q, _, _ in _examples(read, hard=3)] == [r["question"] for r in rows]  # what train lexical reads


def test_restate_drops_content_words_only_and_keeps_enough():
    sentence = "Short sleep in adolescence was linked to higher blood pressure in early adulthood."
    rng = random.Random(1)
    for _ in range(20):
        q = restate(sentence, "en", 0.5, 4, rng)
        assert {"in", "was", "to"} <= set(q.split()) and len(content_words(q, "en")) >= 4
        assert q.split() == [w for w in sentence.rstrip(".").split() if w in q.split()]  # order kept


def test_config_is_checked():
    with pytest.raises(ValueError, match="cut_fraction"):
        PairsConfig(cut_fraction=1.5)
    with pytest.raises(ValueError, match="per_segment"):
        PairsConfig(per_segment=0)


def test_the_module_doctests_pass():
    import doctest

    import synth_pipeline.pairs

    assert doctest.testmod(synth_pipeline.pairs).failed == 0
