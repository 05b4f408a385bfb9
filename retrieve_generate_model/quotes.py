"""Verbatim quotes by construction: while the generator writes a quote, it may only continue a substring of the source.

A quote is written in the generator's own tokens. `QuoteAutomaton` holds one source's token ids and, for a quote in
progress, every position of the source where the quote's tokens so far occur; the tokens allowed next are the ones
that follow those occurrences. Decoding under it (masking every other token's logit) can only produce a token slice
``source_ids[p : p + n]`` of the source, and with a byte-level BPE tokenizer (SmolLM2's) the text of a slice of the
source's tokens is exactly a substring of the source's text, so the quote is verbatim by construction rather than
checked afterwards. ``span`` gives the quote's character span in the source, which is what `Citation` records.

One limit, for the decoder that uses it (issue 5): byte-level BPE splits rare characters (much of CJK, some symbols)
into several byte tokens, and a slice may begin or end inside such a character; its text then holds U+FFFD. A quote
must open and close at character boundaries, which the decoding loop has to check when it allows the closing tag.

The quote must use the source's own tokenization: the same words tokenized outside the source may split differently,
and only the source's slices are allowed. Cost: a quote of n tokens over a source of m tokens is O(m) to start and
O(number of matching positions) per token.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence


class QuoteAutomaton:
    """The token slices of one source, walked one token at a time; see the module docstring."""

    def __init__(self, source_ids: Sequence[int]):
        if not source_ids:
            raise ValueError("a quote needs a non-empty source")
        self.source_ids = list(source_ids)
        self._starts: dict[int, list[int]] = defaultdict(list)  # token -> positions where a quote may begin with it
        for p, token in enumerate(self.source_ids):
            self._starts[token].append(p)
        self.reset()

    def reset(self) -> None:
        """Begin a new quote."""
        self.length = 0
        self._positions: list[int] | None = None  # None: every position (nothing quoted yet)

    def allowed(self) -> set[int]:
        """The tokens that keep the quote a slice of the source (empty when the quote reached every end)."""
        if self._positions is None:
            return set(self._starts)
        n, ids = self.length, self.source_ids
        return {ids[p + n] for p in self._positions if p + n < len(ids)}

    def advance(self, token: int) -> None:
        """Append ``token`` to the quote; refused if it would leave the source."""
        if self._positions is None:
            positions = self._starts.get(token, [])
        else:
            n, ids = self.length, self.source_ids
            positions = [p for p in self._positions if p + n < len(ids) and ids[p + n] == token]
        if not positions:
            raise ValueError(f"token {token} does not continue the quote in the source")
        self._positions = positions
        self.length += 1

    def first_position(self) -> int:
        """The first source token position where the quote so far occurs."""
        if self._positions is None or not self.length:
            raise ValueError("nothing quoted yet")
        return self._positions[0]

    def span(self, offsets: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """The character span of the quote (its first occurrence) in the source text, from the tokenizer's
        ``offset_mapping`` of the source: (start of its first token, end of its last)."""
        p = self.first_position()
        return offsets[p][0], offsets[p + self.length - 1][1]


__all__ = ["QuoteAutomaton"]
