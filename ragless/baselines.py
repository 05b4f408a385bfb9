"""The workflow-RAG baselines: what ragless's trained models are measured against.

Fixed-window chunking and prompt-stuffed generation exist in this project only here (../shared/DESIGN.md, "What
trained means here"). They are implemented at their best usual settings, never weakened to be beaten.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from preprocess_model.document import Document, Segment, Span
from preprocess_model.segmenting import spans_to_segments

# Where a window may end, best first: a blank line, a line end, a sentence end, any whitespace
# (the separator cascade of LangChain's RecursiveCharacterTextSplitter, the most used chunker).
_WHITESPACE = re.compile(r"\s")
_BREAKS = (re.compile(r"\n\s*\n"), re.compile(r"\n"), re.compile(r"[.!?;:]\s"), _WHITESPACE)


@dataclass(frozen=True)
class FixedWindowConfig:
    window_chars: int = 512  # the usual RAG default; ~128 MiniLM tokens, well under its 256-token limit
    overlap_chars: int = 64  # context shared by neighbouring windows
    min_fill: float = 0.5  # a window ends at a natural break only if that keeps at least this fraction of it

    def __post_init__(self) -> None:
        if self.window_chars <= 0 or not 0 <= self.overlap_chars < self.window_chars:
            raise ValueError(f"need window_chars > overlap_chars >= 0, got {self}")


def fixed_windows(text: str, cfg: FixedWindowConfig) -> list[Span]:
    """Windows of at most ``cfg.window_chars`` characters overlapping by ``cfg.overlap_chars``.

    A window ends at the best natural break (paragraph, line, sentence, word) in its last part, so words are not cut
    unless a single word is longer than the window.
    """
    spans: list[Span] = []
    n, start = len(text), 0
    while start < n:
        while start < n and text[start].isspace():
            start += 1
        if start >= n:
            break
        end = min(start + cfg.window_chars, n)
        if end < n:
            lo = start + int(cfg.window_chars * cfg.min_fill)
            for pattern in _BREAKS:
                cut = [m.end() for m in pattern.finditer(text, lo, end)]
                if cut:
                    end = cut[-1]
                    break
        spans.append((start, end))
        if end >= n:
            break
        # The next window repeats at most `overlap_chars` of this one, starting at a word boundary.
        nxt = max(end - cfg.overlap_chars, start + 1)
        if not text[nxt - 1].isspace():
            space = _WHITESPACE.search(text, nxt, end)
            nxt = space.end() if space else nxt
        start = nxt
    return spans


class FixedWindowSegmenter:
    """Fixed-size character windows with overlap: the chunker every RAG framework ships."""

    name = "fixed-window"

    def __init__(self, config: FixedWindowConfig | None = None):
        self.cfg = config or FixedWindowConfig()

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def segment(self, docs: Sequence[Document]) -> list[list[Segment]]:
        return [spans_to_segments(doc, fixed_windows(doc.text, self.cfg)) for doc in docs]
