"""The answer record the question path returns (see ../shared/DESIGN.md, "Core records")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class Source:
    """A retrieved segment with its score, as the answer path ranked it."""

    seg_id: str
    doc_id: str
    score: float
    text: str
    char_start: int
    char_end: int
    source: str = ""  # the document's source (path), for display
    title: str = ""
    section: str = ""
    # the retriever's probability of this segment, normalized over the whole memory (exp(scale*score - log_z));
    # None where the system does not compute one (the workflow baselines)
    weight: float | None = None

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Source:
        """A source from a mapping with (at least) its fields, e.g. a row of a Parquet sources column."""
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})


@dataclass
class Citation:
    """A verbatim quote: ``quote == document.text[char_start:char_end]`` of document ``doc_id``."""

    seg_id: str
    doc_id: str
    char_start: int
    char_end: int
    quote: str
    source: str = ""


@dataclass
class Answer:
    text: str
    citations: list[Citation] = field(default_factory=list)
    abstained: bool = False
    route: str = "answer"  # the model's judgement of the query ("answer", "abstain", ...)
    sources: list[Source] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    # the query of a second retrieval round, when the first sources fell short and the model rewrote the question
    # (`ragless.ask.answer_in_rounds`); the sources are then that round's. None: the question was retrieved as asked
    rewritten_query: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
