"""A joint checkpoint trained with ``link="attention"`` answers with the source bias it trained with
(`JointConfig.source_bias_layers`, `JointModel.source_inputs`): the bias on every forward of the decoding, cached
steps included; a checkpoint without the field answers exactly as before, on plain SDPA."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from retrieve_generate_model import biased_attention as ba

QUESTION = "In what year was station number 1 opened?"


def station_sources(tiny_joint):
    """Three sources (stations 2, 1, 0): the tower scores them differently, so the bias is not zero."""
    from retrieve_generate_model.train import row_sources

    return [row_sources(tiny_joint.rows[i])[0] for i in (2, 1, 0)]


def with_bias_field(folder: Path, layers: int) -> Path:
    """``folder``'s config.json as training with ``link="attention"`` writes it (its retriever/ is the tower)."""
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "source_bias_layers": layers}, indent=1))
    return folder


@pytest.fixture(scope="module")
def biased(tiny_joint, tmp_path_factory):
    """tests/conftest.py's tiny checkpoint (its distilled question tower as ``retriever/``) with the field set to 2,
    loaded to answer by the token walk (the reader's abstention off: every answer runs the generator)."""
    from retrieve_generate_model.joint import JointModel

    folder = tmp_path_factory.mktemp("biased") / "ckpt"
    shutil.copytree(tiny_joint.folder, folder)
    with_bias_field(folder, 2)
    return folder, JointModel.load(folder, answer_by="walk", reader_abstain_margin=None)


def recorded_calls(model, question, sources):
    """The answer, and each forward of the generator during it: (its keyword arguments, its last logits)."""
    calls = []

    def hook(module, args, kwargs, output):
        calls.append(({k: v for k, v in kwargs.items()}, output.logits[0, -1].float().clone()))

    handle = model.generator.register_forward_hook(hook, with_kwargs=True)
    try:
        answer = model.answer(question, sources)
    finally:
        handle.remove()
    return answer, calls


def test_answering_passes_the_training_bias_on_every_step_and_matches_a_full_forward(biased, tiny_joint):
    """Every forward of the decoding takes the tower's bias of the sources (the same `tower_bias` as training) on
    the last 2 layers, with ``source_ids`` over the whole sequence (the prompt's sources by `source_ranges`, -1 after);
    the first choice's logits (the prompt, then the route's tokens through the KV cache) equal one uncached biased
    forward of the same tokens, and differ from the unbiased model's."""
    from retrieve_generate_model.joint import shown_source, source_header, source_ranges

    folder, model = biased
    assert model.config.source_bias_layers == 2 and model.tower is not None
    assert model.generator.config._attn_implementation == ba.ATTENTION
    sources = station_sources(tiny_joint)
    answer, calls = recorded_calls(model, QUESTION, sources)
    assert len(calls) > 3 and answer.route in ("answer", "abstain")

    cfg, layout = model.config, model.layout
    shown = [shown_source(layout, s, cfg.max_source_tokens) for s in sources]
    prompt, starts = layout.prompt(QUESTION, [ids for _, ids, _ in shown], [source_header(s) for s, _, _ in shown],
                                   cfg.system_prompt, cfg.question_first)
    ranges = source_ranges(starts, [ids for _, ids, _ in shown])
    with torch.no_grad():
        bias = ba.tower_bias(model.tower, QUESTION, sources)  # (1, 3)
    assert bias.abs().max() > 1e-3
    layers = model.generator.config.num_hidden_layers
    fed = 0
    for kwargs, _ in calls:
        fed += kwargs["input_ids"].shape[1]
        assert kwargs["source_ids"].tolist() == [ba.token_sources(fed, ranges)]
        torch.testing.assert_close(kwargs["source_bias"], bias)
        assert tuple(kwargs["source_layers"]) == (layers - 2, layers - 1)
    assert calls[0][0]["input_ids"].tolist() == [prompt]

    ids = torch.cat([calls[0][0]["input_ids"], calls[1][0]["input_ids"]], dim=1)  # the prompt, then "route:"
    with torch.no_grad():
        full = model.generator(input_ids=ids, source_ids=torch.tensor([ba.token_sources(ids.shape[1], ranges)]),
                               source_bias=bias, source_layers=(layers - 2, layers - 1)).logits[0, -1].float()
        plain = model.generator(input_ids=ids).logits[0, -1].float()
    torch.testing.assert_close(calls[1][1], full, rtol=1e-4, atol=5e-4)
    assert (full - plain).abs().max() > 1e-3


def test_a_checkpoint_without_the_field_answers_as_before(biased, tiny_joint, tmp_path):
    """The tiny checkpoint with its config written before the field (as checkpoints written before it are): it loads
    with 0, no tower, SDPA, and no forward of its decoding gets source arguments; its answer is the biased checkpoint's
    with the bias switched off (the same adapters), field for field."""
    from retrieve_generate_model.joint import JointConfig, JointModel

    shipped = Path(__file__).resolve().parents[2] / "checkpoints" / "joint" / "config.json"
    assert JointConfig.from_dict(json.loads(shipped.read_text())).source_bias_layers == 0  # the shipped one: no bias
    folder = tmp_path / "old"
    shutil.copytree(tiny_joint.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["source_bias_layers"]
    (folder / "config.json").write_text(json.dumps(config, indent=1))

    old = JointModel.load(folder, answer_by="walk", reader_abstain_margin=None)
    assert old.config.source_bias_layers == 0 and old.tower is None
    assert old.generator.config._attn_implementation != ba.ATTENTION
    sources = station_sources(tiny_joint)
    answer, calls = recorded_calls(old, QUESTION, sources)
    assert calls and not any(k.startswith("source_") for kwargs, _ in calls for k in kwargs)

    off = JointModel.load(biased[0], answer_by="walk", reader_abstain_margin=None, source_bias_layers=0)
    assert off.tower is None
    off_answer, off_calls = recorded_calls(off, QUESTION, sources)
    assert answer.to_dict() == {**off_answer.to_dict(), "timings": answer.to_dict()["timings"]}
    assert len(calls) == len(off_calls)
    for (_, a), (_, b) in zip(calls, off_calls):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_save_and_load_keep_the_field_and_the_tower(biased, tmp_path):
    """`JointModel.save` writes the field and the tower (``retriever/``); `load` reads both back; a config with the
    field and no ``retriever/`` is refused."""
    from retrieve_generate_model.joint import JointModel

    _, model = biased
    model.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["source_bias_layers"] == 2
    again = JointModel.load(tmp_path / "again", answer_by="walk")
    assert again.config.source_bias_layers == 2 and again.generator.config._attn_implementation == ba.ATTENTION
    saved = dict(model.tower.peft_model.named_parameters())
    for name, p in again.tower.peft_model.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(p, saved[name], rtol=0, atol=0)
    shutil.rmtree(tmp_path / "again" / "retriever")
    with pytest.raises(FileNotFoundError, match="retriever"):
        JointModel.load(tmp_path / "again")
    with pytest.raises(ValueError, match="source_bias_layers"):
        model.config.__class__(source_bias_layers=-1)


def test_rollouts_carry_the_bias_so_rl_scores_the_policy_that_sampled(biased, tiny_joint):
    """A sampled rollout of the biased model keeps the bias over its whole sequence (`Rollout.source_inputs`), and
    `rewards.rl.rollout_logprobs` (one forward pass, with gradients) gives back the sampler's own log-probabilities;
    the same pass without the bias does not. An answer that is not sampled carries none."""
    from retrieve_generate_model.joint import Sampler
    from rewards.rl import rollout_logprobs

    _, model = biased
    sources = station_sources(tiny_joint)
    rollout = model.rollout(QUESTION, sources, Sampler(temperature=1.5, seed=0))
    assert rollout.decisions and rollout.source_inputs["source_ids"].shape == (1, len(rollout.ids))
    sampled = torch.tensor([d.logp for d in rollout.decisions])
    adapters = [p for name, p in model.generator.named_parameters() if "lora_" in name]
    for p in adapters:  # as `train_rl` makes them: the update's graph runs through the biased attention
        p.requires_grad_(True)
    try:
        recomputed = rollout_logprobs(model.generator, rollout, 1.5, grad=True)[0]
        recomputed.sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters)
    finally:
        for p in adapters:
            p.requires_grad_(False)
            p.grad = None
    torch.testing.assert_close(recomputed.detach(), sampled, atol=2e-3, rtol=0)
    unbiased = dataclasses.replace(rollout, source_inputs={})
    with torch.no_grad():
        assert (rollout_logprobs(model.generator, unbiased, 1.5, grad=False)[0] - sampled).abs().max() > 1e-3
    assert model._answer(QUESTION, sources, None).source_inputs == {}
