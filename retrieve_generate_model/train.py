"""Supervised training of the joint model's generator on the structured answers of `synth_pipeline.qa`.

One example at a time (no padding: prompts differ in length by hundreds of tokens), gradients accumulated over
``grad_accum`` examples, AdamW on the LoRA adapters of the last ``lora_layers`` layers only (so the backward pass stops
there), bfloat16 autocast where the CPU has it (AMX/AVX-512 BF16: ~1.7x faster than float32 on the machine measured).
Labels cover the structured answer only, never the prompt.

After the generator, further stages; those that learn from its frozen weights use rows it did not train on first:

- the answer-span head (`train_span_head`): start/end scores over source tokens from the generator's states;
- the answer reader (`train_answer_reader`): MiniLM with adapters and a start/end head, on every answerable row (it
  does not read the generator, so it needs no rows of its own); saved as ``OUT/reader/``;
- the link to retrieval (`train_question_tower`): the generator's likelihood of the gold answer given each source
  alone, as a distribution over the row's sources, distilled into the retriever's question tower (with the
  contrastive loss beside it); saved as ``OUT/retriever/``.

Or, with ``link="attention"`` (``--link attention``), the question tower trains with the generator instead of after
it (`AttentionLink`): its scores of each row's sources bias the generator's attention to their tokens
(`biased_attention.py`, the source-biased attention kernel), so the answer loss itself moves the tower's adapters;
saved as ``OUT/retriever/`` all the same, and the distillation stage is not run. The checkpoint records the bias's
depth (`JointConfig.source_bias_layers`) and answers with it: `JointModel.answer` passes the tower's bias of the
sources on every forward of its decoding, as training did (`biased_attention.tower_bias`).

Resumable: every ``checkpoint_every`` examples the adapters, the optimizer, the scheduler and the position in the
(seeded) example order are saved under ``OUT/state/``; the same command continues from there, and a finished stage is
not run again. When training ends the model is saved to ``OUT`` (`JointModel.save`), evaluated on the held-out rows,
and a line per event is in ``OUT/log.jsonl``.

    report = train_joint("data/qa/train.parquet", "data/qa/heldout.parquet", "checkpoints/joint", JointTrainConfig())

    ragless train joint --train T --heldout H --out checkpoints/my-joint                            # one process
    torchrun --nproc_per_node 4 -m ragless.cli train joint --train T --heldout H --out checkpoints/my-joint

Under torchrun (`model_common.distributed`) the generator stage is data-parallel: the examples of each optimizer step
(its ``grad_accum`` examples of the seeded order) are dealt round-robin to the ranks and the adapters' gradients summed
over them, so P processes take the steps one process would (up to float summation order); rank 0 alone saves the state
and logs. The later stages (span head, reader, question tower, calibration, evaluation) run on rank 0 alone; the other
ranks return after the generator.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from retrieve_generate_model.joint import AnswerNotShown, Example, JointConfig, JointModel, shown_source
from retrieve_generate_model.reader import train_reader
from retrieve_generate_model.records import Source


@dataclass(frozen=True)
class JointTrainConfig:
    max_examples: int = 0  # training examples used (0: all), in the seeded order
    epochs: int = 1
    lr: float = 3e-4
    warmup_steps: int = 10  # optimizer steps
    grad_accum: int = 8  # examples per optimizer step
    max_grad_norm: float = 1.0
    checkpoint_every: int = 200  # examples between saved training states
    heldout_examples: int = 60  # held-out rows decoded at the end (each ~1-2 s on 2 cores)
    bf16: bool = True  # autocast to bfloat16 on CPU (float32 master weights)
    link: str = "distill"  # generation -> retrieval: "distill" (a stage after the generator) or "attention" (with it)
    link_layers: int = 0  # "attention": the generator's last N layers take the bias; 0: those with adapters
    link_lr: float = 5e-4  # "attention": the question tower's learning rate (AdamW, constant)
    calibrate: bool = True  # set the decoding's abstain_bias for balanced route accuracy on the held-out rows
    head_examples: int = 800  # answerable rows the span head is trained on (those the generator did not see first)
    head_epochs: int = 4
    head_lr: float = 1e-3
    retriever_examples: int = 400  # answerable rows the question tower is trained on with the generator's targets
    reader_epochs: int = 2  # the answer reader (MiniLM) over every answerable row; 0: no reader
    reader_negatives: int = 1  # sources without the answer read beside the evidence
    reader_lr: float = 1e-3
    reader_null_answer: bool = False  # the reader may answer "no answer" (trained on the unanswerable rows too)
    seed: int = 0

    # fields of the stages after the generator and of the final evaluation: a rerun may change them
    LATER = ("heldout_examples", "calibrate", "head_examples", "head_epochs", "head_lr", "retriever_examples",
             "reader_epochs", "reader_negatives", "reader_lr", "reader_null_answer")

    def __post_init__(self) -> None:
        if self.link not in ("distill", "attention"):
            raise ValueError(f"link must be 'distill' or 'attention', got {self.link!r}")
        if self.link_layers < 0:
            raise ValueError(f"link_layers must be >= 0, got {self.link_layers}")

    def generator_run(self) -> dict[str, Any]:
        """The fields that change what the generator's training computes."""
        return {k: v for k, v in asdict(self).items() if k not in self.LATER}


def mean(xs: list[float]) -> float | None:
    """The mean rounded for reports; None without values."""
    return round(sum(xs) / len(xs), 4) if xs else None


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def row_sources(row: dict[str, Any]) -> list[Source]:
    return [Source.from_dict(s) for s in row["sources"]]


def row_example(model: JointModel, row: dict[str, Any]) -> Example:
    """The training example of one row of `synth_pipeline.qa` (the answer is a span of the evidence, which is the
    quoted source); `AnswerNotShown` when the model would not see the answer."""
    quotes = [(row["quote_source"], row["quote_start"], row["quote_end"])] if row["quote_source"] >= 0 else []
    route = "answer" if row["answerable"] else "abstain"
    span = (row["quote_source"], row["answer_start"], row["answer_end"]) if row["answerable"] else None
    return model.example(row["question"], row_sources(row), route, list(row["relied"]), row["answer"], quotes,
                         answer_span=span)


def shown_rows(model: JointModel, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose answer the model reads: an answer past ``max_source_tokens`` of its source cannot be
    learned from what is shown (teaching it would teach answering from nothing)."""
    kept = []
    for row in rows:
        try:
            row_example(model, row)
        except AnswerNotShown:
            continue
        kept.append(row)
    return kept


def _order(n: int, cfg: JointTrainConfig) -> list[int]:
    order = []
    for epoch in range(cfg.epochs):
        idx = list(range(n))
        random.Random(f"{cfg.seed}:{epoch}").shuffle(idx)
        order += idx[: cfg.max_examples or n]
    return order


def train_joint(
    train_path: str | Path,
    heldout_path: str | Path,
    out: str | Path,
    cfg: JointTrainConfig | None = None,
    model_cfg: JointConfig | None = None,
    score: Callable[[str, list[str]], tuple[float, float]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or resume) and evaluate; returns the final report (on ranks other than 0 under torchrun: the number
    of examples alone). ``score(prediction, golds) -> (em, f1)``."""
    from model_common import distributed  # torchrun's process group, shared by the trainers

    with distributed.joined() as world:
        return _train_joint(train_path, heldout_path, out, cfg, model_cfg, score, log, world)


def _train_joint(train_path, heldout_path, out, cfg, model_cfg, score, log, world) -> dict[str, Any]:
    import os

    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import get_linear_schedule_with_warmup

    from model_common import distributed

    cfg, model_cfg = cfg or JointTrainConfig(), model_cfg or JointConfig()
    if not world.main:
        log = _silent
    out = Path(out)
    state_dir = out / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    rows = read_rows(train_path)
    saved_cfg = state_dir / "run.json"
    run = {"train": asdict(cfg), "model": asdict(model_cfg), "train_path": str(train_path), "rows": len(rows)}
    if saved_cfg.is_file():
        previous = json.loads(saved_cfg.read_text())
        previous["model"] = JointConfig.from_dict(previous["model"]).trained()
        previous["train"] = JointTrainConfig(**previous["train"]).generator_run()  # fields added since: defaults
        now = {**run, "train": cfg.generator_run(), "model": model_cfg.trained()}
        if json.loads(json.dumps(previous)) != json.loads(json.dumps(now)):
            raise ValueError(f"{out} holds a run with other settings; use another --out or remove {state_dir}")
    distributed.barrier(world)  # every rank has read run.json before rank 0 writes it
    if not saved_cfg.is_file() and world.main:
        saved_cfg.write_text(json.dumps(run, indent=1) + "\n")

    torch.manual_seed(cfg.seed)
    model = JointModel(model_cfg)
    read, rows = len(rows), shown_rows(model, rows)
    if read > len(rows):
        log(f"{read - len(rows)} of {read} rows skipped: the answer lies past max_source_tokens of its source")
    order = _order(len(rows), cfg)
    generator = model.generator
    link = AttentionLink(model, cfg) if cfg.link == "attention" else None
    if link is not None:  # the checkpoint answers with the bias it trained with (`JointModel.answer`)
        model.config = dataclasses.replace(model.config, source_bias_layers=len(link.layers))
        model.tower = link.tower
    params = [p for p in generator.parameters() if p.requires_grad]
    shared = params + (link.params if link is not None else [])  # what the ranks keep equal
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    steps = math.ceil(len(order) / cfg.grad_accum)
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, steps)
    start = 0
    state_file = state_dir / "train_state.pt"
    if state_file.is_file():
        state = torch.load(state_file, weights_only=False)
        set_peft_model_state_dict(generator, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if link is not None:
            link.load_state_dict(state["link"])
        start = state["examples"]
        log(f"resuming at example {start}/{len(order)}")
    distributed.broadcast(world, shared)

    def save_state(examples: int) -> None:
        tmp = state_file.with_suffix(".tmp")
        torch.save({"adapter": get_peft_model_state_dict(generator), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "examples": examples,
                    **({"link": link.state_dict()} if link is not None else {})}, tmp)
        tmp.replace(state_file)

    log_file = (out / "log.jsonl").open("a") if world.main else open(os.devnull, "w")
    generator.train()
    window: list[float] = []
    t0 = time.perf_counter()
    for i in range(start, len(order)):
        done = i + 1
        if (i % cfg.grad_accum) % world.size == world.rank:  # the step's examples, dealt round-robin to the ranks
            ex = row_example(model, rows[order[i]])
            biased = link.inputs(rows[order[i]], ex) if link is not None else {}  # source_ids, source_bias
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                loss = generator(input_ids=torch.tensor([ex.input_ids]), labels=torch.tensor([ex.labels]),
                                 **biased).loss
            (loss / cfg.grad_accum).backward()
            window.append(float(loss.detach()))
        if done % cfg.grad_accum == 0 or done == len(order):
            distributed.sum_gradients(world, shared)  # the step's gradient over all its examples, on every rank
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if link is not None:
                link.step()
        if done % cfg.checkpoint_every == 0 or done == len(order):
            total, count = distributed.all_sum(world, [sum(window), len(window)])
            if world.main:
                save_state(done)
                rate = (done - start) / (time.perf_counter() - t0)
                entry = {"examples": done, "of": len(order), "loss": round(total / max(count, 1), 4),
                         "lr": scheduler.get_last_lr()[0], "examples_per_s": round(rate, 3),
                         **(link.window() if link is not None else {})}
                log_file.write(json.dumps(entry) + "\n")
                log_file.flush()
                log(json.dumps(entry))
            distributed.barrier(world)
            window = []
    generator.eval()
    if not world.main:  # the later stages are single-process: rank 0 runs them
        log_file.close()
        return {"examples": len(order), "rank": world.rank}
    seen = set(order)  # the later stages learn from rows the generator did not train on first
    later = [r for j, r in enumerate(rows) if j not in seen and r["answerable"]]
    later += [rows[j] for j in dict.fromkeys(order) if rows[j]["answerable"]]
    if model.span_head is not None:
        name = f"span_head-r{model.config.span_head_rank}-n{cfg.head_examples}-e{cfg.head_epochs}-lr{cfg.head_lr}"
        train_span_head(model, later[: cfg.head_examples], cfg, state_dir / f"{name}.safetensors", log_file, log)
    reader = {}
    if cfg.reader_epochs:
        name = f"reader-e{cfg.reader_epochs}-n{cfg.reader_negatives}-lr{cfg.reader_lr}-s{cfg.seed}"
        name += "-null" if cfg.reader_null_answer else ""
        model.reader, reader = train_answer_reader(rows, read_rows(heldout_path), cfg, state_dir / name, log_file, log)
    elif model.config.answer_by == "reader":
        log("no reader trained (--reader-epochs 0): the checkpoint answers by the token walk")
        model.config, model.reader = dataclasses.replace(model.config, answer_by="walk"), None
    retriever = {}
    if link is not None:  # the tower trained with the generator: saved where the distillation stage saves its own
        retriever = link.finish(out / "retriever", read_rows(heldout_path))
    elif cfg.retriever_examples:
        retriever = train_question_tower(model, later[: cfg.retriever_examples], read_rows(heldout_path), cfg,
                                         out / "retriever", log_file, log)
    heldout = shown_rows(model, read_rows(heldout_path))[: cfg.heldout_examples]
    calibration = calibrate(model, heldout) if cfg.calibrate else {"abstain_bias": 0.0}
    model.config = dataclasses.replace(model.config, **calibration)
    model.save(out)
    report = evaluate_joint(model, heldout, score)
    report |= {"examples": len(order), "train_rows": len(rows), **calibration, **reader, **retriever}
    log_file.write(json.dumps({"heldout": report}) + "\n")
    log_file.close()
    (out / "heldout.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _silent(msg: str) -> None:
    """The log of ranks other than 0."""


def train_span_head(model: JointModel, rows: list[dict[str, Any]], cfg: JointTrainConfig, state: Path,
                    log_file, log: Callable[[str], None] = print) -> None:
    """Train ``model.span_head`` on the frozen generator's states of ``rows`` (answerable ones): the states are
    computed once (float32, as at decoding), then the head is fitted over them for ``head_epochs``. Its weights are
    kept in ``state``; a rerun loads them instead of training again."""
    import torch
    from safetensors.torch import load_file, save_file

    from retrieve_generate_model.span_head import span_loss

    head = model.span_head
    if state.is_file():
        head.load_state_dict(load_file(str(state)))
        return
    t0 = time.perf_counter()
    examples = []
    for row in rows:
        ex = row_example(model, row)
        if ex.query_at is None or not ex.answer_spans:
            continue
        with torch.inference_mode():  # causal: the states up to the query position are those of the whole example
            states = model.generator(input_ids=torch.tensor([ex.input_ids[: ex.query_at + 1]]),
                                     output_hidden_states=True).hidden_states[-1][0]
        positions = [p for b, e in ex.source_ranges for p in range(b, e)]
        index = {p: i for i, p in enumerate(positions)}
        starts = sorted({index[a] for a, _ in ex.answer_spans})
        ends = sorted({index[b] for _, b in ex.answer_spans})
        examples.append((states[positions].clone(), states[ex.query_at].clone(), starts, ends))
    log(f"span head: states of {len(examples)} rows in {time.perf_counter() - t0:.0f}s")
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.head_lr, weight_decay=0.01)
    rng = random.Random(cfg.seed)
    head.train()
    for epoch in range(cfg.head_epochs):
        rng.shuffle(examples)
        total = 0.0
        for n, (tokens, query, starts, ends) in enumerate(examples, start=1):
            loss = span_loss(*head(tokens, query), starts, ends)
            (loss / cfg.grad_accum).backward()
            total += float(loss.detach())
            if n % cfg.grad_accum == 0 or n == len(examples):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        entry = {"span_head_epoch": epoch + 1, "loss": round(total / max(len(examples), 1), 4)}
        log_file.write(json.dumps(entry) + "\n")
        log(json.dumps(entry))
    head.eval()
    save_file(head.state_dict(), str(state))


def train_answer_reader(rows: list[dict[str, Any]], heldout: list[dict[str, Any]], cfg: JointTrainConfig,
                        folder: Path, log_file, log: Callable[[str], None] = print) -> tuple[Any, dict[str, Any]]:
    """The answer reader (`reader.py`) trained on ``rows``, kept in ``folder`` (a rerun loads what is there), and its
    held-out report: exact match and F1 of its best span over each answerable row's sources (what the generator
    would be shown), with the evidence among them."""
    import torch

    from retrieve_generate_model.reader import CONFIG_FILE, AnswerReader, AnswerReaderConfig, AnswerReaderTrainConfig

    if (folder / CONFIG_FILE).is_file():
        reader = AnswerReader.load(folder)
    else:
        torch.manual_seed(cfg.seed)
        reader = AnswerReader(AnswerReaderConfig(null_answer=cfg.reader_null_answer))
        settings = AnswerReaderTrainConfig(epochs=cfg.reader_epochs, negatives=cfg.reader_negatives, lr=cfg.reader_lr,
                                     seed=cfg.seed)
        for entry in train_reader(rows, reader, settings, log=log, save_to=folder):  # resumable epoch by epoch
            log_file.write(json.dumps({"reader": entry}) + "\n")
            log_file.flush()
    return reader, {"reader": reader_report(reader, heldout)}


def train_reader_alone(train_paths: list[str | Path], heldout_path: str | Path, out: str | Path, cfg=None,
                       reader_cfg=None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """`ragless train reader`: the answer reader on the rows of one or more `synth_pipeline.qa` files, saved in
    ``out`` (a joint checkpoint's ``reader/`` folder: `JointModel.load` picks it up) with its held-out report in
    ``out/report.json``. Needs no generator: minutes on a CPU where the generator takes hours. Returns the report."""
    import torch

    from retrieve_generate_model.reader import AnswerReader, AnswerReaderTrainConfig

    cfg = cfg or AnswerReaderTrainConfig()
    rows = [row for path in train_paths for row in read_rows(path)]
    torch.manual_seed(cfg.seed)
    reader = AnswerReader(reader_cfg)
    out = Path(out)
    history = train_reader(rows, reader, cfg, log=log, save_to=out)  # resumable: a rerun continues after an epoch
    report = {"train": [str(p) for p in train_paths], "rows": len(rows), "history": history,
              "heldout": reader_report(reader, read_rows(heldout_path))}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def train_rewriter_alone(train_paths: list[str | Path], heldout_path: str | Path, checkpoint: str | Path,
                         out: str | Path, cfg=None, rewrite_cfg=None, log: Callable[[str], None] = print,
                         heldout_pairs: int = 200) -> dict[str, Any]:
    """`ragless train rewrite`: the query rewrite adapters (`rewrite.py`) on the generator of the joint checkpoint
    ``checkpoint``, trained on the (question, evidence sentence) pairs of `synth_pipeline.qa` rows and saved in
    ``out`` (a checkpoint's ``rewrite/`` folder: `JointModel.load` picks it up), with the held-out loss before and
    after in ``out/report.json``. Resumable: a rerun continues from the last kept step. Returns the report."""
    import torch

    from retrieve_generate_model.joint import JointModel
    from retrieve_generate_model.rewrite import (
        QueryRewriter,
        RewriteTrainConfig,
        state_file,
        train_rewriter,
        training_pairs,
    )

    cfg = cfg or RewriteTrainConfig()
    pairs = training_pairs([row for path in train_paths for row in read_rows(path)])
    heldout = training_pairs(read_rows(heldout_path))[:heldout_pairs]
    torch.manual_seed(cfg.seed)
    model = JointModel.load(checkpoint)
    rewriter = QueryRewriter(model.generator, model.tokenizer, rewrite_cfg)

    def heldout_loss() -> float | None:
        if not heldout:
            return None
        with rewriter.active(), torch.inference_mode():
            losses = [float(rewriter.loss(heldout[i: i + cfg.batch_size])) for i in range(0, len(heldout),
                                                                                         cfg.batch_size)]
        return round(sum(losses) / len(losses), 4)

    out = Path(out)
    before = heldout_loss() if not state_file(out).is_file() else None  # a resumed run's adapters are not the start
    history = train_rewriter(pairs, rewriter, cfg, save_to=out, log=log)
    report = {"train": [str(p) for p in train_paths], "checkpoint": str(checkpoint), "pairs": len(pairs),
              "history": history, "heldout": {"pairs": len(heldout), "loss_before": before,
                                              "loss_after": heldout_loss()}}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def reader_report(reader, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The reader's best span over each answerable row's sources against the row's answer: n, EM, F1 (SQuAD's
    normalization) and how often the span lies in the evidence; for a reader with the "no answer" option, how often
    it prefers it (margin > 0) on the unanswerable rows and on the answerable ones."""
    from model_common.answer_metrics import exact_match, token_f1
    from retrieve_generate_model.reader import no_answer_margin

    em, f1, evidence, declines = [], [], [], {True: [], False: []}
    for row in rows:
        texts = [s["text"] for s in row["sources"]]
        spans, null = reader.read(row["question"], texts, top=1)
        if null is not None:
            declines[row["answerable"]].append(no_answer_margin(spans, null) > 0)
        if not row["answerable"] or not spans:
            continue
        prediction = texts[spans[0].source][spans[0].char_start: spans[0].char_end]
        em.append(exact_match(prediction, [row["answer"]]))
        f1.append(token_f1(prediction, [row["answer"]]))
        evidence.append(spans[0].source == row["quote_source"])

    report = {"n": len(em), "em": mean(em), "f1": mean(f1), "in_evidence": mean(evidence)}
    if declines[True] or declines[False]:
        report |= {"no_answer_on_unanswerable": mean(declines[False]), "no_answer_on_answerable": mean(declines[True])}
    return report


def train_question_tower(model: JointModel, rows: list[dict[str, Any]], heldout: list[dict[str, Any]],
                         cfg: JointTrainConfig, folder: Path, log_file, log: Callable[[str], None] = print
                         ) -> dict[str, Any]:
    """The link from generation to retrieval: the trained generator's preference among each row's sources
    (`retriever.generator_targets`) is distilled into the retriever's question tower, with the contrastive loss on
    the evidence beside it (`retriever.train_retriever`); saved in ``folder`` (a rerun keeps what is there).
    Returns the held-out rank of the evidence among each row's sources before and after."""
    from retrieve_generate_model.retriever import (
        CONFIG_FILE,
        QueryEncoder,
        RetrieverTrainConfig,
        generator_targets,
        rank_of_evidence,
        train_retriever,
    )

    if (folder / CONFIG_FILE).is_file():
        tower = QueryEncoder.load(folder)
    else:
        t0 = time.perf_counter()
        targets = generator_targets(model, rows)
        log(f"retriever: generator targets for {sum(t is not None for t in targets)} rows in "
            f"{time.perf_counter() - t0:.0f}s")
        tower = QueryEncoder()
        for entry in train_retriever(rows, tower, RetrieverTrainConfig(seed=cfg.seed), log=log, targets=targets):
            log_file.write(json.dumps({"retriever": entry}) + "\n")
        tower.save(folder)
    return {"retriever_base": rank_of_evidence(tower.base, heldout), "retriever": rank_of_evidence(tower, heldout)}


class AttentionLink:
    """``link="attention"``: the question tower (`retriever.QueryEncoder`, fresh adapters) trained with the generator,
    through its attention (`biased_attention.py`).

    Per example: the tower embeds the question (with gradients), the base encoder the row's sources as the model is
    shown them (the index's own vectors: frozen, embedded once), and `biased_attention.retrieval_bias` of the scaled
    scores ``scale * q . p`` — the log of each source's retrieval weight relative to uniform — is the ``source_bias``
    of the generator's attention to that source's tokens in its last ``link_layers`` layers. The answer loss's
    gradient reaches the tower's adapters through the bias (the kernel's source-bias gradient); the tower has its own
    AdamW, stepped with the generator's optimizer. A row with one source gives the tower no gradient (its bias is 0).

    Caution (seen 2026-12 in a short run at a high ``link_lr``): the answer loss alone can pull the tower toward
    indifference (a flatter distribution over the sources, bias -> 0, the generator's unbiased attention) rather than
    toward the evidence, and its held-out ranking of the evidence fell; there is no contrastive term beside it here,
    as `train_retriever` has beside the distillation.
    """

    def __init__(self, model: JointModel, cfg: JointTrainConfig):
        import torch

        from retrieve_generate_model.biased_attention import last_layers, use_source_bias
        from retrieve_generate_model.retriever import QueryEncoder

        use_source_bias(model.generator)  # without the source kwargs (decoding, evaluation) it is plain SDPA
        self.cfg = cfg
        self.tower = QueryEncoder()
        self.tower.model.train()
        self.params = [p for p in self.tower.peft_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.link_lr)
        layers = model.generator.config.num_hidden_layers
        depth = min(cfg.link_layers or model.config.lora_layers, layers)  # deeper than the adapters: a longer backward
        self.layers = last_layers(layers, depth)
        self.passages: dict[str, Any] = {}  # passage text -> its base vector (D,)
        self.norms: list[float] = []  # the tower's gradient norm at each step since the last `window`

    def inputs(self, row: dict[str, Any], ex: Example) -> dict[str, Any]:
        """The generator's extra keyword arguments for ``row`` (whose example is ``ex``): ``source_ids`` (1, N),
        ``source_bias`` (1, S) differentiable in the tower, ``source_layers``."""
        import torch

        from retrieve_generate_model.biased_attention import token_sources, tower_bias

        sources = row_sources(row)[: len(ex.source_ranges)]
        bias = tower_bias(self.tower, row["question"], sources, self.passages)  # (1, S)
        ids = torch.tensor([token_sources(len(ex.input_ids), ex.source_ranges)])  # (1, N)
        return {"source_ids": ids, "source_bias": bias, "source_layers": self.layers}

    def step(self) -> None:
        """The tower's optimizer step on the gradients the generator's step left (clipped like the generator's)."""
        import torch

        self.norms.append(float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def window(self) -> dict[str, Any]:
        """For the training log: the tower's mean gradient norm over the steps since the last call."""
        out, self.norms = {"tower_grad_norm": mean(self.norms)}, []
        return out

    def state_dict(self) -> dict[str, Any]:
        from peft import get_peft_model_state_dict

        return {"tower": get_peft_model_state_dict(self.tower.peft_model), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.tower.peft_model, state["tower"])
        self.optimizer.load_state_dict(state["optimizer"])

    def finish(self, folder: Path, heldout: list[dict[str, Any]]) -> dict[str, Any]:
        """Save the tower in ``folder`` (a checkpoint's ``retriever/``); the held-out rank of the evidence among each
        row's sources by the base encoder and by the tower (as `train_question_tower` reports it)."""
        from retrieve_generate_model.retriever import rank_of_evidence

        self.tower.model.eval()
        self.tower.save(folder)
        return {"retriever_link": "attention", "retriever_base": rank_of_evidence(self.tower.base, heldout),
                "retriever": rank_of_evidence(self.tower, heldout)}


def route_margins(model: JointModel, rows: list[dict[str, Any]]) -> list[float]:
    """Per row, the generator's logit of the abstain route minus the answer route's, where it writes the route."""
    import torch

    layout, margins = model.layout, []
    answer_tok, abstain_tok = layout.route_word["answer"][0], layout.route_word["abstain"][0]
    for row in rows:
        ex = row_example(model, row)
        at = ex.labels.index(next(t for t in ex.labels if t != -100)) + len(layout.route) - 1  # predicts the route
        with torch.inference_mode():  # with the source bias the model answers with, where it has one
            biased = model.source_inputs(row["question"], row_sources(row), ex.source_ranges, at + 1)
            logits = model.generator(input_ids=torch.tensor([ex.input_ids[: at + 1]]), **biased).logits[0, -1]
        margins.append(float(logits[abstain_tok] - logits[answer_tok]))
    return margins


def calibrate_abstain_bias(margins: list[float], answerable: list[bool]) -> float:
    """The bias added to the abstain route's logit that maximizes balanced route accuracy (the mean of the accuracy
    on answerable and on unanswerable rows) on held-out rows; 0.0 when one kind is missing. Abstain iff
    ``margin + bias > 0``.

    >>> calibrate_abstain_bias([2.0, 1.0, -1.0, -3.0], [False, True, False, True])   # 1.0 and -1.0 overlap
    -1.5
    """
    if all(answerable) or not any(answerable):
        return 0.0
    cuts = sorted(set(margins))
    candidates = [0.0, cuts[0] - 1.0] + [(a + b) / 2 for a, b in zip(cuts, cuts[1:])] + [cuts[-1] + 1.0]

    def balanced(threshold: float) -> float:  # abstain iff margin > threshold
        return balanced_accuracy([m > threshold for m in margins], answerable)

    best = max(candidates, key=lambda t: (balanced(t), -abs(t)))  # ties: the smallest correction
    return round(-best, 4)


def reader_margins(model: JointModel, rows: list[dict[str, Any]]) -> list[float]:
    """Per row, the reader's "no answer" score above its best span over the sources the model is shown."""
    from retrieve_generate_model.reader import no_answer_margin

    out = []
    for row in rows:
        shown = [shown_source(model.layout, s, model.config.max_source_tokens)[0].text
                 for s in row_sources(row)[: model.config.k]]
        out.append(no_answer_margin(*model.reader.read(row["question"], shown)))
    return out


def calibrate(model: JointModel, heldout: list[dict[str, Any]]) -> dict[str, float | None]:
    """The abstention settings of ``model``'s config chosen on held-out rows: the route's ``abstain_bias``
    (`calibrate_abstain_bias`) and, for a reader with the "no answer" option, ``reader_abstain_margin``
    (`calibrate_reader_threshold`, given that bias); with ``route_abstains`` off, the reader's threshold alone. The end
    of `train_joint`, and `ragless train calibrate` for a checkpoint whose reader was trained apart."""
    answerable = [row["answerable"] for row in heldout]
    out: dict[str, float | None] = {}
    if model.config.route_abstains:
        margins = route_margins(model, heldout)
        out["abstain_bias"] = calibrate_abstain_bias(margins, answerable)
        generator_abstains = [m + out["abstain_bias"] > 0 for m in margins]
    else:  # the route always answers: the reader's threshold is the whole rule
        generator_abstains = [False] * len(heldout)
    if model.reader is not None and model.reader.null_answer:
        out["reader_abstain_margin"] = calibrate_reader_threshold(reader_margins(model, heldout), generator_abstains,
                                                                  answerable)
    return out


def calibrate_checkpoint(folder: str | Path, heldout_path: str | Path, examples: int = 60,
                         route_abstains: bool | None = None) -> dict[str, Any]:
    """`ragless train calibrate`: `calibrate` the checkpoint in ``folder`` on (the first ``examples`` of) the
    held-out rows and save its config; returns the settings and the held-out report under them. ``route_abstains``,
    when given, replaces the checkpoint's (`JointConfig.route_abstains`)."""
    from model_common.answer_metrics import exact_match, token_f1

    model = JointModel.load(folder, **({} if route_abstains is None else {"route_abstains": route_abstains}))
    heldout = shown_rows(model, read_rows(heldout_path))[:examples]
    settings = {"route_abstains": model.config.route_abstains, **calibrate(model, heldout)}
    model.config = dataclasses.replace(model.config, **settings)
    model.save_config(folder)
    report = evaluate_joint(model, heldout, lambda p, golds: (exact_match(p, golds), token_f1(p, golds)))
    return {**settings, "heldout": report}


def balanced_accuracy(abstains: Sequence[bool], answerable: Sequence[bool]) -> float:
    """The mean of the abstention rate on the unanswerable cases and the answer rate on the answerable ones: a rule
    is judged on both kinds equally, whatever their shares.

    >>> balanced_accuracy([True, False, True, False], [False, False, True, True])
    0.5
    """
    declined = [x for x, a in zip(abstains, answerable) if not a]
    answered = [not x for x, a in zip(abstains, answerable) if a]
    return (sum(declined) / len(declined) + sum(answered) / len(answered)) / 2


def calibrate_reader_threshold(margins: list[float], generator_abstains: list[bool],
                               answerable: list[bool]) -> float | None:
    """The reader's no-answer margin above which the model abstains even where the generator's route answers,
    chosen for the best balanced route accuracy of that rule on held-out rows (ties: the highest threshold, fewest
    overrides); None (the reader never overrides) when one kind of row is missing or no threshold helps.

    >>> calibrate_reader_threshold([3.0, -2.0, 1.0, -1.0], [False, False, False, False], [False, True, False, True])
    0.0
    >>> calibrate_reader_threshold([3.0, -2.0], [True, False], [False, True]) is None   # the generator is right
    True
    """
    if all(answerable) or not any(answerable):
        return None

    def balanced(threshold: float) -> float:
        return balanced_accuracy([g or m > threshold for m, g in zip(margins, generator_abstains)], answerable)

    cuts = sorted({m for m in margins if m != float("inf")})
    candidates = [(a + b) / 2 for a, b in zip(cuts, cuts[1:])] + ([cuts[0] - 1.0] if cuts else [])
    never = balanced(float("inf"))
    best = max(candidates, key=lambda t: (balanced(t), t), default=None)
    if best is None or balanced(best) <= never:
        return None
    return round(best, 4)


def evaluate_joint(model: JointModel, rows: list[dict[str, Any]],
                   score: Callable[[str, list[str]], tuple[float, float]] | None = None) -> dict[str, Any]:
    """Decode held-out rows: route accuracy, answer EM/F1 on the answerable ones, and the mean loss."""
    import torch

    routes, ems, f1s, losses, cited = [], [], [], [], []
    for row in rows:
        ex = row_example(model, row)
        with torch.inference_mode():
            losses.append(float(model.generator(input_ids=torch.tensor([ex.input_ids]),
                                                labels=torch.tensor([ex.labels])).loss))
        answer = model.answer(row["question"], row_sources(row))
        routes.append(answer.abstained == (not row["answerable"]))
        if row["answerable"] and score is not None:
            em, f1 = score("" if answer.abstained else answer.text, [row["answer"]])
            ems.append(em)
            f1s.append(f1)
        if row["answerable"] and not answer.abstained:
            cited.append(any(c.seg_id == row["seg_id"] for c in answer.citations))

    return {"n": len(rows), "loss": mean(losses), "route_accuracy": mean(routes), "answer_em": mean(ems),
            "answer_f1": mean(f1s), "cites_evidence": mean(cited)}
