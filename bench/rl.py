"""Reinforcement learning against supervised training only (issue 6), paired on the same questions.

Two parts, each through the evaluation harness (`ragless.eval.harness.evaluate`, what `ragless eval` runs):

- **joint**: the SFT-only joint checkpoint and the RL one (`ragless train rl`) as ``ragless@SFT`` and ``ragless@RL``
  on SQuAD v1.1 (``articles``, 200 questions: answer F1/EM, citation precision, quote validity) and SQuAD v2.0
  (``articles``, 100 questions: abstention on the unanswerable ones, answerable F1); the paired bootstrap of RL
  against SFT per metric (`harness.compare`). Both use the same retrieval (same segmenter, lexical channel and
  question tower), so what differs is the generator's choices: route, sources relied on, citations and quotes.
- **segmenter**: the shipped segmenter and the one after its policy-gradient stage (`ragless train segmenter-rl`),
  each cutting the corpus for the ``ragless`` system (retrieval only), on SQuAD v2.0 (1000 questions, articles the
  segmenter never saw) and the French pages (all questions); answer-containment recall (`answer_recall@k`: a gold
  answer string is in one of the top k segments) and gold-paragraph recall, paired per question.

Reports go to ``bench/results/rl/`` (the ``compare`` rows are what `notebooks/rl_training.ipynb` plots) and the
tables into BENCHMARKS.md. A part whose report exists is skipped unless ``--force``.

    python bench/rl.py --data ../shared/data --sft checkpoints/joint-sft --rl checkpoints/joint \\
        --segmenter-before checkpoints/segmenter --segmenter-after checkpoints/segmenter-rl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# the repository root first, and not bench/ itself: bench/kernels.py would shadow the `kernels` package that
# transformers imports
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.common import RESULTS, git_commit, machine, markdown_table, update_benchmarks_md  # noqa: E402
from ragless.eval import metrics as M  # noqa: E402
from ragless.eval.harness import EvalConfig, compare, evaluate  # noqa: E402

OUT = RESULTS / "rl"
JOINT = (("squad-v1.1", 200), ("squad-v2.0", 100))
JOINT_METRICS = ("f1", "em", "answerable_f1", "abstain_acc", "quote_validity", "citation_precision",
                 "citation_recall")
SEGMENTER = (("squad-v2.0", 1000), ("spf-fr", 0))
SEGMENTER_METRICS = ("answer_recall@1", "answer_recall@5", "recall@1", "recall@5")


def _strip(report: dict) -> dict:
    for result in report["results"]:
        result.pop("per_question", None)  # megabytes; `ragless eval --out` keeps them for whoever wants them
    return report


def _have(path: Path, force: bool) -> bool:
    """Whether ``path`` already holds this entry's report (kept unless ``force``)."""
    if path.exists() and not force:
        print(f"have {path.name}", file=sys.stderr)
        return True
    return False


def _write(path: Path, report: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, ensure_ascii=False))
    tmp.replace(path)  # whole or absent: an interrupted run resumes cleanly


def joint_part(data: str, sft: str, rl: str, force: bool, only: str | None = None) -> None:
    for dataset, limit in JOINT:
        if only and dataset != only:
            continue
        path = OUT / f"joint.{dataset}.json"
        if _have(path, force):
            continue
        cfg = EvalConfig(dataset=dataset, data=data, corpus="articles", limit=limit, seed=0,
                         systems=(f"ragless@{sft}", f"ragless@{rl}"))
        t0 = time.perf_counter()
        report = evaluate(cfg, progress=lambda msg: print(msg, file=sys.stderr))
        report["compare"] = compare(report, n_resamples=cfg.bootstrap)
        report.update(command=f"ragless eval --dataset {dataset} --data ../shared/data --corpus articles --limit "
                              f"{limit} --seed 0 --systems ragless@{sft},ragless@{rl} --compare",
                      machine=machine(), commit=git_commit(), wall_s=round(time.perf_counter() - t0, 1))
        _write(path, _strip(report))


def segmenter_part(data: str, before: str, after: str, force: bool, only: str | None = None) -> None:
    for dataset, limit in SEGMENTER:
        if only and dataset != only:
            continue
        path = OUT / f"segmenter.{dataset}.json"
        if _have(path, force):
            continue
        t0 = time.perf_counter()
        runs = []
        for segmenter in (before, after):
            cfg = EvalConfig(dataset=dataset, data=data, corpus="articles", limit=limit, seed=0, systems=("ragless",),
                             retrieval_only=True, segmenter=segmenter)
            (result,) = evaluate(cfg, progress=lambda msg: print(msg, file=sys.stderr))["results"]
            result["system"] = f"ragless, segmenter {segmenter}"
            runs.append(result)
        by_qid = [{q["qid"]: q for q in r["per_question"]} for r in runs]
        qids = [q["qid"] for q in runs[0]["per_question"]]
        rows = []
        for metric in SEGMENTER_METRICS:
            a = [by_qid[1][q].get(metric) for q in qids]
            b = [by_qid[0][q].get(metric) for q in qids]
            stats = M.paired_bootstrap(a, b, seed=0)
            rows.append({"system": runs[1]["system"], "baseline": runs[0]["system"], "metric": metric,
                         **{k: (round(v, 4) if v is not None else None) for k, v in stats.items()}})
        report = {"config": {"dataset": dataset, "limit": limit, "seed": 0, "corpus": "articles"},
                  "results": runs, "compare": rows,
                  "command": " ; ".join(f"ragless eval --dataset {dataset} --data ../shared/data --corpus articles "
                                        f"--limit {limit} --seed 0 --systems ragless --retrieval-only --segmenter {s}"
                                        for s in (before, after)),
                  "machine": machine(), "commit": git_commit(), "wall_s": round(time.perf_counter() - t0, 1)}
        _write(path, _strip(report))


def _cell(result: dict, metric: str) -> str:
    value, ci = result["metrics"].get(metric), result["ci"].get(metric)
    if value is None:
        return ""
    return f"{value:.3f} ({ci[0]:.2f}–{ci[1]:.2f})" if ci else f"{value:.3f}"


def _diff(row: dict) -> str:
    if row["diff"] is None:
        return ""
    return f"{row['diff']:+.3f} ({row['low']:+.3f} to {row['high']:+.3f})"


def tables() -> str:
    parts = ["## Reinforcement learning against SFT only (issue 6)", "",
             "`python bench/rl.py --data ../shared/data ...` (the module docstring has the full command); each "
             "value is the mean over the questions with its 95% bootstrap interval, each difference RL − SFT with "
             "its 95% paired-bootstrap interval over the same questions (an interval across 0: no measured "
             "difference). Reward curves and KL per step: `notebooks/rl_training.ipynb`."]
    for path in sorted(OUT.glob("joint.*.json")):
        r = json.loads(path.read_text())
        sft, rl = r["results"]
        metrics = [m for m in JOINT_METRICS if sft["metrics"].get(m) is not None]
        diffs = {row["metric"]: row for row in r["compare"]}
        parts += ["", f"Joint model, {r['config']['dataset']} (`articles`, {sft['n']} questions, commit "
                      f"{r['commit']}, {r['wall_s']:.0f} s): `{r['command']}`", "",
                  markdown_table(["metric", sft["system"], rl["system"], "RL − SFT"],
                                 [[m, _cell(sft, m), _cell(rl, m), _diff(diffs[m]) if m in diffs else ""]
                                  for m in metrics])]
    for path in sorted(OUT.glob("segmenter.*.json")):
        r = json.loads(path.read_text())
        before, after = r["results"]
        diffs = {row["metric"]: row for row in r["compare"]}
        parts += ["", f"Segmenter before and after its RL stage, {r['config']['dataset']} (`articles`, "
                      f"{before['n']} questions, retrieval by the `ragless` path, commit {r['commit']}, "
                      f"{r['wall_s']:.0f} s): `{r['command']}`", "",
                  markdown_table(["metric", before["system"], after["system"], "after − before"],
                                 [[m, _cell(before, m), _cell(after, m), _diff(diffs[m])]
                                  for m in SEGMENTER_METRICS])]
    reports = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    for m in {json.dumps(r["machine"], sort_keys=True): r["machine"] for r in reports}.values():
        parts += ["", f"Machine: {m['cores']} cores ({m['cpu']}), torch {m['torch']}, {m['gpu'] or 'no GPU'}."]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--sft", default="joint-sft", help="the SFT-only joint checkpoint")
    parser.add_argument("--rl", default="joint-rl", help="the joint checkpoint after `ragless train rl`")
    parser.add_argument("--segmenter-before", default="checkpoints/segmenter")
    parser.add_argument("--segmenter-after", default="checkpoints/segmenter-rl")
    parser.add_argument("--part", choices=("joint", "segmenter", "all"), default="all")
    parser.add_argument("--only", help="run only this dataset's entries (e.g. squad-v2.0)")
    parser.add_argument("--force", action="store_true", help="re-run parts that already have a report")
    parser.add_argument("--tables-only", action="store_true", help="rebuild BENCHMARKS.md from existing reports")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.tables_only:
        if args.part in ("joint", "all"):
            joint_part(args.data, args.sft, args.rl, args.force, args.only)
        if args.part in ("segmenter", "all"):
            segmenter_part(args.data, args.segmenter_before, args.segmenter_after, args.force, args.only)
    md = tables()
    update_benchmarks_md("rl", md)
    print(md)


if __name__ == "__main__":
    main()
