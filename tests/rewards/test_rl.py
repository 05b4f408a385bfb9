"""`ragless train rl` on the shipped joint model: sampled rollouts are the constrained policy, a couple of GRPO steps
log every reward component, move the adapters, and resume."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rewards import parse

TEXT = ("The Bell Rock Lighthouse stands off the coast of Angus, Scotland. It was built between 1807 and 1810 by "
        "Robert Stevenson and is the oldest surviving sea-washed lighthouse.")
OTHER = "Apple orchards in Normandy grow cider apples. Harvest runs from September to November."


def source(seg: str, text: str) -> dict:
    return {"seg_id": seg, "doc_id": seg[0], "title": "", "section": "", "text": text, "char_start": 0,
            "char_end": len(text), "score": 0.5}


def rows() -> list[dict]:
    built = TEXT.index("It was built")
    common = {"lang": "en", "answer_start": -1, "answer_end": -1, "quote_source": -1, "quote_start": -1,
              "quote_end": -1}
    return [
        {**common, "question": "Who built the Bell Rock Lighthouse?", "answer": "Robert Stevenson",
         "answerable": True, "sources": [source("a1", TEXT), source("b1", OTHER)], "quote_source": 0,
         "quote_start": built, "quote_end": len(TEXT)},
        {**common, "question": "When does the apple harvest in Normandy run?", "answer": "September to November",
         "answerable": True, "sources": [source("a1", TEXT), source("b1", OTHER)], "quote_source": 1,
         "quote_start": OTHER.index("Harvest"), "quote_end": len(OTHER)},
        {**common, "question": "How tall is the Eiffel Tower?", "answer": "", "answerable": False,
         "sources": [source("a1", TEXT), source("b1", OTHER)]},
    ]


@pytest.mark.slow
def test_rollouts_sample_the_constrained_policy_and_grpo_steps_resume(tmp_path):
    from peft import get_peft_model_state_dict

    from ragless.components import checkpoint_path
    from retrieve_generate_model.joint import JointModel, Sampler
    from retrieve_generate_model.records import Source
    from rewards.functions import format_validity, quote_validity
    from rewards.rl import RLConfig, reward_columns, rollout_logprobs, train_rl

    train = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows()), train)

    model = JointModel.load(checkpoint_path("joint"))
    sampler = Sampler(temperature=1.5, seed=3)
    rollouts = [model.rollout(r["question"], [Source.from_dict(s) for s in r["sources"]], sampler)
                for r in rows() for _ in range(2)]
    texts = [r.completion for r in rollouts]
    cols = reward_columns([r for r in rows() for _ in range(2)], model.config.k)
    assert format_validity(texts, **cols) == [1.0] * len(texts)  # sampled within the layout: always well formed
    assert all(v in (None, 1.0) for v in quote_validity(texts, **cols))  # and quoting verbatim
    for r in rollouts:
        assert parse(r.completion).abstained == r.answer.abstained
        if r.decisions:  # the full forward pass gives the sampler's own probabilities
            recomputed = rollout_logprobs(model.generator, r, 1.5, grad=False)[0]
            torch.testing.assert_close(recomputed, torch.tensor([d.logp for d in r.decisions]), atol=2e-3, rtol=0)

    out = tmp_path / "rl"  # one step (each is 4 rollouts and their forward and backward passes), then one more resumed
    cfg = RLConfig(steps=1, prompts_per_step=2, group_size=2, temperature=1.5, lr=1e-3, save_every=1)
    train_rl(checkpoint_path("joint"), train, out, cfg, log=lambda _: None)
    log = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1]
    assert set(log[0]["components"]) >= {"answer_f1", "quote_validity", "abstention", "format_validity", "retrieval"}
    assert log[0]["components"]["format_validity"] == 1.0
    assert all("kl" in e and "reward" in e for e in log)
    if log[0]["learned_from"]:  # the reference is the SFT generator RL starts from: no KL before the first update
        assert log[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    trained = JointModel.load(out)  # a joint checkpoint: the RL adapters, the SFT reader and lexical channel
    assert (out / "reader").is_dir() and (out / "lexical").is_dir()
    before, after = get_peft_model_state_dict(model.generator), get_peft_model_state_dict(trained.generator)
    moved = any(not torch.equal(before[k], after[k]) for k in before)
    assert moved == any(e["learned_from"] for e in log)  # updated exactly when some rollout made a decision

    train_rl(checkpoint_path("joint"), train, out, RLConfig(**{**cfg.__dict__, "steps": 2}), log=lambda _: None)
    assert [json.loads(line)["step"] for line in (out / "rl_log.jsonl").read_text().splitlines()] == [1, 2]
    with pytest.raises(ValueError, match="other settings"):
        train_rl(checkpoint_path("joint"), train, out, RLConfig(**{**cfg.__dict__, "lr": 0.5}), log=lambda _: None)
    assert sorted(p.name for p in (out / "generator").iterdir()) == ["adapter_config.json",
                                                                     "adapter_model.safetensors"]  # RL's alone

    base = tmp_path / "rl-base"  # the other reference: SmolLM2 itself, far from the SFT policy (one answerable prompt)
    train_rl(checkpoint_path("joint"), train, base,
             RLConfig(**{**cfg.__dict__, "prompts_per_step": 1, "reference": "base"}), log=lambda _: None)
    entry = json.loads((base / "rl_log.jsonl").read_text())
    assert not entry["learned_from"] or entry["kl"] > 0.01
    with pytest.raises(ValueError, match="reference"):
        RLConfig(reference="initial")
