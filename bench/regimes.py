"""Split a run's per-question results into the two regimes: adapted (the checkpoint's synthetic training data was
made from the question's article) and zero-shot (it never saw that text).

SQuAD v1.1 dev mixes both for the shipped joint model: 13 of its 48 articles gave the synthetic training data (their
text, never their questions; `checkpoints/joint/squad-train-articles.txt`). SQuAD v2.0 dev's 35 articles are all
zero-shot.

    python bench/eval.py --data ../shared/data --only squad-v1.1 --kind answers --per-question data/per-question
    python bench/regimes.py --per-question data/per-question/squad-v1.1.articles.answers.json \\
        --articles checkpoints/joint/squad-train-articles.txt --dataset squad-v1.1

Prints a JSON line per system and metric: the mean and 95% bootstrap interval in each regime.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# the repository root first, and not bench/ itself: bench/kernels.py would shadow the `kernels` package that
# transformers imports
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from ragless.eval import metrics as M  # noqa: E402
from ragless.eval.datasets import load  # noqa: E402

METRICS = ("em", "f1", "abstain_acc", "answerable_f1", "citation_precision", "recall@1", "answer_recall@5")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-question", required=True, help="a file written by bench/eval.py --per-question")
    ap.add_argument("--articles", required=True, help="titles of the articles the checkpoint's data came from")
    ap.add_argument("--dataset", default="squad-v1.1")
    ap.add_argument("--data", default="../shared/data")
    args = ap.parse_args()
    adapted_titles = set(Path(args.articles).read_text().splitlines()) - {""}
    evalset = load(args.dataset, args.data)
    title = {d.doc_id: d.title for d in evalset.documents}
    regime = {q.qid: "adapted" if title[q.evidence[0].doc_id] in adapted_titles else "zero-shot"
              for q in evalset.questions if q.evidence}
    for system, rows in json.loads(Path(args.per_question).read_text()).items():
        for name in ("adapted", "zero-shot"):
            part = [r for r in rows if regime.get(r["qid"]) == name]
            out = {"system": system, "regime": name, "n": len(part)}
            for metric in METRICS:
                mean, low, high = M.bootstrap_ci([r.get(metric) for r in part])
                if mean is not None:
                    out[metric] = [round(mean, 4), round(low, 4), round(high, 4)]
            print(json.dumps(out))


if __name__ == "__main__":
    main()
