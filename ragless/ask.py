"""Asking: retrieve sources from an index with its encoder, then answer with citations.

The answer comes from the shipped joint model (`retrieve_generate_model.joint.JointModel`, checkpoints/joint): it
judges whether the sources answer, ranks the ones it relies on, and answers with verbatim quotes. ``answerer=
"prompted"`` uses SmolLM2 prompted with the sources instead, the workflow-RAG path the evaluation keeps as a baseline.

    asker = Asker("my-index")
    answer = asker.ask("How do I renew a passport?")      # retrieval_module.records.Answer

When the first sources fall short (the joint model's answer abstains) and the model rewrites questions (its
``rewrite/`` adapters, ``rewrite_rounds`` 1), the rewritten question is retrieved once more and the question is
answered from that round's sources (`answer_in_rounds`, which every caller shares: `Asker`, the HTTP service, the
evaluation harness).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from preprocess_model.document import Segment
from ragless.ann import AnnSearchConfig
from ragless.components import DEFAULT_ANSWERER, encoder_for, lexical_for, make_answerer, query_encoder_for
from ragless.store import IndexReader
from retrieve_generate_model.records import Answer, Source


@dataclass(frozen=True)
class AskConfig:
    k: int = 4  # sources retrieved for each question and given to the answerer
    answerer: str = DEFAULT_ANSWERER  # a joint model checkpoint (name under checkpoints/ or folder), or "prompted"
    # the retriever's inverse temperature: weights are softmax(scale * cosine) over the memory (20: the scale that
    # sentence-transformers' contrastive loss trains MiniLM with)
    scale: float = 20.0
    ann: AnnSearchConfig = field(default_factory=AnnSearchConfig)  # search through the index's ANN index, if any


def _source(seg: Segment, score: float, source: str, title: str) -> Source:
    return Source(seg_id=seg.seg_id, doc_id=seg.doc_id, score=score, text=seg.text, char_start=seg.char_start,
                  char_end=seg.char_end, source=source, title=title, section=seg.section)


def answer_in_rounds(answerer, question: str, sources: list[Source], retrieve: Callable[[str], list[Source]] | None,
                     document_text: Callable[[str], str], on_text: Callable[[str], None] | None = None) -> Answer:
    """``answerer``'s answer to ``question`` from ``sources``, with one more retrieval round where the model asks
    for it: when the answer abstains and the answerer rewrites the question (`JointModel.rewrite` gives a query;
    answerers without one, or a model that does not rewrite, never do), ``retrieve(query)`` gives the second round's
    sources and the question (as asked) is answered from them. That answer is the one returned, with
    ``rewritten_query`` set and both rounds' timings (the first one's as ``first.*``); where the second round
    retrieves the very segments of the first, the first answer stands (it would be the same). ``document_text(doc_id)``
    is a document's text (each source is checked against it). ``on_text``: the completion's pieces, for streaming;
    a second round is announced by a ``query:`` line before its pieces."""
    answer = _answer(answerer, question, sources, document_text, on_text)
    rewrite = getattr(answerer, "rewrite", None)
    if not answer.abstained or retrieve is None or rewrite is None or not sources:
        return answer
    t0 = time.perf_counter()
    query = rewrite(question)
    if query is None:
        return answer
    t1 = time.perf_counter()
    second = retrieve(query)
    rounds = {"rewrite_s": round(t1 - t0, 4), "retrieve2_s": round(time.perf_counter() - t1, 4)}
    if [s.seg_id for s in second] == [s.seg_id for s in sources]:  # the same reading would give the same answer
        answer.rewritten_query, answer.timings = query, {**answer.timings, **rounds}
        return answer
    if on_text is not None:
        on_text(f"\nquery: {query}\n")
    final = _answer(answerer, question, second, document_text, on_text)
    final.rewritten_query = query
    final.timings = {**{f"first.{k}": v for k, v in answer.timings.items()}, **rounds, **final.timings}
    return final


def _answer(answerer, question: str, sources: list[Source], document_text: Callable[[str], str],
            on_text: Callable[[str], None] | None) -> Answer:
    doc_texts = {s.doc_id: document_text(s.doc_id) for s in sources}
    if on_text is not None:
        return answerer.answer(question, sources, doc_texts, on_text=on_text)
    return answerer.answer(question, sources, doc_texts)


class Asker:
    def __init__(self, index: str | Path, config: AskConfig | None = None, answerer=None):
        self.cfg = config or AskConfig()
        self.reader = IndexReader(index, ann=self.cfg.ann.use)
        self.encoder = encoder_for(self.reader.manifest)
        self.lexical = lexical_for(self.reader.manifest, self.encoder)  # None: the index holds dense vectors alone
        self._answerer = answerer
        self._query_encoder = None

    @property
    def answerer(self):
        """Loaded on first use, so that retrieval alone never loads the generator."""
        if self._answerer is None:
            self._answerer = make_answerer(self.cfg.answerer)
        return self._answerer

    @property
    def query_encoder(self):
        """The question tower: the joint model's trained one when its checkpoint has one, else the index's encoder."""
        if self._query_encoder is None:
            self._query_encoder = query_encoder_for(self.cfg.answerer, self.encoder)
        return self._query_encoder

    def retrieve(self, questions: list[str], k: int | None = None) -> list[list[Source]]:
        """Top-k live segments per question, best first, as `Source` records.

        Retrieval is attention over the segment memory (`retrieve_generate_model.kernels.retrieval_attention`): the
        exact top-k by inner product, and each one's weight ``exp(scale * score - log_z)`` normalized over every live
        segment, not only over the k returned. When the index stores the learned lexical channel's vectors, the score
        is the fused ``scale * cosine + alpha * lexical`` (`retrieve_generate_model.lexical.fused_attention`), with
        the same exact top-k and normalization; `Source.score` is then the fused score divided by the scale.

        When the index has an ANN index (`ragless index build`), the top-k is exact over the candidates it proposes
        (and the rows it does not cover), equal to the above wherever those hold the true top-k, and ``log_z`` is over
        what was scored, so weights are upper bounds of the exact ones (see `ragless.ann`).
        """
        import torch

        from ragless.ann import ann_attention
        from retrieve_generate_model.kernels import retrieval_attention

        k = min(k or self.cfg.k, len(self.reader))
        if not questions or k == 0:
            return [[] for _ in questions]
        ann = self.reader.ann is not None  # the reader can be swapped for a newer generation's (ragless.serve)
        if self.lexical is None:
            queries = torch.from_numpy(self.query_encoder.embed_queries(questions))  # (M, D)
            if ann:
                rows, scores, log_z = ann_attention(self.reader, queries, k, scale=self.cfg.scale, config=self.cfg.ann)
            else:
                memory = torch.from_numpy(self.reader.memory())
                rows, scores, log_z = retrieval_attention(queries, memory, k, scale=self.cfg.scale)
        else:
            from retrieve_generate_model.lexical import encode, fused_attention, sparse_matrix

            dense, terms = encode(self.encoder, self.lexical, questions, "query")  # one pass of the base MiniLM
            if self.query_encoder is not self.encoder:  # the joint model's trained question tower
                dense = self.query_encoder.embed_queries(questions)
            vocab = self.lexical.vocab
            alpha = self.lexical.alpha_at(self.cfg.scale)
            if ann:
                rows, scores, log_z = ann_attention(
                    self.reader, torch.from_numpy(dense), k, scale=self.cfg.scale, config=self.cfg.ann,
                    query_terms=sparse_matrix(terms, vocab), key_terms=self.reader.lexical_matrix(vocab), alpha=alpha)
            else:
                rows, scores, log_z = fused_attention(
                    torch.from_numpy(dense), sparse_matrix(terms, vocab), torch.from_numpy(self.reader.memory()),
                    self.reader.lexical_matrix(vocab), k, scale=self.cfg.scale, alpha=alpha)
        out = []
        for q_rows, q_scores, q_log_z in zip(rows.tolist(), scores.tolist(), log_z.tolist()):
            sources = []
            for row, score in zip(q_rows, q_scores):
                if row < 0:
                    continue
                seg = self.reader.segment_at(row)
                entry = self.reader.catalog[seg.doc_id]
                source = _source(seg, score / self.cfg.scale, entry.source, entry.title)
                source.weight = math.exp(score - q_log_z)
                sources.append(source)
            out.append(sources)
        return out

    def sources(self, segments: Iterable[Segment]) -> Iterator[Source]:
        """Segments of the index as `Source` records (score 0), with their document's title and source path."""
        for seg in segments:
            entry = self.reader.catalog[seg.doc_id]
            yield _source(seg, 0.0, entry.source, entry.title)

    def ask(self, question: str) -> Answer:
        return next(self.ask_many([question]))

    def ask_many(self, questions: Iterable[str]) -> Iterator[Answer]:
        """Answers in order; the models are loaded once for all of them."""
        for question in questions:
            t0 = time.perf_counter()
            sources = self.retrieve([question])[0]
            retrieve_s = time.perf_counter() - t0
            answer = answer_in_rounds(self.answerer, question, sources, lambda query: self.retrieve([query])[0],
                                      lambda doc_id: self.reader.document(doc_id).text)
            answer.timings = {"retrieve_s": round(retrieve_s, 4), **answer.timings}
            yield answer
