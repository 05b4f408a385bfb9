"""`ragless eval`: run systems over a benchmark and score them with the same metrics, side by side.

    report = evaluate(EvalConfig(dataset="squad-v2.0", systems=("workflow-bm25", "ragless"), limit=200))
    print(markdown(report))

Every question is scored on its own (``per_question``) so that each aggregate comes with a bootstrap confidence
interval, and two systems can be compared with a paired bootstrap on the same questions (`compare`).

Retrieval is judged against gold evidence as character spans, so any segmentation can be scored: for SQuAD and XQuAD
a retrieved segment counts for the gold paragraph it mostly covers (or that mostly covers it), for SciFact and
spf-fr the unit is the document (graded qrels for SciFact). See `ragless.eval.metrics.judge_segments`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from ragless.eval import metrics as M
from ragless.eval.datasets import EvalQuestion, EvalSet, load
from ragless.eval.systems import (
    SYSTEMS,
    PassageSegmenter,
    SharedEmbeddings,
    check_system_name,
    default_segmenter,
    make_system,
)
from retrieve_generate_model.records import Answer, Source

CORPUS_MODES = ("gold", "articles")
KS = (1, 5, 10)


def cutoffs(k: int) -> tuple[int, ...]:
    """The ranks recall is reported at: 1, 5, 10 and, when more are retrieved, ``k`` itself (SciFact's recall@100).

    >>> cutoffs(10), cutoffs(100), cutoffs(3)
    ((1, 5, 10), (1, 5, 10, 100), (1, 5, 10))
    """
    return KS + ((k,) if k > KS[-1] else ())
_NORMALIZATION_LANGS = {"en", "es", "de", "vi", "ar", "hi", "zh"}  # others use the SQuAD (English) normalization


@dataclass(frozen=True)
class EvalConfig:
    dataset: str = "squad-v1.1"  # squad-v1.1 | squad-v2.0 | xquad-<lang> | scifact | spf-fr
    data: str = "../shared/data"  # the folder of public benchmarks (never committed)
    systems: tuple[str, ...] = SYSTEMS  # which systems to run, in the order of the report
    corpus: str = "articles"  # gold: the benchmark's passages are the segments (oracle); articles: systems segment
    limit: int = 200  # questions sampled (the corpus stays whole); 0 = all
    seed: int = 0  # the question sample and the bootstrap
    k: int = 10  # segments retrieved per question (recall at 1, 5, 10, and at k when it is more)
    answer_k: int = 4  # retrieved segments given to the generator
    retrieval_only: bool = False  # skip generation: retrieval and segmentation metrics alone
    bootstrap: int = 1000  # resamples for the confidence intervals
    share_embeddings: bool = False  # systems with the same encoder embed the corpus once (faster; build times lie)
    segmenter: str = ""  # articles mode: every system cuts with this one (fixed-window, learned, a checkpoint folder)
    segmenter_config: dict[str, Any] | None = None  # fixed-window: window_chars, overlap_chars

    def __post_init__(self) -> None:
        if self.corpus not in CORPUS_MODES:
            raise ValueError(f"corpus must be one of {CORPUS_MODES}, got {self.corpus!r}")
        if self.segmenter_config and not self.segmenter:
            raise ValueError("segmenter_config needs a segmenter")
        if self.segmenter and self.corpus == "gold":
            raise ValueError("--segmenter applies to corpus mode articles (gold mode gives every system the passages)")
        if not self.systems:
            raise ValueError(f"no systems; known: {', '.join(SYSTEMS)}, ragless@CHECKPOINT")
        for name in self.systems:
            check_system_name(name)


@dataclass
class SystemResult:
    system: str
    dataset: str
    corpus: str
    n: int
    metrics: dict[str, float | None]
    ci: dict[str, list[float]] = field(default_factory=dict)  # metric -> [low, high], 95% bootstrap
    build: dict[str, Any] = field(default_factory=dict)
    per_question: list[dict[str, Any]] = field(default_factory=list)


def _unit(dataset: str) -> str:
    return "document" if dataset in ("scifact", "spf-fr") else "passage"


def _qrels(q: EvalQuestion, unit: str) -> dict[str, int]:
    return dict(q.relevance) if unit == "document" else M.evidence_qrels(q.evidence, unit)


def _norm_lang(lang: str) -> str:
    return lang if lang in _NORMALIZATION_LANGS else "en"


def score_retrieval(q: EvalQuestion, sources: list[Source], unit: str, ks: tuple[int, ...] = KS
                    ) -> dict[str, float | None]:
    """Retrieval metrics of one question from its ranked segments (recall at each of ``ks``)."""
    qrels = _qrels(q, unit)
    out: dict[str, float | None] = {f"recall@{k}": None for k in ks} | {"mrr@10": None, "ndcg@10": None}
    if any(v > 0 for v in qrels.values()):
        units = M.judge_segments([(s.doc_id, s.char_start, s.char_end) for s in sources], q.evidence, unit)
        out.update(M.retrieval_metrics({q.qid: M.units_to_run(units)}, {q.qid: qrels}, ks)[q.qid])
    texts, lang = [s.text for s in sources], _norm_lang(q.lang)
    out["answer_recall@1"] = M.answer_recall_at_k(texts, q.answers, 1, lang)
    out["answer_recall@5"] = M.answer_recall_at_k(texts, q.answers, 5, lang)
    return out


def score_answer(q: EvalQuestion, answer: Answer, doc_texts: dict[str, str]) -> dict[str, float | None]:
    """Answer, abstention and citation metrics of one question."""
    lang = _norm_lang(q.lang)
    scorable = q.kind in ("span", "unanswerable")  # title and claim questions have no answer text to compare
    cites = [(c.doc_id, c.char_start, c.char_end, c.quote) for c in answer.citations]
    return {
        "em": M.overall_exact_match(answer.text, answer.abstained, q.answers, q.answerable, lang) if scorable else None,
        "f1": M.overall_f1(answer.text, answer.abstained, q.answers, q.answerable, lang) if scorable else None,
        "abstain_acc": M.abstain_correct(answer.abstained, q.answerable),
        "answerable_f1": M.answered_f1(answer.text, answer.abstained, q.answers, q.answerable, lang)
        if scorable else None,
        "quote_validity": M.quote_validity(cites, doc_texts),
        "citation_precision": M.citation_precision(cites, q.evidence) if q.evidence else None,
        "citation_recall": M.citation_recall(cites, q.evidence) if q.answerable and q.evidence else None,
    }


class PeakRSS:
    """The highest resident set size of this process while the block runs, sampled every ``interval`` seconds.

    `resource.getrusage` only knows the peak of the whole process; this gives each system its own, measured from
    where the previous system left the process (what it keeps loaded, e.g. the shared encoder, counts for both).
    """

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak_mb = interval, 0.0
        self._process, self._stop = psutil.Process(), threading.Event()

    def _sample(self) -> None:
        self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 2**20)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakRSS:
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def run_system(name: str, evalset: EvalSet, cfg: EvalConfig, answerers=None, encoder=None,
               engine=None) -> SystemResult:
    """``answerers``: a `Answerers` (or a single answerer for every system); None when retrieval only.
    ``engine``: where questions are answered and scored (`ragless.ray_engine.RayQuestions`); None: here, in turn."""
    with PeakRSS() as rss:
        result = _run_system(name, evalset, cfg, answerers, encoder, engine)
    result.metrics["peak_rss_mb"] = round(rss.peak_mb, 1)
    return result


class Answerers:
    """Each answerer a system names (``system.answerer``), loaded once and shared by the systems that name it."""

    def __init__(self):
        self._loaded: dict[str, Any] = {}

    def get(self, name: str):
        if name not in self._loaded:
            from ragless.components import make_answerer

            self._loaded[name] = make_answerer(name)
        return self._loaded[name]


def question_row(q: EvalQuestion, sources: list[Source], retrieve_s: float, cfg: EvalConfig, unit: str,
                 ks: tuple[int, ...], answerer, document, retrieve=None) -> dict[str, Any]:
    """One question's row of a report: its retrieval scored, and, with an ``answerer`` (None: retrieval only), its
    answer from the first ``cfg.answer_k`` sources, scored; ``document(doc_id)``: the corpus's `Document`. The
    function every engine runs per question (here in a loop; `ragless.ray_engine` on Ray Data actors).
    ``retrieve(query)``: the system's top ``cfg.answer_k`` for a rewritten question, for a second round where the
    model rewrites (`ragless.ask.answer_in_rounds`; None: one round). Retrieval is scored on the first round."""
    from ragless.ask import answer_in_rounds

    timings = {"retrieve_s": retrieve_s}
    stages: dict[str, float] = {}  # the answerer's own stages, within answer_s (the joint model: read_s, ...)
    row: dict[str, Any] = {"qid": q.qid, "kind": q.kind, "lang": q.lang, **score_retrieval(q, sources, unit, ks)}
    row["retrieved"] = [[s.doc_id, s.char_start, s.char_end, round(s.score, 4)] for s in sources]
    if answerer is not None:
        t1 = time.perf_counter()
        answer = answer_in_rounds(answerer, q.question, sources[: cfg.answer_k], retrieve,
                                  lambda doc_id: document(doc_id).text)
        timings["answer_s"] = time.perf_counter() - t1
        stages = {f"answer.{k}": v for k, v in answer.timings.items()}
        doc_texts = {c.doc_id: document(c.doc_id).text for c in answer.citations}
        row.update(score_answer(q, answer, doc_texts))
        row["answer"] = answer.text
        row["abstained"] = answer.abstained
        row["citations"] = [[c.doc_id, c.char_start, c.char_end] for c in answer.citations]
        row["rewritten_query"] = answer.rewritten_query
        row["second_round"] = float(answer.rewritten_query is not None)  # the share of questions the model rewrote
    timings["total_s"] = sum(timings.values())
    row["timings"] = {k: round(v, 4) for k, v in {**timings, **stages}.items()}
    return row


def _retrieve(system, q: EvalQuestion, k: int) -> tuple[list[Source], float]:
    t0 = time.perf_counter()
    sources = system.retrieve([q.question], k)[0]
    return sources, time.perf_counter() - t0


def _run_system(name: str, evalset: EvalSet, cfg: EvalConfig, answerers=None, encoder=None,
                engine=None) -> SystemResult:
    lang = evalset.questions[0].lang if evalset.questions else "en"
    system = make_system(name, lang=lang, encoder=encoder)
    if cfg.corpus == "gold":
        segmenter = PassageSegmenter(evalset.passages)
    elif cfg.segmenter:
        from ragless.components import segmenter_from_arg

        segmenter = segmenter_from_arg(cfg.segmenter, cfg.segmenter_config)
    else:
        segmenter = default_segmenter(system)
    build = {**system.build(evalset.documents, segmenter), "segmenter": segmenter.name}
    unit, ks = _unit(evalset.name), cutoffs(cfg.k)
    if engine is not None:  # retrieval here, answering and scoring on the engine's workers
        retrieved = [_retrieve(system, q, cfg.k) for q in evalset.questions]
        rows = engine.question_rows(evalset, retrieved, cfg, unit, ks, None if cfg.retrieval_only else system.answerer)
        return summarize(name, evalset.name, cfg, rows, build)
    answerer = answerers.get(system.answerer) if isinstance(answerers, Answerers) else answerers
    rows = []
    for q in evalset.questions:
        sources, retrieve_s = _retrieve(system, q, cfg.k)
        rows.append(question_row(q, sources, retrieve_s, cfg, unit, ks, answerer, evalset.document,
                                 retrieve=lambda query: system.retrieve([query], cfg.answer_k)[0]))
    return summarize(name, evalset.name, cfg, rows, build)


def summarize(system: str, dataset: str, cfg: EvalConfig, rows: list[dict[str, Any]], build: dict) -> SystemResult:
    """Aggregate per-question rows into metrics with bootstrap intervals and latency percentiles."""
    names = [k for k in rows[0] if k not in ("qid", "kind", "lang", "retrieved", "answer", "abstained", "citations",
                                             "rewritten_query", "timings")] if rows else []
    metrics: dict[str, float | None] = {}
    ci: dict[str, list[float]] = {}
    for name in names:
        values = [r[name] for r in rows]
        mean = M.mean_defined(values)
        if mean is None:
            continue
        metrics[name] = round(mean, 4)
        _, low, high = M.bootstrap_ci(values, n_resamples=cfg.bootstrap, seed=cfg.seed)
        ci[name] = [round(low, 4), round(high, 4)]
    stages = dict.fromkeys(["retrieve_s", "answer_s", "total_s"] + [k for r in rows for k in r["timings"]])
    for stage in stages:  # e.g. latency_answer_p50_s, and the answerer's own: latency_answer_read_p50_s
        values = [r["timings"][stage] for r in rows if stage in r["timings"]]
        if values:
            short = stage.removesuffix("_s").replace(".", "_")
            metrics[f"latency_{short}_p50_s"] = round(M.percentile(values, 50), 4)
            metrics[f"latency_{short}_p95_s"] = round(M.percentile(values, 95), 4)
    if "latency_total_p50_s" in metrics:
        metrics["latency_p50_s"] = metrics["latency_total_p50_s"]
        metrics["latency_p95_s"] = metrics["latency_total_p95_s"]
    metrics["segments"] = build.get("segments")
    metrics["mean_segment_chars"] = build.get("mean_segment_chars")
    return SystemResult(system, dataset, cfg.corpus, len(rows), metrics, ci, build, rows)


def evaluate(cfg: EvalConfig, progress=print, engine=None) -> dict[str, Any]:
    """Run every system of ``cfg`` on its dataset; the report that `ragless eval --out` writes.

    ``engine``: where the questions are answered and scored, e.g. ``RayQuestions(RayConfig())`` of
    `ragless.ray_engine` (the report then names it under "engine"); None: in this process, one after another."""
    evalset = load(cfg.dataset, cfg.data, limit=cfg.limit or None, seed=cfg.seed)
    answerers = None if cfg.retrieval_only or engine is not None else Answerers()
    encoder = None
    if "workflow-dense" in cfg.systems or any(s.startswith("ragless") for s in cfg.systems):
        from retrieve_generate_model.encoder import Encoder

        encoder = SharedEmbeddings(Encoder()) if cfg.share_embeddings else Encoder()
    results = []
    for name in cfg.systems:
        t0 = time.perf_counter()
        progress(f"{cfg.dataset} [{cfg.corpus}] {name}: {len(evalset.questions)} questions ...")
        results.append(run_system(name, evalset, cfg, answerers, encoder, engine))
        progress(f"  done in {time.perf_counter() - t0:.0f}s")
    return {
        "config": asdict(cfg),
        **({"engine": engine.describe()} if engine is not None else {}),
        "dataset": {"name": evalset.name, "source": evalset.source, "unit": _unit(evalset.name)},
        "results": [asdict(r) for r in results],
    }


def compare(report: dict[str, Any], baseline: str | None = None, n_resamples: int = 1000) -> list[dict[str, Any]]:
    """Paired bootstrap of each system against ``baseline`` (default: the first) on every shared metric."""
    results = {r["system"]: r for r in report["results"]}
    base = results[baseline or report["results"][0]["system"]]
    rows = []
    for name, result in results.items():
        if name == base["system"]:
            continue
        for metric in result["metrics"]:
            if metric not in result["ci"]:
                continue  # latencies and counts: no per-question pairing
            a = [q.get(metric) for q in result["per_question"]]
            b = [q.get(metric) for q in base["per_question"]]
            if M.mean_defined(a) is None or M.mean_defined(b) is None:
                continue
            stats = M.paired_bootstrap(a, b, n_resamples=n_resamples, seed=report["config"]["seed"])
            rows.append({"system": name, "baseline": base["system"], "metric": metric,
                         **{k: round(v, 4) for k, v in stats.items()}})
    return rows


TABLE_METRICS = ("recall@1", "recall@5", "recall@100", "mrr@10", "ndcg@10", "answer_recall@1", "answer_recall@5",
                 "em", "f1", "abstain_acc", "answerable_f1", "quote_validity", "citation_precision", "latency_p50_s",
                 "latency_p95_s", "segments", "mean_segment_chars", "peak_rss_mb")


def markdown(report: dict[str, Any], with_ci: bool = True) -> str:
    """The systems of one report as a table: a row per system, a column per metric that any system has."""
    results = report["results"]
    cols = [m for m in TABLE_METRICS if any(r["metrics"].get(m) is not None for r in results)]
    head = "| system | dataset | corpus | n | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (4 + len(cols))]
    for r in results:
        cells = []
        for m in cols:
            v = r["metrics"].get(m)
            if v is None:
                cells.append("")
            elif with_ci and m in r["ci"]:
                lo, hi = r["ci"][m]
                cells.append(f"{v:.3f} [{lo:.2f}, {hi:.2f}]")
            else:
                cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append(f"| {r['system']} | {r['dataset']} | {r['corpus']} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_compare(rows: list[dict[str, Any]]) -> str:
    lines = ["| system | vs | metric | diff | 95% CI | p |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['system']} | {r['baseline']} | {r['metric']} | {r['diff']:+.3f} | "
                     f"[{r['low']:+.3f}, {r['high']:+.3f}] | {r['p_value']:.3f} |")
    return "\n".join(lines)
