"""Retrieval with the learned query rewrite against the question itself and a prompted rewrite, same questions.

For each sampled question the ragless system (articles mode: the corpus segmented and ingested as `bench/eval.py`
does) retrieves the top ``k`` segments three ways: with the question; with the question followed by the sentence
SmolLM2 writes for it when prompted to (``prompted``: the rewrite adapters untrained, so the base model — the
workflow way, HyDE's); and with the question followed by the sentence the trained rewrite adapters write
(``trained``, a checkpoint's ``rewrite/`` folder). Reported: recall@1 and recall@k of the gold paragraph, with 95%
bootstrap intervals and paired differences against the question alone; on SQuAD v1.1 also by regime (articles whose
text made the rewriter's training data, and the others).

    python bench/rewrite.py --data ../shared/data --dataset squad-v1.1 --limit 200 \\
        --rewriter checkpoints/joint/rewrite --out bench/results/rewrite/squad-v1.1.json

The rewrite is used by the joint model only when its first answer abstains (`ragless.ask.answer_in_rounds`); this
measures what the rewrite retrieves on every question, and separately on those whose first round missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.common import git_commit, machine  # noqa: E402
from ragless.eval import metrics as M  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--dataset", default="squad-v1.1")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=4, help="segments retrieved (the answerer's k)")
    ap.add_argument("--checkpoint", default="checkpoints/joint", help="the joint model (retrieval and generator)")
    ap.add_argument("--rewriter", default=None, help="trained rewrite adapters (default: the checkpoint's rewrite/)")
    ap.add_argument("--articles", default="checkpoints/joint/squad-train-articles.txt",
                    help="titles of the articles whose text trained the rewriter (adapted regime)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out")
    args = ap.parse_args()

    from ragless.eval.datasets import load
    from ragless.eval.harness import _unit, score_retrieval
    from ragless.eval.systems import Ragless, default_segmenter
    from retrieve_generate_model.joint import JointModel
    from retrieve_generate_model.rewrite import QueryRewriter

    evalset = load(args.dataset, args.data, limit=args.limit, seed=args.seed)
    questions = [q for q in evalset.questions if q.answerable and q.evidence]
    system = Ragless(answerer=args.checkpoint)
    t0 = time.perf_counter()
    system.build(evalset.documents, default_segmenter(system))
    build_s = time.perf_counter() - t0
    model = JointModel.load(args.checkpoint)
    # fresh adapters under another name: LoRA starts as no change, so this is SmolLM2 itself, prompted
    rewriters = {"prompted": QueryRewriter(model.generator, model.tokenizer, name="prompted-rewrite")}
    trained = Path(args.rewriter or Path(args.checkpoint) / "rewrite")
    if model.rewriter is not None and args.rewriter is None:
        rewriters["trained"] = model.rewriter
    elif trained.is_dir():
        rewriters["trained"] = QueryRewriter(model.generator, model.tokenizer, folder=trained, name="trained-rewrite")
    else:
        print(f"no rewrite adapters at {trained}: the prompted rewrite alone", file=sys.stderr)

    unit, ks = _unit(evalset.name), (1, args.k)
    texts = [q.question for q in questions]
    queries = {"question": texts}
    seconds = {}
    for name, rewriter in rewriters.items():
        t0 = time.perf_counter()
        queries[name] = [r for i in range(0, len(texts), args.batch)
                         for r in rewriter.rewrite(texts[i: i + args.batch])]
        seconds[name] = round((time.perf_counter() - t0) / max(len(texts), 1), 3)
    scores = {}
    for name, qs in queries.items():
        retrieved = system.retrieve(qs, args.k)
        scores[name] = [score_retrieval(q, sources, unit, ks) for q, sources in zip(questions, retrieved)]

    adapted = set(Path(args.articles).read_text().split("\n")) - {""} if args.dataset == "squad-v1.1" else set()
    title = {d.doc_id: d.title for d in evalset.documents}
    regime = ["adapted" if title[q.evidence[0].doc_id] in adapted else "zero-shot" for q in questions]
    missed = [s[f"recall@{args.k}"] == 0 for s in scores["question"]]

    def table(keep: list[bool]) -> dict:
        out = {"n": int(sum(keep))}
        for metric in ("recall@1", f"recall@{args.k}"):
            base = [s[metric] for s, k in zip(scores["question"], keep) if k]
            for name in queries:
                vals = [s[metric] for s, k in zip(scores[name], keep) if k]
                mean, low, high = M.bootstrap_ci(vals)
                out.setdefault(name, {})[metric] = [round(mean, 4), round(low, 4), round(high, 4)] if vals else None
                if name != "question" and vals:  # paired over the questions: this way minus the question's
                    d = M.paired_bootstrap(vals, base)
                    out[name][f"{metric} vs question"] = [round(d[x], 4) for x in ("diff", "low", "high")]
        return out

    report = {
        "benchmark": "rewrite", "commit": git_commit(), "machine": machine(),
        "command": "python bench/rewrite.py " + " ".join(sys.argv[1:]),
        "dataset": args.dataset, "corpus": "articles", "k": args.k, "rewriter": str(trained),
        "build_s": round(build_s, 1), "rewrite_s_per_question": seconds,
        "all": table([True] * len(questions)),
        "first_round_missed": table(missed),
        "examples": [{"question": q, **{n: queries[n][i] for n in rewriters}} for i, q in enumerate(texts[:10])],
    }
    if adapted:
        report["adapted"] = table([r == "adapted" for r in regime])
        report["zero-shot"] = table([r == "zero-shot" for r in regime])
    print(json.dumps({k: v for k, v in report.items() if k not in ("machine", "examples")}, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
