"""What every segmenter shares: the interface ingestion calls, and turning character spans into `Segment` records.

A segmenter is chosen once, when an index is made, and recorded in the index manifest (`name` and `config()`), so an
index always knows which segmenter cut it. The learned segmenter of this package and the fixed-window baseline of
`ragless.baselines` both implement `Segmenter`.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from preprocess_model.document import Document, Segment, Span, stable_id


@runtime_checkable
class Segmenter(Protocol):
    name: str

    def config(self) -> dict[str, Any]:
        """Everything that determines the cuts: saved in the index manifest, compared on reopen."""
        ...

    def segment(self, docs: Sequence[Document]) -> list[list[Segment]]:
        """Cut a batch of documents; one list of segments per document, in document order."""
        ...


def section_paths(doc: Document) -> tuple[list[int], list[str]]:
    """The heading path in force at each heading of ``doc.meta["headings"]``.

    Returns (starts, paths): ``paths[i]`` is the " > "-joined heading path from heading ``i`` until the next heading.
    """
    starts: list[int] = []
    paths: list[str] = []
    stack: list[tuple[int, str]] = []  # (level, heading text)
    for start, end, level in doc.meta.get("headings", []):
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, " ".join(doc.text[start:end].split())))
        starts.append(start)
        paths.append(" > ".join(h for _, h in stack))
    return starts, paths


def spans_to_segments(doc: Document, spans: Sequence[Span], kind: str = "text") -> list[Segment]:
    """Segment records for ``spans`` of ``doc``; whitespace is trimmed from both ends, empty spans dropped.

    Each segment's section is the heading path in force at its first character.
    """
    starts, paths = section_paths(doc)
    out: list[Segment] = []
    for start, end in spans:
        text = doc.text[start:end]
        lead = len(text) - len(text.lstrip())
        trail = len(text) - len(text.rstrip())
        start, end = start + lead, end - trail
        if end <= start:
            continue
        i = bisect.bisect_right(starts, start) - 1
        out.append(
            Segment(
                seg_id=stable_id(doc.doc_id, str(start), str(end)),
                doc_id=doc.doc_id,
                ordinal=len(out),
                char_start=start,
                char_end=end,
                text=doc.text[start:end],
                section=paths[i] if i >= 0 else "",
                kind=kind,
            )
        )
    return out
