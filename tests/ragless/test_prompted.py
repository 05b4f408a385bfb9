"""The workflow answerer: prompt, bolted-on citations and abstention on hand-made sources; one real SmolLM2 answer."""

from __future__ import annotations

import pytest

import ragless.prompted as prompted
from ragless.prompted import (
    NO_SOURCES_TEXT,
    PromptedAnswerer,
    cite,
    cited_numbers,
    format_sources,
    is_abstention,
    sentence_spans,
    shown_part,
    strip_markers,
)
from retrieve_generate_model.records import Source

# A document with text before and between its two segments, so that a span mistake cannot go unnoticed.
DOC_ID = "doc-paris"
DOC_TEXT = (
    "# Paris landmarks\n\n"
    "The Eiffel Tower stands on the Champ de Mars. It is 330 metres tall since 2022.\n"
    "It was built for the 1889 World's Fair.\n\n"
    "Footer: page 1\n\n"
    "The Louvre is the most visited museum in the world. It holds the Mona Lisa.\n"
)


def source_of(text: str, n: int, doc_text: str = DOC_TEXT, doc_id: str = DOC_ID, title: str = "") -> Source:
    start = doc_text.index(text)
    return Source(
        seg_id=f"{doc_id}:{n}",
        doc_id=doc_id,
        score=1.0 / n,
        text=text,
        char_start=start,
        char_end=start + len(text),
        source="paris.md",
        title=title,
    )


TOWER = source_of(
    "The Eiffel Tower stands on the Champ de Mars. It is 330 metres tall since 2022.\n"
    "It was built for the 1889 World's Fair.",
    1,
)
LOUVRE = source_of("The Louvre is the most visited museum in the world. It holds the Mona Lisa.", 2)


def assert_quotes_map(citations, doc_text: str = DOC_TEXT) -> None:
    for citation in citations:
        assert citation.quote == doc_text[citation.char_start : citation.char_end]


def test_cited_numbers_in_order_of_first_mention():
    assert cited_numbers("A [2], then [1, 3][2] and [Source 4].") == [2, 1, 3, 4]
    assert cited_numbers("No markers here, only [n] and [a].") == []


def test_strip_markers_removes_marker_and_space_before_it():
    assert strip_markers("It is 330 metres tall [1].") == "It is 330 metres tall."
    assert strip_markers("Both [1][2] agree [Source 3, 4] on it.") == "Both agree on it."


def test_sentence_spans_split_at_sentence_ends_and_lines_only():
    text = "  First one, 3.5 m long. Second?\nThird line\n\n Last!  "
    assert [text[s:e] for s, e in sentence_spans(text)] == ["First one, 3.5 m long.", "Second?", "Third line", "Last!"]


def test_cite_quotes_the_best_sentence_of_the_cited_source_with_document_spans():
    text, citations = cite("The Eiffel Tower is 330 metres tall [1].", [TOWER, LOUVRE])
    assert text == "The Eiffel Tower is 330 metres tall."
    assert [c.quote for c in citations] == ["It is 330 metres tall since 2022."]
    assert (citations[0].seg_id, citations[0].doc_id, citations[0].source) == (TOWER.seg_id, DOC_ID, "paris.md")
    assert_quotes_map(citations)


def test_cite_quotes_every_cited_source_once():
    _, citations = cite("It is 330 metres tall [1] and the Louvre holds the Mona Lisa [2][1].", [TOWER, LOUVRE])
    assert [c.seg_id for c in citations] == [TOWER.seg_id, LOUVRE.seg_id]
    assert citations[1].quote == "It holds the Mona Lisa."
    assert_quotes_map(citations)


def test_cite_without_markers_falls_back_to_the_best_overlapping_source():
    text, citations = cite("The Mona Lisa is in the Louvre.", [TOWER, LOUVRE])
    assert text == "The Mona Lisa is in the Louvre."
    assert [c.seg_id for c in citations] == [LOUVRE.seg_id]
    assert_quotes_map(citations)


def test_cite_without_markers_or_shared_words_cites_nothing():
    assert cite("It is what it is.", [TOWER, LOUVRE]) == ("It is what it is.", [])


def test_cite_ignores_markers_naming_no_source():
    text, citations = cite("It is 330 metres tall [7].", [TOWER, LOUVRE])
    assert text == "It is 330 metres tall."
    assert [c.seg_id for c in citations] == [TOWER.seg_id]  # as if unmarked: the best overlapping source


def test_shown_part_cuts_at_a_word_and_keeps_the_document_span():
    cut = shown_part(TOWER, 60)
    assert len(cut.text) <= 60 and TOWER.text.startswith(cut.text) and not cut.text.endswith(" ")
    assert cut.text == DOC_TEXT[cut.char_start : cut.char_end]
    assert shown_part(TOWER, 10_000) is TOWER


def test_format_sources_numbers_and_labels_them():
    titled = source_of("The Louvre is the most visited museum in the world.", 2, title="Paris")
    titled.section = "Museums"
    assert format_sources([TOWER, titled]) == (
        f"[1] {TOWER.text}\n\n[2] (Paris — Museums) The Louvre is the most visited museum in the world."
    )


@pytest.mark.parametrize(
    "text",
    [
        "I cannot answer from the sources.",
        "I can't answer that.",
        "I don't know.",
        "The sources do not contain this information.",
        "There is no information about the tower's colour.",
        "The height is not mentioned in the sources.",
        "The sources I was given don't mention its colour.",
        "There is not enough information to say.",
        "",
    ],
)
def test_is_abstention_detects_refusals(text):
    assert is_abstention(text)


@pytest.mark.parametrize(
    "text",
    [
        "The Eiffel Tower is 330 metres tall.",
        "Not far from the Seine, on the Champ de Mars.",
        "The tower does not contain a lift to the top.",
    ],
)
def test_is_abstention_leaves_answers(text):
    assert not is_abstention(text)


@pytest.fixture
def no_model(monkeypatch):
    """Make any model load fail the test: these paths must not need SmolLM2."""

    def refuse(config=None):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(prompted, "load_generator", refuse)


@pytest.fixture
def scripted_model(monkeypatch):
    """Replace SmolLM2 by a model that replies with a scripted text, recording the prompts it was given."""
    prompts: list[list[dict[str, str]]] = []
    reply = {"text": ""}
    monkeypatch.setattr(prompted, "load_generator", lambda config=None: (None, None))
    monkeypatch.setattr(prompted, "encode_chat", lambda tokenizer, messages: prompts.append(messages))
    monkeypatch.setattr(prompted, "greedy_generate", lambda *args: reply["text"])
    return prompts, reply


def test_answer_without_sources_abstains_without_the_model(no_model):
    answer = PromptedAnswerer().answer("How tall is the Eiffel Tower?", [])
    assert (answer.text, answer.abstained, answer.route, answer.citations) == (NO_SOURCES_TEXT, True, "abstain", [])


def test_answer_refuses_sources_that_do_not_map_into_their_document(no_model):
    with pytest.raises(ValueError, match="differs from document"):
        PromptedAnswerer().answer("How tall?", [TOWER], doc_texts={DOC_ID: DOC_TEXT.upper()})


def test_answer_prompts_top_k_cut_sources_and_cites_from_them(scripted_model):
    prompts, reply = scripted_model
    reply["text"] = "The Eiffel Tower is 330 metres tall [1]."
    answerer = PromptedAnswerer(prompted.PromptedConfig(top_k=1, max_source_chars=80))
    answer = answerer.answer("How tall is the Eiffel Tower?", [TOWER, LOUVRE], doc_texts={DOC_ID: DOC_TEXT})

    system, user = prompts[0]
    assert system["role"] == "system" and "[1]" in user["content"] and "[2]" not in user["content"]
    assert "1889" not in user["content"]  # beyond the 80 characters shown
    assert user["content"].endswith("Question: How tall is the Eiffel Tower?")
    assert (answer.text, answer.abstained, answer.route) == ("The Eiffel Tower is 330 metres tall.", False, "answer")
    assert [c.quote for c in answer.citations] == ["It is 330 metres tall since 2022."]
    assert_quotes_map(answer.citations)
    assert answer.sources == [TOWER, LOUVRE]
    assert set(answer.timings) == {"prompt_s", "generate_s", "cite_s"}


def test_answer_that_declines_is_an_abstention_without_citations(scripted_model):
    _, reply = scripted_model
    reply["text"] = "I cannot answer from the sources [1]."
    answer = PromptedAnswerer().answer("What colour is the tower?", [TOWER])
    assert (answer.text, answer.abstained, answer.route, answer.citations) == (
        "I cannot answer from the sources.",
        True,
        "abstain",
        [],
    )


@pytest.mark.slow
def test_smollm2_answers_with_citations_that_map_into_the_document():
    doc_text = (
        "Paris travel notes\n\n"
        "The Eiffel Tower is 330 metres tall. It was completed in 1889 for the World's Fair.\n"
        "The Louvre museum is the most visited museum in the world.\n"
    )
    sources = [
        source_of("The Eiffel Tower is 330 metres tall. It was completed in 1889 for the World's Fair.", 1, doc_text),
        source_of("The Louvre museum is the most visited museum in the world.", 2, doc_text),
    ]
    answer = PromptedAnswerer().answer("How tall is the Eiffel Tower?", sources, doc_texts={DOC_ID: doc_text})

    assert answer.text.strip() and "[1]" not in answer.text
    assert answer.route == ("abstain" if answer.abstained else "answer")
    assert answer.sources == sources
    assert_quotes_map(answer.citations, doc_text)
    assert all(c.seg_id in {s.seg_id for s in sources} for c in answer.citations)
    assert answer.timings["generate_s"] > 0
