"""`ragless train segmenter-rl`: the preprocessing model fine-tuned by policy gradient on the joint model's success.

The segmenter labels each unit of a document (`preprocess_model.units.LABELS`); its cuts follow from the labels
(`preprocess_model.model.decode`). Here the labels are the policy's actions: a segmentation is sampled by drawing
every unit's label from the model's distribution, and its log-probability is the sum of the drawn labels' ones. Each
sampled segmentation is scored by what the *joint model* makes of it on synthetic questions about the document
(`synth_pipeline.qa` rows, made from corpus text alone; the answer's place in the document is known):

- **evidence found** (`evidence_reward`): the document's segments, embedded as ingestion would (`passage_text`, one
  MiniLM pass for the dense vector and the learned lexical channel), join a fixed pool of distractor segments — the
  rest of the index — and the joint model retrieves for the question as `ragless ask` does (its question tower, the
  fused dense + lexical score); the reward is ``1 / rank`` of the first retrieved segment that contains the whole
  answer span, 0 when none of the top ``k`` does;
- **answer F1**: the joint model's reader reads those ``k`` sources and its best span is scored against the answer.

A segmentation's reward is ``retrieval_weight * evidence + answer_weight * F1``, averaged over the document's
questions. Rewards are normalized within the ``group_size`` segmentations of one document (`grpo.group_advantages`),
and the loss is REINFORCE on the per-unit mean log-probability with the exact KL of each unit's label distribution to
the starting segmenter's (a categorical KL needs no estimator):

    loss = - mean_g A_g * mean_u log p(label_gu)  +  beta * mean_u KL(p_u || p_ref,u)

What the policy can change is bounded by the decoding rule: segments never exceed ``max_segment_tokens``, so making
one huge segment that contains every answer is not open to it; labelling text as noise drops it from every segment,
which loses the answers it holds. Resumable (``OUT/state/segmenter_rl.pt``, every ``save_every`` steps; the pool's
embeddings are kept in ``OUT/state/pool.pt``); ``OUT`` starts as a copy of the segmenter checkpoint and ends as one,
usable by ``ragless ingest --segmenter OUT``.

    ragless train segmenter-rl --index data/index/train-en --train data/qa/train-en-v4/train.parquet \\
        --out data/runs/segmenter-rl

The command reads the index (`ragless.cli.segmenter_rl_inputs`) and resolves the checkpoints' names; what this module
is given is plain: the documents to cut, the distractor segments, and checkpoint folders.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from preprocess_model.document import Document

STATE = "state/segmenter_rl.pt"


@dataclass(frozen=True)
class SegmenterRLConfig:
    steps: int = 30
    docs_per_step: int = 2
    group_size: int = 4  # segmentations sampled per document: the group its advantages are normalized in
    questions_per_doc: int = 6  # synthetic questions each segmentation is scored on (the same for the whole group)
    # of the label distribution sampled from (and whose log-probabilities are trained): below 1, the samples stay
    # near the greedy labelling that ingestion uses (at 1.0 the shipped segmenter's samples differ from it on ~18% of
    # units, which mostly explores labellings it would never produce)
    temperature: float = 0.5
    lr: float = 1e-4
    beta: float = 0.05  # the per-unit KL penalty to the starting segmenter
    k: int = 4  # sources retrieved per question (and read by the reader): `ragless ask`'s default
    retrieval_weight: float = 1.0
    answer_weight: float = 1.0
    max_grad_norm: float = 1.0
    save_every: int = 2
    seed: int = 0


@dataclass(frozen=True)
class DocQuestion:
    """A synthetic question with its answer's character span in the document (not in a segment)."""

    question: str
    answer: str
    start: int
    end: int


def doc_questions(rows: Sequence[dict[str, Any]]) -> dict[str, list[DocQuestion]]:
    """The answerable rows of `synth_pipeline.qa` placed in their documents: the evidence source's offset in the
    document plus the answer's offset in the source. Rows whose answer is not where they say are left out.

    >>> rows = [{"answerable": True, "doc_id": "d", "question": "When?", "answer": "1889", "quote_source": 0,
    ...          "answer_start": 4, "answer_end": 8, "sources": [{"text": "In  1889 it opened.", "char_start": 100}]},
    ...         {"answerable": False, "doc_id": "d", "question": "Who?", "answer": "", "sources": []}]
    >>> doc_questions(rows)
    {'d': [DocQuestion(question='When?', answer='1889', start=104, end=108)]}
    """
    out: dict[str, list[DocQuestion]] = defaultdict(list)
    for r in rows:
        q = r.get("quote_source")
        if not r["answerable"] or q is None or not 0 <= q < len(r["sources"]):
            continue
        source = r["sources"][q]
        if source["text"][r["answer_start"]: r["answer_end"]] != r["answer"]:
            continue
        start = source["char_start"] + r["answer_start"]
        out[r["doc_id"]].append(DocQuestion(r["question"], r["answer"], start, start + len(r["answer"])))
    return dict(out)


def evidence_reward(found: Sequence[bool]) -> float:
    """``1 / rank`` of the first retrieved source that holds the evidence (``found``, best first), 0 when none does.

    >>> evidence_reward([False, True, True]), evidence_reward([False, False]), evidence_reward([True])
    (0.5, 0.0, 1.0)
    """
    return next((1.0 / (i + 1) for i, hit in enumerate(found) if hit), 0.0)


def sample_labels(logits, temperature: float, generator):
    """(U,) labels drawn from ``softmax(logits / temperature)`` row by row, and their (U,) log-probabilities (with
    the logits' gradients)."""
    import torch

    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    labels = torch.multinomial(logp.detach().exp(), 1, generator=generator).squeeze(1)
    return labels, logp.gather(1, labels[:, None]).squeeze(1)


def tempered_kl(logits, ref_probs, temperature: float):
    """Mean over units of KL(policy || reference), both at ``temperature``: the policy is ``softmax(logits / T)``,
    the reference's tempered distribution comes from its probabilities (``softmax(log p / T)`` is
    ``softmax(ref_logits / T)``).

    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0, -1.0, 0.5]])
    >>> float(tempered_kl(logits, torch.softmax(logits, -1), 0.5)) < 1e-6
    True
    """
    import torch

    logp = torch.log_softmax(logits.float() / temperature, -1)
    ref_logp = torch.log_softmax(torch.log(ref_probs.float().clamp_min(1e-12)) / temperature, -1)
    return (logp.exp() * (logp - ref_logp)).sum(-1).mean()


def cuts(labels: np.ndarray, token_counts: Sequence[int], max_segment_tokens: int, min_fill: float
         ) -> tuple[list[list[int]], list[int]]:
    """The segments (lists of unit indices) and heading units that a labelling decodes to: `decode` on its one-hot
    probabilities, so the cut in a long run goes before a unit labelled ``boundary`` (the later one among equals).

    >>> from preprocess_model.units import BOUNDARY, CONTINUE, HEADING, NOISE
    >>> cuts(np.array([HEADING, CONTINUE, BOUNDARY, NOISE, CONTINUE]), [3, 5, 5, 2, 4], 100, 0.5)
    ([[1, 2], [4]], [0])
    """
    from preprocess_model.model import decode
    from preprocess_model.units import LABELS

    return decode(np.eye(len(LABELS), dtype=np.float32)[labels], token_counts, max_segment_tokens, min_fill)


def unit_logits(model, tokenizer, enc):
    """(U, L) label logits of an encoded document's units, each from the window where it sits most centrally (as
    `preprocess_model.model.predict` reads them), with gradients."""
    import torch

    from preprocess_model.model import best_window, collate

    out = model(**collate(enc.windows, tokenizer.pad_token_id))  # (W, U_max, L)
    where = torch.tensor(best_window(enc))
    return out[where[:, 0], where[:, 1]]


class SegmentationScorer:
    """Scores segmentations of a document by the joint model's retrieval and reader (see the module docstring).

    ``checkpoint``: the folder of the joint checkpoint whose lexical channel, question tower (where it has one) and
    reader are used. ``pool``: the distractor segments (records with ``doc_id``, ``text``, ``title``, ``section``,
    e.g. `retrieve_generate_model.records.Source`), embedded once; a document's own segments in the pool are left
    out when it is scored (its sampled segments replace them)."""

    def __init__(self, checkpoint: str | Path, pool: Sequence[Any], k: int = 4, scale: float = 20.0,
                 cache: str | Path | None = None, log: Callable[[str], None] = print):
        import torch

        from retrieve_generate_model.encoder import Encoder, passage_text
        from retrieve_generate_model.joint import READER_DIR, load_lexical, load_question_tower
        from retrieve_generate_model.lexical import encode, sparse_matrix
        from retrieve_generate_model.reader import AnswerReader

        self.k, self.scale = k, scale
        self.encoder = Encoder()
        self.lexical = load_lexical(checkpoint, self.encoder)
        if self.lexical is None:
            raise ValueError(f"checkpoint {checkpoint} has no lexical channel: the reward retrieves as `ask` does")
        tower = load_question_tower(checkpoint, self.encoder)  # none: questions embedded as the segments are
        self.query_encoder = self.encoder if tower is None else tower
        self.reader = AnswerReader.load(Path(checkpoint) / READER_DIR, base=self.encoder)
        texts = [passage_text(s.text, s.title, s.section) for s in pool]
        key = {"texts": hashlib.sha256("\x00".join(texts).encode()).hexdigest(), "lexical": self.lexical.fingerprint(),
               "encoder": self.encoder.config()}
        saved = torch.load(cache, weights_only=False) if cache is not None and Path(cache).is_file() else None
        if saved is not None and saved["key"] == key:
            dense, terms = saved["dense"], saved["terms"]
            log(f"pool: {len(pool)} segments, embeddings from {cache}")
        else:
            t0 = time.perf_counter()
            dense, terms = encode(self.encoder, self.lexical, texts, "passage")
            log(f"pool: {len(pool)} segments embedded in {time.perf_counter() - t0:.0f} s")
            if cache is not None:
                torch.save({"key": key, "dense": dense, "terms": terms}, cache)
        self.pool_doc = np.array([s.doc_id for s in pool])
        self.pool_text = [s.text for s in pool]
        self.pool_dense = torch.from_numpy(dense)
        self.pool_terms = sparse_matrix(terms, self.lexical.vocab)
        self.alpha = self.lexical.alpha_at(scale)

    def prepare(self, doc_id: str, questions: Sequence[DocQuestion]) -> dict[str, Any]:
        """What scoring every segmentation of one document shares: the pool without the document's own segments,
        and the questions' dense (question tower) and lexical vectors."""
        import torch

        from retrieve_generate_model.lexical import encode, sparse_matrix

        keep = self.pool_doc != doc_id
        texts = [q.question for q in questions]
        _, terms = encode(self.encoder, self.lexical, texts, "query")
        return {"questions": list(questions), "dense": self.pool_dense[torch.from_numpy(keep)],
                "terms": self.pool_terms[keep], "texts": [t for t, k in zip(self.pool_text, keep) if k],
                "q_dense": torch.from_numpy(self.query_encoder.embed_queries(texts)),
                "q_terms": sparse_matrix(terms, self.lexical.vocab)}

    def score(self, doc, spans: Sequence[tuple[int, int]], sections: Sequence[str], shared: dict[str, Any]
              ) -> dict[str, float]:
        """Mean evidence reward and reader F1 over the prepared questions for ``doc`` cut into ``spans`` (with
        their section paths); ``shared`` from `prepare`."""
        import torch
        from scipy.sparse import vstack

        from model_common.answer_metrics import token_f1
        from retrieve_generate_model.encoder import passage_text
        from retrieve_generate_model.lexical import encode, fused_attention, sparse_matrix

        texts = [doc.text[a:b] for a, b in spans]
        dense, terms = encode(self.encoder, self.lexical,
                              [passage_text(t, doc.title, s) for t, s in zip(texts, sections)], "passage")
        keys = torch.cat([shared["dense"], torch.from_numpy(dense)])
        key_terms = vstack([shared["terms"], sparse_matrix(terms, self.lexical.vocab)]).tocsr()
        rows, _, _ = fused_attention(shared["q_dense"], shared["q_terms"], keys, key_terms, self.k,
                                     scale=self.scale, alpha=self.alpha)
        n_pool = len(shared["texts"])
        evidence, f1 = [], []
        for q, q_rows in zip(shared["questions"], rows.tolist()):
            q_rows = [r for r in q_rows if r >= 0]
            own = [r - n_pool if r >= n_pool else None for r in q_rows]  # the document's segment, or None (pool)
            evidence.append(evidence_reward([i is not None and spans[i][0] <= q.start and q.end <= spans[i][1]
                                             for i in own]))
            read = [texts[i] if i is not None else shared["texts"][r] for r, i in zip(q_rows, own)]
            best = self.reader.spans(q.question, read, top=1)
            answer = read[best[0].source][best[0].char_start: best[0].char_end] if best else ""
            f1.append(token_f1(answer, q.answer))
        return {"evidence": float(np.mean(evidence)), "answer_f1": float(np.mean(f1))}


def train_segmenter_rl(segmenter: str | Path, joint: str | Path, documents: Mapping[str, Document],
                       pool: Sequence[Any], train: str | Path, out: str | Path, cfg: SegmenterRLConfig | None = None,
                       index_name: str = "", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune (or resume) the segmenter checkpoint folder ``segmenter`` by policy gradient into ``out``, on the
    ``documents`` (by doc_id; those no row asks about are ignored) and the synthetic rows ``train`` made from them,
    rewarded by the joint checkpoint folder ``joint`` retrieving among the ``pool`` of distractor segments (see
    `SegmentationScorer`); returns the last step's log entry. ``index_name`` says where the documents and the pool
    come from (the command: the index folder); it is recorded with the settings that a resumed run must keep."""
    import pyarrow.parquet as pq
    import torch

    from preprocess_model.model import SegmentationModel, encode_document, predict, to_segments
    from rewards.grpo import group_advantages

    cfg = cfg or SegmenterRLConfig()
    out = Path(out)
    run = {"segmenter": str(segmenter), "joint": str(joint), "index": index_name, "train": str(train),
           "rl": asdict(cfg)}
    state_file = out / STATE
    if state_file.is_file():  # the same run, continued (``steps`` may grow)
        saved = json.loads((out / "state" / "run.json").read_text())
        saved["rl"]["steps"] = cfg.steps
        if saved != json.loads(json.dumps(run)):
            raise ValueError(f"{out} holds a run with other settings; use another --out or remove {out / 'state'}")
    else:
        if out.exists() and any(out.iterdir()):
            raise ValueError(f"{out} exists and is not a segmenter RL run of ours: give a new folder")
        out.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "segmenter.safetensors"):
            shutil.copy2(Path(segmenter) / name, out / name)
        (out / "state").mkdir()
        (out / "state" / "run.json").write_text(json.dumps(run, indent=1) + "\n")

    questions = doc_questions(pq.read_table(train).to_pylist())
    questions = {d: qs for d, qs in questions.items() if d in documents}
    if not questions:
        raise ValueError(f"no answerable row of {train} is about a document of {index_name or 'the documents given'}")
    doc_ids = sorted(questions)
    log(f"{len(doc_ids)} documents with {sum(len(q) for q in questions.values())} located questions")
    scorer = SegmentationScorer(joint, pool, cfg.k, cache=out / "state" / "pool.pt", log=log)

    torch.manual_seed(cfg.seed)
    model, tokenizer = SegmentationModel.load(out)  # adapters and head trainable, dropout off (eval mode)
    reference, _ = SegmentationModel.load(segmenter, merge=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sampler = torch.Generator().manual_seed(cfg.seed)
    order = random.Random(cfg.seed)
    start = 0
    if state_file.is_file():
        state = torch.load(state_file, weights_only=False)
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler"])
        order.setstate(state["order"])
        start = state["step"]
        log(f"resuming at step {start}/{cfg.steps}")

    def save(step: int) -> None:
        tmp = state_file.with_suffix(".tmp")
        torch.save({"model": model.trainable_state(), "optimizer": optimizer.state_dict(),
                    "sampler": sampler.get_state(), "order": order.getstate(), "step": step}, tmp)
        tmp.replace(state_file)
        model.save(out)

    mcfg = model.cfg
    entry: dict[str, Any] = {}
    with (out / "rl_log.jsonl").open("a") as log_file:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            stats: dict[str, list[float]] = defaultdict(list)
            for doc_id in order.sample(doc_ids, min(cfg.docs_per_step, len(doc_ids))):
                doc = documents[doc_id]
                asked = order.sample(questions[doc_id], min(cfg.questions_per_doc, len(questions[doc_id])))
                shared = scorer.prepare(doc_id, asked)
                enc = encode_document(doc.text, tokenizer, mcfg)
                logits = unit_logits(model, tokenizer, enc)  # (U, L), with gradients
                ref = torch.from_numpy(predict(reference, tokenizer, [enc])[0])  # (U, L) probabilities
                greedy = logits.detach().argmax(-1)
                totals, logps = [], []
                for _ in range(cfg.group_size):
                    labels, logp = sample_labels(logits, cfg.temperature, sampler)
                    groups, headings = cuts(labels.numpy(), enc.unit_token_counts, mcfg.max_segment_tokens,
                                            mcfg.min_fill)
                    segs = to_segments(doc, enc, groups, headings)
                    part = scorer.score(doc, [(s.char_start, s.char_end) for s in segs], [s.section for s in segs],
                                        shared)
                    totals.append(cfg.retrieval_weight * part["evidence"] + cfg.answer_weight * part["answer_f1"])
                    logps.append(logp.mean())
                    for key, value in part.items():
                        stats[key].append(value)
                    stats["segments"].append(len(segs))
                    stats["changed_units"].append(float((labels != greedy).float().mean()))
                stats["reward"] += totals
                advantages = group_advantages(torch.tensor([totals])).view(-1)
                kl = tempered_kl(logits, ref, cfg.temperature)
                loss = -(advantages * torch.stack(logps)).mean() + cfg.beta * kl
                (loss / cfg.docs_per_step).backward()
                stats["kl"].append(float(kl.detach()))
                stats["loss"].append(float(loss.detach()))
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            entry = {"step": step + 1, **{k: round(float(np.mean(v)), 5) for k, v in stats.items()},
                     "step_s": round(time.perf_counter() - t0, 1)}
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()
            log(json.dumps(entry))
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                save(step + 1)
    return entry
