"""Reading with the gold paragraph: the joint model's answer reader against its generator and the prompted SmolLM2.

Retrieval taken out: each question is answered from its gold paragraph alone (the SQuAD paragraph that holds the
answer), so the numbers say how well each system *reads*. Systems:

- ``reader``: the checkpoint's answer reader (`retrieve_generate_model/reader.py`): its best span;
- ``generator-walk``: the checkpoint's generator writing the answer line token by token through the source (what the
  joint model answered with before the reader), routing forced to answer;
- ``prompted-smollm2``: the workflow baseline's answerer (`ragless/prompted.py`), the base SmolLM2 prompted with the
  paragraph.

A reader with a "no answer" option (``null_answer``) is also asked, on SQuAD v2.0, the unanswerable questions of the
same articles with the paragraph they were written about (``reader-abstaining``): it abstains where "no answer" beats
its best span by more than the checkpoint's ``reader_abstain_margin`` (the rule `JointModel.answer` applies);
abstention accuracy on the unanswerable questions, and EM/F1 on the answerable ones counting an abstention as 0.

The generators take seconds per question on a CPU, so they run on the first ``--generator-limit`` questions of the
sample; the reader runs on all of them and is also reported on that same subset. SQuAD v1.1 dev is split into its two
regimes for the shipped checkpoint (`bench/regimes.py`): *adapted* (the 13 articles whose text made the synthetic
training data) and *zero-shot*; SQuAD v2.0 (answerable questions) is all zero-shot.

    python bench/reader.py --data ../shared/data

Writes bench/results/reader.json and the "Answer reader" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

# the repository root first, and not bench/ itself: bench/kernels.py would shadow the `kernels` package that
# transformers imports
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.common import git_commit, machine, markdown_table, save_results, update_benchmarks_md  # noqa: E402
from ragless.eval import metrics as M  # noqa: E402
from ragless.eval.datasets import load, sample_questions  # noqa: E402
from retrieve_generate_model.reader import no_answer_margin  # noqa: E402
from retrieve_generate_model.records import Source  # noqa: E402

DATASETS = (("squad-v1.1", 1000), ("squad-v2.0", 1000))


def gold_source(evalset, q) -> Source:
    span = q.evidence[0]
    doc = evalset.document(span.doc_id)
    return Source(f"{span.doc_id}:{span.char_start}", span.doc_id, 1.0, doc.text[span.char_start: span.char_end],
                  span.char_start, span.char_end, title=doc.title)


def abstaining(joint, evalset, read: list[dict], limit: int, seed: int) -> list[dict]:
    """The reader with its "no answer" rule on the answerable questions (already ``read``, each row with its
    ``no_answer_margin``) and as many unanswerable ones (each with the paragraph it was asked about)."""
    margin = joint.config.reader_abstain_margin
    margin = float("inf") if margin is None else margin
    rows = []
    for done in read:
        abstained = done["no_answer_margin"] > margin
        rows.append({**done, "answerable": True, "em": 0.0 if abstained else done["em"],
                     "f1": 0.0 if abstained else done["f1"]})
    impossible = sample_questions([q for q in evalset.questions if not q.answerable and q.evidence], limit, seed)
    for q in impossible:
        t0 = time.perf_counter()
        spans, null = joint.reader.read(q.question, [gold_source(evalset, q).text], top=1)
        abstained = float(no_answer_margin(spans, null) > margin)
        rows.append({"qid": q.qid, "answerable": False, "abstain": abstained, "seconds": time.perf_counter() - t0})
    return rows


def summary(rows: list[dict], system: str, part: str) -> dict:
    out = {"system": system, "part": part, "n": len(rows)}
    for metric in ("em", "f1", "abstain"):
        if not all(metric in r for r in rows):
            continue
        mean, low, high = M.bootstrap_ci([r[metric] for r in rows])
        out[metric] = round(mean, 4) if mean is not None else None
        out[f"{metric}_ci"] = [round(low, 4), round(high, 4)] if mean is not None else None
    seconds = [r["seconds"] for r in rows]
    out["latency_p50_s"] = round(M.percentile(seconds, 50), 3) if seconds else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--checkpoint", default="checkpoints/joint")
    ap.add_argument("--generator-limit", type=int, default=100, help="questions the two generators answer")
    ap.add_argument("--articles", default="checkpoints/joint/squad-train-articles.txt",
                    help="titles of the articles the checkpoint's training text came from (the adapted regime)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", help="one dataset")
    args = ap.parse_args()

    from ragless.prompted import PromptedAnswerer
    from retrieve_generate_model.joint import JointModel

    joint = JointModel.load(args.checkpoint)
    if joint.reader is None:
        raise SystemExit(f"{args.checkpoint} has no reader/")
    walker = JointModel.__new__(JointModel)
    walker.__dict__ |= joint.__dict__ | {"config": dataclasses.replace(joint.config, answer_by="walk",
                                                                       abstain_bias=-1e9)}
    prompted = PromptedAnswerer()
    adapted_titles = set(Path(args.articles).read_text().splitlines()) - {""}
    results, t_start = [], time.perf_counter()
    for name, limit in DATASETS:
        if args.only and name != args.only:
            continue
        evalset = load(name, args.data)
        questions = sample_questions([q for q in evalset.questions if q.answerable and q.evidence], limit, args.seed)
        per: dict[str, list[dict]] = {"reader": [], "generator-walk": [], "prompted-smollm2": []}
        for i, q in enumerate(questions):
            source = gold_source(evalset, q)
            regime = "adapted" if evalset.document(source.doc_id).title in adapted_titles else "zero-shot"
            t0 = time.perf_counter()
            best, null = joint.reader.read(q.question, [source.text], top=1)
            prediction = source.text[best[0].char_start: best[0].char_end] if best else ""
            runs = [("reader", prediction, time.perf_counter() - t0)]
            margin = no_answer_margin(best, null)  # None for a reader without "no answer"
            if i < args.generator_limit:
                for system, model in (("generator-walk", walker), ("prompted-smollm2", prompted)):
                    t0 = time.perf_counter()
                    answer = model.answer(q.question, [source])
                    runs.append((system, "" if answer.abstained else answer.text, time.perf_counter() - t0))
            for system, text, seconds in runs:
                per[system].append({"qid": q.qid, "regime": regime, "subset": i < args.generator_limit,
                                    "em": M.exact_match(text, q.answers, q.lang),
                                    "f1": M.token_f1(text, q.answers, q.lang), "seconds": seconds}
                                   | ({"no_answer_margin": margin} if system == "reader" else {}))
        if name == "squad-v2.0" and joint.reader.config.null_answer:
            per["reader-abstaining"] = abstaining(joint, evalset, per["reader"], limit, args.seed)
        for system, rows in per.items():
            if system == "reader-abstaining":
                parts = [("answerable", [r for r in rows if r["answerable"]]),
                         ("unanswerable", [r for r in rows if not r["answerable"]])]
            else:
                parts = [("all", rows), ("adapted", [r for r in rows if r["regime"] == "adapted"]),
                         ("zero-shot", [r for r in rows if r["regime"] == "zero-shot"])]
            if system == "reader":
                parts.append(("generator subset", [r for r in rows if r["subset"]]))
            for part, part_rows in parts:
                if part_rows:
                    results.append({"dataset": name, **summary(part_rows, system, part)})
        print(f"{name}: done in {time.perf_counter() - t_start:.0f}s", file=sys.stderr)

    command = "python bench/reader.py --data ../shared/data" + (f" --only {args.only}" if args.only else "")
    command += f" --generator-limit {args.generator_limit}" if args.generator_limit != 100 else ""
    command += f" --checkpoint {args.checkpoint}" if args.checkpoint != "checkpoints/joint" else ""
    save_results("reader", {"command": command, "checkpoint": args.checkpoint, "seed": args.seed,
                            "generator_limit": args.generator_limit, "results": results})
    columns = ["dataset", "part", "system", "n", "em", "f1", "abstain", "latency_p50_s"]
    body = markdown_table(columns, [[_ci(r, c) if c in ("em", "f1", "abstain") else r[c] for c in columns]
                                    for r in results])
    header = (f"Gold paragraph given (retrieval taken out). `{command}` at commit {git_commit()}, "
              f"{machine()['cpu']} ({machine()['cores']} cores), seed {args.seed}; the two generators on the first "
              f"{args.generator_limit} questions of each sample (`generator subset` is the reader on those).")
    update_benchmarks_md("reader", header + "\n\n" + body)


def _ci(row: dict, metric: str) -> str:
    if row.get(metric) is None:
        return ""
    low, high = row[f"{metric}_ci"]
    return f"{row[metric]:.3f} ({low:.2f}–{high:.2f})"


if __name__ == "__main__":
    main()
