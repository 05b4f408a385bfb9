"""The benchmark matrix: every system on every public dataset, through `ragless eval`, into BENCHMARKS.md.

Each entry of the plan is one `ragless eval` run; its JSON report is written to bench/results/eval/ and the run is
skipped next time unless --force, so an interrupted matrix resumes where it stopped. The tables of BENCHMARKS.md are
rebuilt from all reports present, with the published reference numbers that validate the harness.

    python bench/eval.py --data ../shared/data                       # the whole plan (resumable)
    python bench/eval.py --data ../shared/data --only scifact        # entries whose dataset starts with "scifact"
    python bench/eval.py --data ../shared/data --kind retrieval      # the retrieval-only entries
    python bench/eval.py --data ../shared/data --systems ragless --force   # re-run one system, keep the others

With ``--systems``, only those systems are run and their results replace theirs in each entry's existing report (the
other systems' results stay as they were measured); every result records the commit and date of its own run.
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

from bench.common import RESULTS, git_commit, machine, metric_cell, update_benchmarks_md  # noqa: E402
from ragless.eval.datasets import XQUAD_LANGS  # noqa: E402
from ragless.eval.harness import EvalConfig, evaluate, markdown  # noqa: E402

OUT = RESULTS / "eval"

# (dataset, corpus mode, question limit (0 = all), retrieval only). Retrieval runs use every question where cheap;
# generation (SmolLM2, ~1-3 s per question on 2 cores) uses a sample, stated in the table: 200 questions on SQuAD v1.1
# (answer F1, the main target of the joint model), 100 on v2.0 (abstention: about half are unanswerable).
PLAN: list[tuple[str, str, int, bool]] = [
    ("scifact", "gold", 0, True),
    ("squad-v1.1", "articles", 1000, True),
    ("squad-v2.0", "articles", 1000, True),
    ("spf-fr", "gold", 0, True),
    ("spf-fr", "articles", 0, True),
    *[(f"xquad-{lang}", "articles", 0, True) for lang in XQUAD_LANGS],
    ("squad-v1.1", "articles", 200, False),
    ("squad-v2.0", "articles", 100, False),
    ("xquad-en", "articles", 20, False),
    ("spf-fr", "articles", 20, False),
]

# Segments retrieved per question where the default (10) is not enough: SciFact reports recall@100 (BEIR's second
# measure), so its systems retrieve 100.
RETRIEVE_K = {"scifact": 100}

# Published numbers for the same baselines, to validate the harness (BEIR, Thakur et al. 2021, Table 2 / the
# sentence-transformers model card for all-MiniLM-L6-v2 on BEIR SciFact).
REFERENCES = {
    ("scifact", "workflow-bm25", "ndcg@10"): (0.665, "BEIR paper, BM25 (Elasticsearch)"),
    ("scifact", "workflow-dense", "ndcg@10"): (0.645, "all-MiniLM-L6-v2 on BEIR SciFact (MTEB)"),
}

COLUMNS = ("recall@1", "recall@5", "recall@100", "mrr@10", "ndcg@10", "answer_recall@5", "em", "f1", "abstain_acc",
           "answerable_f1", "quote_validity", "citation_precision", "latency_p50_s", "latency_p95_s",
           "mean_segment_chars", "peak_rss_mb")


def report_path(dataset: str, corpus: str, retrieval_only: bool) -> Path:
    kind = "retrieval" if retrieval_only else "answers"
    return OUT / f"{dataset}.{corpus}.{kind}.json"


def command(dataset: str, corpus: str, limit: int, retrieval_only: bool) -> str:
    flags = " --retrieval-only" if retrieval_only else ""
    flags += f" --k {RETRIEVE_K[dataset]}" if dataset in RETRIEVE_K else ""
    return (f"ragless eval --dataset {dataset} --data ../shared/data --corpus {corpus} --limit {limit} --seed 0"
            f"{flags} --out bench/results/eval/{report_path(dataset, corpus, retrieval_only).name}")


def run_plan(data: str, only: str | None, kind: str | None, force: bool, systems: tuple[str, ...] = (),
             corpus_mode: str | None = None, per_question: str | None = None) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for dataset, corpus, limit, retrieval_only in PLAN:
        if (only and not dataset.startswith(only)) or (kind and (kind == "retrieval") != retrieval_only):
            continue
        if corpus_mode and corpus != corpus_mode:
            continue
        path = report_path(dataset, corpus, retrieval_only)
        if path.exists() and not force:
            print(f"have {path.name}", file=sys.stderr)
            continue
        cfg = EvalConfig(dataset=dataset, data=data, corpus=corpus, limit=limit, retrieval_only=retrieval_only,
                         k=RETRIEVE_K.get(dataset, 10), **({"systems": systems} if systems else {}))
        t0 = time.perf_counter()
        report = evaluate(cfg, progress=lambda msg: print(msg, file=sys.stderr))
        wall = round(time.perf_counter() - t0, 1)
        run = {"commit": git_commit(), "date": time.strftime("%Y-%m-%d"), "wall_s": wall}
        if per_question:  # kept outside the repository (megabytes), for analyses the tables do not make
            Path(per_question).mkdir(parents=True, exist_ok=True)
            rows = {r["system"]: r["per_question"] for r in report["results"]}
            (Path(per_question) / path.name).write_text(json.dumps(rows, ensure_ascii=False))
        for result in report["results"]:  # per-question rows stay out of the repository (megabytes); `ragless eval
            result.pop("per_question")  # --out` keeps them for whoever wants them
            result["run"] = run
        if systems and path.exists():  # one system re-run: the others keep the results they were measured with
            report = merge(json.loads(path.read_text()), report["results"], wall)
        else:
            report["command"] = command(dataset, corpus, limit, retrieval_only)
            report["machine"] = machine()
            report["wall_s"] = wall
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, ensure_ascii=False))
        tmp.replace(path)  # a report is whole or absent, so an interrupted plan resumes cleanly
        print(markdown(report), file=sys.stderr)


def merge(report: dict, results: list[dict], wall_s: float) -> dict:
    """``report`` with ``results`` in place of its results of the same systems (new systems appended), in order."""
    new = {r["system"]: r for r in results}
    merged = [new.pop(r["system"], r) for r in report["results"]] + list(new.values())
    return {**report, "results": merged, "wall_s": round(report["wall_s"] + wall_s, 1)}


def _reruns(report: dict) -> str:
    """Which systems of a report were re-run on their own (``--systems``) after the run its command names."""
    def key(res: dict) -> tuple[str, str]:
        run = res.get("run", {})  # reports written before runs were recorded per result have none
        return run.get("commit", ""), run.get("date", "")

    first = key(report["results"][0])
    later: dict[tuple[str, str], list[str]] = {}
    for res in report["results"]:
        if key(res) != first:
            later.setdefault(key(res), []).append(res["system"])
    return "".join(f"; {', '.join(systems)} re-run at commit {c} ({d})" for (c, d), systems in later.items())


def tables() -> str:
    reports = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    if not reports:
        return "No evaluation reports yet: run `python bench/eval.py --data ../shared/data`."
    parts = []
    for kind, title in (("retrieval", "Retrieval"), ("answers", "Answers")):
        chosen = [r for r in reports if r["config"]["retrieval_only"] == (kind == "retrieval")]
        if not chosen:
            continue
        cols = [c for c in COLUMNS if any(res["metrics"].get(c) is not None for r in chosen for res in r["results"])]
        lines = [f"### {title}", "",
                 "| dataset | corpus | n | system | " + " | ".join(cols) + " |",
                 "|" + "---|" * (4 + len(cols))]
        for r in chosen:
            for res in r["results"]:
                cells = [metric_cell(res, c) for c in cols]
                lines.append(f"| {res['dataset']} | {res['corpus']} | {res['n']} | {res['system']} | "
                             + " | ".join(cells) + " |")
                for (ds, system, metric), (value, where) in REFERENCES.items():
                    if ds == res["dataset"] and system == res["system"] and res["corpus"] == "gold":
                        ref = [f"**{value:.3f}** ({where})" if c == metric else "" for c in cols]
                        lines.append(f"| {ds} | published | | {system} | " + " | ".join(ref) + " |")
        lines += ["", "Commands (one per row group, seed 0):", ""]
        lines += [f"- `{r['command']}` ({r['wall_s']:.0f} s){_reruns(r)}" for r in chosen]
        parts.append("\n".join(lines))
    m = reports[0]["machine"]
    head = (
        "## Evaluation matrix (issue 3)\n\n"
        "`python bench/eval.py --data ../shared/data` runs every entry; each number is the mean over the questions "
        "with its 95% bootstrap interval in parentheses (1,000 resamples over questions). Corpus `gold`: the "
        "benchmark's own passages are every system's segments (an oracle); `articles`: each system segments the "
        "documents itself. Retrieval is judged on character spans: for SQuAD and XQuAD a segment counts for the gold "
        "paragraph it mostly covers (or that mostly covers it); SciFact and spf-fr are judged per document. "
        "`ragless` is the shipped default path: the learned segmenter (`checkpoints/segmenter`, issue 4) and "
        "MiniLM through the on-disk index with the joint model's learned lexical channel "
        "(`checkpoints/joint/lexical`), retrieval as attention over the memory by the fused score, and (answer "
        "rows) the joint model `checkpoints/joint` (issue 5) as answerer; the workflow systems answer with SmolLM2 "
        "prompted with their top 4 (`ragless.prompted`). `ragless` rows run before commit 4e4b169 (2026-12-03) "
        "retrieved by the dense score alone; see each row's commit. "
        f"Machine: {m['cores']} cores ({m['cpu']}), torch {m['torch']}, {m['gpu'] or 'no GPU'}. Latencies are "
        "per question and stage (p50/p95); the 2026-11-29 runs shared the two cores with other jobs part of the "
        "time, so read them as upper bounds."
    )
    return head + "\n\n" + "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--only", help="run only plan entries whose dataset starts with this")
    parser.add_argument("--kind", choices=("retrieval", "answers"), help="run only retrieval or only answer entries")
    parser.add_argument("--force", action="store_true", help="re-run entries that already have a report")
    parser.add_argument("--corpus", choices=("gold", "articles"), help="run only entries of this corpus mode")
    parser.add_argument("--systems", default="", help="run only these systems (comma-separated) and merge their "
                        "results into the existing reports")
    parser.add_argument("--tables-only", action="store_true", help="rebuild BENCHMARKS.md from existing reports")
    parser.add_argument("--per-question", help="also write each run's per-question rows into this folder")
    args = parser.parse_args()
    if not args.tables_only:
        run_plan(args.data, args.only, args.kind, args.force, tuple(s for s in args.systems.split(",") if s),
                 args.corpus, args.per_question)
    update_benchmarks_md("eval", tables())


if __name__ == "__main__":
    main()
