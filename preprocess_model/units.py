"""Units: the pieces of a document the segmentation model labels, and the labels it gives them.

A unit is a non-empty line of the (normalized) document text, or, for a line longer than ``max_chars``, one of its
sentences, or, for a sentence longer than that, a piece of it cut at whitespace. Units are character spans into the
text; they never overlap and never hold a line break. The segmentation model labels every unit with one of `LABELS`:

- ``continue``: the unit belongs to the segment of the unit before it;
- ``boundary``: the unit begins a new segment;
- ``heading``: the unit is a heading: it ends the segment before it, is kept as the section path of the segments that
  follow, and is not part of their text;
- ``noise``: running headers and footers, page numbers, navigation, boilerplate: dropped from segment text (they stay
  in the document, so offsets never move).

The training data of `synth_pipeline.segmentation` and the model's inference both cut units with `text_units`, so
what the model learned on is what it labels.
"""

from __future__ import annotations

import re

from preprocess_model.document import Span

LABELS = ("continue", "boundary", "heading", "noise")
CONTINUE, BOUNDARY, HEADING, NOISE = range(len(LABELS))

MAX_UNIT_CHARS = 400

# A sentence ends at . ! ? … (optionally followed by closing quotes or brackets) before whitespace, or right after a
# CJK full stop, question or exclamation mark (no space follows those).
_SENTENCE_END = re.compile(r"(?<=[.!?…][\"'”’»)\]])\s+|(?<=[.!?…])\s+|(?<=[。！？])")


def text_units(text: str, max_chars: int = MAX_UNIT_CHARS) -> list[Span]:
    """The units of ``text`` as (start, end) character spans, in order; see the module docstring."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    units: list[Span] = []
    start = 0
    for line in text.split("\n"):
        if line.strip():
            units.extend(_line_units(line, start, max_chars))
        start += len(line) + 1
    return units


def _line_units(line: str, offset: int, max_chars: int) -> list[Span]:
    if len(line) <= max_chars:
        return [_strip(line, offset, 0, len(line))]
    out: list[Span] = []
    pos = 0
    for m in _SENTENCE_END.finditer(line):
        if m.start() > pos:
            out.extend(_pieces(line, offset, pos, m.start(), max_chars))
        pos = m.end()
    if pos < len(line):
        out.extend(_pieces(line, offset, pos, len(line), max_chars))
    return [u for u in out if u[1] > u[0]]


def _pieces(line: str, offset: int, start: int, end: int, max_chars: int) -> list[Span]:
    """``line[start:end]`` cut at the last whitespace before every ``max_chars`` (or hard, if there is none)."""
    out: list[Span] = []
    while end - start > max_chars:
        cut = line.rfind(" ", start + 1, start + max_chars + 1)
        if cut <= start:
            cut = start + max_chars
        out.append(_strip(line, offset, start, cut))
        start = cut
        while start < end and line[start].isspace():
            start += 1
    if end > start:
        out.append(_strip(line, offset, start, end))
    return out


def _strip(line: str, offset: int, start: int, end: int) -> Span:
    """The span of ``line[start:end]`` without surrounding whitespace, shifted by ``offset``."""
    piece = line[start:end]
    lead = len(piece) - len(piece.lstrip())
    trail = len(piece) - len(piece.rstrip())
    return offset + start + lead, offset + end - trail
