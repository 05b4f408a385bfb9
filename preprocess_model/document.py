"""The records a reader produces and a segmenter consumes: `Document`, `Segment`, and `ReadFailure`.

Every position is a character offset into `Document.text` (normalized UTF-8), so that any segment or quote maps back
to the exact place it came from. See ../shared/DESIGN.md, "Core records".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

Span = tuple[int, int]  # (char_start, char_end) into Document.text, end exclusive


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stable_id(*parts: str, length: int = 16) -> str:
    """A short, stable identifier derived from strings (a source path, a record id)."""
    h = hashlib.sha1("\x1f".join(parts).encode("utf-8"))
    return h.hexdigest()[:length]


@dataclass
class Document:
    """One document as a reader made it.

    doc_id:  stable: derived from the source path, or the id a container (JSONL, Parquet) gave it.
    source:  where it came from (absolute path, or ``path#id`` for a record of a container file).
    text:    normalized UTF-8 text (NFC, ``\\n`` line ends, no NUL or other control characters but ``\\t`` and ``\\n``).
    sha256:  of the raw bytes the document was read from (the file, or the record); the incremental-ingest key.
    title:   a human title when the format has one (HTML <title>, first Markdown heading, PDF metadata), else "".
    meta:    format facts: ``format``, and where known ``headings`` (list of [start, end, level]) and ``pages``
             (list of [start, end] per PDF page). JSON-serializable.
    units:   the reader's smallest pieces (non-empty lines) as character spans, in order, non-overlapping.
    """

    doc_id: str
    source: str
    text: str
    sha256: str
    title: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    units: list[Span] = field(default_factory=list)


@dataclass
class Segment:
    """A retrievable piece of a document: ``text == document.text[char_start:char_end]``.

    section: the heading path above the segment ("Install > Linux"), "" when unknown.
    kind:    what the segmenter judged it to be ("text"; later also "table", "list", ...).
    """

    seg_id: str
    doc_id: str
    ordinal: int
    char_start: int
    char_end: int
    text: str
    section: str = ""
    kind: str = "text"


@dataclass
class ReadFailure:
    """A file (or a record in a container) that could not be read; reported and skipped, never fatal."""

    source: str
    reason: str
    doc_id: str | None = None
