"""Reward functions on hand-made completions, edge cases included; the composition; the module doctests."""

from __future__ import annotations

import doctest

import pytest

import rewards.completion
import rewards.composition
import rewards.functions
from rewards import REWARDS, ComposedReward, RewardWeights, compose, log_means, parse
from rewards.functions import (
    abstention,
    answer_exact_match,
    answer_f1,
    brevity,
    citation_precision,
    citation_recall,
    citation_support,
    format_validity,
    quote_validity,
    retrieval,
)

SOURCES = ["The Bell Rock Lighthouse was built between 1807 and 1810 by Robert Stevenson.",
           "Apples are pressed within days of picking.",
           "Der Leuchtturm steht vor der Küste von Angus — gebaut 1810, «ältester» seiner Art."]


def answer(text: str, relied="[1]", refs: tuple[tuple[int, str], ...] = ()) -> str:
    out = f"route: answer\nsources: {relied}\nanswer: {text}"
    return out + "".join(f'\n<ref id="{n}">{q}</ref>' for n, q in refs)


@pytest.mark.parametrize("module", [rewards.completion, rewards.functions, rewards.composition])
def test_the_module_doctests_pass(module):
    assert doctest.testmod(module).failed == 0


def test_a_good_answer_scores_on_every_component():
    c = [answer("Robert Stevenson", "[1] [2]", ((1, "by Robert Stevenson"),))]
    cols = dict(sources=[SOURCES], answers=[["Robert Stevenson"]], answerable=[True], evidence=[[(1, 56, 76)]])
    got = {name: fn(c, **cols)[0] for name, fn in REWARDS.items()}
    assert got == {"answer_f1": 1.0, "answer_exact_match": 1.0, "quote_validity": 1.0, "citation_support": 1.0,
                   "citation_precision": 1.0, "citation_recall": 1.0, "format_validity": 1.0, "abstention": 0.0,
                   "brevity": 1.0, "retrieval": 1.0}


def test_empty_answer_and_missing_citation():
    empty = "route: answer\nsources: [1]\nanswer: "
    cols = dict(sources=[SOURCES], answers=[["1810"]], answerable=[True], evidence=[[(1, 50, 54)]])
    assert parse(empty).answer == "" and not parse(empty).well_formed
    assert answer_f1([empty], **cols) == [0.0] and answer_exact_match([empty], **cols) == [0.0]
    assert brevity([empty], **cols) == [0.0] and format_validity([empty], **cols) == [0.0]
    no_quote = answer("1810")
    assert quote_validity([no_quote], **cols) == [None]  # nothing to check
    assert citation_support([no_quote], **cols) == [0.0]  # an answer without support is not supported
    assert citation_precision([no_quote], **cols) == [None] and citation_recall([no_quote], **cols) == [0.0]


def test_a_citation_to_a_missing_source_is_invalid_and_unsupported():
    c = [answer("1810", "[1]", ((4, "1810"),))]  # source [4] was never shown
    cols = dict(sources=[SOURCES[:2]], answers=[["1810"]], evidence=[[(1, 50, 54)]])
    assert quote_validity(c, **cols) == [0.0]
    assert citation_support(c, **cols) == [0.0] and citation_precision(c, **cols) == [0.0]
    assert format_validity(c, **cols) == [0.0]  # a number outside the sources shown
    assert parse(c[0]).quotes == [(4, "1810")]


def test_unicode_quotes_and_answers():
    quote = "gebaut 1810, «ältester»"
    c = [answer("Küste von Angus", "[3]", ((3, quote),)), answer("Kuste von Angus", "[3]", ((3, "ältester!"),))]
    cols = dict(sources=[SOURCES, SOURCES], answers=[["Küste von Angus"]] * 2, lang=["de", "de"])
    assert quote_validity(c, **cols) == [1.0, 0.0]  # verbatim means verbatim: no accent folding, no punctuation
    assert answer_exact_match(c, **cols) == [1.0, 0.0]
    start = SOURCES[2].index(quote)
    assert citation_precision(c[:1], sources=[SOURCES], evidence=[[(3, start, start + 6)]]) == [1.0]


def test_quote_support_uses_the_occurrence_in_the_evidence():
    source = "In 1807 work began. The light was first lit in 1810. Repairs in 1810 too."
    c = [answer("1810", "[1]", ((1, "1810"),))]
    evidence = [[(1, source.index("1810"), source.index("1810") + 4)]]
    second = [[(1, source.rindex("1810"), source.rindex("1810") + 4)]]
    assert citation_support(c, sources=[[source]], answers=[["1810"]], evidence=evidence) == [1.0]
    assert citation_support(c, sources=[[source]], answers=[["1810"]], evidence=second) == [1.0]
    assert citation_support(c, sources=[[source]], answers=[["1810"]], evidence=[[(1, 0, 7)]]) == [0.0]


def test_abstention_rewards_honesty_both_ways():
    done = ["route: abstain", answer("x"), "route: abstain", answer("x")]
    answerable = [False, False, True, True]
    assert abstention(done, answerable=answerable) == [1.0, -1.0, -1.0, 0.0]
    assert answer_f1(done, answers=[[], [], ["x"], ["x"]], answerable=answerable) == [None, None, 0.0, 1.0]
    assert retrieval(done, evidence=[None, [(1, 0, 1)], [(1, 0, 1)], [(2, 0, 1)]]) == [None, 1.0, None, 0.0]


def test_malformed_completions_never_raise():
    odd = ["", "route:", "route: maybe", 'route: answer\n<ref id="1">The Bell</ref>', "route: abstain\nmore text",
           "route: answer\nsources: [1] [1]\nanswer: x", "route: answer\nanswer: x\nsources: [1]"]
    cols = dict(sources=[SOURCES] * len(odd), answers=[["x"]] * len(odd), answerable=[True] * len(odd),
                evidence=[[(1, 0, 8)]] * len(odd))
    totals, parts = compose(odd, **cols)
    assert len(totals) == len(odd) and all(len(v) == len(odd) for v in parts.values())
    assert parts["format_validity"] == [0.0] * len(odd)
    assert parts["quote_validity"][3] == 1.0  # what could be read is still judged


def test_columns_must_match_the_batch():
    with pytest.raises(ValueError, match="column 'answers' has 1 values for 2 completions"):
        answer_f1(["route: abstain", "route: abstain"], answers=[["x"]])


def test_composed_reward_weights_and_logs_every_component():
    c = [answer("Robert Stevenson", "[1]", ((1, "Robert Stevenson"),)), "route: abstain"]
    cols = dict(sources=[SOURCES, SOURCES], answers=[["Robert Stevenson"], []], answerable=[True, False])
    only_f1 = RewardWeights(**{name: 0.0 for name in REWARDS} | {"answer_f1": 2.0})
    reward = ComposedReward(only_f1)
    assert reward(c, **cols) == [2.0, 0.0]  # the abstention row has no F1: it adds nothing
    assert set(reward.last) == set(REWARDS) and reward.last["abstention"] == [0.0, 1.0]
    means = log_means(reward.last)
    assert means["answer_f1"] == 1.0 and means["retrieval"] is None and means["abstention"] == 0.5
    default_totals, _ = compose(c, **cols)
    assert default_totals[1] == pytest.approx(1.0 * 1.0 + 0.5 * 1.0)  # abstention + format


def test_the_joint_models_completion_text_is_well_formed_even_for_an_answer_across_lines():
    import retrieve_generate_model.joint as joint

    assert doctest.testmod(joint).failed == 0
    text = joint.completion_text("answer", [3, 0], "minimum required version\nof ICU", [(3, "is known\nto work")])
    c = parse(text, n_sources=4)
    assert c.well_formed and c.answer == "minimum required version of ICU" and c.relied == [4, 1]
    assert c.quotes == [(4, "is known\nto work")]  # a quote keeps its source's text verbatim
    assert parse(joint.completion_text("abstain", [], "", [])).abstained
