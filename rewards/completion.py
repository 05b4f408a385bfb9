"""A completion of the joint model, read back into its parts: route, sources relied on, answer, quotes.

The generator writes a fixed layout (`retrieve_generate_model.joint`)::

    route: answer
    sources: [2] [1]
    answer: Denver Broncos
    <ref id="2">The AFC champion Denver Broncos defeated the NFC champion Carolina Panthers 24–10</ref>

or ``route: abstain`` alone. Constrained decoding always writes it well; sampled completions (reinforcement learning,
a teacher's outputs, a model decoded without constraints) need not, so `parse` never raises: it returns what it could
read and says whether the whole was well formed.

>>> c = parse('route: answer\\nsources: [2] [1]\\nanswer: Denver Broncos\\n<ref id="2">Denver Broncos defeated</ref>')
>>> c.route, c.relied, c.answer, c.quotes, c.well_formed
('answer', [2, 1], 'Denver Broncos', [(2, 'Denver Broncos defeated')], True)
>>> parse("route: abstain").abstained, parse("Paris").well_formed
(True, False)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ROUTES = ("answer", "abstain")
_ROUTE = re.compile(r"route:[ \t]*(\S*)")
_SOURCES = re.compile(r"sources:(.*)")
_SOURCE_ID = re.compile(r"\s*\[(\d+)\]")
_ANSWER = re.compile(r"answer:[ \t]?(.*)")
_REF = re.compile(r'<ref id="(\d+)">(.*?)</ref>', re.DOTALL)


@dataclass
class Completion:
    route: str | None  # "answer", "abstain", or None when there is no route line
    relied: list[int] = field(default_factory=list)  # source numbers as written (1-based), in order
    answer: str = ""
    quotes: list[tuple[int, str]] = field(default_factory=list)  # (source number, quoted text)
    well_formed: bool = False  # the whole text follows the layout (see `parse`)

    @property
    def abstained(self) -> bool:
        return self.route == "abstain"


def parse(text: str, n_sources: int | None = None) -> Completion:
    """Read a completion; ``well_formed`` iff it is exactly the layout: a route line first; after ``abstain``
    nothing; after ``answer`` a sources line of distinct ``[n]``, a non-empty answer line, then only ``<ref>``
    citations, each on its own line; every number within ``1..n_sources`` when that is given."""
    lines = text.strip().split("\n")
    route_match = _ROUTE.fullmatch(lines[0].strip()) if lines else None
    route = route_match.group(1) if route_match and route_match.group(1) in ROUTES else None
    out = Completion(route=route)
    if route is None:
        # a completion without a route line may still hold pieces worth reading (a teacher's free text)
        out.quotes = [(int(n), q) for n, q in _REF.findall(text)]
        return out
    if route == "abstain":
        out.well_formed = len([ln for ln in lines if ln.strip()]) == 1
        return out
    rest = "\n".join(lines[1:])
    sources_line, answer_line = _SOURCES.search(rest), _ANSWER.search(rest)  # read leniently, judged strictly below
    if sources_line:
        out.relied = [int(n) for n in _SOURCE_ID.findall(sources_line.group(1))]
    if answer_line:
        out.answer = answer_line.group(1).strip()
    out.quotes = [(int(n), q) for n, q in _REF.findall(rest)]
    strict_sources = _SOURCES.fullmatch(lines[1].rstrip()) if len(lines) > 1 else None
    ids = strict_sources.group(1) if strict_sources else ""
    ok = (strict_sources is not None and bool(out.relied) and _SOURCE_ID.sub("", ids).strip() == ""
          and len(set(out.relied)) == len(out.relied)
          and len(lines) > 2 and _ANSWER.fullmatch(lines[2].rstrip()) is not None and bool(out.answer)
          and _REF.sub("", "\n".join(lines[3:])).strip() == "")  # then citations and nothing else
    numbers = out.relied + [n for n, _ in out.quotes]
    if n_sources is not None and any(not 1 <= n <= n_sources for n in numbers):
        ok = False
    out.well_formed = ok
    return out


def locate(quote: str, source: str, evidence: list[tuple[int, int]] | None = None) -> tuple[int, int] | None:
    """Where a quote sits in its source text: the first occurrence that overlaps an ``evidence`` span (start, end)
    when there is one, else the first occurrence; None when the quote is empty or not in the source verbatim.

    >>> locate("ab", "xxabyyab", [(5, 8)]), locate("ab", "xxabyyab"), locate("zz", "xxab")
    ((6, 8), (2, 4), None)
    """
    if not quote:
        return None
    starts, i = [], source.find(quote)
    while i >= 0:
        starts.append(i)
        i = source.find(quote, i + 1)
    if not starts:
        return None
    for s in starts:
        if any(min(s + len(quote), b) > max(s, a) for a, b in evidence or ()):
            return s, s + len(quote)
    return starts[0], starts[0] + len(quote)
