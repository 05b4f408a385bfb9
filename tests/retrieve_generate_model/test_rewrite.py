"""The query rewrite: its training pairs, training beside the answering adapters (the loss falls, only its own adapters
move, a killed run resumes to the same weights), save/load with the joint checkpoint, and the second retrieval round
of `ragless.ask.answer_in_rounds` (its rules with a scripted answerer; through `Asker` with the real model)."""

from __future__ import annotations

import dataclasses
import doctest
import shutil

import pytest
import torch

import retrieve_generate_model.rewrite as rewrite_module
from ragless.ask import AskConfig, Asker, answer_in_rounds
from retrieve_generate_model.joint import JointModel
from retrieve_generate_model.records import Answer, Source
from retrieve_generate_model.rewrite import (
    ADAPTER,
    QueryRewriter,
    RewriteConfig,
    RewriteTrainConfig,
    train_rewriter,
    training_pairs,
)

SMALL = RewriteConfig(lora_layers=2, lora_r=4, max_sentence_tokens=12)


def adapter_weights(model: JointModel, name: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.generator.state_dict().items() if f".{name}." in k and "lora_" in k}


def test_module_doctests():
    assert doctest.testmod(rewrite_module).failed == 0


def test_the_rewriter_trains_beside_the_answering_adapters_and_resumes(tmp_path, tiny_joint):
    model = JointModel.load(tiny_joint.folder)
    answering = adapter_weights(model, "default")
    flags = {n: p.requires_grad for n, p in model.generator.named_parameters()}
    torch.manual_seed(0)  # LoRA's A starts random: the run killed below starts from the same adapters
    rewriter = QueryRewriter(model.generator, model.tokenizer, SMALL)
    pairs = training_pairs(tiny_joint.rows)
    assert len(pairs) == 6 and pairs[0][1].startswith("The station number")
    with rewriter.active(), torch.inference_mode():
        before = float(rewriter.loss(pairs))
    cfg = RewriteTrainConfig(epochs=4, batch_size=3, lr=5e-3, save_every=2)
    history = train_rewriter(pairs, rewriter, cfg, save_to=tmp_path / "rewrite", log=lambda _: None)
    with rewriter.active(), torch.inference_mode():
        after = float(rewriter.loss(pairs))
    assert after < before and len(history) == 4 and history[-1]["step"] == 8
    # only the rewrite adapters moved; the answering ones are active again, with every flag as it was
    assert all(torch.equal(v, adapter_weights(model, "default")[k]) for k, v in answering.items())
    assert any(v.abs().sum() > 0 for k, v in adapter_weights(model, ADAPTER).items() if "lora_B" in k)
    assert model.generator.active_adapter == "default"
    now = {n: p.requires_grad for n, p in model.generator.named_parameters()}
    assert {n: now[n] for n in flags} == flags and not any(now[n] for n in now if f".{ADAPTER}." in n)
    assert (tmp_path / "rewrite" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "rewrite" / "rewrite.json").is_file() and not (tmp_path / "rewrite.train.pt").exists()

    # killed after its first kept state, then run again: it resumes there and ends with the same weights
    other = JointModel.load(tiny_joint.folder)
    torch.manual_seed(0)
    again = QueryRewriter(other.generator, other.tokenizer, SMALL)

    class Killed(Exception):
        pass

    def kill(_: str) -> None:
        raise Killed

    with pytest.raises(Killed):
        train_rewriter(pairs, again, cfg, save_to=tmp_path / "again", log=kill)
    assert (tmp_path / "again.train.pt").is_file()
    fresh = JointModel.load(tiny_joint.folder)  # a new process: nothing of the killed run in memory
    resumed = QueryRewriter(fresh.generator, fresh.tokenizer, SMALL)
    told: list[str] = []
    train_rewriter(pairs, resumed, cfg, save_to=tmp_path / "again", log=told.append)
    assert told[0] == "resuming the rewriter at step 2/8"
    ours, theirs = adapter_weights(model, ADAPTER), adapter_weights(fresh, ADAPTER)
    assert all(torch.allclose(v, theirs[k], atol=1e-6) for k, v in ours.items())
    with pytest.raises(ValueError, match="no .* pairs"):
        train_rewriter([], resumed, cfg)


def test_saved_and_loaded_with_the_checkpoint(tmp_path, tiny_joint):
    out = tmp_path / "ckpt"
    shutil.copytree(tiny_joint.folder, out)
    model = JointModel.load(out)
    model.rewriter = QueryRewriter(model.generator, model.tokenizer, SMALL)
    with torch.no_grad():  # trained-looking adapters (B starts at zero, which would write as the base model)
        for name, p in model.generator.named_parameters():
            if f".{ADAPTER}." in name and "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.01)
    model.config = dataclasses.replace(model.config, rewrite_rounds=1)
    model.save(out)
    assert (out / "rewrite" / "rewrite.json").is_file()
    assert not (out / "generator" / ADAPTER).exists()  # the answering adapters' folder holds them alone

    loaded = JointModel.load(out)
    saved = adapter_weights(model, ADAPTER)
    assert saved and all(torch.equal(v, adapter_weights(loaded, ADAPTER)[k]) for k, v in saved.items())
    assert all(torch.equal(v, adapter_weights(loaded, "default")[k])
               for k, v in adapter_weights(model, "default").items())
    query = loaded.rewrite("In what year was station number 3 opened?")
    assert query.startswith("In what year was station number 3 opened? ") and len(query.split()) > 9
    assert loaded.generator.active_adapter == "default"
    assert JointModel.load(out, rewrite_rounds=0).rewrite("Any?") is None  # told not to rewrite
    shutil.rmtree(out / "rewrite")
    with pytest.raises(FileNotFoundError, match="rewrite"):
        JointModel.load(out)
    assert JointModel.load(out, rewrite_rounds=0).rewriter is None
    with pytest.raises(ValueError, match="rewrite_rounds"):
        dataclasses.replace(model.config, rewrite_rounds=2)


# -- the second round's rules, with an answerer that answers from some segments only


def src(seg_id: str) -> Source:
    return Source(seg_id, "d", 1.0, f"text of {seg_id}", 0, len(f"text of {seg_id}"))


class Scripted:
    """Answers from a source in ``knows``, else abstains; rewrites by appending " more" (None: no rewrite)."""

    def __init__(self, knows: set[str], suffix: str | None = " more"):
        self.knows, self.suffix, self.calls = knows, suffix, []

    def answer(self, question, sources, doc_texts=None, on_text=None):
        self.calls.append([s.seg_id for s in sources])
        assert doc_texts == {s.doc_id: "document d" for s in sources}
        if on_text is not None:
            on_text("route: answer" if self.knows & {s.seg_id for s in sources} else "route: abstain")
        if self.knows & {s.seg_id for s in sources}:
            return Answer(text="yes", sources=sources, timings={"read_s": 0.1})
        return Answer(text="no", abstained=True, route="abstain", sources=sources, timings={"read_s": 0.2})

    def rewrite(self, question):
        return None if self.suffix is None else question + self.suffix


def test_a_second_round_only_where_the_first_answer_abstains():
    asked: list[str] = []

    def retrieve(query: str) -> list[Source]:
        asked.append(query)
        return [src("b1"), src("b2")]

    def text(doc_id: str) -> str:
        return "document d"

    answerer = Scripted({"a1", "b2"})  # knows the first round: no rewrite asked
    answer = answer_in_rounds(answerer, "Q?", [src("a1")], retrieve, text)
    assert not answer.abstained and answer.rewritten_query is None and asked == [] and len(answerer.calls) == 1

    answerer, told = Scripted({"b2"}), []  # falls short: the rewrite is retrieved, the question answered from it
    answer = answer_in_rounds(answerer, "Q?", [src("a1")], retrieve, text, on_text=told.append)
    assert asked == ["Q? more"] and answerer.calls == [["a1"], ["b1", "b2"]]
    assert not answer.abstained and answer.rewritten_query == "Q? more"
    assert [s.seg_id for s in answer.sources] == ["b1", "b2"]
    assert told == ["route: abstain", "\nquery: Q? more\n", "route: answer"]
    assert answer.timings["first.read_s"] == 0.2 and answer.timings["read_s"] == 0.1
    assert {"rewrite_s", "retrieve2_s"} <= set(answer.timings)

    answerer = Scripted(set())  # the second round falls short too: the model abstains, saying what it tried
    answer = answer_in_rounds(answerer, "Q?", [src("a1")], retrieve, text)
    assert answer.abstained and answer.rewritten_query == "Q? more" and len(answerer.calls) == 2

    answerer = Scripted(set())  # the rewrite retrieves the same segments: the first answer stands, read once
    answer = answer_in_rounds(answerer, "Q?", [src("b1"), src("b2")], retrieve, text)
    assert answer.abstained and answer.rewritten_query == "Q? more" and len(answerer.calls) == 1

    asked.clear()
    for answerer in (Scripted(set(), suffix=None), Scripted(set())):  # no rewrite given; no retrieval to do it with
        answer = answer_in_rounds(answerer, "Q?", [src("a1")], retrieve if answerer.suffix is None else None, text)
        assert answer.abstained and answer.rewritten_query is None and len(answerer.calls) == 1
    assert asked == []
    assert answer_in_rounds(Scripted(set()), "Q?", [], retrieve, text).rewritten_query is None  # nothing to read


def test_asker_takes_the_second_round_with_the_real_model(tmp_path, tiny_joint, encoder):
    from tests.ragless.test_ingest import ingest, write_corpus

    out = tmp_path / "ckpt"
    shutil.copytree(tiny_joint.folder, out)
    model = JointModel.load(out)
    model.rewriter = QueryRewriter(model.generator, model.tokenizer, SMALL)  # untrained: SmolLM2 writes the sentence
    model.save(out)
    paths = write_corpus(tmp_path / "corpus", 6)
    ingest(tmp_path / "index", paths, encoder)

    declines = JointModel.load(out, rewrite_rounds=1, reader_abstain_margin=-1e9)  # every reading falls short
    asker = Asker(tmp_path / "index", AskConfig(k=2, answerer=str(out)), answerer=declines)
    question = "Which property does the violin number 2 have?"
    answer = asker.ask(question)
    assert answer.abstained and answer.rewritten_query.startswith(question + " ")
    assert len(answer.rewritten_query) > len(question) + 10
    assert {"retrieve_s", "rewrite_s", "retrieve2_s"} <= set(answer.timings)

    answers = JointModel.load(out, rewrite_rounds=1, reader_abstain_margin=None, route_abstains=False)
    answer = Asker(tmp_path / "index", AskConfig(k=2, answerer=str(out)), answerer=answers).ask(question)
    assert not answer.abstained and answer.rewritten_query is None  # it answered: one round
