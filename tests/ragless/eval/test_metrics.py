"""Per-question metrics of the evaluation harness, each checked against numbers worked out by hand."""

from __future__ import annotations

import math
import re
import string
import sys
import time
import unicodedata
from dataclasses import dataclass

import numpy as np
import pytest

from ragless.eval.metrics import (
    abstain_correct,
    answer_recall_at_k,
    answer_tokens,
    answered_f1,
    bootstrap_ci,
    citation_precision,
    citation_recall,
    evidence_qrels,
    exact_match,
    judge_segments,
    mean_defined,
    mean_per_metric,
    normalize_answer,
    overall_exact_match,
    overall_f1,
    paired_bootstrap,
    passage_id,
    percentile,
    quote_valid,
    quote_validity,
    retrieval_metrics,
    span_overlap,
    token_f1,
    units_to_run,
)

# ------------------------------------------------------------------------------------------------------------------
# Reference implementations, verbatim from the official scripts (only reformatted), to check ours against
# ------------------------------------------------------------------------------------------------------------------


def squad_v11_normalize_answer(s):
    """SQuAD v1.1 evaluate-v1.1.py."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


MLQA_PUNCT = {chr(i) for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P")}.union(
    string.punctuation
)


def mlqa_normalize_answer(s, lang):
    """MLQA mlqa_evaluation_v1.py (whitespace_tokenize and mixed_segmentation inlined)."""

    def mixed_segmentation(text):
        segs_out, temp_str = [], ""
        for char in text:
            if re.search(r"[\u4e00-\u9fa5]", char) or char in MLQA_PUNCT:
                if temp_str != "":
                    segs_out.extend(temp_str.split())
                    temp_str = ""
                segs_out.append(char)
            else:
                temp_str += char
        if temp_str != "":
            segs_out.extend(temp_str.split())
        return segs_out

    def remove_articles(text, lang):
        if lang == "en":
            return re.sub(r"\b(a|an|the)\b", " ", text)
        elif lang == "es":
            return re.sub(r"\b(un|una|unos|unas|el|la|los|las)\b", " ", text)
        elif lang == "hi":
            return text
        elif lang == "vi":
            return re.sub(r"\b(của|là|cái|chiếc|những)\b", " ", text)
        elif lang == "de":
            return re.sub(r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b", " ", text)
        elif lang == "ar":
            return re.sub(r"\sال^|ال", " ", text)
        elif lang == "zh":
            return text

    def white_space_fix(text, lang):
        tokens = mixed_segmentation(text) if lang == "zh" else text.split()
        return " ".join([t for t in tokens if t.strip() != ""])

    def remove_punc(text):
        return "".join(ch for ch in text if ch not in MLQA_PUNCT)

    return white_space_fix(remove_articles(remove_punc(s.lower()), lang), lang)


# ------------------------------------------------------------------------------------------------------------------
# Answer text
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,normalized",
    [
        ("The Eiffel Tower", "eiffel tower"),  # article and case
        ("a  cat,\tan   apple!", "cat apple"),  # articles, punctuation, whitespace runs and tabs
        ("Theater and Anthem", "theater and anthem"),  # articles only as whole words
        ("U.S.A.", "usa"),  # punctuation is deleted, not turned into spaces
        ("don't stop-the music", "dont stopthe music"),  # "stop-the" loses '-' first, so "the" is no longer a word
        ("the-end", "theend"),  # the same: punctuation goes before articles, so "the" is glued to "end"
        ("“Paris” — «capital»", "“paris” — «capital»"),  # SQuAD v1.1 removes ASCII punctuation only
        ("  ", ""),
    ],
)
def test_squad_normalization_examples(raw, normalized):
    assert normalize_answer(raw) == normalized == squad_v11_normalize_answer(raw)


def test_english_is_the_official_squad_normalization_on_tricky_strings():
    strings = ["A", "an an the", "Ünïcödé 'quotes' “smart”", "1,000.5 km²", "ÀN Apple", "x\u00a0y", "İstanbul", "ß"]
    for s in strings:
        assert normalize_answer(s, "en") == squad_v11_normalize_answer(s)


@pytest.mark.parametrize(
    "lang,raw,normalized",
    [
        ("es", "¿El gato y la casa?", "gato y casa"),  # '¿' and '?' are unicode punctuation; el, la are articles
        ("es", "Los Ángeles", "ángeles"),
        ("de", "Der Hund, die Katze und das Haus.", "hund katze und haus"),
        ("de", "Einstein", "einstein"),  # "ein" only as a whole word
        ("vi", "Cái bàn của tôi", "bàn tôi"),  # cái and của are on MLQA's Vietnamese list
        ("ar", "الكتاب", "كتاب"),  # the prefix "ال" becomes a space, stripped
        ("ar", "مال", "م"),  # MLQA removes "ال" inside words too (its prefix-only branch never matches)
        ("hi", "भारत की राजधानी।", "भारत की राजधानी"),  # the danda '।' is punctuation (Po); no articles
        ("zh", "北京，大学。", "北 京 大 学"),  # each CJK character is a token, '，' '。' removed
        ("zh", "2008年北京 Olympics", "2008 年 北 京 olympics"),  # non-CJK runs split on whitespace
        ("es", "«Paris»", "paris"),  # unicode quotes removed, unlike en
    ],
)
def test_multilingual_normalization_matches_mlqa(lang, raw, normalized):
    assert normalize_answer(raw, lang) == normalized == mlqa_normalize_answer(raw, lang)


def test_unknown_language_is_refused():
    with pytest.raises(ValueError, match="fr"):
        normalize_answer("la maison", "fr")


def test_exact_match_takes_the_best_gold():
    assert exact_match("the Eiffel Tower.", ["Tour Eiffel", "Eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel tower"]) == 0.0
    assert exact_match("Eiffel Tower", "eiffel tower") == 1.0  # a bare string is one gold, not characters


def test_token_f1_by_hand():
    # pred tokens [big, red, fox]; vs [red, fox]: 2 shared, p = 2/3, r = 1, F1 = 2 * 2/3 / (5/3) = 0.8;
    # vs [fox]: 1 shared, p = 1/3, r = 1, F1 = 2 * 1/3 / (4/3) = 0.5; max = 0.8
    assert token_f1("the big red fox", ["red fox", "a fox"]) == pytest.approx(0.8)
    # counts are clipped: [fox fox fox] vs [fox] share 1: p = 1/3, r = 1, F1 = 0.5
    assert token_f1("fox fox fox", ["fox"]) == pytest.approx(0.5)
    assert token_f1("blue whale", ["red fox"]) == 0.0
    # zh tokens are characters: [北 京 大 学] vs [北 京]: p = 2/4, r = 2/2, F1 = 2 * 0.5 / 1.5 = 2/3
    assert token_f1("北京大学", ["北京"], lang="zh") == pytest.approx(2 / 3)
    # the same in en is one token vs another: no overlap
    assert token_f1("北京大学", ["北京"]) == 0.0
    assert answer_tokens("北京大学", "zh") == ["北", "京", "大", "学"]


def test_empty_gold_list_means_no_answer():
    # SQuAD v2 convention: with no gold answer only an empty prediction is right
    assert exact_match("", []) == 1.0 and token_f1("", []) == 1.0
    assert exact_match("The.", []) == 1.0 and token_f1("the", []) == 1.0  # normalizes to nothing
    assert exact_match("Paris", []) == 0.0 and token_f1("Paris", []) == 0.0


def test_a_gold_that_normalizes_to_nothing_follows_squad_v11():
    # v1.1: EM compares "" == "" (1), F1 has no shared token (0)
    assert exact_match("", ["the"]) == 1.0
    assert token_f1("", ["the"]) == 0.0


# ------------------------------------------------------------------------------------------------------------------
# Abstention
# ------------------------------------------------------------------------------------------------------------------


def test_abstention_metrics():
    assert abstain_correct(abstained=True, answerable=False) == 1.0
    assert abstain_correct(abstained=False, answerable=False) == 0.0
    assert abstain_correct(abstained=True, answerable=True) is None

    assert answered_f1("the big red fox", False, ["red fox"], answerable=True) == pytest.approx(0.8)
    assert answered_f1("red fox", True, ["red fox"], answerable=True) == 0.0  # abstaining on an answerable question
    assert answered_f1("red fox", False, [], answerable=False) is None


def test_squad_v2_overall_convention():
    rows = [
        # prediction, abstained, golds, answerable -> (EM, F1)
        ("", True, [], False),  # unanswerable, abstained: 1, 1
        ("Paris", False, [], False),  # unanswerable, answered: 0, 0
        ("red fox", True, ["red fox"], True),  # answerable, abstained: 0, 0
        ("the big red fox", False, ["red fox"], True),  # answerable, partly right: EM 0, F1 0.8
        ("Red Fox!", False, ["red fox"], True),  # answerable, right: 1, 1
    ]
    em = [overall_exact_match(*r) for r in rows]
    f1 = [overall_f1(*r) for r in rows]
    assert em == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert f1 == pytest.approx([1.0, 0.0, 0.0, 0.8, 1.0])
    # overall F1 = (1 + 0 + 0 + 0.8 + 1) / 5 = 0.56
    assert mean_defined(f1) == pytest.approx(0.56)


# ------------------------------------------------------------------------------------------------------------------
# Retrieval at the level of gold units
# ------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoldSpan:  # the shape of ragless.eval.datasets.GoldSpan
    doc_id: str
    char_start: int
    char_end: int


def test_span_overlap():
    assert span_overlap(("d", 0, 10), ("d", 5, 20)) == 5  # [5, 10)
    assert span_overlap(("d", 0, 100), ("d", 20, 30)) == 10  # contained
    assert span_overlap(("d", 0, 10), ("d", 10, 20)) == 0  # adjacent, end exclusive
    assert span_overlap(("d", 0, 10), ("e", 0, 10)) == 0  # other document
    assert span_overlap(GoldSpan("d", 3, 8), {"doc_id": "d", "char_start": 0, "char_end": 5}) == 2  # records


A, B, C = ("d", 100, 300), ("d", 1000, 1040), ("e", 0, 500)  # gold passages of 200, 40 and 500 characters


def test_judge_segments_with_overlapping_windows():
    retrieved = [
        ("d", 150, 278),  # inside A: overlap 128 = all of the window -> A
        ("d", 250, 378),  # overlap with A 50, shorter 128: 2 * 50 = 100 < 128 -> miss
        ("d", 980, 1108),  # contains B: overlap 40 = all of B -> B
        ("d", 0, 128),  # overlap with A 28: 56 < 128 -> miss
        ("e", 200, 264),  # inside C -> C
        ("d", 200, 328),  # overlap with A 100: 200 >= 128 -> A again
    ]
    assert judge_segments(retrieved, [A, B, C]) == [
        "d:100-300",
        "d:seg-250-378",
        "d:1000-1040",
        "d:seg-0-128",
        "e:0-500",
        "d:100-300",
    ]
    assert judge_segments(retrieved, [A, B, C], unit="document") == ["d", "d", "d", "d", "e", "d"]


def test_judge_segments_half_overlap_boundary():
    # window of 128 against A: overlap 64 is exactly half the shorter span -> hit; 63 -> miss
    assert judge_segments([("d", 36, 164)], [A]) == ["d:100-300"]
    assert judge_segments([("d", 35, 163)], [A]) == ["d:seg-35-163"]
    assert judge_segments([("d", 100, 100)], [A]) == ["d:seg-100-100"]  # an empty span hits nothing


def test_a_segment_over_several_gold_passages_credits_a_new_one_first():
    x, y = GoldSpan("d", 0, 20), GoldSpan("d", 30, 50)  # two short gold sentences, records instead of tuples
    # both windows contain both sentences; the first is credited with x (tie, first in evidence), the second with y
    assert judge_segments([("d", 0, 100), ("d", 0, 60)], [x, y]) == ["d:0-20", "d:30-50"]
    # overlaps 10 with x (2 * 10 >= 20) and 15 with y: the larger wins
    assert judge_segments([("d", 10, 45)], [x, y]) == ["d:30-50"]


def test_units_to_run_keeps_first_rank_with_decreasing_scores():
    assert units_to_run(["A", "s", "B", "A"]) == {"A": 1.0, "s": 0.5, "B": pytest.approx(1 / 3)}
    run = units_to_run(["A", "s", "B", "A"], penalize_duplicates=True)
    assert run == {"A": 1.0, "s": 0.5, "B": pytest.approx(1 / 3), "A#repeat3": 0.25}


def test_retrieval_metrics_by_hand():
    qrels = {
        "q1": {"a": 2, "b": 1, "c": 1},
        "q2": {"r": 1},
        "q3": {"z": 0},  # nothing relevant: trec_eval cannot score it, left out
        "q4": {"a": 1},  # relevant units but nothing retrieved: zeros
    }
    run = {
        "q1": units_to_run(["x", "b", "a", "y"]),
        "q2": units_to_run([f"n{i}" for i in range(11)] + ["r"]),  # the relevant unit at rank 12
        "q3": units_to_run(["z"]),
    }
    got = retrieval_metrics(run, qrels, ks=(1, 5, 10, 20))
    assert set(got) == {"q1", "q2", "q4"}
    q1 = got["q1"]
    # relevant at ranks 2 (b, grade 1) and 3 (a, grade 2) of 3 relevant units
    assert q1["recall@1"] == 0.0
    assert q1["recall@5"] == pytest.approx(2 / 3) and q1["recall@10"] == pytest.approx(2 / 3)
    assert q1["mrr@10"] == pytest.approx(1 / 2)
    # DCG = 1 / log2(3) + 2 / log2(4) = 0.6309 + 1 = 1.6309
    # ideal [2, 1, 1]: IDCG = 2 / log2(2) + 1 / log2(3) + 1 / log2(4) = 2 + 0.6309 + 0.5 = 3.1309; nDCG = 0.5209
    assert q1["ndcg@10"] == pytest.approx(0.5209, abs=1e-4)
    q2 = got["q2"]
    # rank 12 is past the cut: mrr@10 = 0 although the full reciprocal rank is 1/12; recall@20 = 1/1
    assert q2["mrr@10"] == 0.0 and q2["recall@10"] == 0.0 and q2["ndcg@10"] == 0.0
    assert q2["recall@20"] == 1.0
    assert got["q4"] == {"recall@1": 0.0, "recall@5": 0.0, "recall@10": 0.0, "recall@20": 0.0, "mrr@10": 0.0,
                         "ndcg@10": 0.0}  # fmt: skip
    means = mean_per_metric(got)
    assert means["recall@20"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def reference_metrics(ranked: list[str], rel: dict[str, int], k: int = 10) -> dict[str, float]:
    """recall@k, mrr@k and trec_eval's nDCG@k (linear gain), written out plainly."""
    relevant = {u for u, g in rel.items() if g > 0}
    top = ranked[:k]
    first = next((i for i, u in enumerate(top) if u in relevant), None)
    dcg = sum(rel.get(u, 0) / math.log2(i + 2) for i, u in enumerate(top))
    ideal = sorted((g for g in rel.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return {
        f"recall@{k}": len(relevant & set(top)) / len(relevant),
        f"mrr@{k}": 0.0 if first is None else 1 / (first + 1),
        f"ndcg@{k}": dcg / idcg,
    }


def test_pytrec_eval_agrees_with_the_plain_definitions():
    rng = np.random.default_rng(7)
    units = [f"u{i}" for i in range(30)]
    qrels, run, ranked = {}, {}, {}
    for q in range(40):
        judged = rng.choice(units, size=6, replace=False)
        qrels[f"q{q}"] = {u: int(rng.integers(0, 3)) for u in judged} | {str(judged[0]): 2}  # at least one relevant
        ranked[f"q{q}"] = list(rng.choice(units, size=15, replace=False))
        run[f"q{q}"] = units_to_run(ranked[f"q{q}"])
    got = retrieval_metrics(run, qrels, ks=(10,))
    for qid in qrels:
        assert got[qid] == pytest.approx(reference_metrics(ranked[qid], qrels[qid]))


def test_passage_and_document_level_end_to_end():
    evidence = [GoldSpan("d", 100, 300), GoldSpan("e", 0, 500)]
    retrieved = [("d", 0, 128), ("d", 150, 278), ("d", 200, 328), ("e", 100, 228)]
    qrels = {"q": evidence_qrels(evidence)}
    assert qrels["q"] == {passage_id(evidence[0]): 1, "e:0-500": 1}
    # passage units: [miss, A, A (dropped), C] -> run ranks miss 1, A 2, C 3 -> recall@1 0, MRR 1/2
    m = retrieval_metrics({"q": units_to_run(judge_segments(retrieved, evidence))}, qrels)["q"]
    assert (m["recall@1"], m["recall@5"], m["mrr@10"]) == (0.0, 1.0, 0.5)
    # document units: [d, d, d, e] -> run d 1, e 2: recall@1 = 1/2, MRR 1
    m = retrieval_metrics(
        {"q": units_to_run(judge_segments(retrieved, evidence, "document"))},
        {"q": evidence_qrels(evidence, "document")},
    )["q"]
    assert (m["recall@1"], m["recall@5"], m["mrr@10"]) == (0.5, 1.0, 1.0)


def test_answer_recall_matches_whole_tokens():
    texts = ["It opened in 1930.", "The Tower is 300 metres tall."]
    assert answer_recall_at_k(texts, ["3"], k=2) == 0.0  # "3" is not a token of "1930" or "300"
    assert answer_recall_at_k(texts, ["1930"], k=1) == 1.0
    assert answer_recall_at_k(texts, ["300 metres"], k=1) == 0.0  # it is in the second text only
    assert answer_recall_at_k(texts, ["300 metres"], k=2) == 1.0
    assert answer_recall_at_k(texts, ["the TOWER"], k=5) == 1.0  # normalized both sides; k past the end is fine
    assert answer_recall_at_k(texts, ["tower tall"], k=2) == 0.0  # tokens must be contiguous
    assert answer_recall_at_k(["他在北京大学工作"], ["北京大学"], k=1, lang="zh") == 1.0
    assert answer_recall_at_k(texts, [], k=2) is None
    assert answer_recall_at_k(texts, ["the"], k=2) is None  # nothing left to look for


# ------------------------------------------------------------------------------------------------------------------
# Citations
# ------------------------------------------------------------------------------------------------------------------

DOCS = {"d": "The quick brown fox jumps.", "e": "Lorem ipsum"}  # len("The quick brown fox jumps.") == 26


@dataclass(frozen=True)
class Citation:  # the shape of an Answer's citation record
    seg_id: str
    doc_id: str
    char_start: int
    char_end: int
    quote: str


def test_quote_valid():
    assert quote_valid(("d", 4, 9, "quick"), DOCS["d"]) == 1.0
    assert quote_valid(Citation("s1", "d", 20, 26, "jumps."), DOCS["d"]) == 1.0  # up to the end of the text
    assert quote_valid(("d", 4, 9, "quack"), DOCS["d"]) == 0.0  # the quote is not the text
    assert quote_valid(("d", 20, 40, "jumps."), DOCS["d"]) == 0.0  # past the end, though the slice equals the quote
    assert quote_valid(("d", -6, 26, "jumps."), DOCS["d"]) == 0.0  # negative start, though the slice equals the quote
    assert quote_valid(("d", 5, 5, ""), DOCS["d"]) == 0.0  # empty
    assert quote_valid(("x", 0, 3, "The"), None) == 0.0  # unknown document


def test_quote_validity_is_the_mean_over_citations():
    citations = [("d", 4, 9, "quick"), ("d", 4, 9, "quack"), ("d", 20, 40, "jumps."), ("x", 0, 3, "The")]
    assert quote_validity(citations, DOCS) == pytest.approx(1 / 4)  # valid, bad quote, out of range, other doc
    assert quote_validity([{"doc_id": "e", "char_start": 0, "char_end": 5, "quote": "Lorem"}], DOCS) == 1.0
    assert quote_validity([], DOCS) is None


def test_citation_precision_and_recall():
    evidence = [("d", 0, 10)]
    citations = [("d", 4, 9, "quick"), ("d", 10, 15, "brown"), ("e", 0, 5, "Lorem")]
    # overlaps: 5 characters, none (adjacent), none (other doc) -> precision 1/3, recall 1
    assert citation_precision(citations, evidence) == pytest.approx(1 / 3)
    assert citation_recall(citations, evidence) == 1.0
    assert citation_recall(citations[1:], evidence) == 0.0
    assert citation_recall([], evidence) == 0.0  # gold evidence exists but nothing was cited
    assert citation_precision([], evidence) is None
    assert citation_recall(citations, []) is None
    assert citation_precision(citations, []) == 0.0  # nothing to support: every citation is unsupported


# ------------------------------------------------------------------------------------------------------------------
# Aggregation and uncertainty
# ------------------------------------------------------------------------------------------------------------------


def test_mean_and_percentile_ignore_none():
    assert mean_defined([1.0, None, 0.0, 0.5]) == 0.5  # (1 + 0 + 0.5) / 3
    assert mean_defined([None]) is None and mean_defined([]) is None
    # linear interpolation: position 0.5 * 3 = 1.5 -> 20 + 0.5 * 10 = 25; 0.95 * 3 = 2.85 -> 30 + 0.85 * 10 = 38.5
    assert percentile([40, None, 10, 30, 20], 50) == 25.0
    assert percentile([10, 20, 30, 40], 95) == pytest.approx(38.5)
    assert percentile([None], 50) is None


def test_mean_per_metric_skips_undefined_values():
    per_q = {"q1": {"f1": 1.0, "abstain": None}, "q2": {"f1": 0.5, "abstain": 1.0}, "q3": {"f1": 0.0, "abstain": 0.0}}
    assert mean_per_metric(per_q) == {"f1": 0.5, "abstain": 0.5}  # (1 + .5 + 0) / 3, (1 + 0) / 2


def binary_scores(n: int, rate: float = 0.3) -> list[float]:
    """n scores, exactly round(rate * n) of them 1.0, interleaved."""
    ones = round(rate * n)
    return [1.0 if (i * ones) % n < ones else 0.0 for i in range(n)]


def test_bootstrap_ci_contains_the_mean_and_matches_normal_theory():
    x = binary_scores(100)
    mean, low, high = bootstrap_ci(x)
    assert mean == pytest.approx(0.3) and low < mean < high
    # normal approximation: 2 * 1.96 * sqrt(0.3 * 0.7 / 100) = 0.180
    assert high - low == pytest.approx(0.18, abs=0.03)


def test_bootstrap_ci_is_deterministic_and_drops_none():
    x = binary_scores(200)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci(x, seed=3) != bootstrap_ci(x, seed=4)
    assert bootstrap_ci(x + [None] * 50, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    assert bootstrap_ci([None]) == (None, None, None)


def test_bootstrap_ci_narrows_with_more_questions():
    _, low_small, high_small = bootstrap_ci(binary_scores(100))
    _, low_big, high_big = bootstrap_ci(binary_scores(10_000))
    # width scales as 1 / sqrt(n): 100x the questions, a tenth of the width
    assert (high_big - low_big) == pytest.approx((high_small - low_small) / 10, rel=0.3)


def test_bootstrap_is_fast_on_ten_thousand_questions():
    x = list(np.random.default_rng(0).random(10_000))
    start = time.perf_counter()
    bootstrap_ci(x, n_resamples=1000)
    paired_bootstrap(x, x[::-1], n_resamples=1000)
    assert time.perf_counter() - start < 2.0  # < 1 s each


def test_paired_bootstrap_detects_a_clear_difference():
    rng = np.random.default_rng(1)
    b = rng.random(300)
    a = np.clip(b + 0.1 + rng.normal(0, 0.05, 300), 0, 1)  # A is better by about 0.1 on every question
    out = paired_bootstrap(list(a), list(b))
    assert out["diff"] == pytest.approx(float(np.mean(a - b)))
    assert 0 < out["low"] < out["diff"] < out["high"]
    assert out["p_value"] < 0.01
    flipped = paired_bootstrap(list(b), list(a))
    assert flipped["diff"] == pytest.approx(-out["diff"]) and flipped["high"] < 0 and flipped["p_value"] < 0.01


def test_paired_bootstrap_does_not_detect_a_null_difference():
    rng = np.random.default_rng(2)
    a, b = rng.random(300), rng.random(300)  # two systems of the same quality
    out = paired_bootstrap(list(a), list(b))
    assert out["low"] < 0 < out["high"]
    assert out["p_value"] > 0.05
    # and over many null comparisons it is wrong about as often as it should be: about 5% at p < 0.05
    false_alarms = [
        paired_bootstrap(list(rng.random(100)), list(rng.random(100)), seed=i)["p_value"] < 0.05 for i in range(200)
    ]
    assert 0.01 <= np.mean(false_alarms) <= 0.12


def test_paired_bootstrap_p_value_by_hand():
    # diffs [1, -1, 1]: observed mean 1/3 > 0. A resample of 3 has k draws of -1 with k ~ Binomial(3, 1/3) and
    # mean (3 - 2k) / 3 <= 0 iff k >= 2: P = 3 * (1/3)^2 * (2/3) + (1/3)^3 = 7/27; p = 2 * 7/27 = 0.5185
    out = paired_bootstrap([1.0, 0.0, 1.0], [0.0, 1.0, 0.0], n_resamples=20_000)
    assert out["diff"] == pytest.approx(1 / 3)
    assert out["p_value"] == pytest.approx(14 / 27, abs=0.02)
    assert paired_bootstrap([1.0, 0.0], [0.0, 1.0])["p_value"] == 1.0  # observed difference 0


def test_paired_bootstrap_uses_questions_where_both_are_defined():
    out = paired_bootstrap([1.0, None, 0.5, 1.0], [0.5, 0.0, None, 0.5])
    assert out["diff"] == 0.5 and out["low"] == 0.5 and out["high"] == 0.5  # pairs 0 and 3 only, both +0.5
    assert out["p_value"] == 0.0  # no resample goes to 0 or below
    assert paired_bootstrap([None], [1.0]) == {"diff": None, "low": None, "high": None, "p_value": None}
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 0.0])
