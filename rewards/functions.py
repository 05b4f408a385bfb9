"""Reward functions: one concern each, pure, over a batch.

Every function has the signature ``f(completions, **columns) -> list[float | None]`` (TRL's reward-function
convention): ``completions`` are the joint model's outputs as text (see `rewards.completion`), and the columns are
the batch's fields, one value per completion; a function reads the columns it needs and ignores the others. ``None``
means "does not apply to this row" (F1 on an unanswerable question, citation precision without citations): a
composition leaves it out rather than counting it as zero.

Columns, by name:

- ``sources``: the numbered sources the model was shown, as texts (source ``[n]`` is ``sources[n - 1]``);
- ``answers``: the reference answers (empty on an unanswerable question);
- ``answerable``: whether the sources hold the answer;
- ``evidence``: gold evidence as ``(source number, char_start, char_end)`` in the source's text, or None/[] where
  unknown;
- ``lang``: the answer language for F1's normalization (default English).

Scores reuse the evaluation's own metrics (`model_common.answer_metrics`, which `ragless.eval.metrics` re-exports),
so that what training rewards is what the benchmarks measure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from model_common import answer_metrics as M
from rewards.completion import Completion, locate, parse


def _column(columns: dict[str, Any], name: str, n: int, default: Any = None) -> list[Any]:
    values = columns.get(name)
    if values is None:
        return [default] * n
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    return list(values)


def _parsed(completions: Sequence[str], sources: list[Any]) -> list[Completion]:
    return [parse(c, len(s) if s is not None else None) for c, s in zip(completions, sources)]


def _citations(c: Completion, sources: list[str] | None, evidence) -> list[tuple[str, int, int, str]]:
    """A completion's quotes as evaluation citations ``(source number, start, end, quote)``; a quote that is not in
    its source (or cites a source that is not there) gets the empty span (-1, -1), which is never valid."""
    out = []
    for n, quote in c.quotes:
        text = sources[n - 1] if sources is not None and 1 <= n <= len(sources) else None
        spans = [(a, b) for m, a, b in evidence or () if m == n]
        where = locate(quote, text, spans) if text is not None else None
        out.append((str(n), *(where or (-1, -1)), quote))
    return out


def _gold(evidence) -> list[tuple[str, int, int]]:
    return [(str(n), a, b) for n, a, b in evidence or ()]


def _answer_scores(completions: Sequence[str], columns: dict[str, Any], metric) -> list[float | None]:
    """``metric(answer line, references, lang)`` per completion, with the conventions of `answer_f1`."""
    n = len(completions)
    answers, answerable = _column(columns, "answers", n, []), _column(columns, "answerable", n, True)
    langs = _column(columns, "lang", n, "en")
    out: list[float | None] = []
    for c, refs, ok, lang in zip(_parsed(completions, [None] * n), answers, answerable, langs):
        out.append(None if not ok else 0.0 if c.route != "answer" else metric(c.answer, refs, lang or "en"))
    return out


def answer_f1(completions: Sequence[str], **columns: Any) -> list[float | None]:
    """SQuAD token F1 of the answer line against the references; 0.0 for abstaining on an answerable question;
    None on unanswerable questions (`abstention` judges those).

    >>> answer_f1(["route: answer\\nsources: [1]\\nanswer: the Broncos", "route: abstain", "route: abstain"],
    ...           answers=[["Denver Broncos"], ["Denver Broncos"], []], answerable=[True, True, False])
    [0.6666666666666666, 0.0, None]
    """
    return _answer_scores(completions, columns, M.token_f1)


def answer_exact_match(completions: Sequence[str], **columns: Any) -> list[float | None]:
    """SQuAD exact match of the answer line (normalized), with `answer_f1`'s conventions.

    >>> answer_exact_match(["route: answer\\nsources: [1]\\nanswer: The Broncos."], answers=[["Broncos"]])
    [1.0]
    """
    return _answer_scores(completions, columns, M.exact_match)


def quote_validity(completions: Sequence[str], **columns: Any) -> list[float | None]:
    """Share of the quotes that are verbatim in the source they cite (a missing source makes a quote invalid);
    None without quotes.

    >>> quote_validity(['route: answer\\nsources: [1]\\nanswer: x\\n<ref id="1">quick fox</ref>\\n<ref id="2">a</ref>',
    ...                 "route: abstain"], sources=[["The quick fox"], ["The quick fox"]])
    [0.5, None]
    """
    n = len(completions)
    sources = _column(columns, "sources", n)
    out: list[float | None] = []
    for c, srcs in zip(_parsed(completions, sources), sources):
        cits = _citations(c, srcs, None)
        out.append(sum(a >= 0 for _, a, _, _ in cits) / len(cits) if cits else None)
    return out


def citation_support(completions: Sequence[str], **columns: Any) -> list[float | None]:
    """Whether the quotes support the answer: 1.0 when a valid quote overlaps the gold evidence (when known) or,
    without evidence, contains a reference answer (normalized); 0.0 otherwise, also when an answer has no quote;
    None when the model abstained or the question has no answer.

    >>> citation_support(['route: answer\\nsources: [1]\\nanswer: 1810\\n<ref id="1">built by 1810</ref>',
    ...                   'route: answer\\nsources: [1]\\nanswer: 1810\\n<ref id="1">a lighthouse</ref>',
    ...                   "route: answer\\nsources: [1]\\nanswer: 1810"],
    ...                  sources=[["a lighthouse built by 1810"]] * 3, answers=[["1810"]] * 3)
    [1.0, 0.0, 0.0]
    """
    n = len(completions)
    sources, answers = _column(columns, "sources", n), _column(columns, "answers", n, [])
    answerable, evidence = _column(columns, "answerable", n, True), _column(columns, "evidence", n)
    langs = _column(columns, "lang", n, "en")
    out: list[float | None] = []
    for c, srcs, refs, ok, ev, lang in zip(_parsed(completions, sources), sources, answers, answerable, evidence,
                                            langs):
        if not ok or c.route != "answer":
            out.append(None)
            continue
        valid = [cit for cit in _citations(c, srcs, ev) if cit[1] >= 0]
        if ev:
            out.append(float(M.citation_recall(valid, _gold(ev)) or 0.0))
        else:
            gold = [M.normalize_answer(r, lang or "en") for r in refs]
            out.append(float(any(g and g in M.normalize_answer(q, lang or "en") for *_, q in valid for g in gold)))
    return out


def citation_precision(completions: Sequence[str], **columns: Any) -> list[float | None]:
    """Share of the citations that overlap gold evidence (`ragless.eval.metrics.citation_precision`); None without
    citations or without known evidence.

    >>> two = 'route: answer\\nsources: [1] [2]\\nanswer: x\\n<ref id="1">abc</ref>\\n<ref id="2">z</ref>'
    >>> citation_precision([two], sources=[["abcdef", "xyz"]], evidence=[[(1, 0, 3)]])
    [0.5]
    """
    n = len(completions)
    sources, evidence = _column(columns, "sources", n), _column(columns, "evidence", n)
    out: list[float | None] = []
    for c, srcs, ev in zip(_parsed(completions, sources), sources, evidence):
        out.append(M.citation_precision(_citations(c, srcs, ev), _gold(ev)) if ev else None)
    return out


def citation_recall(completions: Sequence[str], **columns: Any) -> list[float | None]:
    """1.0 when some citation overlaps the gold evidence (`ragless.eval.metrics.citation_recall`), 0.0 when none
    does (or there is no citation); None without known evidence or when the model abstained.

    >>> citation_recall(['route: answer\\nsources: [1]\\nanswer: x\\n<ref id="1">def</ref>', "route: abstain"],
    ...                 sources=[["abcdef"], ["abcdef"]], evidence=[[(1, 0, 3)], [(1, 0, 3)]])
    [0.0, None]
    """
    n = len(completions)
    sources, evidence = _column(columns, "sources", n), _column(columns, "evidence", n)
    out: list[float | None] = []
    for c, srcs, ev in zip(_parsed(completions, sources), sources, evidence):
        out.append(M.citation_recall(_citations(c, srcs, ev), _gold(ev)) if ev and c.route == "answer" else None)
    return out


def format_validity(completions: Sequence[str], **columns: Any) -> list[float | None]:
    """1.0 when the completion follows the layout exactly, with every number among the sources shown (when the
    ``sources`` column is given); else 0.0.

    >>> format_validity(["route: answer\\nsources: [1]\\nanswer: x", "route: answer\\nsources: [3]\\nanswer: x",
    ...                  "The answer is x."], sources=[["s"], ["s"], ["s"]])
    [1.0, 0.0, 0.0]
    """
    n = len(completions)
    sources = _column(columns, "sources", n)
    return [float(c.well_formed) for c in _parsed(completions, sources)]


def abstention(completions: Sequence[str], **columns: Any) -> list[float | None]:
    """+1 for abstaining on an unanswerable question, −1 for answering it; −1 for abstaining on an answerable one,
    0 for answering it (how well is `answer_f1`'s concern). A completion without a route answers nothing: it counts
    as neither, so −1 whatever the question.

    >>> abstention(["route: abstain", "route: answer\\nsources: [1]\\nanswer: x", "route: abstain",
    ...             "route: answer\\nsources: [1]\\nanswer: x", "x"], answerable=[False, False, True, True, True])
    [1.0, -1.0, -1.0, 0.0, -1.0]
    """
    n = len(completions)
    answerable = _column(columns, "answerable", n, True)
    out: list[float | None] = []
    for c, ok in zip(_parsed(completions, [None] * n), answerable):
        if c.route is None:
            out.append(-1.0)
        elif ok:
            out.append(-1.0 if c.abstained else 0.0)
        else:
            out.append(1.0 if c.abstained else -1.0)
    return out


def brevity(completions: Sequence[str], **columns: Any) -> list[float | None]:
    """How much of the answer line is needed: ``min(1, (r + 2) / a)`` for an answer of ``a`` tokens and a shortest
    reference of ``r`` (two tokens of slack); without references ``min(1, 8 / a)``. An empty answer scores 0; None
    when the model abstained.

    >>> brevity(["route: answer\\nsources: [1]\\nanswer: Denver Broncos",
    ...          "route: answer\\nsources: [1]\\nanswer: the team from Denver that won the game, the Broncos"],
    ...         answers=[["Denver Broncos"], ["Denver Broncos"]])   # 7 tokens once "the" is normalized away
    [1.0, 0.5714285714285714]
    """
    n = len(completions)
    answers, langs = _column(columns, "answers", n, []), _column(columns, "lang", n, "en")
    out: list[float | None] = []
    for c, refs, lang in zip(_parsed(completions, [None] * n), answers, langs):
        if c.route != "answer":
            out.append(None)
            continue
        a = len(M.answer_tokens(c.answer, lang or "en"))
        budget = min((len(M.answer_tokens(r, lang or "en")) for r in refs), default=6) + 2
        out.append(0.0 if a == 0 else min(1.0, budget / a))
    return out


def retrieval(completions: Sequence[str], **columns: Any) -> list[float | None]:
    """The rank of the evidence among the sources the model relies on: ``1 / rank`` of the first source holding
    gold evidence in its ``sources:`` line, 0.0 when it relies on none of them; None without known evidence or when
    the model abstained.

    >>> retrieval(["route: answer\\nsources: [2] [1]\\nanswer: x", "route: answer\\nsources: [3]\\nanswer: x"],
    ...           evidence=[[(1, 0, 5)], [(1, 0, 5)]])
    [0.5, 0.0]
    """
    n = len(completions)
    evidence = _column(columns, "evidence", n)
    out: list[float | None] = []
    for c, ev in zip(_parsed(completions, [None] * n), evidence):
        if not ev or c.route != "answer":
            out.append(None)
            continue
        holders = {m for m, _, _ in ev}
        rank = next((i for i, m in enumerate(c.relied, start=1) if m in holders), None)
        out.append(0.0 if rank is None else 1.0 / rank)
    return out


REWARDS = {f.__name__: f for f in (answer_f1, answer_exact_match, quote_validity, citation_support,
                                    citation_precision, citation_recall, format_validity, abstention, brevity,
                                    retrieval)}
