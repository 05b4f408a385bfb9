"""The request and response bodies of the HTTP API, as pydantic models: what the OpenAPI document describes.

Request bodies refuse unknown fields and wrong types (``extra="forbid"``, strict types), with a 422 that names the
field: an integer is a JSON integer literal (``4``), so ``4.0``, ``"4"`` and ``true`` are refused as not integers
(JSON Schema would count ``4.0`` as an integer; the descriptions in the OpenAPI document say it is refused), and a
string is a JSON string (``4`` is not one). Their limits come from the `ServeConfig`, so `request_models` makes them
for one configuration.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ragless.serve.config import ServeConfig
from ragless.serve.limits import DOC_ID_MAX_CHARS, NEW_DOC_ID

Scalar = Annotated[str, Field(max_length=200)] | int | float | bool  # a metadata value
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # JSON has no NaN nor Infinity


class Error(BaseModel):
    detail: str | list = Field(description="why the request was refused (a list of field errors for 422)")


class Filters(BaseModel):
    """Conditions on the documents a question may be answered from; all given conditions must hold. They apply to
    the top ``filter_candidates`` segments the retriever ranks (then the best ``k`` that pass are read)."""

    model_config = STRICT
    doc_ids: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        None, min_length=1, max_length=1000, description="only these documents")
    source_prefix: str | None = Field(None, min_length=1, max_length=1000,
                                      description="only documents whose source starts with this")
    title: str | None = Field(None, max_length=1000, description="only documents with exactly this title")
    meta: dict[Annotated[str, Field(min_length=1, max_length=100)], Scalar] | None = Field(
        None, max_length=20, description="only documents whose metadata fields (meta.fields: the extra fields of a "
                                         "JSON document or record) have these values")


class CitationOut(BaseModel):
    seg_id: str
    doc_id: str
    char_start: int = Field(description="the quote's start in the document's text")
    char_end: int
    quote: str = Field(description="verbatim: the document's text[char_start:char_end]")
    source: str


class SourceOut(BaseModel):
    seg_id: str
    doc_id: str
    score: float = Field(description="the retriever's score (fused score / scale)")
    text: str = Field(description="the segment's text")
    char_start: int = Field(description="the segment's start in the document's text")
    char_end: int
    source: str
    title: str
    section: str
    weight: float | None = Field(description="the retriever's probability of this segment over the whole memory")


class AnswerOut(BaseModel):
    question: str
    text: str = Field(description="the answer (a fixed sentence when abstaining)")
    citations: list[CitationOut]
    abstained: bool
    route: str = Field(description="the model's judgement of the question: answer or abstain")
    sources: list[SourceOut] = Field(description="the sources read, the ones relied on first")
    timings: dict[str, float] = Field(description="seconds per stage")
    rewritten_query: str | None = Field(None, description="the query of a second retrieval round, when the first "
                                        "sources fell short and the model rewrote the question (null: none)")
    generation: int = Field(description="the index generation answered from (0: no index yet)")


class DocumentSummary(BaseModel):
    doc_id: str
    source: str
    title: str
    sha256: str
    n_segments: int
    n_chars: int


class DocumentList(BaseModel):
    generation: int
    total: int = Field(description="documents matching, before offset and limit")
    documents: list[DocumentSummary]


class SegmentOut(BaseModel):
    seg_id: str
    ordinal: int
    char_start: int
    char_end: int
    text: str
    section: str
    kind: str


class DocumentOut(DocumentSummary):
    generation: int
    meta: dict
    text: str
    segments: list[SegmentOut]


class IngestedDocument(BaseModel):
    doc_id: str
    source: str
    title: str
    status: Literal["added", "replaced", "unchanged"]


class IngestOut(BaseModel):
    generation: int = Field(description="the generation that holds the documents")
    elapsed_s: float
    documents: list[IngestedDocument]


class Deleted(BaseModel):
    doc_id: str
    generation: int


class Health(BaseModel):
    status: str
    generation: int | None = None
    documents: int | None = None
    detail: str | None = None


def request_models(cfg: ServeConfig) -> tuple[type[BaseModel], type[BaseModel]]:
    """(AskIn, DocumentsIn) with the limits of ``cfg``."""

    class AskIn(BaseModel):
        model_config = STRICT
        question: str = Field(min_length=1, max_length=cfg.max_question_chars, pattern=r"\S",
                              description=f"the question (not blank; at most {cfg.max_question_tokens} tokens of "
                                          "SmolLM2's tokenizer, else 422)")
        k: int = Field(min(4, cfg.max_k), ge=1, le=cfg.max_k, strict=True,
                       description="sources retrieved and given to the model: a JSON integer literal (4.0, \"4\" and "
                                   "true are refused with 422)")
        filters: Filters | None = None
        stream: bool = Field(False, description="answer as Server-Sent Events: `token` events as the model decides "
                                                "its completion, then one `answer` event with the record (or one "
                                                "`error` event)")

    class DocumentIn(BaseModel):
        model_config = STRICT
        text: str = Field(min_length=1, description="the document's text (plain text; no NUL bytes)")
        doc_id: str | None = Field(None, pattern=NEW_DOC_ID, max_length=DOC_ID_MAX_CHARS,
                                   description="its id (a document with this id is replaced): names joined by '/' "
                                               "(`docs/a.md`), each starting with a letter, digit or '_'; default: "
                                               "derived from source, else from the text")
        title: str = Field("", max_length=1000)
        source: str = Field("", max_length=1000, description="where it comes from (default: api:DOC_ID)")
        meta: dict[Annotated[str, Field(min_length=1, max_length=100)], Scalar] = Field(
            default_factory=dict, max_length=50, description="metadata fields (stored as meta.fields; filterable)")

    class DocumentsIn(BaseModel):
        model_config = STRICT
        documents: list[DocumentIn] = Field(min_length=1, max_length=cfg.max_documents)

    return AskIn, DocumentsIn
