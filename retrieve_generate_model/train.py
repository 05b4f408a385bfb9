"""Supervised training of the joint model's generator on the structured answers of `synth_pipeline.qa`.

One example at a time (no padding: prompts differ in length by hundreds of tokens), gradients accumulated over
``grad_accum`` examples, AdamW on the LoRA adapters of the last ``lora_layers`` layers only (so the backward pass stops
there), bfloat16 autocast where the CPU has it (AMX/AVX-512 BF16: ~1.7x faster than float32 on the machine measured).
Labels cover the structured answer only, never the prompt.

Resumable: every ``checkpoint_every`` examples the adapters, the optimizer, the scheduler and the position in the
(seeded) example order are saved under ``OUT/state/``; the same command continues from there. When training ends the
model is saved to ``OUT`` (`JointModel.save`), evaluated on the held-out rows, and a line per event is in
``OUT/log.jsonl``.

    report = train_joint("data/qa/train.parquet", "data/qa/heldout.parquet", "checkpoints/joint", JointTrainConfig())
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from retrieve_generate_model.joint import JointConfig, JointModel
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
    calibrate: bool = True  # set the decoding's abstain_bias for balanced route accuracy on the held-out rows
    seed: int = 0


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def row_sources(row: dict[str, Any]) -> list[Source]:
    return [Source.from_dict(s) for s in row["sources"]]


def row_ids(model: JointModel, row: dict[str, Any]) -> tuple[list[int], list[int]]:
    """The training (input_ids, labels) of one row of `synth_pipeline.qa`."""
    quotes = [(row["quote_source"], row["quote_start"], row["quote_end"])] if row["quote_source"] >= 0 else []
    route = "answer" if row["answerable"] else "abstain"
    return model.example_ids(row["question"], row_sources(row), route, list(row["relied"]), row["answer"], quotes)


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
    """Train (or resume) and evaluate; returns the final report. ``score(prediction, golds) -> (em, f1)``."""
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import get_linear_schedule_with_warmup

    cfg, model_cfg = cfg or JointTrainConfig(), model_cfg or JointConfig()
    out = Path(out)
    state_dir = out / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    rows = read_rows(train_path)
    order = _order(len(rows), cfg)
    saved_cfg = state_dir / "run.json"
    run = {"train": asdict(cfg), "model": asdict(model_cfg), "train_path": str(train_path), "rows": len(rows)}
    if saved_cfg.is_file():
        previous = json.loads(saved_cfg.read_text())
        previous["model"] = JointConfig.from_dict(previous["model"]).trained()
        previous["train"] = asdict(JointTrainConfig(**previous["train"]))  # fields added since: their defaults
        if previous != json.loads(json.dumps({**run, "model": model_cfg.trained()})):
            raise ValueError(f"{out} holds a run with other settings; use another --out or remove {state_dir}")
    else:
        saved_cfg.write_text(json.dumps(run, indent=1) + "\n")

    torch.manual_seed(cfg.seed)
    model = JointModel(model_cfg)
    generator = model.generator
    params = [p for p in generator.parameters() if p.requires_grad]
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
        start = state["examples"]
        log(f"resuming at example {start}/{len(order)}")

    def save_state(examples: int) -> None:
        tmp = state_file.with_suffix(".tmp")
        torch.save({"adapter": get_peft_model_state_dict(generator), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "examples": examples}, tmp)
        tmp.replace(state_file)

    log_file = (out / "log.jsonl").open("a")
    generator.train()
    window: list[float] = []
    t0 = time.perf_counter()
    for i in range(start, len(order)):
        input_ids, labels = row_ids(model, rows[order[i]])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = generator(input_ids=torch.tensor([input_ids]), labels=torch.tensor([labels])).loss
        (loss / cfg.grad_accum).backward()
        window.append(float(loss.detach()))
        done = i + 1
        if done % cfg.grad_accum == 0 or done == len(order):
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if done % cfg.checkpoint_every == 0 or done == len(order):
            save_state(done)
            rate = (done - start) / (time.perf_counter() - t0)
            entry = {"examples": done, "of": len(order), "loss": round(sum(window) / len(window), 4),
                     "lr": scheduler.get_last_lr()[0], "examples_per_s": round(rate, 3)}
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()
            log(json.dumps(entry))
            window = []
    generator.eval()
    heldout = read_rows(heldout_path)[: cfg.heldout_examples]
    margins = route_margins(model, heldout)
    bias = calibrate_abstain_bias(margins, [row["answerable"] for row in heldout]) if cfg.calibrate else 0.0
    model.config = dataclasses.replace(model.config, abstain_bias=bias)
    model.save(out)
    report = evaluate_joint(model, heldout, score)
    report |= {"examples": len(order), "train_rows": len(rows), "abstain_bias": bias}
    log_file.write(json.dumps({"heldout": report}) + "\n")
    log_file.close()
    (out / "heldout.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def route_margins(model: JointModel, rows: list[dict[str, Any]]) -> list[float]:
    """Per row, the generator's logit of the abstain route minus the answer route's, where it writes the route."""
    import torch

    layout, margins = model.layout, []
    answer_tok, abstain_tok = layout.route_word["answer"][0], layout.route_word["abstain"][0]
    for row in rows:
        input_ids, labels = row_ids(model, row)
        at = labels.index(next(t for t in labels if t != -100)) + len(layout.route) - 1  # predicts the route word
        with torch.inference_mode():
            logits = model.generator(input_ids=torch.tensor([input_ids[: at + 1]])).logits[0, -1]
        margins.append(float(logits[abstain_tok] - logits[answer_tok]))
    return margins


def calibrate_abstain_bias(margins: list[float], answerable: list[bool]) -> float:
    """The bias added to the abstain route's logit that maximizes balanced route accuracy (the mean of the accuracy
    on answerable and on unanswerable rows) on held-out rows; 0.0 when one kind is missing. Abstain iff
    ``margin + bias > 0``.

    >>> calibrate_abstain_bias([2.0, 1.0, -1.0, -3.0], [False, True, False, True])   # 1.0 and -1.0 overlap
    -1.5
    """
    pos = [m for m, a in zip(margins, answerable) if not a]
    neg = [m for m, a in zip(margins, answerable) if a]
    if not pos or not neg:
        return 0.0
    cuts = sorted(set(margins))
    candidates = [0.0, cuts[0] - 1.0] + [(a + b) / 2 for a, b in zip(cuts, cuts[1:])] + [cuts[-1] + 1.0]

    def balanced(threshold: float) -> float:  # abstain iff margin > threshold
        return (sum(m > threshold for m in pos) / len(pos) + sum(m <= threshold for m in neg) / len(neg)) / 2

    best = max(candidates, key=lambda t: (balanced(t), -abs(t)))  # ties: the smallest correction
    return round(-best, 4)


def evaluate_joint(model: JointModel, rows: list[dict[str, Any]],
                   score: Callable[[str, list[str]], tuple[float, float]] | None = None) -> dict[str, Any]:
    """Decode held-out rows: route accuracy, answer EM/F1 on the answerable ones, and the mean loss."""
    import torch

    routes, ems, f1s, losses, cited = [], [], [], [], []
    for row in rows:
        input_ids, labels = row_ids(model, row)
        with torch.inference_mode():
            losses.append(float(model.generator(input_ids=torch.tensor([input_ids]),
                                                labels=torch.tensor([labels])).loss))
        answer = model.answer(row["question"], row_sources(row))
        routes.append(answer.abstained == (not row["answerable"]))
        if row["answerable"] and score is not None:
            em, f1 = score("" if answer.abstained else answer.text, [row["answer"]])
            ems.append(em)
            f1s.append(f1)
        if row["answerable"] and not answer.abstained:
            cited.append(any(c.seg_id == row["seg_id"] for c in answer.citations))

    def mean(xs):
        return round(sum(xs) / len(xs), 4) if xs else None

    return {"n": len(rows), "loss": mean(losses), "route_accuracy": mean(routes), "answer_em": mean(ems),
            "answer_f1": mean(f1s), "cites_evidence": mean(cited)}
