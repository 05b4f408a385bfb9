"""Retrieval pairs from corpus text alone: a sentence restated as a query, its segment (without it) as the evidence.

The questions of `synth_pipeline.qa` ask for a span: a name, a number, a date. Many retrieval queries do not: a claim
to check ("Vitamin D lowers the risk of fractures in the elderly"), a statement of what a passage is about. Trained
only on span questions, the retriever's lexical channel learns to weigh the words that point at such a span, and on
SciFact's claims it ranks worse than before training (BENCHMARKS.md, "The lexical channel adapted to SciFact's own
text"). The inverse cloze task (Lee, Chang and Toutanova, 2019) makes claim-like queries from the text itself: a
sentence is the query and the rest of its passage the evidence. Here:

1. From each segment, up to ``per_segment`` prose sentences (`qa.is_prose`) of at least ``min_words`` words, chosen
   at random (seeded by ``(seed, seg_id)``).
2. The query is the sentence restated loosely: each content word dropped with probability ``drop_words`` (order
   kept, at least ``min_content`` content words left), as a claim says a finding with some of its words.
3. In ``cut_fraction`` of the pairs the sentence is cut out of the evidence segment (the inverse cloze task: the
   query and its evidence then share topic words, not a copy); in the others it stays (the segment that says the
   claim outright, which retrieval must also rank first).
4. The other sources are the segments the user's retriever ranks for the query (hard negatives), the evidence placed
   at its rank, as in `synth_pipeline.qa`.

Rows have the layout of `synth_pipeline.qa` (`qa.ROW_FIELDS`, written with `qa.write_examples`), with ``kind``
"claim", answerable, the evidence first in ``relied`` and no answer span or quote (-1): they train retrievers
(`ragless train lexical --train qa.parquet --train pairs.parquet`), not the reader or the generator.

    rows = list(make_pairs(segments, retrieve, PairsConfig(), seed=0))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from retrieve_generate_model.records import Source
from synth_pipeline.qa import _WORD, _source_row, content_words, detect_lang, is_prose, seeded, sentences


@dataclass(frozen=True)
class PairsConfig:
    per_segment: int = 2  # sentences of a segment made into queries, at most
    k: int = 4  # sources per row: the evidence and the retriever's hard negatives
    min_words: int = 8  # a sentence shorter than this says too little to retrieve its passage by
    drop_words: float = 0.3  # probability of dropping each content word of the sentence
    min_content: int = 4  # content words the query keeps at least
    cut_fraction: float = 0.7  # share of pairs whose evidence is the segment without the sentence

    def __post_init__(self) -> None:
        for name in ("drop_words", "cut_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("per_segment", "k", "min_words", "min_content"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def restate(sentence: str, lang: str, drop: float, keep_at_least: int, rng) -> str:
    """The sentence with each content word dropped with probability ``drop`` (at least ``keep_at_least`` kept, the
    earliest dropped ones put back first), function words and order kept, the final stop removed.

    >>> import random
    >>> restate("Vitamin D supplements lower the risk of hip fractures.", "en", 0.0, 3, random.Random(0))
    'Vitamin D supplements lower the risk of hip fractures'
    >>> restate("Vitamin D supplements lower the risk of hip fractures.", "en", 1.0, 3, random.Random(0))
    'Vitamin D supplements lower the of'
    """
    words = sentence.rstrip().rstrip(".!?").split()
    content = content_words(sentence, lang)
    is_content = [any(m.lower() in content for m in _WORD.findall(w)) for w in words]
    dropped = [c and rng.random() < drop for c in is_content]
    kept = sum(c and not d for c, d in zip(is_content, dropped))
    for i, d in enumerate(dropped):  # too few left: put back the earliest dropped ones
        if kept >= keep_at_least:
            break
        if d:
            dropped[i], kept = False, kept + 1
    return " ".join(w for w, d in zip(words, dropped) if not d)


def draft_pairs(segment: Source, cfg: PairsConfig, seed: int) -> list[tuple[int, tuple[int, int], str, bool, str]]:
    """``(n, sentence span, query, cut, lang)`` for the sentences of ``segment`` chosen as queries."""
    rng = seeded(seed, segment.seg_id, "pairs")
    lang = detect_lang(segment.text)
    spans = [(a, b) for a, b in sentences(segment.text)
             if len(segment.text[a:b].split()) >= cfg.min_words and is_prose(segment.text[a:b])
             and len(content_words(segment.text[a:b], lang)) >= cfg.min_content]
    if len(spans) < 2:  # a one-sentence segment cut of its sentence is empty; kept whole, it is a copy
        return []
    chosen = sorted(rng.sample(range(len(spans)), min(cfg.per_segment, len(spans))))
    out = []
    for n, i in enumerate(chosen):
        a, b = spans[i]
        query = restate(segment.text[a:b], lang, cfg.drop_words, cfg.min_content, rng)
        out.append((n, (a, b), query, rng.random() < cfg.cut_fraction, lang))
    return out


def make_pairs(segments: Iterable[Source], retrieve: Callable[[list[str], int], list[list[Source]]],
               cfg: PairsConfig | None = None, seed: int = 0, batch: int = 256) -> Iterator[dict[str, Any]]:
    """Rows (the layout of `synth_pipeline.qa`) from corpus ``segments``; ``retrieve(queries, k)`` ranks segments of
    the same corpus for each query (the hard negatives). Deterministic per ``(seed, seg_id)``."""
    cfg = cfg or PairsConfig()
    drafts: list[tuple[Source, tuple]] = []
    for segment in segments:
        drafts.extend((segment, d) for d in draft_pairs(segment, cfg, seed))
        if len(drafts) >= batch:
            yield from _rows(drafts, retrieve, cfg)
            drafts = []
    if drafts:
        yield from _rows(drafts, retrieve, cfg)


def _rows(drafts, retrieve, cfg: PairsConfig) -> Iterator[dict[str, Any]]:
    ranked = retrieve([query for _, (_, _, query, _, _) in drafts], cfg.k + 1)
    for (gold, (n, (a, b), query, cut, lang)), hits in zip(drafts, ranked):
        rows = [_source_row(h) for h in hits if h.seg_id != gold.seg_id][: cfg.k - 1]
        rank = next((i for i, h in enumerate(hits) if h.seg_id == gold.seg_id), None)
        at = min(rank if rank is not None else len(rows), len(rows))
        text = (gold.text[:a] + gold.text[b:]).replace("  ", " ").strip() if cut else None
        rows.insert(at, _source_row(gold, text))
        yield {
            "example_id": f"{gold.seg_id}/c{n}", "doc_id": gold.doc_id, "seg_id": gold.seg_id,
            "lang": lang, "question": query, "question_origin": "claim-cut" if cut else "claim",
            "answer_kind": "claim", "answer": "", "answerable": True, "kind": "claim", "sources": rows,
            "relied": [at], "answer_start": -1, "answer_end": -1, "quote_source": -1, "quote_start": -1,
            "quote_end": -1,
        }
