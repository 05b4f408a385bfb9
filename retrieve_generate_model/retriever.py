"""The joint model's retriever: MiniLM with LoRA adapters on the question side, trained contrastively.

Only the question tower is adapted. Segments stay embedded by the base all-MiniLM-L6-v2 that the index was built with,
so a trained retriever needs no re-ingestion: its question vectors move toward the segments that answer them in the
space the index already holds (query-side fine-tuning, as Atlas does when it keeps the document index fixed).

Training (`train_retriever`) uses the rows of `synth_pipeline.qa`: each answerable question against its evidence
segment, the other questions' evidence in the batch (in-batch negatives) and the segments the base retriever ranked
next to the evidence without the answer (hard negatives), with the InfoNCE loss at the retrieval scale (20, the scale
the scores are normalized with at answer time).

The link to the generator (`generator_targets`): for each row, the trained generator's likelihood of the gold answer
given each of the row's sources alone becomes a distribution over those sources, and the retriever's distribution
over the same sources is trained toward it (KL, Atlas' perplexity distillation, Izacard et al. 2022) — so the
retriever learns which segments the generator can actually answer from, not only which one the synthetic data made
the question from.

    encoder = QueryEncoder.load("checkpoints/joint/retriever")     # or QueryEncoder() for fresh adapters
    Q = encoder.embed_queries(["Who built the lighthouse?"])        # (M, 384) float32, unit norm
"""

from __future__ import annotations

import copy
import json
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieve_generate_model.encoder import Encoder, passage_text

CONFIG_FILE = "retriever.json"


@dataclass(frozen=True)
class RetrieverConfig:
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = ("query", "key", "value", "dense")  # every linear layer of MiniLM's blocks
    scale: float = 20.0  # inverse temperature of the contrastive loss (and of retrieval weights at answer time)
    max_query_tokens: int = 64


@dataclass(frozen=True)
class RetrieverTrainConfig:
    epochs: int = 2
    batch_size: int = 32  # questions per step; their evidence segments are each other's negatives
    hard_negatives: int = 3  # per question, from the sources the base retriever ranked for it
    lr: float = 5e-4
    contrastive_weight: float = 1.0  # weight of InfoNCE on the evidence (in-batch and hard negatives)
    distill_weight: float = 1.0  # weight of KL(generator's preference || retriever) where targets are given
    seed: int = 0


class QueryEncoder:
    """The question tower: a private copy of the base MiniLM with LoRA adapters (see the module docstring)."""

    def __init__(self, config: RetrieverConfig | None = None, adapter_dir: str | Path | None = None,
                 base: Encoder | None = None):
        from peft import LoraConfig, PeftModel, get_peft_model

        self.config = config or RetrieverConfig()
        self.base = base or Encoder()
        self.model = copy.deepcopy(self.base.model)  # the shared, cached MiniLM stays the passage tower
        self.model.max_seq_length = self.config.max_query_tokens
        transformer = self.model[0]
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for users to act on
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            # peft injects the LoRA layers into the BERT modules in place, so the sentence-transformers pipeline
            # (tokenize, BERT, mean pooling, normalize) runs through them; the wrapper is kept to save the adapters
            if adapter_dir is not None:
                self.peft_model = PeftModel.from_pretrained(transformer.auto_model, str(adapter_dir))
            else:
                lora = LoraConfig(r=self.config.lora_r, lora_alpha=self.config.lora_alpha, lora_dropout=0.0,
                                  target_modules=list(self.config.lora_targets))
                self.peft_model = get_peft_model(transformer.auto_model, lora)
        self.model.eval()

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.peft_model.save_pretrained(str(folder))
        (folder / "README.md").unlink(missing_ok=True)  # peft's blank model card
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | Path, base: Encoder | None = None) -> QueryEncoder:
        folder = Path(folder)
        data = json.loads((folder / CONFIG_FILE).read_text())
        config = RetrieverConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        return cls(config, adapter_dir=folder, base=base)

    def forward(self, texts: Sequence[str]):
        """(M, D) unit-norm question embeddings as a torch tensor, with gradients when training."""
        features = self.model.preprocess(list(texts))
        return self.model(features)["sentence_embedding"]

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.base.dim), np.float32)
        with torch.inference_mode():
            out = [self.forward(texts[i: i + 64]) for i in range(0, len(texts), 64)]
        return np.ascontiguousarray(torch.cat(out).numpy(), dtype=np.float32)


def _examples(rows: list[dict[str, Any]], hard: int) -> list[tuple[str, str, list[str]]]:
    """(question, evidence passage text, hard negative passage texts) of the answerable rows."""
    out = []
    for row in rows:
        if not row["answerable"]:
            continue
        gold = row["sources"][row["relied"][0]]
        negatives = [s for i, s in enumerate(row["sources"]) if i not in row["relied"]][:hard]
        out.append((row["question"], passage_text(gold["text"], gold["title"], gold["section"]),
                    [passage_text(s["text"], s["title"], s["section"]) for s in negatives]))
    return out


def generator_targets(model, rows: list[dict[str, Any]], temperature: float = 1.0) -> list[list[float] | None]:
    """Per row, the distribution over its sources (as many as the model reads) that the generator ``model``
    (`JointModel`) prefers: softmax over sources of log p(gold answer | question, that source alone) / temperature.
    None for an unanswerable row or one with a single source (nothing to compare)."""
    import torch

    from retrieve_generate_model.train import row_sources

    layout, cfg = model.layout, model.config
    out: list[list[float] | None] = []
    for row in rows:
        sources = row_sources(row)[: cfg.k]
        if not row["answerable"] or len(sources) < 2:
            out.append(None)
            continue
        n = len(layout.ids(" " + row["answer"].strip()))
        scores = []
        for source in sources:  # the answer as words (this source may not hold it), after "sources: [1]"
            ex = model.example(row["question"], [source], "answer", [0], row["answer"], [])
            answer_ids = ex.input_ids[ex.query_at + 1: ex.query_at + 1 + n]
            with torch.inference_mode():
                logits = model.generator(input_ids=torch.tensor([ex.input_ids[: ex.query_at + n]])).logits[0]
            logp = logits[ex.query_at:].float().log_softmax(-1)
            scores.append(float(logp[torch.arange(n), torch.tensor(answer_ids)].sum()))
        out.append(torch.tensor(scores).div(temperature).softmax(-1).tolist())
    return out


def train_retriever(rows: list[dict[str, Any]], encoder: QueryEncoder, cfg: RetrieverTrainConfig | None = None,
                    log: Callable[[str], None] = print,
                    targets: list[list[float] | None] | None = None) -> list[dict[str, Any]]:
    """Train ``encoder``'s adapters in place on the rows of `synth_pipeline.qa`; returns the per-epoch log.
    ``targets`` (aligned with ``rows``, from `generator_targets`) add the distillation loss on the rows that have
    one: KL(target || softmax(scale * q . p_j)) over the row's sources."""
    import torch

    cfg = cfg or RetrieverTrainConfig()
    examples = _examples(rows, cfg.hard_negatives)
    if not examples:
        raise ValueError("no answerable rows to train the retriever on")
    distill = {}  # question -> (its sources' passage texts, target distribution)
    for row, target in zip(rows, targets or []):
        if target is not None:
            distill[row["question"]] = ([passage_text(x["text"], x["title"], x["section"])
                                        for x in row["sources"][: len(target)]], target)
    passages = sorted({p for _, gold, negs in examples for p in [gold, *negs]}
                      | {p for texts, _ in distill.values() for p in texts})
    index = {p: i for i, p in enumerate(passages)}
    P = torch.from_numpy(encoder.base.embed_passages(passages))  # (N, D) frozen: the index's own vectors
    params = [p for p in encoder.peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    rng = random.Random(cfg.seed)
    history = []
    encoder.model.train()
    for epoch in range(cfg.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        losses, t0 = [], time.perf_counter()
        for start in range(0, len(order), cfg.batch_size):
            batch = [examples[i] for i in order[start: start + cfg.batch_size]]
            cand = sorted({index[p] for _, gold, negs in batch for p in [gold, *negs]})
            where = {c: j for j, c in enumerate(cand)}
            q = encoder.forward([question for question, _, _ in batch])  # (B, D)
            logits = encoder.config.scale * q @ P[cand].T  # (B, C): every evidence and hard negative of the batch
            target = torch.tensor([where[index[gold]] for _, gold, _ in batch])
            loss = cfg.contrastive_weight * torch.nn.functional.cross_entropy(logits, target)
            kl = [_distill_kl(encoder.config.scale * q[b] @ P[[index[p] for p in distill[question][0]]].T,
                              distill[question][1]) for b, (question, _, _) in enumerate(batch) if question in distill]
            if kl:
                loss = loss + cfg.distill_weight * torch.stack(kl).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        entry = {"epoch": epoch + 1, "loss": round(sum(losses) / len(losses), 4), "examples": len(examples),
                 "seconds": round(time.perf_counter() - t0, 1)}
        history.append(entry)
        log(json.dumps(entry))
    encoder.model.eval()
    return history


def _distill_kl(logits, target: list[float]):
    """KL(target || softmax(logits)) over one row's sources."""
    import torch

    t = torch.tensor(target)
    return (t * (t.clamp_min(1e-12).log() - logits.log_softmax(-1))).sum()


def rank_of_evidence(encoder, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Held-out check: how often the evidence outranks the row's hard negatives (accuracy@1 among its sources) and
    the mean reciprocal rank, with ``encoder.embed_queries`` against base passage vectors."""
    examples = _examples(rows, hard=8)
    if not examples:
        return {"n": 0}
    base = encoder.base if hasattr(encoder, "base") else encoder
    Q = encoder.embed_queries([q for q, _, _ in examples])
    hits, rr = [], []
    for q, (_, gold, negs) in zip(Q, examples):
        P = base.embed_passages([gold, *negs])
        scores = P @ q
        rank = int((scores > scores[0]).sum()) + 1
        hits.append(rank == 1)
        rr.append(1.0 / rank)
    return {"n": len(examples), "acc@1": round(float(np.mean(hits)), 4), "mrr": round(float(np.mean(rr)), 4)}
