"""Per-question metrics of the evaluation harness, and the aggregators that turn them into numbers with error bars.

Every metric scores ONE question and returns a float, or ``None`` when that question cannot be scored by it (an
unanswerable question has no answer F1, a question without citations has no citation precision). The harness keeps
the per-question values so it can average them with :func:`mean_defined` and put confidence intervals on them with
:func:`bootstrap_ci` / :func:`paired_bootstrap` (resampling questions, the unit the benchmarks sample).

Spans are ``(doc_id, char_start, char_end)`` with ``char_end`` exclusive. Anything span-shaped is accepted: a tuple,
a mapping with those keys, or an object with those attributes (``GoldSpan``, ``Segment``, a citation record), so this
module does not depend on the dataset loaders. Citations are spans with a ``quote`` (4-tuples or records).

Sections: answer text (SQuAD v1.1 / MLQA) and citations, from `model_common.answer_metrics` (re-exported here: the
reward functions score with the same code, and the model packages never import `ragless`); abstention (SQuAD v2.0),
retrieval at the level of gold units (trec_eval through pytrec_eval), aggregation and uncertainty.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
import pytrec_eval

# Answer text, spans and citations: shared with the model packages' rewards and reports, re-exported here
from model_common.answer_metrics import (  # noqa: F401
    LANGUAGES,
    CitationLike,
    CitationRecord,
    Span,
    SpanLike,
    SpanRecord,
    _as_golds,
    answer_tokens,
    as_span,
    citation_precision,
    citation_recall,
    exact_match,
    normalize_answer,
    quote_valid,
    quote_validity,
    span_overlap,
    token_f1,
)

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
# Retrieval at the level of gold units, whatever the segmentation
# --------------------------------------------------------------------------------------------------------------------

Unit = Literal["passage", "document"]


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
