"""The metrics of one answer: its text against the gold answers, its citations against the gold evidence.

One implementation for everyone who scores an answer: the evaluation harness (`ragless.eval.metrics` re-exports the
public names), the reward functions (`rewards.functions`, `rewards.segmenter_rl`) and the trainers' held-out reports
(`retrieve_generate_model.train`), so that what training rewards is exactly what the benchmarks measure. Pure Python.

Each metric scores ONE question and returns a float, or ``None`` when that question cannot be scored by it (a question
without citations has no citation precision).

Spans are ``(doc_id, char_start, char_end)`` with ``char_end`` exclusive. Anything span-shaped is accepted: a tuple,
a mapping with those keys, or an object with those attributes (``GoldSpan``, ``Segment``, a citation record), so this
module does not depend on the dataset loaders. Citations are spans with a ``quote`` (4-tuples or records).

Sections: answer text (SQuAD v1.1 / MLQA), spans and citations as records, citations.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

# --------------------------------------------------------------------------------------------------------------------
# Answer text: the official SQuAD v1.1 evaluation, and MLQA's multilingual variant
# --------------------------------------------------------------------------------------------------------------------

# Articles removed per language, verbatim from MLQA's mlqa_evaluation_v1.py (`remove_articles`). None: no articles.
_ARTICLES: dict[str, str | None] = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    # The official pattern. Its first branch can never match (`^` after consumed characters, no MULTILINE), so in
    # effect EVERY "ال" is replaced by a space, inside words too. Kept as is: scores must match published MLQA ones.
    "ar": r"\sال^|ال",
    "hi": None,
    "zh": None,
}
LANGUAGES = tuple(_ARTICLES)
_ARTICLE_RES = {lang: re.compile(p) for lang, p in _ARTICLES.items() if p is not None}
_ASCII_PUNCT = frozenset(string.punctuation)
_CJK = re.compile(r"[\u4e00-\u9fa5]")  # MLQA's range for Chinese characters, each one a token


def _is_unicode_punct(ch: str) -> bool:
    # Same membership as MLQA's PUNCT set (categories P* plus string.punctuation), without building a 1.1M-entry set.
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def _mixed_segmentation(text: str) -> list[str]:
    """MLQA's tokenizer for Chinese: each CJK character or punctuation mark is a token, other runs split on spaces."""
    tokens: list[str] = []
    run = ""
    for ch in text:
        if _CJK.match(ch) or _is_unicode_punct(ch):
            tokens.extend(run.split())
            run = ""
            tokens.append(ch)
        else:
            run += ch
    tokens.extend(run.split())
    return tokens


def _normalize_squad(s: str) -> str:
    # Byte for byte the official SQuAD v1.1 evaluate-v1.1.py normalize_answer, with its four steps in its order.
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def _normalize_mlqa(s: str, lang: str) -> str:
    # mlqa_evaluation_v1.py's normalize_answer: lower, unicode punctuation, articles of `lang`, language tokenizer.
    text = "".join(ch for ch in s.lower() if not _is_unicode_punct(ch))
    if lang in _ARTICLE_RES:
        text = _ARTICLE_RES[lang].sub(" ", text)
    tokens = _mixed_segmentation(text) if lang == "zh" else text.split()
    return " ".join(t for t in tokens if t.strip() != "")


def normalize_answer(s: str, lang: str = "en") -> str:
    """Answer normalization of the official evaluation scripts; tokens are the result split on spaces.

    ``lang="en"`` is exactly SQuAD v1.1's: lowercase, drop ASCII punctuation (``string.punctuation``), replace the
    articles a/an/the by spaces, collapse whitespace. Other languages follow MLQA's ``mlqa_evaluation_v1.py``: drop
    every Unicode punctuation character (categories P*) and ASCII punctuation, replace the language's articles (es:
    un una unos unas el la los las; de: ein eine einen einem eines einer der die das den dem des; vi: của là cái chiếc
    những; ar: every "ال", as MLQA does; hi, zh: none), then tokenize on whitespace, or for zh with MLQA's mixed
    segmentation (each CJK character is a token).

    >>> normalize_answer("The  Cat's   hat!")
    'cats hat'
    >>> normalize_answer("¿Dónde está el gato?", lang="es")
    'dónde está gato'
    >>> normalize_answer("北京大学", lang="zh")
    '北 京 大 学'
    """
    if lang == "en":
        return _normalize_squad(s)
    if lang not in _ARTICLES:
        raise ValueError(f"no answer normalization for language {lang!r}; known: {', '.join(LANGUAGES)}")
    return _normalize_mlqa(s, lang)


def answer_tokens(s: str, lang: str = "en") -> list[str]:
    """The tokens F1 counts: the normalized answer split on spaces."""
    return normalize_answer(s, lang).split()


def _as_golds(golds: str | Iterable[str]) -> list[str]:
    # A bare string is one gold answer, not a list of one-character answers.
    return [golds] if isinstance(golds, str) else list(golds)


def _f1_pair(prediction: str, gold: str, lang: str) -> float:
    # SQuAD v1.1's f1_score: bag-of-tokens overlap; 0 when nothing is shared (also when both normalize to nothing).
    pred, ref = answer_tokens(prediction, lang), answer_tokens(gold, lang)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: str | Iterable[str], lang: str = "en") -> float:
    """1.0 if the normalized prediction equals any normalized gold answer (max over golds, as SQuAD).

    With no gold answers the question has no answer (SQuAD v2 convention): 1.0 iff the prediction normalizes to "".

    >>> exact_match("the Eiffel Tower.", ["Eiffel Tower", "tower"])
    1.0
    >>> exact_match("", [])
    1.0
    """
    golds = _as_golds(golds)
    pred = normalize_answer(prediction, lang)
    if not golds:
        return float(pred == "")
    return float(any(pred == normalize_answer(g, lang) for g in golds))


def token_f1(prediction: str, golds: str | Iterable[str], lang: str = "en") -> float:
    """SQuAD token F1 of the prediction against the best-matching gold answer.

    With no gold answers: 1.0 iff the prediction has no tokens (SQuAD v2 convention). A gold that normalizes to
    nothing (e.g. "the") scores 0 against everything, as in SQuAD v1.1.

    >>> round(token_f1("the big red fox", ["red fox"]), 4)  # p = 2/3, r = 2/2
    0.8
    """
    golds = _as_golds(golds)
    if not golds:
        return float(not answer_tokens(prediction, lang))
    return max(_f1_pair(prediction, g, lang) for g in golds)


# --------------------------------------------------------------------------------------------------------------------
# Spans and citations as records
# --------------------------------------------------------------------------------------------------------------------

Span = tuple[str, int, int]


class SpanRecord(Protocol):
    """Anything with a document id and a character range (GoldSpan, Segment, a citation)."""

    @property
    def doc_id(self) -> str: ...

    @property
    def char_start(self) -> int: ...

    @property
    def char_end(self) -> int: ...


class CitationRecord(SpanRecord, Protocol):
    @property
    def quote(self) -> str: ...


SpanLike = Span | SpanRecord | Mapping[str, Any]
CitationLike = tuple[str, int, int, str] | CitationRecord | Mapping[str, Any]


def _field(x: Any, name: str) -> Any:
    return x[name] if isinstance(x, Mapping) else getattr(x, name)


def as_span(x: SpanLike) -> Span:
    """``(doc_id, char_start, char_end)`` from a tuple (extra fields ignored), a mapping or a record."""
    if isinstance(x, (tuple, list)):
        return (x[0], int(x[1]), int(x[2]))
    return (_field(x, "doc_id"), int(_field(x, "char_start")), int(_field(x, "char_end")))


def _as_citation(x: CitationLike) -> tuple[str, int, int, str]:
    quote = x[3] if isinstance(x, (tuple, list)) else _field(x, "quote")
    return (*as_span(x), quote)



def span_overlap(a: SpanLike, b: SpanLike) -> int:
    """Characters shared by two spans; 0 when they are in different documents.

    >>> span_overlap(("d", 0, 10), ("d", 5, 20)), span_overlap(("d", 0, 10), ("e", 0, 10))
    (5, 0)
    """
    (doc_a, start_a, end_a), (doc_b, start_b, end_b) = as_span(a), as_span(b)
    if doc_a != doc_b:
        return 0
    return max(0, min(end_a, end_b) - max(start_a, start_b))



# --------------------------------------------------------------------------------------------------------------------
# Citations: is the quote verbatim, and does it point at the gold evidence
# --------------------------------------------------------------------------------------------------------------------


def quote_valid(citation: CitationLike, doc_text: str | None) -> float:
    """1.0 iff the cited span is non-empty, inside the document, and its text is exactly the quote.

    >>> quote_valid(("d", 4, 9, "quick"), "The quick fox"), quote_valid(("d", 4, 9, "quack"), "The quick fox")
    (1.0, 0.0)
    """
    _, start, end, quote = _as_citation(citation)
    if doc_text is None or not 0 <= start < end <= len(doc_text):
        return 0.0
    return float(doc_text[start:end] == quote)


def quote_validity(citations: Sequence[CitationLike], doc_texts: Mapping[str, str]) -> float | None:
    """Mean :func:`quote_valid` over a question's citations (a citation of an unknown document is invalid); None if
    there are no citations."""
    if not citations:
        return None
    cits = [_as_citation(c) for c in citations]
    return sum(quote_valid(c, doc_texts.get(c[0])) for c in cits) / len(cits)


def _supported(citation: CitationLike, evidence: Sequence[SpanLike]) -> bool:
    return any(span_overlap(citation, g) > 0 for g in evidence)


def citation_precision(citations: Sequence[CitationLike], evidence: Sequence[SpanLike]) -> float | None:
    """Fraction of citations that overlap a gold evidence span (same document, at least one character); None if there
    are no citations. With no gold evidence every citation is unsupported (0.0): leave out questions whose dataset
    has no evidence annotation."""
    if not citations:
        return None
    return sum(_supported(c, evidence) for c in citations) / len(citations)


def citation_recall(citations: Sequence[CitationLike], evidence: Sequence[SpanLike]) -> float | None:
    """1.0 if any citation overlaps the gold evidence, else 0.0; None when the question has no gold evidence."""
    if not evidence:
        return None
    return float(any(_supported(c, evidence) for c in citations))
