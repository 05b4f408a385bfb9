"""Quotes decoded under the automaton are slices of the source's tokens, hence substrings of its text."""

from __future__ import annotations

import random

import pytest

from retrieve_generate_model.quotes import QuoteAutomaton

SOURCE = ("The Bell Rock Lighthouse, off the coast of Angus, Scotland, is the world's oldest surviving sea-washed "
          "lighthouse. It was built between 1807 and 1810 by Robert Stevenson; « the light » shines 35 miles — 56 km.")


def test_the_automaton_allows_exactly_the_continuations_of_the_quote():
    a = QuoteAutomaton([5, 6, 7, 5, 6, 8])
    assert a.allowed() == {5, 6, 7, 8}
    a.advance(5)
    assert a.allowed() == {6}
    a.advance(6)
    assert a.allowed() == {7, 8} and a.first_position() == 0
    a.advance(8)
    assert a.allowed() == set() and a.first_position() == 3 and a.length == 3  # the source ends there
    with pytest.raises(ValueError, match="does not continue"):
        a.advance(5)
    a.reset()
    with pytest.raises(ValueError, match="does not continue"):
        a.advance(9)
    with pytest.raises(ValueError, match="non-empty"):
        QuoteAutomaton([])


@pytest.fixture(scope="module")
def tokenizer():
    from retrieve_generate_model.generator import load_generator

    return load_generator()[0]


def test_any_walk_decodes_to_a_substring_with_its_exact_span(tokenizer):
    enc = tokenizer(SOURCE, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    a = QuoteAutomaton(ids)
    rng = random.Random(0)
    for _ in range(200):  # random quotes: the first token anywhere, then any allowed continuation
        a.reset()
        quote: list[int] = []
        for _ in range(rng.randint(1, 12)):
            allowed = sorted(a.allowed())
            if not allowed:
                break
            token = rng.choice(allowed)
            a.advance(token)
            quote.append(token)
        text = tokenizer.decode(quote)
        assert text in SOURCE
        start, end = a.span(offsets)
        assert SOURCE[start:end].strip() == text.strip()  # a token's offsets may leave out its leading space
