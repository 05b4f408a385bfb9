"""The retriever's learned lexical channel against BM25 and the dense MiniLM, in gold-passage mode.

Trains `retrieve_generate_model.lexical` on synthetic rows (`ragless synth qa`, corpus text only) and scores, on the
benchmarks' own passages (the harness's `gold` corpus mode, its retrieval metrics and question samples):

- ``workflow-bm25`` and ``workflow-dense`` (the harness's baselines, unchanged);
- ``lexical-untrained``: the channel before training (every content word-piece weighs 1), fused with the dense score;
- ``lexical-trained``: the trained term weights and ``alpha``, fused with the dense score;
- ``lexical-only``: the trained channel alone (the one `--model` names).

    python bench/lexical_channel.py --data ../shared/data --train data/qa/train-en-v4/train.parquet
    python bench/lexical_channel.py --data ../shared/data --train data/qa/train-en-v4/train.parquet \
        --model checkpoints/joint/lexical          # the shipped channel, not retrained
    python bench/lexical_channel.py --data ../shared/data --only scifact --train data/qa/scifact/train.parquet \
        --model data/runs/lexical-scifact --also lexical-shipped=checkpoints/joint/lexical \
        --out lexical_channel_scifact --section lexical-channel-adapted --regime "..."   # adapted to a corpus

Writes bench/results/lexical_channel.json and the "Learned lexical channel" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

# the repository root first, and not bench/ itself: bench/kernels.py would shadow the `kernels` package that
# transformers imports
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import git_commit, machine, markdown_table, save_results, update_benchmarks_md  # noqa: E402
from ragless.eval import metrics as M  # noqa: E402
from ragless.eval.datasets import load  # noqa: E402
from ragless.eval.harness import EvalConfig, _unit, cutoffs, score_retrieval, summarize  # noqa: E402
from ragless.eval.systems import PassageSegmenter, make_system  # noqa: E402
from retrieve_generate_model.encoder import Encoder, passage_text  # noqa: E402
from retrieve_generate_model.lexical import (  # noqa: E402
    LexicalModel,
    LexicalTrainConfig,
    lexical_scores,
    mean_pooled,
    token_states,
    train_lexical,
    vocab_mask,
)
from retrieve_generate_model.records import Source  # noqa: E402

DATASETS = (("squad-v1.1", 1000), ("squad-v2.0", 1000), ("spf-fr", 0), ("scifact", 0))
DEPTH = {"scifact": 100}  # segments retrieved per question where a deeper recall is reported (SciFact's recall@100)


class Fused:
    """Dense MiniLM + the lexical channel over the same segments: ``scale * cos + alpha * lexical`` (or one alone)."""

    def __init__(self, name: str, model: LexicalModel, encoder: Encoder, mode: str = "fused",
                 cache: dict | None = None):
        self.name, self.model, self.encoder, self.mode = name, model, encoder, mode
        self.cache = {} if cache is None else cache  # text -> MiniLM states, shared by the systems of one dataset

    def _states(self, texts: list[str]):
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        self.cache.update(zip(missing, token_states(self.encoder, missing)))
        return [self.cache[t] for t in texts]

    def build(self, documents, segmenter) -> dict:
        self.docs = {d.doc_id: d for d in documents}
        self.segments = [s for segs in segmenter.segment(documents) for s in segs]
        texts = [passage_text(s.text, self.docs[s.doc_id].title, s.section) for s in self.segments]
        states = self._states(texts)
        self.dense = torch.stack([mean_pooled(st) for _, st in states]).numpy()
        self.sparse = self.model.sparse(states, "passage")
        return {"segments": len(self.segments)}

    def retrieve(self, questions, k: int) -> list[list[Source]]:
        states = self._states(list(questions))
        q_dense = torch.stack([mean_pooled(st) for _, st in states]).numpy()
        lex = lexical_scores(self.model.sparse(states, "query"), self.sparse)
        dense = self.model.config.scale * (q_dense @ self.dense.T)
        alpha = float(self.model.alpha.detach())
        scores = {"fused": dense + alpha * lex, "lexical": lex, "dense": dense}[self.mode]
        out = []
        for row in scores:
            top = np.argsort(-row, kind="stable")[:k]
            out.append([self._source(i, float(row[i])) for i in top])
        return out

    def _source(self, i: int, score: float) -> Source:
        s = self.segments[i]
        return Source(seg_id=s.seg_id, doc_id=s.doc_id, score=score, text=s.text, char_start=s.char_start,
                      char_end=s.char_end, title=self.docs[s.doc_id].title, section=s.section)


def run(system, evalset, cfg: EvalConfig) -> dict:
    t0 = time.perf_counter()
    build = system.build(evalset.documents, PassageSegmenter(evalset.passages))
    unit = _unit(evalset.name)
    rows = []
    for i in range(0, len(evalset.questions), 64):
        batch = evalset.questions[i: i + 64]
        for q, sources in zip(batch, system.retrieve([q.question for q in batch], cfg.k)):
            rows.append({"qid": q.qid, **score_retrieval(q, sources, unit, cutoffs(cfg.k)), "timings": {}})
    result = summarize(system.name, evalset.name, cfg, rows, build)
    return {"system": system.name, "n": result.n, "metrics": result.metrics, "ci": result.ci,
            "seconds": round(time.perf_counter() - t0, 1), "rows": rows}


PAIRED = ("recall@1", "ndcg@10", "recall@100")  # recall@100 where it is measured (SciFact)


def paired_against(results: list[dict], system: str, baseline: str) -> dict:
    """``system`` minus ``baseline`` on the same questions: the paired bootstrap of each metric of PAIRED that the
    rows hold."""
    a = {r["system"]: {row["qid"]: row for row in r["rows"]} for r in results}
    qids = list(a[baseline])
    measured = [m for m in PAIRED if any(a[baseline][q].get(m) is not None for q in qids)]
    return {m: {k: (round(v, 4) if v is not None else None) for k, v in M.paired_bootstrap(
        [a[system][q].get(m) for q in qids], [a[baseline][q].get(m) for q in qids]).items()} for m in measured}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--train", required=True, help="synthetic rows (Parquet from `ragless synth qa`)")
    ap.add_argument("--only", help="datasets starting with this")
    ap.add_argument("--out", default="lexical_channel")
    ap.add_argument("--model", help="save the trained channel here, or load it from here when it is there")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=FOLDER",
                    help="another trained channel (a `ragless train lexical` folder) fused and scored beside it, "
                         "e.g. lexical-shipped=checkpoints/joint/lexical (repeatable)")
    ap.add_argument("--name", default="lexical-trained", help="the trained channel's row in the tables")
    ap.add_argument("--section", default="lexical-channel", help="the BENCHMARKS.md section written")
    ap.add_argument("--regime", default="", help="a sentence saying what the trained channel saw (adapted or "
                                                  "zero-shot), written with the table")
    args = ap.parse_args()
    also = [tuple(a.split("=", 1)) for a in args.also]
    if any(len(a) != 2 for a in also):
        ap.error("--also takes NAME=FOLDER")

    import pyarrow.parquet as pq

    encoder = Encoder()
    mask = vocab_mask(encoder)
    torch.manual_seed(0)
    untrained = LexicalModel(vocab_mask=mask)
    trained = LexicalModel(vocab_mask=mask)
    t0 = time.perf_counter()
    loaded = bool(args.model) and (Path(args.model) / "lexical.json").is_file()
    if loaded:  # trained earlier (--model, `ragless train lexical`)
        trained = LexicalModel.load(args.model, encoder)
        report_file = Path(args.model) / "report.json"  # `ragless train lexical` (e.g. checkpoints/joint/lexical)
        history = (json.loads(report_file.read_text())["history"] if report_file.is_file()
                   else json.loads((Path(args.model) / "history.json").read_text()))
    else:
        rows = pq.read_table(args.train).to_pylist()
        history = train_lexical(rows, trained, encoder, LexicalTrainConfig(), log=lambda m: print(m, file=sys.stderr))
        if args.model:
            trained.save(args.model)
            (Path(args.model) / "history.json").write_text(json.dumps(history))
    train_s = round(time.perf_counter() - t0, 1)
    made = (f"the channel loaded from {args.model} (not retrained here)" if loaded
            else f"the channel trained in {train_s} s")
    report = {"train": {"rows": args.train, "history": history, "seconds": train_s}, "results": [], "paired": [],
              "command": "python " + shlex.join(sys.argv)}
    for dataset, limit in DATASETS:
        if args.only and not dataset.startswith(args.only):
            continue
        cfg = EvalConfig(dataset=dataset, data=args.data, corpus="gold", limit=limit, retrieval_only=True,
                         k=DEPTH.get(dataset, 10))
        evalset = load(dataset, args.data, limit=limit or None, seed=cfg.seed)
        lang = evalset.questions[0].lang
        cache: dict = {}
        systems = [make_system("workflow-bm25", lang=lang), make_system("workflow-dense", lang=lang, encoder=encoder),
                   Fused("lexical-untrained", untrained, encoder, cache=cache),
                   Fused(args.name, trained, encoder, cache=cache),
                   Fused("lexical-only", trained, encoder, mode="lexical", cache=cache)]
        systems += [Fused(name, LexicalModel.load(folder, encoder), encoder, cache=cache) for name, folder in also]
        done = []
        for system in systems:
            result = run(system, evalset, cfg)
            result["dataset"] = dataset
            done.append(result)
            print(json.dumps({k: result[k] for k in ("dataset", "system", "n")} | {
                m: result["metrics"].get(m) for m in ("recall@1", "recall@5", "mrr@10", "ndcg@10")}), file=sys.stderr)
        for name in [args.name, *(n for n, _ in also)]:
            report["paired"].append({"dataset": dataset, "system": name, **{
                f"minus {b}": paired_against(done, name, b) for b in ("workflow-bm25", "workflow-dense")}})
        report["results"] += [{k: v for k, v in r.items() if k != "rows"} for r in done]
    save_results(args.out, report)
    header = ["dataset", "system", "n", "recall@1", "recall@5", "mrr@10", "ndcg@10"]
    if any("recall@100" in r["metrics"] for r in report["results"]):
        header.insert(5, "recall@100")
    table = []
    for r in report["results"]:
        cells = []
        for m in header[3:]:
            v, ci = r["metrics"].get(m), r["ci"].get(m)
            cells.append("" if v is None else f"{v:.3f}" + (f" ({ci[0]:.2f}–{ci[1]:.2f})" if ci else ""))
        table.append([r["dataset"], r["system"], r["n"], *cells])
    paired = [[p["dataset"], p["system"], baseline, *(
        f"{d[m]['diff']:+.3f} ({d[m]['low']:+.2f} to {d[m]['high']:+.2f})" if m in d else "" for m in PAIRED)]
        for p in report["paired"] for baseline, d in ((k.removeprefix("minus "), v) for k, v in p.items()
                                                      if k.startswith("minus "))]
    paired_table = markdown_table(["dataset", "system", "minus", *(f"{m} difference" for m in PAIRED)], paired)
    host = machine()
    regime = f" {args.regime.rstrip('.')}." if args.regime else ""
    update_benchmarks_md(args.section, f"`{report['command']}`, commit {git_commit()}, "
                         f"{host['cpu']} ({host['cores']} cores); {made}.{regime}\n\n" + markdown_table(header, table)
                         + "\n\nPaired differences on the same questions (bootstrap, 1,000 resamples, 95%):\n\n"
                         + paired_table)


if __name__ == "__main__":
    main()
