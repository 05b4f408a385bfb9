"""Training the segmentation model on rows of `synth_pipeline.segmentation` (text, units, one label per unit).

    report = train_segmenter("train.parquet", "heldout.parquet", "checkpoints/segmenter", TrainConfig(steps=1200))

    ragless train segmenter --train T --heldout H --out checkpoints/my-segmenter                       # one process
    torchrun --nproc_per_node 2 -m ragless.cli train segmenter --train T --heldout H --out checkpoints/my-segmenter

Under torchrun (`model_common.distributed`, gloo on CPU, NCCL on GPUs) each rank computes its share of every global
batch of ``batch_windows`` windows and the adapters' gradients are summed over ranks, so P processes take the steps one
process would (exactly, up to float summation order, without dropout: set ``--lora-dropout 0`` to compare); rank 0 alone
saves, evaluates and logs.

Resumable: every ``save_every`` steps the adapters, head, optimizer, schedule and step go to ``<out>/state/`` (the
data order is a function of the seed and the step, so a resumed run sees exactly the batches it would have seen);
run the same command again to continue. The checkpoint itself (``segmenter.safetensors`` + ``config.json``) is
written at the end and whenever the held-out evaluation runs. ``<out>/log.jsonl`` holds one line per evaluation:
training loss, held-out per-label F1 and cut F1 (segment starts that match the gold segment starts exactly).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from preprocess_model.config import SegmenterConfig, TrainConfig
from preprocess_model.model import (
    SegmentationModel,
    Window,
    collate,
    decode,
    encode_document,
    load_base,
    predict,
)
from preprocess_model.units import BOUNDARY, CONTINUE, HEADING, LABELS, NOISE


@dataclass
class Example:
    window: Window
    labels: list[int]  # one per unit of the window


def load_rows(path: str | Path, limit: int | None = None, max_units: int | None = None) -> list[dict[str, Any]]:
    """Rows of a synthetic dataset: the first ``limit``, and only as many as keep the units within ``max_units``
    (always at least one row)."""
    table = pq.read_table(path, columns=["doc_id", "text", "unit_starts", "unit_ends", "labels", "segment_starts"])
    rows = table.slice(0, limit).to_pylist() if limit else table.to_pylist()
    if max_units:
        kept, units = [], 0
        for row in rows:
            units += len(row["labels"])
            if kept and units > max_units:
                break
            kept.append(row)
        rows = kept
    return rows


def make_examples(
    rows: Sequence[dict[str, Any]], tokenizer, cfg: SegmenterConfig, max_windows_per_doc: int = 0, seed: int = 0
) -> list[Example]:
    """The windows of every row with the labels of the units they hold; at most ``max_windows_per_doc`` per row
    (a seeded sample, in document order), so that long documents do not drown short ones."""
    out = []
    for i, row in enumerate(rows):
        units = list(zip(row["unit_starts"], row["unit_ends"]))
        windows = encode_document(row["text"], tokenizer, cfg, units).windows
        if 0 < max_windows_per_doc < len(windows):
            keep = np.random.default_rng([seed, i]).choice(len(windows), max_windows_per_doc, replace=False)
            windows = [windows[k] for k in sorted(keep)]
        out.extend(Example(w, [row["labels"][u] for u in w.units]) for w in windows)
    return out


def _batch_order(n: int, batch: int, seed: int, step: int) -> list[int]:
    """The example indices of optimizer step ``step``: epochs are seeded permutations, so any step can be recomputed."""
    per_epoch = max(n // batch, 1)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[k * batch : (k + 1) * batch].tolist()


def evaluate_segmenter(model: SegmentationModel, tokenizer, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Held-out per-label F1 over units (argmax), and the decoded segmentation against the gold one: ``cut_precision``
    is the fraction of the decoder's segment starts that are gold segment starts (a cut inside a gold segment is an
    error), ``cut_recall`` the fraction of gold starts it cuts at (low by design: the decoder joins gold segments of
    one section while they fit the retriever's limit)."""
    model.eval()
    encoded = [encode_document(r["text"], tokenizer, model.cfg, list(zip(r["unit_starts"], r["unit_ends"])))
               for r in rows]
    probs = predict(model, tokenizer, encoded)
    gold = np.concatenate([np.asarray(r["labels"]) for r in rows]) if rows else np.zeros(0, int)
    pred = np.concatenate([p.argmax(-1) for p in probs]) if rows else np.zeros(0, int)
    metrics: dict[str, float] = {"units": len(gold), "accuracy": float((gold == pred).mean()) if len(gold) else 0.0}
    for label in (BOUNDARY, HEADING, NOISE):
        metrics[f"{LABELS[label]}_f1"] = _f1(int(((pred == label) & (gold == label)).sum()),
                                             int((pred == label).sum()), int((gold == label).sum()))
    hit = n_pred = n_gold = 0
    for row, enc, p in zip(rows, encoded, probs):
        groups, _ = decode(p, enc.unit_token_counts, model.cfg.max_segment_tokens, model.cfg.min_fill)
        labels = p.argmax(-1)
        # a paragraph that goes on after a noise line (a page footer) is one gold segment: its second part is no cut
        starts = {enc.units[g[0]][0] for g in groups
                  if not (g[0] > 0 and labels[g[0]] == CONTINUE and labels[g[0] - 1] == NOISE)}
        gold_starts = set(row["segment_starts"])
        hit, n_pred, n_gold = hit + len(starts & gold_starts), n_pred + len(starts), n_gold + len(gold_starts)
    metrics["cut_precision"] = hit / n_pred if n_pred else 0.0
    metrics["cut_recall"] = hit / n_gold if n_gold else 0.0
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


def _f1(tp: int, n_pred: int, n_gold: int) -> float:
    return 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0


def train_segmenter(
    train_path: str | Path,
    heldout_path: str | Path,
    out: str | Path,
    cfg: TrainConfig | None = None,
    model_cfg: SegmenterConfig | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or resume) and write the checkpoint to ``out``; returns the last evaluation (on ranks other than 0 under
    torchrun: the step alone)."""
    from model_common import distributed  # torchrun's process group, shared by the trainers

    with distributed.joined() as world:
        return _train_segmenter(train_path, heldout_path, out, cfg, model_cfg, log, world)


def _train_segmenter(train_path, heldout_path, out, cfg, model_cfg, log, world) -> dict[str, Any]:
    from model_common import distributed

    out = Path(out)
    cfg = cfg or TrainConfig()
    model_cfg = model_cfg or SegmenterConfig()
    if cfg.batch_windows < world.size:
        raise ValueError(f"--batch-windows {cfg.batch_windows} is smaller than the {world.size} processes sharing it")
    if not world.main:
        log = _silent
    state_dir = out / "state"
    torch.manual_seed(cfg.seed)
    tokenizer, base = load_base()
    if (state_dir / "state.pt").exists():  # resuming: the model config is the one the run started with
        saved = json.loads((state_dir / "run.json").read_text())
        model_cfg = SegmenterConfig.from_dict(saved["model"])
        if saved["train"] != asdict(cfg):
            log(f"resuming with a changed training config: was {saved['train']}")
    model = SegmentationModel(model_cfg, base)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(cfg.warmup_steps, cfg.steps))
    step = 0
    if (state_dir / "state.pt").exists():
        state = torch.load(state_dir / "state.pt", weights_only=True)
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step = state["step"]
        log(f"resumed at step {step}")
    distributed.broadcast(world, params)
    distributed.barrier(world)  # every rank has read the state before rank 0 writes run.json
    if world.main:
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "run.json").write_text(json.dumps({"train": asdict(cfg), "model": asdict(model_cfg)}, indent=1))

    examples = make_examples(load_rows(train_path), tokenizer, model_cfg, cfg.max_windows_per_doc, cfg.seed)
    heldout = load_rows(heldout_path, cfg.heldout_docs, cfg.heldout_units)
    weights = _class_weights([lab for e in examples for lab in e.labels])
    # summed here and divided by the global batch's total weight below: CrossEntropyLoss's weighted mean over the
    # global batch, whichever rank holds which windows
    loss_fn = nn.CrossEntropyLoss(weight=weights, ignore_index=-100, reduction="sum")
    log(f"{len(examples)} training windows, {len(heldout)} held-out documents, "
        f"{sum(p.numel() for p in params):,} trainable parameters; class weights {weights.tolist()}"
        + (f"; {world.size} processes" if world.distributed else ""))
    last: dict[str, Any] = {}
    losses: list[float] = []
    t0 = time.perf_counter()
    while step < cfg.steps:
        model.train()
        # this rank's share of the step's global batch (all of it in one process)
        batch = [examples[i] for i in world.shard(_batch_order(len(examples), cfg.batch_windows, cfg.seed, step))]
        inputs = collate([e.window for e in batch], tokenizer.pad_token_id)
        labels = torch.full(inputs["markers"].shape, -100, dtype=torch.long)
        for b, e in enumerate(batch):
            labels[b, : len(e.labels)] = torch.tensor(e.labels)
        logits = model(**inputs)  # (B, U, L)
        flat = labels.reshape(-1)
        loss_sum = loss_fn(logits.reshape(-1, len(LABELS)), flat)
        total, weight = distributed.all_sum(world, [loss_sum.item(), float(weights[flat[flat != -100]].sum())])
        optimizer.zero_grad(set_to_none=True)
        (loss_sum / weight).backward()
        distributed.sum_gradients(world, params)  # the gradient of the global batch's loss, on every rank
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        losses.append(total / weight)
        if step % cfg.save_every == 0 or step == cfg.steps:
            if world.main:
                _save_state(state_dir, model, optimizer, schedule, step)
            distributed.barrier(world)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            last = {"step": step, "train_loss": round(float(np.mean(losses)), 4),
                    "windows_per_s": round(len(losses) * cfg.batch_windows / (time.perf_counter() - t0), 2)}
            if world.main:
                last |= evaluate_segmenter(model, tokenizer, heldout)
                with open(out / "log.jsonl", "a") as f:
                    f.write(json.dumps(last) + "\n")
                model.save(out)
                log(json.dumps(last))
            distributed.barrier(world)  # the others wait while rank 0 evaluates
            losses, t0 = [], time.perf_counter()
    if not last and world.main:  # nothing left to train: re-evaluate the checkpoint as the code decodes now, log it
        last = {"step": step, "reevaluated": True, **evaluate_segmenter(model, tokenizer, heldout)}
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(last) + "\n")
        model.save(out)
    return last


def _silent(msg: str) -> None:
    """The log of ranks other than 0."""


def _class_weights(labels: Sequence[int]) -> torch.Tensor:
    """Inverse square-root frequency, normalized to mean 1: rare labels (headings, noise) count more, not wildly."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=len(LABELS)).astype(float)
    w = 1.0 / np.sqrt(np.maximum(counts, 1.0))
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return f


def _save_state(state_dir: Path, model: SegmentationModel, optimizer, schedule, step: int) -> None:
    tmp = state_dir / "state.pt.tmp"
    torch.save({"model": model.trainable_state(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "step": step}, tmp)
    tmp.replace(state_dir / "state.pt")


__all__ = ["TrainConfig", "evaluate_segmenter", "load_rows", "make_examples", "train_segmenter"]
