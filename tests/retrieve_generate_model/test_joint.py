"""The joint model: the layout it is trained on, quote-constrained decoding, abstention, save/load, a training smoke."""

from __future__ import annotations

import dataclasses
import json
import random
import string

import pytest
import torch

from retrieve_generate_model.joint import (
    ABSTAIN_TEXT,
    AnswerNotShown,
    JointConfig,
    JointModel,
    Layout,
    _Decoder,
    completion_text,
    shown_source,
)
from retrieve_generate_model.records import Source

DOC = ("The Bell Rock Lighthouse stands off the coast of Angus, Scotland. It was built between 1807 and 1810 by "
       "Robert Stevenson; « the light » shines 35 miles — 56 km. 灯塔は岩の上に立つ.")


def source(text: str, n: int = 0, start: int = 0) -> Source:
    return Source(f"s{n}", f"d{n}", 1.0, text, start, start + len(text), title=f"Doc {n}")


@pytest.fixture(scope="module")
def model() -> JointModel:
    """A joint model with fresh (zero-effect) adapters: the base SmolLM2, decoding under the layout."""
    return JointModel(JointConfig(max_source_tokens=64))


def configured(model: JointModel, **changes) -> JointModel:
    """The fixture's model (the same generator, heads and reader) under a config with ``changes``: no other copy of
    SmolLM2 to make."""
    other = JointModel.__new__(JointModel)
    other.__dict__ |= model.__dict__ | {"config": dataclasses.replace(model.config, **changes)}
    return other


def test_training_targets_are_the_layout_and_quotes_are_slices_of_the_source_tokens(model):
    sources = [source(DOC, 0), source("Apples are pressed within days of picking.", 1)]
    start = DOC.index("Robert Stevenson")
    ex = model.example("Who built it?", sources, "answer", [0], "Robert Stevenson",
                       [(0, start, start + len("Robert Stevenson"))])
    ids, labels = ex.input_ids, ex.labels
    target = [t for t, label in zip(ids, labels) if label != -100]
    assert labels[: len(ids) - len(target)] == [-100] * (len(ids) - len(target))  # the prompt is never a label
    text = model.tokenizer.decode(target)
    assert text == ('route: answer\nsources: [1]\nanswer: Robert Stevenson\n<ref id="1"> Robert Stevenson</ref>'
                    "<|im_end|>")
    _, source_ids, _ = shown_source(model.layout, sources[0], 64)
    quote = target[target.index(model.layout.ref_mid[0]) + 1: -len(model.layout.ref_close) - 1]
    assert any(source_ids[p: p + len(quote)] == quote for p in range(len(source_ids)))
    prompt = ids[: len(ids) - len(target)]
    assert any(prompt[p: p + len(source_ids)] == source_ids for p in range(len(prompt)))  # the same ids as read

    ex = model.example("Who?", sources, "abstain", [], "", [])
    ids, labels = ex.input_ids, ex.labels
    assert model.tokenizer.decode([t for t, label in zip(ids, labels) if label != -100]) == \
        "route: abstain<|im_end|>"


def test_an_extractive_answer_is_taught_as_the_slice_of_source_tokens_the_decoder_walks(model):
    """" 35" is read as a space token and digit tokens: the target is the digits as the source has them, which is
    what the decoder can write, not the answer tokenized on its own; an answer cut off from the shown source
    raises."""
    sources = [source("Apples are pressed within days of picking.", 1), source(DOC, 0)]
    start = DOC.index("35 miles")
    ex = model.example("How far does the light shine?", sources, "answer", [1], "35 miles", [],
                       answer_span=(1, start, start + len("35 miles")))
    ids, labels = ex.input_ids, ex.labels
    target = [t for t, label in zip(ids, labels) if label != -100]
    layout = model.layout
    at = next(p for p in range(len(target)) if target[p: p + len(layout.answer)] == layout.answer)
    answer = target[at + len(layout.answer): target.index(layout.im_end)]
    _, source_ids, offsets = shown_source(layout, sources[1], 64)
    assert any(source_ids[p: p + len(answer)] == answer for p in range(len(source_ids)))
    assert answer != layout.ids(" 35 miles")
    assert model.tokenizer.decode(answer).strip() == "35 miles"
    cut = JointModel.__new__(JointModel)  # the same model reading 8 tokens of each source
    cut.__dict__ |= model.__dict__ | {"config": JointConfig(max_source_tokens=8)}
    with pytest.raises(AnswerNotShown):
        cut.example("How far?", sources, "answer", [1], "35 miles", [], answer_span=(1, start, start + 8))


def test_the_question_comes_before_the_sources_too_when_configured(model):
    layout, sources = model.layout, [source(DOC, 0)]
    shown = [shown_source(layout, s, 64)[1] for s in sources]
    first_ids, starts = layout.prompt("Who built it?", shown, ["Doc 0"], "sys", question_first=True)
    first = model.tokenizer.decode(first_ids)
    last = model.tokenizer.decode(layout.prompt("Who built it?", shown, ["Doc 0"], "sys")[0])
    assert first_ids[starts[0]: starts[0] + len(shown[0])] == shown[0]
    assert first.count("Question: Who built it?") == 2 and last.count("Question: Who built it?") == 1
    assert first.index("Question:") < first.index("[1] Doc 0") < first.rindex("Question:")
    assert JointConfig.from_dict({}).question_first is False  # a checkpoint saved before the field: without it


class RandomLogits(torch.nn.Module):
    """Any model at all: logits drawn at random, so the decoder's constraints alone decide what can be written."""

    def __init__(self, vocab: int, seed: int):
        super().__init__()
        self.vocab, self.gen = vocab, torch.Generator().manual_seed(seed)
        self.device = torch.device("cpu")

    def forward(self, input_ids, cache=None, use_cache=True, logits_to_keep=1):
        class Out:
            pass

        out = Out()
        out.logits = torch.randn(1, 1, self.vocab, generator=self.gen) * 5
        out.cache = None
        return out


def _random_text(rng: random.Random) -> str:
    words = ["".join(rng.choice(string.ascii_letters + "éü—«»0123456789") for _ in range(rng.randint(1, 9)))
             for _ in range(rng.randint(1, 40))]
    seps = [" ", ", ", ". ", "\n", " – ", "灯塔", "  "]
    return "".join(w + rng.choice(seps) for w in words)


def test_constrained_decoding_never_writes_a_quote_absent_from_its_source(model):
    """Property: whatever the model prefers, every quote is its source's text at the citation's span."""
    layout, tok = model.layout, model.tokenizer
    cfg = JointConfig(max_source_tokens=64, max_citations=3, max_quote_tokens=12, abstain_bias=-1e9)
    rng = random.Random(0)
    quotes = 0
    for trial in range(60):
        shown = [shown_source(layout, source(_random_text(rng), n), cfg.max_source_tokens)
                 for n in range(rng.randint(1, 4))]
        decoder = _Decoder(RandomLogits(len(tok), trial), layout, [1, 2, 3], tok)
        route, relied, text, cites = decoder.run(cfg, [(ids, offsets, s.text) for s, ids, offsets in shown])
        assert route == "answer" and len(set(relied)) == len(relied) and relied
        assert any(text in s.text for s, _, _ in shown)  # the extractive answer is a span of a source
        assert all(0 <= n < len(shown) for n in relied)
        for n, start, end in cites:
            text = shown[n][0].text
            assert 0 <= start < end <= len(text)
            quote = text[start:end]
            assert quote and "\ufffd" not in quote and quote in text
            quotes += 1
    assert quotes > 30  # the property was exercised, not vacuously true


def test_on_text_tells_the_completion_as_it_is_decided_and_changes_nothing(model):
    """Streaming: the pieces told to ``on_text`` spell the completion (route, sources, answer and quotes, these token
    by token), and decoding with a listener decides exactly what it decides without one."""
    layout, tok = model.layout, model.tokenizer
    cfg = JointConfig(max_source_tokens=64, max_citations=2, max_quote_tokens=12, abstain_bias=-1e9,
                      answer_by="walk")
    rng = random.Random(3)
    squash = lambda text: "".join(text.split())  # noqa: E731  (the answer line's whitespace is collapsed)
    token_by_token = False  # some answer or quote came in several pieces, not whole at its end
    for trial in range(12):
        shown = [shown_source(layout, source(_random_text(rng), n), cfg.max_source_tokens)
                 for n in range(rng.randint(1, 3))]
        args = (cfg, [(ids, offsets, s.text) for s, ids, offsets in shown])
        silent = _Decoder(RandomLogits(len(tok), trial), layout, [1, 2, 3], tok).run(*args)
        pieces: list[str] = []
        told = _Decoder(RandomLogits(len(tok), trial), layout, [1, 2, 3], tok, on_text=pieces.append).run(*args)
        assert told == silent
        route, relied, text, quotes = told
        streamed = squash("".join(pieces))
        assert streamed.startswith(squash(completion_text(route, relied, text, [])))
        for n, a, b in quotes:  # in order (a citation whose quote came to nothing is streamed as an empty ref)
            ref = squash(f'<ref id="{n + 1}">{shown[n][0].text[a:b]}</ref>')
            assert ref in streamed
            streamed = streamed[streamed.index(ref) + len(ref):]
        assert all(pieces)
        fixed = 3 + len(relied) + 2 * len(quotes)  # route, "answer:", each source, each ref's opening and end
        token_by_token = token_by_token or len(pieces) > fixed + 1 + len(quotes)

    pieces = []
    sources = [source(DOC, 0), source("Apples are pressed within days of picking.", 1)]
    with_listener = model.answer("Who built it?", sources, on_text=pieces.append)
    without = model.answer("Who built it?", sources)
    assert with_listener.to_dict() | {"timings": {}} == without.to_dict() | {"timings": {}}
    assert "".join(pieces).startswith("route: " + without.route)
    assert model.answer("Who built it?", [], on_text=pieces.append).abstained and pieces[-1] == "route: abstain"


def test_answer_maps_citations_into_documents_and_ranks_the_sources_relied_on(model):
    doc = "Preface.\n\n" + DOC
    s0 = Source("s0", "d0", 0.9, DOC, doc.index(DOC), len(doc), title="Bell Rock")
    s1 = Source("s1", "d1", 0.5, "Apples are pressed within days of picking.", 0, 43, title="Orchards")
    answer = configured(model, abstain_bias=-1e9, max_citations=2, max_source_tokens=192).answer(
        "Who built the Bell Rock Lighthouse?", [s1, s0], {"d0": doc, "d1": s1.text})
    assert not answer.abstained and answer.route == "answer" and answer.text
    assert answer.text in DOC or answer.text in s1.text  # extractive: the answer is a span of a source
    assert sorted(s.seg_id for s in answer.sources) == ["s0", "s1"]  # every source, relied-on ones first
    for c in answer.citations:
        full = {"d0": doc, "d1": s1.text}[c.doc_id]
        assert full[c.char_start: c.char_end] == c.quote and c.quote


def test_span_head_answers_are_spans_of_a_source(model):
    """Whatever the head's weights, the answer it picks is a span of a source (one relied on) of at most
    max_answer_tokens tokens, and the citations still map into the sources. (One short citation: each decoding step
    is a forward pass of the generator, and the quote's length is not what is tested here.)"""
    rng = random.Random(7)
    answering = configured(model, abstain_bias=-1e9, answer_by="head", max_citations=1, max_quote_tokens=8)
    for trial in range(6):
        torch.manual_seed(trial)
        for layer in answering.span_head.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
        sources = [source(_random_text(rng), n) for n in range(rng.randint(1, 3))]
        answer = answering.answer("What does the text say?", sources)
        assert not answer.abstained and answer.text
        assert any(answer.text in s.text for s in sources), answer.text
        n_tokens = len(model.tokenizer(answer.text, add_special_tokens=False)["input_ids"])
        assert n_tokens <= model.config.max_answer_tokens + 1  # +1: a leading space token stripped off
        for c in answer.citations:
            assert next(s for s in sources if s.seg_id == c.seg_id).text[c.char_start: c.char_end] == c.quote


@pytest.mark.parametrize("scope", ["relied", "shown"])
def test_reader_answers_are_spans_of_a_source_in_scope(model, encoder, scope):
    """Whatever the reader's weights, the answer is its best span in a source of the scope (relied on, or any
    shown), exactly as the source has it, the first citation is in its source, and citations map into the sources.
    (One citation of at most 8 tokens: the fresh adapters may quote a source to its 48-token limit, a forward pass a
    token, and the first citation is the one whose source is checked.)"""
    from retrieve_generate_model.reader import AnswerReader

    rng = random.Random(11)
    answering = configured(model, abstain_bias=-1e9, answer_by="reader", reader_scope=scope, max_citations=1,
                           max_quote_tokens=8)
    config = answering.config
    for trial in range(3):
        torch.manual_seed(trial)
        answering.reader = AnswerReader(base=encoder)
        torch.nn.init.normal_(answering.reader.head.weight)  # spread the scores: a fresh head is near zero
        sources = [source(_random_text(rng), n) for n in range(rng.randint(2, 3))]
        answer = answering.answer("What does the text say?", sources)
        shown = [shown_source(model.layout, s, config.max_source_tokens)[0].text for s in sources]
        best = [shown[s.source][s.char_start: s.char_end].strip()
                for s in answering.reader.spans("What does the text say?", shown)]
        assert not answer.abstained and answer.text and "read_s" in answer.timings
        assert answer.text in best  # the reader's span, as the source has it
        if scope == "shown":
            assert answer.text == best[0]
        if answer.citations:  # the first citation quotes the source that holds the answer
            cited = next(n for n, s in enumerate(sources) if s.seg_id == answer.citations[0].seg_id)
            assert answer.text in shown[cited]
        for c in answer.citations:
            assert next(s for s in sources if s.seg_id == c.seg_id).text[c.char_start: c.char_end] == c.quote


def test_the_readers_no_answer_overrides_the_route_beyond_its_margin(model, encoder):
    """A reader with the "no answer" option abstains for the model when it prefers it by more than the configured
    margin (the generator is not run); with no margin configured, the generator's route decides."""
    from retrieve_generate_model.reader import AnswerReader, AnswerReaderConfig, no_answer_margin

    torch.manual_seed(0)
    reader = AnswerReader(AnswerReaderConfig(null_answer=True), base=encoder)
    sources = [source(DOC)]
    margin = no_answer_margin(*reader.read("Who built it?", [shown_source(model.layout, sources[0],
                                                                             model.config.max_source_tokens)[0].text]))
    for threshold, abstains in ((margin - 1.0, True), (margin + 1.0, False), (None, False)):
        answering = JointModel.__new__(JointModel)
        config = dataclasses.replace(model.config, abstain_bias=-1e9, answer_by="reader",
                                     reader_abstain_margin=threshold)
        answering.__dict__ |= model.__dict__ | {"config": config, "reader": reader}
        answer = answering.answer("Who built it?", sources)
        assert answer.abstained == abstains and (answer.timings["generate_s"] == 0.0) == abstains


def test_generator_targets_prefer_the_source_that_holds_the_answer(model):
    """The link's targets: the base generator (fresh adapters) already finds the answer likelier given the source
    that states it than given an unrelated one."""
    from retrieve_generate_model.retriever import generator_targets

    def src(n, text):
        return {"seg_id": f"s{n}", "doc_id": f"d{n}", "title": "", "section": "", "text": text, "char_start": 0,
                "char_end": len(text), "score": 0.0}

    row = {"question": "In what year was the Bell Rock Lighthouse finished?", "answer": "1810", "answerable": True,
           "sources": [src(0, "Apples are pressed within days of picking, and the juice is kept cold."), src(1, DOC)]}
    (target,) = generator_targets(model, [row])
    assert len(target) == 2 and abs(sum(target) - 1) < 1e-5 and target[1] > target[0]
    assert generator_targets(model, [{**row, "answerable": False}]) == [None]


def test_abstention_path(model):
    m = configured(model, abstain_bias=1e9)
    answer = m.answer("Who built it?", [source(DOC)])
    assert answer.abstained and answer.route == "abstain" and answer.text == ABSTAIN_TEXT and not answer.citations
    assert m.answer("Who built it?", []).abstained  # no sources: abstains without running the model
    with pytest.raises(ValueError, match="differs from document"):
        m.answer("Who?", [source(DOC)], {"d0": "another text"})


def test_layout_refuses_a_tokenizer_that_splits_its_single_tokens(model):
    class Splitting:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text] * (2 if text in ("\n", " ") else 1)}

        def convert_tokens_to_ids(self, tokens):
            return [1, 2]

    with pytest.raises(ValueError, match="one token"):
        Layout(Splitting())
    with pytest.raises(ValueError, match="1..9"):
        JointConfig(k=12)


def test_save_load_round_trip_and_training_moves_the_adapters(tmp_path, tiny_joint):
    """`train_joint` as tests/conftest.py's `tiny_joint` ran it (every stage, one process), then a copy of its
    checkpoint loaded, resumed and calibrated."""
    import shutil

    from retrieve_generate_model.train import JointTrainConfig, read_rows, train_joint
    from synth_pipeline.qa import QAConfig, write_examples

    rows, cfg, model_cfg, report = tiny_joint.rows, tiny_joint.cfg, tiny_joint.model_cfg, tiny_joint.report
    out = tmp_path / "ckpt"
    shutil.copytree(tiny_joint.folder, out)  # this test resumes and recalibrates it: the session's stays as trained
    assert report["n"] == cfg.heldout_examples == 1 and report["examples"] == 12
    assert (out / "retriever" / "retriever.json").is_file() and report["retriever"]["n"] == 2  # the question tower
    losses = [line for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    first, last = (float(line.split('"loss": ')[1].split(",")[0]) for line in (losses[0], losses[-1]))
    assert last < first  # the loss falls
    head_losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()
                   if "span_head_epoch" in line]
    assert len(head_losses) == cfg.head_epochs and head_losses[-1] < head_losses[0]  # the span head learns too
    reader_losses = [json.loads(line)["reader"]["loss"] for line in (out / "log.jsonl").read_text().splitlines()
                     if '"reader": {"epoch"' in line]
    assert len(reader_losses) == cfg.reader_epochs and reader_losses[-1] < reader_losses[0]  # and the reader
    assert report["reader"]["n"] == 2 and (out / "reader" / "reader.json").is_file()
    assert "no_answer_on_answerable" in report["reader"] and "reader_abstain_margin" in report  # "no answer" too
    assert not list(out.glob("state/*.train.pt"))  # the stage's resumable state is gone once it is saved

    loaded, again = JointModel.load(out), JointModel.load(out)
    assert loaded.config.answer_by == "reader" and loaded.reader.config.null_answer
    assert loaded.config.reader_abstain_margin == report["reader_abstain_margin"]
    assert all(torch.equal(v, model_v) for v, model_v in zip(loaded.span_head.state_dict().values(),
                                                            again.span_head.state_dict().values()))
    fresh = JointModel(dataclasses.replace(model_cfg, answer_by="walk"))  # the generator alone (no fresh reader)
    trained = {k: v for k, v in loaded.generator.state_dict().items() if "lora_B" in k}
    assert trained and any(v.abs().sum() > 0 for v in trained.values())  # the adapters moved (B starts at zero)
    assert all((fresh.generator.state_dict()[k] == 0).all() for k in trained)
    r = read_rows(tiny_joint.heldout)[0]
    from retrieve_generate_model.train import row_sources

    a1, a2 = loaded.answer(r["question"], row_sources(r)), again.answer(r["question"], row_sources(r))
    assert (a1.text, a1.route, a1.citations) == (a2.text, a2.route, a2.citations)
    assert JointModel.load(out, abstain_bias=5.0).config.abstain_bias == 5.0
    with pytest.raises(FileNotFoundError):
        JointModel.load(tmp_path)

    # resumable: the same command over a finished run only re-evaluates (the head and the question tower kept);
    # other settings are refused
    again_report = train_joint(tiny_joint.train, tiny_joint.heldout, out, cfg, model_cfg, log=lambda _: None)
    assert again_report["examples"] == report["examples"] and again_report["route_accuracy"] == report["route_accuracy"]
    with pytest.raises(ValueError, match="other settings"):
        train_joint(tiny_joint.train, tiny_joint.heldout, out, JointTrainConfig(epochs=1), model_cfg,
                    log=lambda _: None)

    # `ragless train calibrate` (a checkpoint whose reader was replaced): the abstention settings chosen on held-out
    # rows with both kinds are written to config.json alone
    from retrieve_generate_model.train import calibrate_checkpoint

    unanswerable = {**rows[0], "example_id": "u0", "answer": "", "answerable": False, "kind": "withheld",
                    "sources": rows[1]["sources"], "relied": [], "answer_start": -1, "answer_end": -1,
                    "quote_source": -1, "quote_start": -1, "quote_end": -1}
    write_examples([rows[0], unanswerable], tmp_path / "calibration.parquet", QAConfig(), 0)
    weights = (out / "reader" / "reader_head.safetensors").read_bytes()
    result = calibrate_checkpoint(out, tmp_path / "calibration.parquet", examples=2)
    saved = json.loads((out / "config.json").read_text())
    assert result["heldout"]["n"] == 2
    assert set(result) == {"route_abstains", "abstain_bias", "reader_abstain_margin", "heldout"}
    assert (saved["abstain_bias"], saved["reader_abstain_margin"]) == (result["abstain_bias"],
                                                                       result["reader_abstain_margin"])
    assert (out / "reader" / "reader_head.safetensors").read_bytes() == weights

    # the route kept from abstaining: however strongly it leans to abstain, only the reader's margin declines
    leaning = JointModel.load(out, abstain_bias=1e9, reader_abstain_margin=None)
    assert leaning.answer(r["question"], row_sources(r)).abstained
    assert not JointModel.load(out, abstain_bias=1e9, reader_abstain_margin=None, route_abstains=False).answer(
        r["question"], row_sources(r)).abstained
    bias = saved["abstain_bias"]
    result = calibrate_checkpoint(out, tmp_path / "calibration.parquet", examples=2, route_abstains=False)
    saved = json.loads((out / "config.json").read_text())
    assert set(result) == {"route_abstains", "reader_abstain_margin", "heldout"} and not saved["route_abstains"]
    assert saved["abstain_bias"] == bias  # not recalibrated: unused while the route cannot abstain
    assert not JointModel.load(out).config.route_abstains  # saved with the checkpoint


def test_abstain_bias_calibration_balances_the_two_routes():
    import doctest

    import retrieve_generate_model.train as train
    from retrieve_generate_model.train import calibrate_abstain_bias

    assert doctest.testmod(train).failed == 0
    # separable margins: any threshold between the groups is perfect; the smallest correction is chosen
    assert calibrate_abstain_bias([3.0, 2.0, -1.0, -2.0], [False, False, True, True]) == 0.0
    # everything leans to abstain: the bias moves the threshold above the answerable rows' margins
    bias = calibrate_abstain_bias([5.0, 4.0, 2.0, 1.0], [False, False, True, True])
    assert 2.0 + bias <= 0 < 4.0 + bias
    assert calibrate_abstain_bias([1.0, 2.0], [True, True]) == 0.0  # one kind only: nothing to balance
