"""Questions made from segments: spans, the round trip, sources with hard negatives, unanswerables, Parquet."""

from __future__ import annotations

import dataclasses
import random

import pyarrow.parquet as pq
import pytest

from retrieve_generate_model.records import Source
from synth_pipeline.qa import (
    QAConfig,
    answer_candidates,
    clip_quote,
    cloze_question,
    content_words,
    detect_lang,
    draft_questions,
    fronted_question,
    in_situ_question,
    is_prose,
    make_examples,
    noisy_question,
    perturb_question,
    proper_elsewhere,
    question_word,
    round_trip,
    split_by_doc,
    write_examples,
)

TEXTS = [
    ("Bell Rock", "The Bell Rock Lighthouse stands off the coast of Angus. It was built between 1807 and 1810 by "
                  "Robert Stevenson. Its light can be seen from 35 miles away."),
    ("Orchards", "Normandy orchards grow cider apples. The harvest runs from September to November. In 1998 the "
                 "region produced 120,000 tonnes of apples for the Pays d'Auge cider."),
    ("Violin", "A violin has four strings tuned in perfect fifths. The Italian maker Antonio Stradivari built about "
               "1,100 instruments in Cremona."),
    ("Passeport", "La demande de passeport se fait en mairie. Le délai de fabrication est de 15 jours en moyenne "
                  "selon la préfecture de Paris."),
    ("Lighthouses", "Lighthouses mark dangerous coasts. Robert Stevenson built the Bell Rock Lighthouse, the "
                    "oldest sea-washed lighthouse still standing."),
]


def segments() -> list[Source]:
    return [Source(f"seg{n}", f"doc{n}", 0.0, text, 0, len(text), title=title)
            for n, (title, text) in enumerate(TEXTS)]


def lexical_retrieve(questions: list[str], k: int) -> list[list[Source]]:
    """A small real retriever: segments ranked by content words shared with the question."""
    out = []
    for q in questions:
        words = content_words(q, detect_lang(q))
        scored = sorted(segments(), key=lambda s: (-len(words & content_words(s.text, "en")), s.seg_id))
        out.append(scored[:k])
    return out


def test_answer_candidates_find_dates_numbers_and_names():
    sentence = "It was built between 1807 and 1810 by Robert Stevenson, who lived 35 years in Edinburgh."
    found = {sentence[s:e]: kind for s, e, kind in answer_candidates(sentence)}
    assert found["1807"] == "year" and found["1810"] == "year"
    assert found["Robert Stevenson"] == "name" and found["Edinburgh"] == "name"
    assert found["35 years"] == "measure"
    assert "It" not in found  # a sentence's first word is not a name
    spans = sorted((s, e) for s, e, _ in answer_candidates(sentence))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no overlaps


def test_cloze_question_and_round_trip():
    cfg = QAConfig(drop_function_words=0.0)
    sentence = "It was built between 1807 and 1810 by Robert Stevenson."
    start = sentence.index("Robert Stevenson")
    q = cloze_question(sentence, start, start + len("Robert Stevenson"), "name", "en", random.Random(0), cfg)
    assert q.startswith("Who ") and "Stevenson" not in q and q.endswith("?") and "1807" in q  # a person: Who
    text = TEXTS[0][1]
    sent = (text.index("It was"), text.index("Stevenson.") + len("Stevenson."))
    assert round_trip(q, "Robert Stevenson", text, sent, "en", 2)
    assert not round_trip(q + " Robert Stevenson", "Robert Stevenson", text, sent, "en", 2)  # answer in question
    assert not round_trip("Who or what?", "Robert Stevenson", text, sent, "en", 2)  # nothing to find it by
    assert detect_lang(TEXTS[3][1]) == "fr" and detect_lang(text) == "en"


def test_in_situ_questions_keep_the_clause_and_survive_the_round_trip():
    text = TEXTS[0][1]
    sentence = "It was built between 1807 and 1810 by Robert Stevenson."
    start = sentence.index("Robert Stevenson")
    q = in_situ_question(sentence, start, start + len("Robert Stevenson"), "name", "en", QAConfig())
    assert q == "It was built between 1807 and 1810 by who?"
    sent = (text.index("It was"), text.index("Stevenson.") + len("Stevenson."))
    assert round_trip(q, "Robert Stevenson", text, sent, "en", 2)
    with pytest.raises(ValueError, match="cloze"):
        QAConfig(cloze="other")


def test_clip_quote_keeps_the_span_and_clips_long_sentences():
    text = " ".join(f"w{i}" for i in range(50)) + "."
    start = text.index("w30")
    a, b = clip_quote(text, (0, len(text)), start, start + 3, 10)
    assert a <= start and start + 3 <= b and len(text[a:b].split()) == 10
    assert clip_quote("Short one.", (0, 10), 0, 5, 10) == (0, 10)


def test_examples_have_evidence_negatives_unanswerables_and_are_deterministic(tmp_path):
    cfg = QAConfig(unanswerable_fraction=0.4, questions_per_segment=3, k=3)
    rows = list(make_examples(segments(), lexical_retrieve, cfg, seed=0))
    reordered = make_examples(list(reversed(segments())), lexical_retrieve, cfg, seed=0)
    assert {r["example_id"]: r for r in rows} == {r["example_id"]: r for r in reordered}  # order does not matter
    assert len(rows) >= 6
    kinds = {r["kind"] for r in rows}
    assert "span" in kinds and kinds & {"withheld", "near-miss"}
    for r in rows:
        texts = [s["text"] for s in r["sources"]]
        assert 1 <= len(texts) <= cfg.k and (not r["answerable"] or r["answer"] not in r["question"])
        if r["answerable"]:
            gold = r["sources"][r["relied"][0]]
            assert gold["seg_id"] == r["seg_id"] and r["quote_source"] == r["relied"][0]
            quote = gold["text"][r["quote_start"]: r["quote_end"]]
            assert gold["text"][r["answer_start"]: r["answer_end"]] == r["answer"] and r["answer"] in quote
            assert len(set(r["relied"])) == len(r["relied"])
        else:
            assert r["answer"] == "" and not r["relied"] and r["quote_source"] == -1
            assert not any(r["seg_id"] == s["seg_id"] and s["text"] == TEXTS[int(r["seg_id"][3:])][1]
                           for s in r["sources"])  # the evidence is withheld or cut
    train, held = split_by_doc(rows, 0.4, seed=0)
    assert train and held and not {r["doc_id"] for r in train} & {r["doc_id"] for r in held}
    assert write_examples(rows, tmp_path / "qa.parquet", cfg, 0) == len(rows)
    table = pq.read_table(tmp_path / "qa.parquet")
    assert table.num_rows == len(rows) and b"ragless.synth.qa" in table.schema.metadata
    assert table.to_pylist()[0]["sources"][0]["text"] == rows[0]["sources"][0]["text"]


def test_swapped_unanswerables_keep_the_evidence_and_ask_about_what_it_lacks():
    cfg = QAConfig(unanswerable_fraction=1.0, swapped_fraction=1.0, questions_per_segment=3, k=3)
    rows = [r for seed in range(4) for r in make_examples(segments(), lexical_retrieve, cfg, seed=seed)]
    swapped = [r for r in rows if r["kind"] == "swapped"]
    assert swapped and all(not r["answerable"] and r["answer"] == "" for r in swapped)
    texts = dict(zip((s.seg_id for s in segments()), TEXTS))
    for r in swapped:
        evidence = texts[r["seg_id"]][1]
        assert evidence in [s["text"] for s in r["sources"]]  # kept whole, unlike a near miss
        new = [span for s, e, _ in answer_candidates(r["question"]) if s > 0
               for span in [r["question"][s:e]] if span not in evidence]
        assert new  # the question asks about something the evidence does not hold
    with pytest.raises(ValueError, match="swapped_fraction"):
        QAConfig(swapped_fraction=1.5)


def test_perturbed_unanswerables_keep_the_evidence_and_turn_the_question_s_sense():
    base = QAConfig(unanswerable_fraction=1.0, swapped_fraction=0.0, questions_per_segment=3, k=3)
    cfg = dataclasses.replace(base, perturbed_fraction=1.0)
    rows = [(seed, r) for seed in range(6) for r in make_examples(segments(), lexical_retrieve, cfg, seed=seed)]
    plain = {(seed, r["example_id"]): r["question"]  # the same drafts, asked as they were made
             for seed in range(6) for r in make_examples(segments(), lexical_retrieve, base, seed=seed)}
    perturbed = [(seed, r) for seed, r in rows if r["kind"] == "perturbed"]
    assert perturbed and all(not r["answerable"] and r["answer"] == "" for _, r in perturbed)
    texts = dict(zip((s.seg_id for s in segments()), TEXTS))
    for seed, r in perturbed:
        evidence = texts[r["seg_id"]][1]
        assert evidence in [s["text"] for s in r["sources"]]  # kept whole, unlike a near miss
        before = plain[seed, r["example_id"]]
        assert r["question"] != before
        # one word turned to its opposite, or a negation added ("not"; "n'est pas"), never what the evidence says
        added = set(r["question"].lower().split()) - set(before.lower().split())
        assert len(added) == 1 or added & {"not", "pas"}
        assert all(w.strip("?") not in evidence.lower().split() for w in added)
    # a question with nothing to turn is left to the other unanswerable kinds
    assert perturb_question("Who built the lighthouse?", "Robert Stevenson built it.", "en", random.Random(0)) is None
    assert perturb_question("Who was not the first emperor?", "Augustus was.", "en", random.Random(0)) is None
    # the opposite must be something the evidence does not say
    assert perturb_question("What is the first station?", "The first and last station.", "en",
                            random.Random(0)) is None
    assert perturb_question("Quel est le premier port ?", "Marseille est le premier port.", "fr",
                            random.Random(0)) == "Quel est le dernier port ?"
    with pytest.raises(ValueError, match="perturbed_fraction"):
        QAConfig(perturbed_fraction=-0.1)


def test_fronted_questions_ask_the_way_people_do():
    cfg = QAConfig()
    s = "Robert Stevenson built the lighthouse in 1810."
    assert fronted_question(s, 0, 16, "name", "en", cfg) == "Who built the lighthouse in 1810?"
    s = "The game was played on February 7, 2016, at Levi's Stadium."
    assert fronted_question(s, 23, 39, "date", "en", cfg) == "When was the game played?"
    s = "The first Super Bowl was held in Los Angeles."
    start = s.index("Los Angeles")
    assert question_word(s, start, "name", "Los Angeles", "en") == "Where"
    assert fronted_question(s, start, start + 11, "name", "en", cfg) == "Where was the first Super Bowl held?"
    assert fronted_question("Apples grow well here.", 7, 11, "thing", "en", cfg) is None  # no shape to front
    assert is_prose(s) and not is_prose("xsltGetKey xsltGetNsProp xsltGetTemplate") and not is_prose("Too short.")


def test_noisy_questions_drop_words_but_stay_findable_and_keep_their_question_word():
    q = "When was the game played at Levi's Stadium in Santa Clara?"
    cfg = QAConfig(vary_wh=True, drop_content_words=0.6, shuffle_window=2.0)
    plain = content_words(q, "en")
    outs = [noisy_question(q, "When", "en", random.Random(seed), cfg) for seed in range(40)]
    for out in outs:
        assert out.endswith("?") and out.split()[0] in ("When", "On", "What")
        kept = content_words(out, "en") - {"date"}
        assert kept <= plain and len(kept) > cfg.min_shared_words  # enough left to find the sentence by
    assert len(set(outs)) > 10 and any(o.startswith("On what date ") for o in outs)
    assert any(len(content_words(o, "en")) < len(plain) for o in outs)
    # a question that does not start with its question phrase (in-situ) is left alone
    assert noisy_question("The tower opened on what date?", "When", "en", random.Random(0), cfg) == \
        "The tower opened on what date?"
    with pytest.raises(ValueError, match="drop_content_words"):
        QAConfig(drop_content_words=1.0)


def test_numeric_weight_asks_for_more_dates_and_numbers_and_sentence_openers_are_not_names():
    def numeric_share(cfg: QAConfig) -> float:
        rows = [r for seed in range(6) for r in make_examples(segments(), lexical_retrieve, cfg, seed=seed)]
        return sum(r["answer_kind"] in ("date", "year", "number", "measure") for r in rows) / len(rows)

    assert numeric_share(QAConfig(questions_per_segment=1, numeric_weight=20.0)) > \
        numeric_share(QAConfig(questions_per_segment=1))
    assert not proper_elsewhere("Add support for loaders. We add it.", "Add")
    assert proper_elsewhere("Tesla was born in Smiljan. His father moved Tesla.", "Tesla")
    assert proper_elsewhere("Santa Clara hosted it.", "Santa Clara")


def test_questions_per_sentence_asks_one_sentence_about_several_of_its_spans():
    text = ("The Bell Rock Lighthouse was built in 1810 by Robert Stevenson near Arbroath. Its light was first lit "
            "on 1 February 1811 by the keeper John Reid. The tower rises 35 metres above the rock of Inchcape. "
            "In 1843 the engineer Alan Stevenson built Skerryvore Lighthouse off the island of Tiree.")
    segment = Source("seg", "doc", 0.0, text, 0, len(text), title="Bell Rock")

    def shared(cfg: QAConfig) -> float:
        """The share of seeds whose questions of the segment all ask about one sentence."""
        drafts = [draft_questions(segment, cfg, seed) for seed in range(20)]
        return sum(len(d) > 1 and len({x.sentence for x in d}) == 1 for d in drafts) / len(drafts)

    grouped = QAConfig(questions_per_segment=2, questions_per_sentence=2, drop_content_words=0.0, vary_wh=False)
    assert shared(grouped) > shared(dataclasses.replace(grouped, questions_per_sentence=0)) + 0.3
    for seed in range(20):  # never more than questions_per_sentence about one sentence; different spans of it
        drafts = draft_questions(segment, dataclasses.replace(grouped, questions_per_segment=6), seed)
        for sent in {d.sentence for d in drafts}:
            assert sum(d.sentence == sent for d in drafts) <= 2
        assert len({d.answer_span for d in drafts}) == len(drafts)
    with pytest.raises(ValueError, match="questions_per_sentence"):
        QAConfig(questions_per_sentence=-1)


def test_thing_candidates_are_cut_to_the_noun_phrase():
    def things(sentence):
        return [sentence[s:e] for s, e, kind in answer_candidates(sentence) if kind == "thing"]

    # a past participle after the noun, a preposition the regex lets by, an adverb: cut off
    assert things("The sultan signed an agreement dated in spring.") == ["agreement"]
    assert things("This led to the split between both factions.") == ["split"]
    assert things("He sent the memos quickly to his staff.") == ["memos", "staff"]
    # an adjective alone is not an answer; a noun phrase with its adjectives is
    assert things("It was a destructive and brutal war.") == []
    assert things("It was kept in a glass case under the inner membrane.") == ["glass case", "inner membrane"]


def test_answer_kinds_keeps_only_the_kinds_asked_for_and_the_budget_goes_to_them():
    every = [r for seed in range(4) for r in make_examples(segments(), lexical_retrieve, QAConfig(), seed=seed)]
    assert "thing" in {r["answer_kind"] for r in every}  # the fixture has lower-case phrases to ask about
    kept = ("name", "person", "date", "year", "number", "measure", "quoted")
    cfg = QAConfig(answer_kinds=kept)
    rows = [r for seed in range(4) for r in make_examples(segments(), lexical_retrieve, cfg, seed=seed)]
    assert rows and {r["answer_kind"] for r in rows} <= set(kept)
    # the answerable questions are not simply the unfiltered ones minus the "thing"s: the segment's question budget is
    # spent on the kinds kept
    answerable = [r for r in rows if r["answerable"]]
    assert len(answerable) >= sum(r["answerable"] and r["answer_kind"] != "thing" for r in every)
    assert any(not r["answerable"] for r in rows)  # unanswerables are still made from the questions kept
    only_years = QAConfig(answer_kinds=("year",))
    assert {r["answer_kind"] for r in make_examples(segments(), lexical_retrieve, only_years, seed=0)} <= {"year"}
    with pytest.raises(ValueError, match="unknown kind"):
        QAConfig(answer_kinds=("names",))


def test_a_surname_of_a_person_named_in_full_is_asked_with_who():
    text = ("Nikola Tesla moved to New York in 1884 to work for Thomas Edison. Edison offered Tesla a job at his "
            "Machine Works in Manhattan. Tesla left the company after six months over an unpaid bonus.")
    segment = Source("seg", "doc", 0.0, text, 0, len(text), title="Tesla")
    cfg = QAConfig(questions_per_segment=12, drop_content_words=0.0, vary_wh=False, fronted=0.0)
    drafts = [d for seed in range(10) for d in draft_questions(segment, cfg, seed)]
    alone = [d for d in drafts if d.answer in ("Tesla", "Edison")]
    assert alone and all(d.kind == "person" and d.question.startswith("Who ") for d in alone)
    assert all(d.kind != "person" for d in drafts if d.answer in ("New York", "Manhattan"))


def test_the_module_doctests_pass():
    import doctest

    import synth_pipeline.qa

    assert doctest.testmod(synth_pipeline.qa).failed == 0
