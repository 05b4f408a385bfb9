"""Per-question metrics of the evaluation harness, and the aggregators that turn them into numbers with error bars.

Every metric scores ONE question and returns a float, or ``None`` when that question cannot be scored by it (an
unanswerable question has no answer F1, a question without citations has no citation precision). The harness keeps
the per-question values so it can average them with :func:`mean_defined` and put confidence intervals on them with
:func:`bootstrap_ci` / :func:`paired_bootstrap` (resampling questions, the unit the benchmarks sample).

Spans are ``(doc_id, char_start, char_end)`` with ``char_end`` exclusive. Anything span-shaped is accepted: a tuple,
a mapping with those keys, or an object with those attributes (``GoldSpan``, ``Segment``, a citation record), so this
module does not depend on the dataset loaders. Citations are spans with a ``quote`` (4-tuples or records).

Sections: answer text (SQuAD v1.1 / MLQA), abstention (SQuAD v2.0), retrieval at the level of gold units (trec_eval
through pytrec_eval), citations, aggregation and uncertainty.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import pytrec_eval

# --------------------------------------------------------------------------------------------------------------------
# Answer text: the official SQuAD v1.1 evaluation, and MLQA's multilingual variant
# --------------------------------------------------------------------------------------------------------------------

# Articles removed per language, verbatim from MLQA's mlqa_evaluation_v1.py (`remove_articles`). None: no articles.
_ARTICLES: dict[str, str | None] = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    # The official pattern. Its first branch can never match (`^` after consumed characters, no MULTILINE), so in
    # effect EVERY "ال" is replaced by a space, inside words too. Kept as is: scores must match published MLQA ones.
    "ar": r"\sال^|ال",
    "hi": None,
    "zh": None,
}
LANGUAGES = tuple(_ARTICLES)
_ARTICLE_RES = {lang: re.compile(p) for lang, p in _ARTICLES.items() if p is not None}
_ASCII_PUNCT = frozenset(string.punctuation)
_CJK = re.compile(r"[\u4e00-\u9fa5]")  # MLQA's range for Chinese characters, each one a token


def _is_unicode_punct(ch: str) -> bool:
    # Same membership as MLQA's PUNCT set (categories P* plus string.punctuation), without building a 1.1M-entry set.
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def _mixed_segmentation(text: str) -> list[str]:
    """MLQA's tokenizer for Chinese: each CJK character or punctuation mark is a token, other runs split on spaces."""
    tokens: list[str] = []
    run = ""
    for ch in text:
        if _CJK.match(ch) or _is_unicode_punct(ch):
            tokens.extend(run.split())
            run = ""
            tokens.append(ch)
        else:
            run += ch
    tokens.extend(run.split())
    return tokens


def _normalize_squad(s: str) -> str:
    # Byte for byte the official SQuAD v1.1 evaluate-v1.1.py normalize_answer, with its four steps in its order.
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


def _normalize_mlqa(s: str, lang: str) -> str:
    # mlqa_evaluation_v1.py's normalize_answer: lower, unicode punctuation, articles of `lang`, language tokenizer.
    text = "".join(ch for ch in s.lower() if not _is_unicode_punct(ch))
    if lang in _ARTICLE_RES:
        text = _ARTICLE_RES[lang].sub(" ", text)
    tokens = _mixed_segmentation(text) if lang == "zh" else text.split()
    return " ".join(t for t in tokens if t.strip() != "")


def normalize_answer(s: str, lang: str = "en") -> str:
    """Answer normalization of the official evaluation scripts; tokens are the result split on spaces.

    ``lang="en"`` is exactly SQuAD v1.1's: lowercase, drop ASCII punctuation (``string.punctuation``), replace the
    articles a/an/the by spaces, collapse whitespace. Other languages follow MLQA's ``mlqa_evaluation_v1.py``: drop
    every Unicode punctuation character (categories P*) and ASCII punctuation, replace the language's articles (es:
    un una unos unas el la los las; de: ein eine einen einem eines einer der die das den dem des; vi: của là cái chiếc
    những; ar: every "ال", as MLQA does; hi, zh: none), then tokenize on whitespace, or for zh with MLQA's mixed
    segmentation (each CJK character is a token).

    >>> normalize_answer("The  Cat's   hat!")
    'cats hat'
    >>> normalize_answer("¿Dónde está el gato?", lang="es")
    'dónde está gato'
    >>> normalize_answer("北京大学", lang="zh")
    '北 京 大 学'
    """
    if lang == "en":
        return _normalize_squad(s)
    if lang not in _ARTICLES:
        raise ValueError(f"no answer normalization for language {lang!r}; known: {', '.join(LANGUAGES)}")
    return _normalize_mlqa(s, lang)


def answer_tokens(s: str, lang: str = "en") -> list[str]:
    """The tokens F1 counts: the normalized answer split on spaces."""
    return normalize_answer(s, lang).split()


def _as_golds(golds: str | Iterable[str]) -> list[str]:
    # A bare string is one gold answer, not a list of one-character answers.
    return [golds] if isinstance(golds, str) else list(golds)


def _f1_pair(prediction: str, gold: str, lang: str) -> float:
    # SQuAD v1.1's f1_score: bag-of-tokens overlap; 0 when nothing is shared (also when both normalize to nothing).
    pred, ref = answer_tokens(prediction, lang), answer_tokens(gold, lang)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: str | Iterable[str], lang: str = "en") -> float:
    """1.0 if the normalized prediction equals any normalized gold answer (max over golds, as SQuAD).

    With no gold answers the question has no answer (SQuAD v2 convention): 1.0 iff the prediction normalizes to "".

    >>> exact_match("the Eiffel Tower.", ["Eiffel Tower", "tower"])
    1.0
    >>> exact_match("", [])
    1.0
    """
    golds = _as_golds(golds)
    pred = normalize_answer(prediction, lang)
    if not golds:
        return float(pred == "")
    return float(any(pred == normalize_answer(g, lang) for g in golds))


def token_f1(prediction: str, golds: str | Iterable[str], lang: str = "en") -> float:
    """SQuAD token F1 of the prediction against the best-matching gold answer.

    With no gold answers: 1.0 iff the prediction has no tokens (SQuAD v2 convention). A gold that normalizes to
    nothing (e.g. "the") scores 0 against everything, as in SQuAD v1.1.

    >>> round(token_f1("the big red fox", ["red fox"]), 4)  # p = 2/3, r = 2/2
    0.8
    """
    golds = _as_golds(golds)
    if not golds:
        return float(not answer_tokens(prediction, lang))
    return max(_f1_pair(prediction, g, lang) for g in golds)


# --------------------------------------------------------------------------------------------------------------------
# Abstention: SQuAD v2.0
# --------------------------------------------------------------------------------------------------------------------


def abstain_correct(abstained: bool, answerable: bool) -> float | None:
    """On an unanswerable question: 1.0 if the system abstained, else 0.0. None on answerable questions."""
    if answerable:
        return None
    return float(abstained)


def answered_f1(
    prediction: str, abstained: bool, golds: str | Iterable[str], answerable: bool, lang: str = "en"
) -> float | None:
    """Token F1 on an answerable question (SQuAD v2's HasAns_f1), 0.0 if the system abstained; None if unanswerable."""
    if not answerable:
        return None
    return 0.0 if abstained else token_f1(prediction, golds, lang)


def overall_exact_match(
    prediction: str, abstained: bool, golds: str | Iterable[str], answerable: bool, lang: str = "en"
) -> float:
    """SQuAD v2's overall EM: an unanswerable question scores 1 iff the system abstained; an answerable one scores EM,
    0 when the system abstained. ``abstained`` decides, not the prediction text (the Answer record says it)."""
    if not answerable:
        return float(abstained)
    return 0.0 if abstained else exact_match(prediction, golds, lang)


def overall_f1(
    prediction: str, abstained: bool, golds: str | Iterable[str], answerable: bool, lang: str = "en"
) -> float:
    """SQuAD v2's overall F1, with the convention of :func:`overall_exact_match`."""
    if not answerable:
        return float(abstained)
    return 0.0 if abstained else token_f1(prediction, golds, lang)


# --------------------------------------------------------------------------------------------------------------------
# Spans and citations as records
# --------------------------------------------------------------------------------------------------------------------

Span = tuple[str, int, int]


class SpanRecord(Protocol):
    """Anything with a document id and a character range (GoldSpan, Segment, a citation)."""

    @property
    def doc_id(self) -> str: ...

    @property
    def char_start(self) -> int: ...

    @property
    def char_end(self) -> int: ...


class CitationRecord(SpanRecord, Protocol):
    @property
    def quote(self) -> str: ...


SpanLike = Span | SpanRecord | Mapping[str, Any]
CitationLike = tuple[str, int, int, str] | CitationRecord | Mapping[str, Any]


def _field(x: Any, name: str) -> Any:
    return x[name] if isinstance(x, Mapping) else getattr(x, name)


def as_span(x: SpanLike) -> Span:
    """``(doc_id, char_start, char_end)`` from a tuple (extra fields ignored), a mapping or a record."""
    if isinstance(x, (tuple, list)):
        return (x[0], int(x[1]), int(x[2]))
    return (_field(x, "doc_id"), int(_field(x, "char_start")), int(_field(x, "char_end")))


def _as_citation(x: CitationLike) -> tuple[str, int, int, str]:
    quote = x[3] if isinstance(x, (tuple, list)) else _field(x, "quote")
    return (*as_span(x), quote)


# --------------------------------------------------------------------------------------------------------------------
# Retrieval at the level of gold units, whatever the segmentation
# --------------------------------------------------------------------------------------------------------------------

Unit = Literal["passage", "document"]


def span_overlap(a: SpanLike, b: SpanLike) -> int:
    """Characters shared by two spans; 0 when they are in different documents.

    >>> span_overlap(("d", 0, 10), ("d", 5, 20)), span_overlap(("d", 0, 10), ("e", 0, 10))
    (5, 0)
    """
    (doc_a, start_a, end_a), (doc_b, start_b, end_b) = as_span(a), as_span(b)
    if doc_a != doc_b:
        return 0
    return max(0, min(end_a, end_b) - max(start_a, start_b))


def passage_id(span: SpanLike) -> str:
    """Unit id of a gold evidence passage: ``"doc_id:start-end"``."""
    doc, start, end = as_span(span)
    return f"{doc}:{start}-{end}"


def segment_id(span: SpanLike) -> str:
    """Unit id of a retrieved segment that hits no gold passage: ``"doc_id:seg-start-end"`` (never a passage id)."""
    doc, start, end = as_span(span)
    return f"{doc}:seg-{start}-{end}"


def hits(segment: SpanLike, gold: SpanLike) -> bool:
    """A segment retrieves a gold passage when most of one lies in the other: overlap >= half the shorter span.

    The criterion is symmetric so that it is fair to every segmentation: a small window inside a long gold paragraph
    counts, and so does a long segment that contains a short gold sentence.
    """
    (_, seg_start, seg_end), (_, gold_start, gold_end) = as_span(segment), as_span(gold)
    shared = span_overlap(segment, gold)
    return shared > 0 and 2 * shared >= min(seg_end - seg_start, gold_end - gold_start)


def judge_segments(retrieved: Sequence[SpanLike], evidence: Sequence[SpanLike], unit: Unit = "passage") -> list[str]:
    """The unit id of each retrieved segment, in rank order.

    ``unit="document"``: the segment's doc_id. ``unit="passage"``: the :func:`passage_id` of the gold evidence span the
    segment :func:`hits`, else the segment's own :func:`segment_id`. When a segment hits several gold passages it is
    credited with one: preferably one that no higher-ranked segment was credited with (so two windows over two short
    gold sentences retrieve both), then the one it overlaps most, then the first in ``evidence``.

    >>> judge_segments([("d", 0, 100), ("d", 500, 600), ("e", 0, 50)], [("d", 40, 140)])
    ['d:40-140', 'd:seg-500-600', 'e:seg-0-50']
    """
    if unit == "document":
        return [as_span(s)[0] for s in retrieved]
    if unit != "passage":
        raise ValueError(f"unit must be 'passage' or 'document', got {unit!r}")
    gold = [as_span(g) for g in evidence]
    credited: set[Span] = set()
    units = []
    for seg in map(as_span, retrieved):
        candidates = [g for g in gold if hits(seg, g)]
        if not candidates:
            units.append(segment_id(seg))
            continue
        best = max(candidates, key=lambda g: (g not in credited, span_overlap(seg, g)))  # max keeps the first tie
        credited.add(best)
        units.append(passage_id(best))
    return units


def evidence_qrels(evidence: Sequence[SpanLike], unit: Unit = "passage") -> dict[str, int]:
    """Relevance judgments (grade 1) of a question's gold evidence, keyed like :func:`judge_segments`' ids."""
    if unit == "document":
        return {as_span(g)[0]: 1 for g in evidence}
    if unit != "passage":
        raise ValueError(f"unit must be 'passage' or 'document', got {unit!r}")
    return {passage_id(g): 1 for g in evidence}


def units_to_run(units: Sequence[str], penalize_duplicates: bool = False) -> dict[str, float]:
    """A trec_eval run for one question: each unit at its best (first) rank, scores strictly decreasing by rank.

    trec_eval ranks by score, so the score is ``1 / (rank + 1)``. By default repeats are dropped and later units move
    up (the usual max-passage convention: k is counted in distinct units). With ``penalize_duplicates`` a repeat keeps
    its rank as a non-relevant filler, so cut-offs count retrieved segments instead.

    >>> units_to_run(["a", "b", "a", "c"])
    {'a': 1.0, 'b': 0.5, 'c': 0.25}
    """
    run: dict[str, float] = {}
    for rank, unit_id in enumerate(units):
        if unit_id in run:
            if not penalize_duplicates:
                continue
            unit_id = f"{unit_id}#repeat{rank}"  # never in the qrels, so it is a miss at this rank
        run[unit_id] = 1.0 / (rank + 1)
    return run


def _top(run: Mapping[str, float], k: int) -> dict[str, float]:
    # The k best-scored units. Runs from units_to_run have distinct scores; for other runs ties go to the larger unit
    # id, which is trec_eval's own tie order, so the cut keeps the units trec_eval would rank first.
    return dict(sorted(run.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:k])


def retrieval_metrics(
    run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, dict[str, float]]:
    """Per-question ``recall@k`` (each k in ``ks``), ``mrr@10`` and ``ndcg@10``, computed by trec_eval (pytrec_eval).

    Only questions with at least one relevant unit (grade > 0) in ``qrels`` are scored, as trec_eval has nothing to
    measure otherwise; a scored question missing from ``run`` or with an empty run scores 0 everywhere. nDCG is
    trec_eval's: gain = the relevance grade (linear, not 2^grade - 1), discount log2(rank + 1), ideal ranking from all
    judged units. ``mrr@10`` is trec_eval's recip_rank on the run cut to its top 10.
    """
    has_relevant = [qid for qid, rel in qrels.items() if max(rel.values(), default=0) > 0]
    scored = {qid: {u: int(g) for u, g in qrels[qid].items()} for qid in has_relevant}
    if not scored:
        return {}
    full_run = {qid: {u: float(s) for u, s in run.get(qid, {}).items()} for qid in scored}
    cut_run = {qid: _top(r, 10) for qid, r in full_run.items()}
    recall_keys = ",".join(str(k) for k in ks)
    main = pytrec_eval.RelevanceEvaluator(scored, {f"recall.{recall_keys}", "ndcg_cut.10"}).evaluate(full_run)
    rr = pytrec_eval.RelevanceEvaluator(scored, {"recip_rank"}).evaluate(cut_run)
    out = {}
    for qid in scored:
        m, r = main.get(qid, {}), rr.get(qid, {})  # pytrec_eval may leave out a question with an empty run
        out[qid] = {f"recall@{k}": m.get(f"recall_{k}", 0.0) for k in ks}
        out[qid]["mrr@10"] = r.get("recip_rank", 0.0)
        out[qid]["ndcg@10"] = m.get("ndcg_cut_10", 0.0)
    return out


def _padded(tokens: Sequence[str]) -> str:
    # Spaces on both sides make substring search match whole tokens only: " 3 " is not inside " 1930 ".
    return " " + " ".join(tokens) + " "


def answer_recall_at_k(
    retrieved_texts: Sequence[str], answers: str | Iterable[str], k: int, lang: str = "en"
) -> float | None:
    """1.0 if a gold answer occurs, as a run of whole normalized tokens, in one of the top-k retrieved texts.

    None when there is no gold answer to look for (answers that normalize to nothing, like "the", are ignored).

    >>> answer_recall_at_k(["It was built in 1930."], ["3"], k=1), answer_recall_at_k(["Built in 1930"], ["1930"], k=1)
    (0.0, 1.0)
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    needles = [_padded(t) for t in (answer_tokens(a, lang) for a in _as_golds(answers)) if t]
    if not needles:
        return None
    haystacks = [_padded(answer_tokens(text, lang)) for text in retrieved_texts[:k]]
    return float(any(n in h for n in needles for h in haystacks))


# --------------------------------------------------------------------------------------------------------------------
# Citations: is the quote verbatim, and does it point at the gold evidence
# --------------------------------------------------------------------------------------------------------------------


def quote_valid(citation: CitationLike, doc_text: str | None) -> float:
    """1.0 iff the cited span is non-empty, inside the document, and its text is exactly the quote.

    >>> quote_valid(("d", 4, 9, "quick"), "The quick fox"), quote_valid(("d", 4, 9, "quack"), "The quick fox")
    (1.0, 0.0)
    """
    _, start, end, quote = _as_citation(citation)
    if doc_text is None or not 0 <= start < end <= len(doc_text):
        return 0.0
    return float(doc_text[start:end] == quote)


def quote_validity(citations: Sequence[CitationLike], doc_texts: Mapping[str, str]) -> float | None:
    """Mean :func:`quote_valid` over a question's citations (a citation of an unknown document is invalid); None if
    there are no citations."""
    if not citations:
        return None
    cits = [_as_citation(c) for c in citations]
    return sum(quote_valid(c, doc_texts.get(c[0])) for c in cits) / len(cits)


def _supported(citation: CitationLike, evidence: Sequence[SpanLike]) -> bool:
    return any(span_overlap(citation, g) > 0 for g in evidence)


def citation_precision(citations: Sequence[CitationLike], evidence: Sequence[SpanLike]) -> float | None:
    """Fraction of citations that overlap a gold evidence span (same document, at least one character); None if there
    are no citations. With no gold evidence every citation is unsupported (0.0): leave out questions whose dataset
    has no evidence annotation."""
    if not citations:
        return None
    return sum(_supported(c, evidence) for c in citations) / len(citations)


def citation_recall(citations: Sequence[CitationLike], evidence: Sequence[SpanLike]) -> float | None:
    """1.0 if any citation overlaps the gold evidence, else 0.0; None when the question has no gold evidence."""
    if not evidence:
        return None
    return float(any(_supported(c, evidence) for c in citations))


# --------------------------------------------------------------------------------------------------------------------
# Aggregation and uncertainty over questions
# --------------------------------------------------------------------------------------------------------------------


def _defined(values: Iterable[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None], dtype=float)


def mean_defined(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None; None if there are none.

    >>> mean_defined([1.0, None, 0.0, 0.5])
    0.5
    """
    x = _defined(values)
    return float(x.mean()) if x.size else None


def mean_per_metric(per_question: Mapping[str, Mapping[str, float | None]]) -> dict[str, float | None]:
    """``{metric: mean over questions}`` of per-question metric dicts (as :func:`retrieval_metrics` returns)."""
    names = dict.fromkeys(name for metrics in per_question.values() for name in metrics)
    return {name: mean_defined(m.get(name) for m in per_question.values()) for name in names}


def percentile(values: Iterable[float | None], q: float) -> float | None:
    """The q-th percentile (0-100, linear interpolation as numpy's default) of the defined values, e.g. latency p95.

    >>> percentile([10, 20, 30, 40, None], 50)
    25.0
    """
    x = _defined(values)
    return float(np.percentile(x, q)) if x.size else None


# Resample in blocks of at most this many drawn indices, so memory stays bounded (32 MB of int64) at any size.
_BLOCK_ELEMENTS = 1 << 22


def _bootstrap_means(x: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of ``n_resamples`` resamples of ``x`` with replacement, vectorized, deterministic given the seed."""
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK_ELEMENTS // x.size)
    means = [
        x[rng.integers(0, x.size, size=(min(rows, n_resamples - done), x.size))].mean(axis=1)
        for done in range(0, n_resamples, rows)
    ]
    return np.concatenate(means)


def _interval(boot: np.ndarray, alpha: float) -> tuple[float, float]:
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_ci(
    values: Iterable[float | None], n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float | None, float | None, float | None]:
    """``(mean, low, high)``: the mean of the defined values and its percentile-bootstrap 1 - alpha interval.

    Questions are resampled with replacement; None values are dropped first. All three are None with no values.
    """
    x = _defined(values)
    if not x.size:
        return None, None, None
    return (float(x.mean()), *_interval(_bootstrap_means(x, n_resamples, seed), alpha))


def paired_bootstrap(
    a: Sequence[float | None],
    b: Sequence[float | None],
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float | None]:
    """Compare systems A and B scored on the same questions (``a[i]`` and ``b[i]`` are question i).

    Only questions where both are defined count. Returns ``diff`` = mean(a - b), its percentile-bootstrap interval
    ``low``/``high``, and a two-sided ``p_value``: the fraction of resampled mean differences that are 0 or of the
    sign opposite to the observed ``diff``, doubled and capped at 1 (1.0 when ``diff`` is 0). Resampling pairs keeps
    the correlation between the systems, which makes the test far more sensitive than comparing two separate CIs.
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same questions, got {len(a)} and {len(b)} values")
    d = np.asarray([x - y for x, y in zip(a, b) if x is not None and y is not None], dtype=float)
    if not d.size:
        return {"diff": None, "low": None, "high": None, "p_value": None}
    diff = float(d.mean())
    boot = _bootstrap_means(d, n_resamples, seed)
    low, high = _interval(boot, alpha)
    return {"diff": diff, "low": low, "high": high, "p_value": _sign_p_value(boot, diff)}


def _sign_p_value(boot: np.ndarray, diff: float) -> float:
    if diff == 0:
        return 1.0
    opposite = boot <= 0 if diff > 0 else boot >= 0
    return min(1.0, 2 * float(opposite.mean()))
