"""Learned segmentation against fixed 512-character windows and the gold paragraphs, with BM25 and base MiniLM.

For each dataset, the same two retrievers (``workflow-bm25``, ``workflow-dense``) index the corpus several ways: cut
by the fixed-window baseline (512 characters, 64 overlap), cut by the shipped learned segmenter (corpus mode
``articles``), cut by fixed windows as long as the learned segments are on average (so that a win is not only a matter
of length), by the checkpoint trained without the French pages (spf-fr only: its zero-shot regime), and the
benchmark's own paragraphs (corpus mode ``gold``, the oracle). What changes between rows is only the segmentation.
Then ingestion throughput and peak RSS of `ragless ingest` with each segmenter on the same corpus (SQuAD v1.1 dev
paragraphs), and the checkpoint's held-out synthetic scores from its training log.

    python bench/segmentation.py --data ../shared/data           # writes bench/results/segmentation.json, BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the repository root first, and not bench/ itself: bench/kernels.py would shadow the `kernels` package that
# transformers imports
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.common import markdown_table, metric_cell, save_results, update_benchmarks_md  # noqa: E402
from bench.ingest import write_corpus  # noqa: E402
from ragless.components import CHECKPOINTS, SEGMENTER_CHECKPOINT  # noqa: E402
from ragless.eval.harness import EvalConfig, evaluate  # noqa: E402

COMMAND = "python bench/segmentation.py --data ../shared/data"
SYSTEMS = ("workflow-bm25", "workflow-dense")
# (dataset, question limit (0 = all), regime of the shipped checkpoint on it)
DATASETS = (
    ("squad-v2.0", 1000, "zero-shot: no text of these 35 articles in training"),
    ("squad-v1.1", 1000, "13 of the 48 articles' text (not their questions) in training"),
    ("spf-fr", 0, "adapted: the 535 pages' text (never their questions or titles) in training"),
)
ZERO_SHOT = "segmenter-no-spf"  # the same recipe without the French pages: spf-fr zero-shot
METRICS = ("answer_recall@1", "answer_recall@5", "recall@1", "recall@5", "mean_segment_chars", "segments")


def _rows(cfg: EvalConfig, dataset: str, regime: str, label: str) -> list[dict]:
    t0 = time.perf_counter()
    report = evaluate(cfg, progress=lambda msg: print(msg, file=sys.stderr))
    return [{"dataset": dataset, "regime": regime, "segmentation": label, "system": r["system"], "n": r["n"],
             "build": r["build"], "metrics": {m: r["metrics"].get(m) for m in METRICS},
             "ci": {m: r["ci"][m] for m in METRICS if m in r["ci"]}, "wall_s": round(time.perf_counter() - t0, 1)}
            for r in report["results"]]


def retrieval_rows(data: str) -> list[dict]:
    """Per dataset: fixed 512-character windows (the workflow baseline), the shipped learned segmenter, fixed windows
    as long as the learned segments are on average (is it only length?), the gold paragraphs; on spf-fr also the
    checkpoint that never saw a French page."""
    rows = []
    for dataset, limit, regime in DATASETS:
        def run(label: str, corpus: str = "articles", segmenter: str = "", window: dict | None = None,
                why: str = regime, dataset: str = dataset, limit: int = limit) -> list[dict]:
            cfg = EvalConfig(dataset=dataset, data=data, systems=SYSTEMS, corpus=corpus, limit=limit, seed=0,
                             retrieval_only=True, segmenter=segmenter, segmenter_config=window)
            return _rows(cfg, dataset, why, label)

        fixed = run("fixed-window (512)", segmenter="fixed-window")
        learned = run("learned", segmenter="learned")
        rows += fixed + learned
        # windows end at natural breaks, so they average less than their size: scale 512 by the ratio of means
        size = round(512 * learned[0]["metrics"]["mean_segment_chars"] / fixed[0]["metrics"]["mean_segment_chars"])
        rows += run(f"fixed-window ({size}: learned's mean length)", segmenter="fixed-window",
                    window={"window_chars": size, "overlap_chars": 64})
        if dataset == "spf-fr" and (CHECKPOINTS / ZERO_SHOT).is_dir():
            rows += run(f"learned, zero-shot ({ZERO_SHOT})", segmenter=str(CHECKPOINTS / ZERO_SHOT),
                        why="zero-shot: no French page in training")
        rows += run("gold paragraphs", corpus="gold")
    return rows


def ingest_rows(data: str, work: Path) -> list[dict]:
    corpus = work / "squad-v1.1-x1.jsonl"
    write_corpus(Path(data), corpus, 1)
    rows = []
    for segmenter in ("fixed-window", "learned"):
        report = work / f"report-{segmenter}.json"
        cmd = [sys.executable, "-m", "ragless.cli", "ingest", str(corpus), "--index", str(work / f"index-{segmenter}"),
               "--segmenter", segmenter, "--report", str(report), "--quiet"]
        subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
        r = json.loads(report.read_text())
        rows.append({"segmenter": segmenter, **{k: r[k] for k in ("documents_added", "segments_added", "elapsed_s",
                                                                  "documents_per_s", "segments_per_s", "peak_rss_mb")}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data")
    args = parser.parse_args()
    checkpoint = CHECKPOINTS / SEGMENTER_CHECKPOINT
    log = [json.loads(line) for line in (checkpoint / "log.jsonl").read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory(prefix="ragless-bench-seg-") as work:
        ingest = ingest_rows(args.data, Path(work))
    retrieval = retrieval_rows(args.data)
    path = save_results("segmentation", {"command": COMMAND, "heldout": log[-1], "retrieval": retrieval,
                                         "ingest": ingest})
    commit = json.loads(path.read_text())["commit"]

    held = log[-1]
    held_table = markdown_table(
        ["step", "units", "accuracy", "boundary F1", "heading F1", "noise F1", "cut precision", "cut recall"],
        [[held["step"], held["units"], held["accuracy"], held["boundary_f1"], held["heading_f1"], held["noise_f1"],
          held["cut_precision"], held["cut_recall"]]])
    table = markdown_table(
        ["dataset", "n", "segmentation", "system", *METRICS],
        [[r["dataset"], r["n"], r["segmentation"], r["system"], *(metric_cell(r, m) for m in METRICS)]
         for r in retrieval])
    fixed, learned = ingest
    ingest_table = markdown_table(
        ["segmenter", "documents", "segments", "job s", "segments/s", "peak RSS MB"],
        [[r["segmenter"], r["documents_added"], r["segments_added"], r["elapsed_s"], r["segments_per_s"],
          r["peak_rss_mb"]] for r in ingest])
    slowdown = learned["elapsed_s"] / fixed["elapsed_s"]
    regimes = "; ".join(f"{d}: {regime}" for d, _, regime in DATASETS)
    md = (
        "## Learned segmentation (issue 4)\n\n"
        f"`{COMMAND}`, commit {commit}. Checkpoint `checkpoints/{SEGMENTER_CHECKPOINT}` (its README has the command "
        "that trained it). Regimes: " + regimes + ".\n\n"
        "Held-out synthetic documents (rendered from held-out training documents; labels by construction). F1 per "
        "label over units; cut precision: the share of the decoder's cuts that fall on gold segment starts; cut "
        "recall is low by design (the decoder keeps gold segments of one section together while they fit the "
        "retriever's 224 word pieces):\n\n"
        f"{held_table}\n\n"
        "Retrieval with each segmentation (same retrievers; 95% bootstrap intervals over questions). "
        "`answer_recall@k`: a gold answer string occurs in one of the top k segments; `recall@k`: the gold paragraph "
        "(SQuAD) or page (spf-fr) is among the top k:\n\n"
        f"{table}\n\n"
        f"Ingestion of SQuAD v1.1 dev paragraphs with each segmenter, same encoder, same run "
        f"(learned / fixed = {slowdown:.2f}x the time):\n\n{ingest_table}\n"
    )
    update_benchmarks_md("segmentation", md)
    print(md)


if __name__ == "__main__":
    main()
