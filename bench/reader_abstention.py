"""How well a reader's "no answer" separates the questions its paragraph answers from those it does not.

SQuAD v2.0 dev, gold paragraph (retrieval taken out): ``--limit`` answerable questions and as many unanswerable ones
(each with the paragraph it was written about, sample seed 0). Every reader folder with the "no answer" option
(`ragless train reader --null-answer`) scores each question by its no-answer margin (`no_answer_margin`: "no answer"
above the best span); the margin's **AUROC** (the chance that an unanswerable question scores above an answerable
one) says how well the reader knows what its paragraph does not say, whatever threshold is calibrated later. Also:
the abstention rate on unanswerable questions where 10% of the answerable ones are declined (a fixed operating point),
and the readers' F1 on the answerable questions when they never abstain. The first folder is the reference: the
others' AUROC is compared with it by a paired, stratified bootstrap over questions.

SQuAD v2.0 is zero-shot for every shipped checkpoint: a choice made on these numbers is a selection on the test
data, and the benchmark tables that report v2.0 afterwards say so.

    python bench/reader_abstention.py checkpoints/joint/reader data/runs/reader-v7 \\
        --out bench/results/reader_abstention/v7.json
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

import numpy as np  # noqa: E402

from bench.common import git_commit, machine  # noqa: E402
from bench.reader import gold_source  # noqa: E402
from ragless.eval import metrics as M  # noqa: E402
from ragless.eval.datasets import load, sample_questions  # noqa: E402

FALSE_ABSTENTION = 0.10  # the operating point: the share of answerable questions declined


def auroc(unanswerable: np.ndarray, answerable: np.ndarray) -> float:
    """P(an unanswerable question's margin > an answerable one's), ties counting half (Mann-Whitney U / n1 n2).

    >>> auroc(np.array([3.0, 2.0]), np.array([1.0, 2.0]))
    0.875
    """
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(unanswerable, answerable).statistic) / (len(unanswerable) * len(answerable))


def abstention_at(unanswerable: np.ndarray, answerable: np.ndarray, false_rate: float) -> float:
    """The share of unanswerable questions abstained on at the margin above which ``false_rate`` of the answerable
    ones are declined."""
    threshold = float(np.quantile(answerable, 1.0 - false_rate))
    return float(np.mean(unanswerable > threshold))


def paired_auroc(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], n_resamples: int = 1000,
                 seed: int = 0) -> dict[str, float]:
    """AUROC(a) - AUROC(b) on the same questions ((unanswerable, answerable) margins each), with a 95% interval from
    resampling the unanswerable and the answerable questions apart (their counts fixed)."""
    rng = np.random.default_rng(seed)
    n_u, n_a = len(a[0]), len(a[1])
    diffs = []
    for _ in range(n_resamples):
        u, v = rng.integers(0, n_u, n_u), rng.integers(0, n_a, n_a)
        diffs.append(auroc(a[0][u], a[1][v]) - auroc(b[0][u], b[1][v]))
    low, high = np.quantile(diffs, [0.025, 0.975])
    return {"diff": auroc(*a) - auroc(*b), "low": float(low), "high": float(high)}


def questions(data: str, limit: int, seed: int):
    evalset = load("squad-v2.0", data)
    answerable = sample_questions([q for q in evalset.questions if q.answerable and q.evidence], limit, seed)
    unanswerable = sample_questions([q for q in evalset.questions if not q.answerable and q.evidence], limit, seed)
    return [(q, gold_source(evalset, q).text) for q in answerable + unanswerable]


def read_all(folder: str, qs) -> list[dict]:
    from retrieve_generate_model.reader import AnswerReader, no_answer_margin

    reader = AnswerReader.load(folder)
    if not reader.null_answer:
        raise SystemExit(f"{folder}: a reader without the 'no answer' option has no margin to rank by")
    rows = []
    for q, text in qs:
        best, null = reader.read(q.question, [text], top=1)
        prediction = text[best[0].char_start: best[0].char_end] if best else ""
        rows.append({"qid": q.qid, "answerable": q.answerable, "margin": no_answer_margin(best, null),
                     "f1": M.token_f1(prediction, q.answers, q.lang) if q.answerable else None})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("readers", nargs="+", help="reader folders with the 'no answer' option; the first is the reference")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--limit", type=int, default=1000, help="answerable questions, and as many unanswerable ones")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="JSON report (per-question margins included)")
    args = ap.parse_args()

    qs = questions(args.data, args.limit, args.seed)
    runs = {}
    for folder in args.readers:
        t0 = time.perf_counter()
        runs[folder] = read_all(folder, qs)
        print(f"{folder}: read {len(qs)} questions in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    def split(rows):
        return (np.array([r["margin"] for r in rows if not r["answerable"]], dtype=float),
                np.array([r["margin"] for r in rows if r["answerable"]], dtype=float))

    reference = args.readers[0]
    report = {"benchmark": "reader_abstention", "commit": git_commit(), "machine": machine(),
              "command": "python bench/reader_abstention.py " + " ".join(sys.argv[1:]), "seed": args.seed,
              "n_answerable": sum(q.answerable for q, _ in qs), "n_unanswerable": sum(not q.answerable for q, _ in qs),
              "reference": reference, "readers": {}}
    for folder, rows in runs.items():
        margins = split(rows)
        f1, low, high = M.bootstrap_ci([r["f1"] for r in rows if r["answerable"]])
        entry = {"auroc": round(auroc(*margins), 4),
                 f"abstention_at_{FALSE_ABSTENTION:.0%}_declined": round(abstention_at(*margins, FALSE_ABSTENTION), 4),
                 "answerable_f1_never_abstaining": round(f1, 4), "f1_ci": [round(low, 4), round(high, 4)]}
        if folder != reference:
            entry["auroc_minus_reference"] = {k: round(v, 4) for k, v in
                                              paired_auroc(margins, split(runs[reference])).items()}
        print(json.dumps({"reader": folder, **entry}))
        report["readers"][folder] = {**entry, "per_question": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
