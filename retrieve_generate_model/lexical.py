"""The retriever's learned lexical channel: term weights read off MiniLM's own token states.

BM25 beats the dense MiniLM where exact words matter (names, numbers, rare terms). The answer here is not BM25 bolted
on beside the model but the same backbone scoring words: each token's contextual state gives it a weight
(``w = softplus(a . h + b)``, uniCOIL/SPLADE-style term weighting without expansion, Lin & Ma 2021), a text becomes a
sparse vector over MiniLM's word-piece vocabulary (each id's largest weight), and the lexical score of a question and
a passage is the inner product of their vectors — the words they share, weighted by how much each matters *in
context*. The model combines it with the dense score, ``scale * cos + alpha * lexical``, with ``alpha`` learned.

Questions and passages have their own weight heads (a question word and a passage word matter differently); the
backbone stays the frozen base MiniLM the index is embedded with, so the channel costs one linear layer on states the
dense embedding computes anyway. Initialized, every content word-piece weighs ``init_weight`` (a plain count of shared
word-pieces); `train_lexical` learns the weights contrastively on `synth_pipeline.qa` rows (the evidence against
in-batch and hard negatives), under the fused score.

    lex = LexicalModel()
    Q = lex.sparse(token_states(encoder, questions), side="query")        # list of (ids, weights)
    P = lex.sparse(token_states(encoder, passages), side="passage")
    scores = lexical_scores(Q, P)                                          # (M, N) numpy
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retrieve_generate_model.encoder import Encoder
from retrieve_generate_model.retriever import _examples

CONFIG_FILE = "lexical.json"
WEIGHTS_FILE = "lexical.safetensors"


@dataclass(frozen=True)
class LexicalConfig:
    init_weight: float = 1.0  # every content word-piece's weight before training
    scale: float = 20.0  # the dense score's scale in the fused score (the retrieval scale)
    init_alpha: float = 0.1  # the lexical score's weight in the fused score, before training


@dataclass(frozen=True)
class LexicalTrainConfig:
    epochs: int = 4
    batch_size: int = 32
    hard_negatives: int = 3
    lr: float = 3e-3
    seed: int = 0


class TermWeights(nn.Module):
    """A token state -> its non-negative weight."""

    def __init__(self, hidden: int, init_weight: float):
        super().__init__()
        self.linear = nn.Linear(hidden, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, math.log(math.expm1(init_weight)))  # softplus(bias) = init_weight

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.linear(states.float())).squeeze(-1)


class LexicalModel(nn.Module):
    def __init__(self, config: LexicalConfig | None = None, hidden: int = 384, vocab_mask: torch.Tensor | None = None):
        super().__init__()
        self.config = config or LexicalConfig()
        self.query = TermWeights(hidden, self.config.init_weight)
        self.passage = TermWeights(hidden, self.config.init_weight)
        self.alpha = nn.Parameter(torch.tensor(float(self.config.init_alpha)))
        self.register_buffer("vocab_mask", vocab_mask if vocab_mask is not None else torch.ones(0), persistent=False)

    def weights(self, ids: torch.Tensor, states: torch.Tensor, side: str) -> torch.Tensor:
        """Per-token weights of one text, zero on ids that carry no word (special tokens, punctuation)."""
        head = self.query if side == "query" else self.passage
        w = head(states)
        if len(self.vocab_mask):
            w = w * self.vocab_mask[ids]
        return w

    def dense_vector(self, ids: torch.Tensor, states: torch.Tensor, side: str, vocab: int) -> torch.Tensor:
        """The text's lexical vector over the whole vocabulary (each id's largest weight), differentiable."""
        return torch.zeros(vocab).scatter_reduce(0, ids, self.weights(ids, states, side), "amax", include_self=True)

    def sparse(self, texts: Sequence[tuple[torch.Tensor, torch.Tensor]], side: str
               ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each text's (ids, weights) with one entry per distinct id carrying weight."""
        out = []
        with torch.inference_mode():
            for ids, states in texts:
                w = self.weights(ids, states, side)
                uniq, inverse = torch.unique(ids, return_inverse=True)
                best = torch.zeros(len(uniq)).scatter_reduce(0, inverse, w, "amax", include_self=True)
                keep = best > 0
                out.append((uniq[keep].numpy().astype(np.int32), best[keep].numpy().astype(np.float32)))
        return out

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | Path, encoder: Encoder | None = None) -> LexicalModel:
        from safetensors.torch import load_file

        folder = Path(folder)
        config = LexicalConfig(**json.loads((folder / CONFIG_FILE).read_text()))
        model = cls(config, vocab_mask=vocab_mask(encoder or Encoder()))
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        return model.eval()


def vocab_mask(encoder: Encoder) -> torch.Tensor:
    """1.0 for word-pieces with a letter or digit, 0.0 for special tokens and punctuation."""
    tok = encoder.model.tokenizer
    vocab = tok.get_vocab()
    mask = torch.zeros(max(vocab.values()) + 1)
    special = set(tok.all_special_ids)
    for piece, i in vocab.items():
        if i not in special and any(c.isalnum() for c in piece):
            mask[i] = 1.0
    return mask


def token_states(encoder: Encoder, texts: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each text's word-piece ids and the base MiniLM's last-layer states for them (padding removed)."""
    if not texts:
        return []
    out = encoder.model.encode(list(texts), output_value=None, batch_size=encoder.cfg.batch_size,
                               show_progress_bar=False)
    result = []
    for features in out:
        n = int(features["attention_mask"].sum())
        # clones: the encoder runs under inference mode, and training backpropagates through heads on these states
        result.append((features["input_ids"][:n].long().clone(), features["token_embeddings"][:n].float().clone()))
    return result


def mean_pooled(states: torch.Tensor) -> torch.Tensor:
    """The dense embedding MiniLM's pipeline makes of these states (mean pooling, unit norm)."""
    return nn.functional.normalize(states.mean(0), dim=-1)


def lexical_scores(queries: Sequence[tuple[np.ndarray, np.ndarray]],
                   passages: Sequence[tuple[np.ndarray, np.ndarray]], vocab: int = 30522) -> np.ndarray:
    """(M, N) inner products of sparse lexical vectors (a CSR product)."""
    from scipy.sparse import csr_matrix

    def matrix(vectors):
        indptr = np.cumsum([0] + [len(ids) for ids, _ in vectors])
        ids = np.concatenate([ids for ids, _ in vectors]) if vectors else np.zeros(0, np.int32)
        weights = np.concatenate([w for _, w in vectors]) if vectors else np.zeros(0, np.float32)
        return csr_matrix((weights, ids, indptr), shape=(len(vectors), vocab))

    return np.asarray((matrix(queries) @ matrix(passages).T).todense(), dtype=np.float32)


def train_lexical(rows: list[dict[str, Any]], model: LexicalModel, encoder: Encoder,
                  cfg: LexicalTrainConfig | None = None, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Fit the term weights and ``alpha`` in place: InfoNCE over each batch's evidence and hard negatives, under the
    fused score ``scale * cos + alpha * lexical``; the backbone's states are computed once."""
    cfg = cfg or LexicalTrainConfig()
    examples = _examples(rows, cfg.hard_negatives)
    if not examples:
        raise ValueError("no answerable rows to train the lexical channel on")
    vocab = len(model.vocab_mask) or 30522
    passages = sorted({p for _, gold, negs in examples for p in [gold, *negs]})
    index = {p: i for i, p in enumerate(passages)}
    t0 = time.perf_counter()
    p_states = token_states(encoder, passages)
    q_states = token_states(encoder, [q for q, _, _ in examples])
    log(f"lexical: states of {len(passages)} passages and {len(examples)} questions in "
        f"{time.perf_counter() - t0:.0f}s")
    p_dense = torch.stack([mean_pooled(s) for _, s in p_states])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = random.Random(cfg.seed)
    history = []
    model.train()
    for epoch in range(cfg.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        losses = []
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start: start + cfg.batch_size]
            cand = sorted({index[p] for i in batch for p in [examples[i][1], *examples[i][2]]})
            where = {c: j for j, c in enumerate(cand)}
            P = torch.stack([model.dense_vector(*p_states[c], "passage", vocab) for c in cand])  # (C, V)
            Q = torch.stack([model.dense_vector(*q_states[i], "query", vocab) for i in batch])  # (B, V)
            q_dense = torch.stack([mean_pooled(q_states[i][1]) for i in batch])
            logits = model.config.scale * q_dense @ p_dense[cand].T + model.alpha * (Q @ P.T)
            target = torch.tensor([where[index[examples[i][1]]] for i in batch])
            loss = nn.functional.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        alpha = round(float(model.alpha.detach()), 4)
        entry = {"epoch": epoch + 1, "loss": round(sum(losses) / len(losses), 4), "alpha": alpha}
        history.append(entry)
        log(json.dumps(entry))
    model.eval()
    return history
