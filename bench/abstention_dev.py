"""The abstention development set: do the joint model's two abstention signals tell real questions with and without
their answer apart?

Real questions, never trained on and never on the zero-shot articles: ``--limit`` SQuAD v1.1 dev questions of the 13
*adapted* articles (`checkpoints/joint/squad-train-articles.txt`, sample seed 0; the set `bench/reader_dev.py` chooses
readers on), each asked twice with ``k`` paragraphs of its own article, as articles mode shows them:

- *answerable*: its gold paragraph and the ``k - 1`` other paragraphs of the article that share the most content
  words with the question, in that order of overlap;
- *unanswerable*: the ``k`` paragraphs of the article that share the most words with it and hold none of its answers
  (the evidence withheld, the near neighbours kept).

For each case the checkpoint's two signals are read: the generator's route margin (abstain logit minus answer logit
where it writes the route, `route_margins`) and the reader's no-answer margin (`no_answer_margin`). Reported: each
signal's AUROC (chance that an unanswerable case scores above an answerable one), and the abstention rates under the
checkpoint's own rule (route with ``abstain_bias``, or reader margin above ``reader_abstain_margin``) and under the
reader's margin alone. SQuAD v2.0's unanswerables (written to look answerable) are harder than withheld evidence: a
signal at chance here will be at chance there.

    python bench/abstention_dev.py --checkpoint checkpoints/joint --out bench/results/abstention_dev/joint.json
    python bench/abstention_dev.py --readers checkpoints/joint/reader data/runs/reader-v7 --out ...   # readers only
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
from bench.reader_abstention import auroc  # noqa: E402
from ragless.eval.datasets import load, sample_questions  # noqa: E402
from synth_pipeline.qa import content_words  # noqa: E402


def cases(data: str, articles: str, limit: int, seed: int, k: int) -> list[dict]:
    """Each sampled question as an answerable and an unanswerable case: ``{qid, question, answerable, paragraphs}``."""
    adapted = set(Path(articles).read_text().splitlines()) - {""}
    evalset = load("squad-v1.1", data)
    pool = [q for q in evalset.questions
            if q.answerable and q.evidence and evalset.document(q.evidence[0].doc_id).title in adapted]
    out = []
    for q in sample_questions(pool, limit, seed):
        gold = q.evidence[0]
        text = evalset.document(gold.doc_id).text
        words = content_words(q.question, q.lang)
        others = [text[a:b] for a, b in evalset.passages[gold.doc_id] if (a, b) != (gold.char_start, gold.char_end)]
        ranked = sorted(others, key=lambda t: -len(words & content_words(t, q.lang)))  # stable: article order on ties
        evidence = text[gold.char_start: gold.char_end]
        shown = sorted([evidence] + ranked[: k - 1], key=lambda t: -len(words & content_words(t, q.lang)))
        without = [t for t in ranked if not any(a in t for a in q.answers)][:k]
        if len(without) < k:
            continue
        out.append({"qid": q.qid, "question": q.question, "answerable": True, "paragraphs": shown})
        out.append({"qid": q.qid, "question": q.question, "answerable": False, "paragraphs": without})
    return out


def signals(model, rows: list[dict], route: bool = True) -> tuple[list[float] | None, list[float]]:
    """The route margins (None without ``route``) and the reader's no-answer margins of ``rows``, read as
    `ragless train calibrate` reads its held-out rows."""
    from retrieve_generate_model.train import reader_margins, route_margins

    def source_dict(n: int, text: str) -> dict:
        return {"seg_id": f"p{n}", "doc_id": "d", "title": "", "section": "", "text": text, "char_start": 0,
                "char_end": len(text), "score": 1.0}

    # the route is read before any answer token: the same row layout serves both kinds (written as unanswerable)
    synth_rows = [{"question": r["question"], "sources": [source_dict(n, t) for n, t in enumerate(r["paragraphs"])],
                   "answerable": False, "relied": [], "answer": "", "quote_source": -1, "quote_start": -1,
                   "quote_end": -1, "answer_start": -1, "answer_end": -1} for r in rows]
    return (route_margins(model, synth_rows) if route else None), reader_margins(model, synth_rows)


def rates(abstains: np.ndarray, answerable: np.ndarray) -> dict[str, float]:
    from retrieve_generate_model.train import balanced_accuracy

    return {"abstain_on_unanswerable": round(float(abstains[~answerable].mean()), 4),
            "abstain_on_answerable": round(float(abstains[answerable].mean()), 4),
            "balanced_accuracy": round(balanced_accuracy(abstains.tolist(), answerable.tolist()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/joint")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--articles", default="checkpoints/joint/squad-train-articles.txt")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--readers", nargs="+", metavar="FOLDER",
                    help="reader folders to rank instead, in the checkpoint's layout and without its generator: each "
                         "one's AUROC, the threshold of best balanced accuracy here and the rates at it")
    ap.add_argument("--out", help="JSON report (per-case margins included)")
    args = ap.parse_args()

    from retrieve_generate_model.joint import JointModel
    from retrieve_generate_model.reader import AnswerReader
    from retrieve_generate_model.train import calibrate_reader_threshold

    model = JointModel.load(args.checkpoint)
    rows = cases(args.data, args.articles, args.limit, args.seed, model.config.k)
    answerable = np.array([r["answerable"] for r in rows])
    command = "python bench/abstention_dev.py " + " ".join(sys.argv[1:])
    if args.readers:
        report = {"benchmark": "abstention_dev", "commit": git_commit(), "machine": machine(), "command": command,
                  "n_answerable": int(answerable.sum()), "n_unanswerable": int((~answerable).sum()), "readers": {}}
        for folder in args.readers:
            model.reader = AnswerReader.load(folder)
            reader = np.array(signals(model, rows, route=False)[1])
            # the threshold `ragless train calibrate` would choose on these cases (best balanced accuracy)
            threshold = calibrate_reader_threshold([float(m) for m in reader], [False] * len(rows),
                                                   [bool(a) for a in answerable])
            entry = {"auroc": round(auroc(reader[~answerable], reader[answerable]), 4),
                     "balanced_threshold": threshold,
                     **rates(reader > (np.inf if threshold is None else threshold), answerable)}
            print(json.dumps({"reader": folder, **entry}))
            report["readers"][folder] = {**entry, "margins": [float(m) for m in reader]}
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        return
    if model.reader is None or not model.reader.config.null_answer:
        raise SystemExit(f"{args.checkpoint}: no reader with the 'no answer' option")
    t0 = time.perf_counter()
    route, reader = signals(model, rows)
    route, reader = np.array(route), np.array(reader)
    cfg = model.config
    threshold = np.inf if cfg.reader_abstain_margin is None else cfg.reader_abstain_margin
    report = {
        "benchmark": "abstention_dev", "commit": git_commit(), "machine": machine(),
        "command": command, "checkpoint": args.checkpoint,
        "n_answerable": int(answerable.sum()), "n_unanswerable": int((~answerable).sum()), "k": cfg.k,
        "seconds": round(time.perf_counter() - t0, 1),
        "auroc": {"route": round(auroc(route[~answerable], route[answerable]), 4),
                  "reader": round(auroc(reader[~answerable], reader[answerable]), 4)},
        "checkpoint_rule": {"abstain_bias": cfg.abstain_bias, "reader_abstain_margin": cfg.reader_abstain_margin,
                            **rates((route + cfg.abstain_bias > 0) | (reader > threshold), answerable)},
        "reader_alone": rates(reader > threshold, answerable),
        "route_alone": rates(route + cfg.abstain_bias > 0, answerable),
        "per_case": [{"qid": r["qid"], "answerable": r["answerable"], "route_margin": float(a),
                      "reader_margin": float(b)} for r, a, b in zip(rows, route, reader)],
    }
    print(json.dumps({k: v for k, v in report.items() if k not in ("per_case", "machine")}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
