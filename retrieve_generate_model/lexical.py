"""The retriever's learned lexical channel: term weights read off MiniLM's own token states.

BM25 beats the dense MiniLM where exact words matter (names, numbers, rare terms). The answer here is not BM25 bolted
on beside the model but the same backbone scoring words: each token's contextual state gives it a weight
(``w = softplus(a . h + b + c * idf)``, uniCOIL/SPLADE-style term weighting without expansion, Lin & Ma 2021; ``idf``
is the word-piece's rarity in the training passages, fixed with the model, and ``c`` is learned), a text becomes a
sparse vector over MiniLM's word-piece vocabulary (each id's largest weight), and the lexical score of a question and
a passage is the inner product of their vectors — the words they share, weighted by how much each matters *in
context*. The model combines it with the dense score, ``scale * cos + alpha * lexical``, with ``alpha`` learned.

Questions and passages have their own weight heads (a question word and a passage word matter differently); the
backbone stays the frozen base MiniLM the index is embedded with, so the channel costs one linear layer on states the
dense embedding computes anyway. Initialized, every content word-piece weighs ``init_weight`` (a plain count of shared
word-pieces); `train_lexical` learns the weights contrastively on `synth_pipeline.qa` rows (the evidence against
in-batch and hard negatives), under the fused score and under the lexical score alone (so that the channel is strong
by itself rather than a small correction of the dense score: on SQuAD v1.1 gold paragraphs that second loss and the
idf term took fused recall@1 from 0.74 to 0.80, see BENCHMARKS.md).

    lex = LexicalModel()
    Q = lex.sparse(token_states(encoder, questions), side="query")        # list of (ids, weights)
    P = lex.sparse(token_states(encoder, passages), side="passage")
    scores = lexical_scores(Q, P)                                          # (M, N) numpy

In an index, each segment's passage vector is computed at ingestion from the same forward pass as its dense embedding
(`encode`) and stored beside it; a question is then scored against the whole memory by `fused_attention`, which
returns the exact top-k of the fused score and its log-sum-exp over every segment while the dense part runs as
retrieval attention (`retrieve_generate_model.kernels`) and the lexical part touches only the segments that share a
word with the question.
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
VOCAB = 30522  # MiniLM's word-piece vocabulary
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
    # weight of the second loss, on the lexical score alone (``beta * lexical``, beta learned): without it the channel
    # only learns to correct the dense score and is weak on its own (SQuAD v1.1 gold-passage recall@1 0.51 alone)
    lexical_alone: float = 1.0
    seed: int = 0


class TermWeights(nn.Module):
    """A token state and its word-piece's rarity -> the token's non-negative weight:
    ``softplus(a . h + b + c * idf)``, with ``c`` learned (0 at first)."""

    def __init__(self, hidden: int, init_weight: float):
        super().__init__()
        self.linear = nn.Linear(hidden, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, math.log(math.expm1(init_weight)))  # softplus(bias) = init_weight
        self.idf_weight = nn.Parameter(torch.tensor(0.0))

    def forward(self, states: torch.Tensor, idf: torch.Tensor | None = None) -> torch.Tensor:
        z = self.linear(states.float()).squeeze(-1)
        if idf is not None:
            z = z + self.idf_weight * idf
        return nn.functional.softplus(z)


class LexicalModel(nn.Module):
    def __init__(self, config: LexicalConfig | None = None, hidden: int = 384, vocab_mask: torch.Tensor | None = None):
        super().__init__()
        self.config = config or LexicalConfig()
        self.query = TermWeights(hidden, self.config.init_weight)
        self.passage = TermWeights(hidden, self.config.init_weight)
        self.alpha = nn.Parameter(torch.tensor(float(self.config.init_alpha)))
        self.beta = nn.Parameter(torch.tensor(1.0))  # the lexical score's scale when it is trained alone
        self.checkpoint: str | None = None  # the joint checkpoint it was loaded from, as named (see ragless.components)
        self.register_buffer("vocab_mask", vocab_mask if vocab_mask is not None else torch.ones(0), persistent=False)
        # each word-piece's rarity in the training passages (BM25's idf), a fixed part of the model once trained:
        # a property of the language, not of the index, so that stored passage vectors never go stale
        self.register_buffer("idf", torch.zeros(len(self.vocab_mask) or VOCAB))

    def set_idf(self, texts: Sequence[torch.Tensor]) -> None:
        """Word-piece rarity from a pool of passages (their ids): ``log(1 + (n - df + 0.5) / (df + 0.5))``."""
        df = torch.zeros(len(self.idf))
        for ids in texts:
            df[torch.unique(ids)] += 1
        n = len(texts)
        self.idf = torch.log1p((n - df + 0.5) / (df + 0.5))

    def weights(self, ids: torch.Tensor, states: torch.Tensor, side: str) -> torch.Tensor:
        """Per-token weights of one text, zero on ids that carry no word (special tokens, punctuation)."""
        head = self.query if side == "query" else self.passage
        w = head(states, self.idf[ids])
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

    def fingerprint(self) -> str:
        """A short hash of the config and weights: what an index records about the channel that weighted its words."""
        import hashlib

        h = hashlib.sha256(json.dumps(asdict(self.config), sort_keys=True).encode())
        for key, value in sorted(self.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().float().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def vocab(self) -> int:
        return len(self.vocab_mask) or VOCAB

    def alpha_at(self, scale: float) -> float:
        """The lexical weight for dense scores at inverse temperature ``scale``: alpha was trained beside the
        channel's own scale (``config.scale``), and the two keep that ratio."""
        return float(self.alpha.detach()) * scale / self.config.scale

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


def encode(encoder: Encoder, model: LexicalModel, texts: Sequence[str], side: str
           ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """One forward pass of the base MiniLM for both channels: the texts' dense embeddings (N, D) float32, unit norm
    (what `Encoder.embed_passages` returns) and their sparse lexical vectors."""
    states = token_states(encoder, texts)
    if not states:
        return np.zeros((0, encoder.dim), np.float32), []
    dense = torch.stack([mean_pooled(s) for _, s in states]).numpy().astype(np.float32)
    return np.ascontiguousarray(dense), model.sparse(states, side)


def mean_pooled(states: torch.Tensor) -> torch.Tensor:
    """The dense embedding MiniLM's pipeline makes of these states (mean pooling, unit norm)."""
    return nn.functional.normalize(states.mean(0), dim=-1)


def lexical_scores(queries: Sequence[tuple[np.ndarray, np.ndarray]],
                   passages: Sequence[tuple[np.ndarray, np.ndarray]], vocab: int = VOCAB) -> np.ndarray:
    """(M, N) inner products of sparse lexical vectors (a CSR product)."""
    return np.asarray((sparse_matrix(queries, vocab) @ sparse_matrix(passages, vocab).T).todense(), dtype=np.float32)


def sparse_matrix(vectors: Sequence[tuple[np.ndarray, np.ndarray]], vocab: int = VOCAB):
    """Sparse (ids, weights) vectors as the rows of a (len, vocab) scipy CSR matrix."""
    from scipy.sparse import csr_matrix

    indptr = np.cumsum([0] + [len(ids) for ids, _ in vectors])
    ids = np.concatenate([ids for ids, _ in vectors]) if vectors else np.zeros(0, np.int32)
    weights = np.concatenate([w for _, w in vectors]) if vectors else np.zeros(0, np.float32)
    return csr_matrix((weights.astype(np.float32), ids, indptr), shape=(len(vectors), vocab))


def fused_attention(queries: torch.Tensor, query_terms, keys: torch.Tensor, key_terms, k: int, *, scale: float,
                    alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Retrieval attention under the fused score ``scale * q.k + alpha * lexical``, exact over the whole memory.

    queries (B, D) and keys (N, D) as for `retrieval_attention`; ``query_terms`` (B, V) and ``key_terms`` (N, V) are
    scipy CSR matrices of the lexical vectors. Returns ``(indices, scores, log_z)`` with the same contract: the top
    ``min(k, N)`` keys per query by fused score (ties: lower index first) and the log-sum-exp of the fused scores over
    all N keys.

    Lexical scores are non-negative and zero outside the set S of keys that share a word with the query, so with
    ``alpha >= 0`` the fused top-k lies within the dense top-k and S, and the normalizer is the dense one corrected
    on S alone: ``Z = Z_dense + sum_{i in S} exp(d_i) * (exp(alpha * l_i) - 1)``. The dense pass never materializes
    (B, N); the lexical one costs what a sparse product over the shared words costs.
    """
    from retrieve_generate_model.kernels import retrieval_attention

    if alpha < 0:
        raise ValueError(f"the lexical weight alpha must be >= 0 for exact fused retrieval, got {alpha}")
    rows, dense_top, log_z = retrieval_attention(queries, keys, k, scale=scale)
    lexical = (query_terms @ key_terms.T).tocsr()  # (B, N) sparse: only keys sharing a word with the query
    width = rows.shape[1]
    out_rows = torch.full_like(rows, -1)
    out_scores = torch.full_like(dense_top, float("-inf"))
    out_log_z = log_z.clone()
    q = queries.float()
    for b in range(len(queries)):
        start, end = lexical.indptr[b], lexical.indptr[b + 1]
        shared = torch.from_numpy(lexical.indices[start:end].astype(np.int64))
        lex = torch.from_numpy(lexical.data[start:end].astype(np.float32)) * alpha
        keep = lex > 0
        shared, lex = shared[keep], lex[keep]
        cand = torch.unique(torch.cat([rows[b][rows[b] >= 0], shared]))  # sorted: ties keep the lower index
        at = torch.searchsorted(cand, shared)  # where each shared key sits among the candidates
        dense = scale * (keys[cand].float() @ q[b])  # one pass over the candidates, shared keys included
        bonus = torch.zeros(len(cand))
        bonus[at] = lex
        fused = dense + bonus
        order = torch.sort(fused, descending=True, stable=True).indices[:width]
        out_rows[b, : len(order)], out_scores[b, : len(order)] = cand[order], fused[order]
        if len(shared):
            dense_shared = dense[at]
            out_log_z[b] = torch.logaddexp(log_z[b], torch.logsumexp(dense_shared + torch.log(torch.expm1(lex)), 0))
    return out_rows, out_scores, out_log_z


def train_lexical(rows: list[dict[str, Any]], model: LexicalModel, encoder: Encoder,
                  cfg: LexicalTrainConfig | None = None, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Fit the term weights and ``alpha`` in place: InfoNCE over each batch's evidence and hard negatives, under the
    fused score ``scale * cos + alpha * lexical``, plus ``cfg.lexical_alone`` times the same loss under
    ``beta * lexical`` alone; the word-pieces' idf is set from the training passages first. The backbone's states
    are computed once."""
    cfg = cfg or LexicalTrainConfig()
    examples = _examples(rows, cfg.hard_negatives)
    if not examples:
        raise ValueError("no answerable rows to train the lexical channel on")
    vocab = model.vocab
    passages = sorted({p for _, gold, negs in examples for p in [gold, *negs]})
    index = {p: i for i, p in enumerate(passages)}
    t0 = time.perf_counter()
    p_states = token_states(encoder, passages)
    q_states = token_states(encoder, [q for q, _, _ in examples])
    log(f"lexical: states of {len(passages)} passages and {len(examples)} questions in "
        f"{time.perf_counter() - t0:.0f}s")
    p_dense = torch.stack([mean_pooled(s) for _, s in p_states])
    model.set_idf([ids for ids, _ in p_states])
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
            lexical = Q @ P.T
            logits = model.config.scale * q_dense @ p_dense[cand].T + model.alpha * lexical
            target = torch.tensor([where[index[examples[i][1]]] for i in batch])
            loss = nn.functional.cross_entropy(logits, target)
            if cfg.lexical_alone:
                loss = loss + cfg.lexical_alone * nn.functional.cross_entropy(model.beta * lexical, target)
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


def heldout_recall(rows: list[dict[str, Any]], model: LexicalModel, encoder: Encoder) -> dict[str, Any]:
    """Held-out check: recall@1 of each answerable row's evidence among every passage of the held-out rows, by the
    dense score alone and by the fused one (the same pool for both)."""
    examples = _examples(rows, hard=8)
    if not examples:
        return {"n": 0}
    passages = sorted({p for _, gold, negs in examples for p in [gold, *negs]})
    index = {p: i for i, p in enumerate(passages)}
    p_dense, p_terms = encode(encoder, model, passages, "passage")
    q_dense, q_terms = encode(encoder, model, [q for q, _, _ in examples], "query")
    dense = model.config.scale * q_dense @ p_dense.T
    fused = dense + float(model.alpha.detach()) * lexical_scores(q_terms, p_terms, model.vocab)
    gold = np.array([index[g] for _, g, _ in examples])
    rows_at = np.arange(len(examples))
    return {"n": len(examples), "passages": len(passages),
            "recall@1_dense": round(float(np.mean(dense.argmax(1) == gold)), 4),
            "recall@1_fused": round(float(np.mean(fused.argmax(1) == gold)), 4),
            "gold_score_margin_fused": round(float(np.mean(fused[rows_at, gold] - fused.max(1))), 4)}


def train_lexical_checkpoint(train: str | Path | Sequence[str | Path], heldout: str | Path, out: str | Path,
                             cfg: LexicalTrainConfig | None = None, model_cfg: LexicalConfig | None = None,
                             log: Callable[[str], None] = print) -> dict[str, Any]:
    """`ragless train lexical`: train the channel on synthetic rows, check it on held-out ones, and save it (with
    ``report.json``) in ``out`` — a joint checkpoint's ``lexical/`` folder. A few minutes on 2 cores, most of it the
    backbone's states; a run stopped early is simply run again."""
    import pyarrow.parquet as pq

    cfg = cfg or LexicalTrainConfig()
    encoder = Encoder()
    torch.manual_seed(cfg.seed)
    model = LexicalModel(model_cfg, vocab_mask=vocab_mask(encoder))
    trains = [train] if isinstance(train, (str, Path)) else list(train)
    rows = [row for path in trains for row in pq.read_table(path).to_pylist()]
    t0 = time.perf_counter()
    history = train_lexical(rows, model, encoder, cfg, log=log)
    seconds = round(time.perf_counter() - t0, 1)
    check = heldout_recall(pq.read_table(heldout).to_pylist(), model, encoder)
    log(json.dumps({"heldout": check}))
    model.save(out)
    report = {"train": [str(t) for t in trains], "heldout": str(heldout), "rows": len(rows), "config": asdict(cfg),
              "history": history, "heldout_check": check, "train_seconds": seconds,
              "fingerprint": model.fingerprint()}
    (Path(out) / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report
