"""Asking: retrieve sources from an index with its encoder, then answer with citations.

Until the trained joint model lands (issue 5) the answer comes from `ragless.prompted.PromptedAnswerer`: SmolLM2
prompted with the top-k sources, the workflow-RAG path that the evaluation keeps as a baseline.

    asker = Asker("my-index")
    answer = asker.ask("How do I renew a passport?")      # retrieval_module.records.Answer
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ragless.components import encoder_for
from ragless.store import IndexReader
from retrieve_generate_model.records import Answer, Source


@dataclass(frozen=True)
class AskConfig:
    k: int = 4  # sources retrieved for each question and given to the answerer


class Asker:
    def __init__(self, index: str | Path, config: AskConfig | None = None, answerer=None):
        self.cfg = config or AskConfig()
        self.reader = IndexReader(index)
        self.encoder = encoder_for(self.reader.manifest)
        self._answerer = answerer

    @property
    def answerer(self):
        """Loaded on first use, so that retrieval alone never loads the generator."""
        if self._answerer is None:
            from ragless.prompted import PromptedAnswerer

            self._answerer = PromptedAnswerer()
        return self._answerer

    def retrieve(self, questions: list[str], k: int | None = None) -> list[list[Source]]:
        """Top-k live segments per question, best first, as `Source` records."""
        queries = self.encoder.embed_queries(questions)  # (M, D)
        return [
            [
                Source(
                    seg_id=h.segment.seg_id,
                    doc_id=h.segment.doc_id,
                    score=h.score,
                    text=h.segment.text,
                    char_start=h.segment.char_start,
                    char_end=h.segment.char_end,
                    source=h.source,
                    title=h.title,
                    section=h.segment.section,
                )
                for h in hits
            ]
            for hits in self.reader.search(queries, k or self.cfg.k)
        ]

    def ask(self, question: str) -> Answer:
        return next(self.ask_many([question]))

    def ask_many(self, questions: Iterable[str]) -> Iterator[Answer]:
        """Answers in order; the models are loaded once for all of them."""
        for question in questions:
            t0 = time.perf_counter()
            sources = self.retrieve([question])[0]
            retrieve_s = time.perf_counter() - t0
            doc_texts = {s.doc_id: self.reader.document(s.doc_id).text for s in sources}
            answer = self.answerer.answer(question, sources, doc_texts)
            answer.timings = {"retrieve_s": round(retrieve_s, 4), **answer.timings}
            yield answer
