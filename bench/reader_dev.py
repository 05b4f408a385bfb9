"""The readers' development set: the one place reader checkpoints are compared to choose one.

300 SQuAD v1.1 dev questions (sample seed 0) of the 13 *adapted* articles — the articles whose text (never their
questions) made the synthetic training data, `checkpoints/joint/squad-train-articles.txt` — each read with its gold
paragraph (retrieval taken out). Choosing a reader here leaves the 35 zero-shot articles (and all of SQuAD v2.0)
untouched by selection; numbers on the adapted articles are no longer clean once a choice was made here, and the
benchmark tables say so.

Each reader folder (`ragless train reader --out DIR`, or a checkpoint's `reader/`) answers with its best span, never
abstaining. The first folder is the reference: every other one is compared with it question by question (paired
bootstrap of the F1 difference), overall and by the question's first word.

    python bench/reader_dev.py checkpoints/joint/reader data/runs/reader-v5 --out bench/results/reader_dev/v5.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

# the repository root first, and not bench/ itself: bench/kernels.py would shadow the `kernels` package that
# transformers imports
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.reader import gold_source  # noqa: E402
from ragless.eval import metrics as M  # noqa: E402
from ragless.eval.datasets import load, sample_questions  # noqa: E402

WH = ("what", "which", "who", "when", "where", "how", "why")


def dev_questions(data: str, articles: str, limit: int, seed: int):
    """The development questions and their gold paragraphs: ``limit`` answerable SQuAD v1.1 questions of the
    adapted articles."""
    adapted = set(Path(articles).read_text().splitlines()) - {""}
    evalset = load("squad-v1.1", data)
    title = {d.doc_id: d.title for d in evalset.documents}
    pool = [q for q in evalset.questions if q.answerable and q.evidence and title[q.evidence[0].doc_id] in adapted]
    return [(q, gold_source(evalset, q).text) for q in sample_questions(pool, limit, seed)]


def question_word(question: str) -> str:
    """The question's kind by its first question word ("In what year…" is "what"), "other" when it has none."""
    words = question.lower().replace("?", " ").split()
    return next((w for w in words[:4] if w in WH), "other")


def read_all(folder: str, questions) -> list[dict]:
    from retrieve_generate_model.reader import AnswerReader

    reader = AnswerReader.load(folder)
    rows = []
    for q, text in questions:
        best, _ = reader.read(q.question, [text], top=1)
        prediction = text[best[0].char_start: best[0].char_end] if best else ""
        rows.append({"qid": q.qid, "kind": question_word(q.question), "prediction": prediction,
                     "em": M.exact_match(prediction, q.answers, q.lang),
                     "f1": M.token_f1(prediction, q.answers, q.lang)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("readers", nargs="+", help="reader folders; the first is the reference")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--articles", default="checkpoints/joint/squad-train-articles.txt")
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="JSON report (per-question predictions included)")
    args = ap.parse_args()

    questions = dev_questions(args.data, args.articles, args.limit, args.seed)
    runs = {}
    for folder in args.readers:
        t0 = time.perf_counter()
        runs[folder] = read_all(folder, questions)
        print(f"{folder}: read {len(questions)} questions in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    reference = args.readers[0]
    report = {"n": len(questions), "reference": reference, "readers": {}}
    for folder, rows in runs.items():
        f1 = [r["f1"] for r in rows]
        mean, low, high = M.bootstrap_ci(f1)
        entry = {"f1": round(mean, 4), "f1_ci": [round(low, 4), round(high, 4)],
                 "em": round(sum(r["em"] for r in rows) / len(rows), 4), "by_kind": {}}
        if folder != reference:
            paired = M.paired_bootstrap(f1, [r["f1"] for r in runs[reference]])
            entry["f1_minus_reference"] = {k: round(v, 4) if v is not None else None for k, v in paired.items()}
        kinds = defaultdict(list)
        for r, ref in zip(rows, runs[reference]):
            kinds[r["kind"]].append((r["f1"], ref["f1"]))
        for kind, pairs in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
            entry["by_kind"][kind] = {"n": len(pairs), "f1": round(sum(a for a, _ in pairs) / len(pairs), 4)}
        entry["per_question"] = rows
        report["readers"][folder] = entry
        brief = {k: v for k, v in entry.items() if k != "per_question"}
        print(json.dumps({"reader": folder, **brief}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
