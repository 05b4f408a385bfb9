"""Source-biased attention in the generator (`biased_attention.py`): exact against transformers' SDPA where the bias is
zero, padding and a KV cache handled, the gradient reaching the bias; and joint training linked by it
(``link="attention"``), whose answer loss moves the question tower."""

from __future__ import annotations

import copy
import doctest
import json

import pytest
import torch

from retrieve_generate_model import biased_attention as ba

RANGES = [(6, 15), (18, 30), (31, 37)]  # three sources' token ranges in a 40-token prompt


@pytest.fixture(scope="module")
def generator():
    """SmolLM2 (float32, eval) switched to source-biased attention; the process-wide cached copy stays on SDPA."""
    from retrieve_generate_model.generator import load_generator

    _, base = load_generator()
    model = copy.deepcopy(base)
    ba.use_source_bias(model)
    return model


def prompt(n: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randint(100, 20000, (1, n), generator=torch.Generator().manual_seed(seed))  # (1, n)


def source_ids(n: int = 40, ranges=RANGES) -> torch.Tensor:
    return torch.tensor([ba.token_sources(n, ranges)])  # (1, n)


def test_doctests():
    assert doctest.testmod(ba).failed == 0


def test_with_a_zero_bias_every_layer_is_transformers_sdpa(generator, monkeypatch):
    """The wiring is exact: at each of the 30 layers, on that layer's own query/key/value (9 query heads over 3 key
    heads), the function with an all-zero bias gives SDPA's output within 1e-5, through the kernel's causal form."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from retrieve_generate_model import kernels

    diffs, causal_calls = {}, []
    real = kernels.source_biased_attention

    def counting(*args, **kwargs):
        causal_calls.append(kwargs.get("causal"))
        return real(*args, **kwargs)

    def spy(module, query, key, value, attention_mask, **kwargs):
        got, _ = ba.source_biased_sdpa(module, query, key, value, attention_mask, **kwargs)
        plain = {k: v for k, v in kwargs.items() if not k.startswith("source_")}
        want, _ = sdpa_attention_forward(module, query, key, value, attention_mask, **plain)
        diffs[module.layer_idx] = (got - want).abs().max().item()
        return got, None

    monkeypatch.setattr(kernels, "source_biased_attention", counting)
    monkeypatch.setitem(AttentionInterface._global_mapping, ba.ATTENTION, spy)
    ids = prompt()
    with torch.no_grad():
        biased = generator(input_ids=ids, source_ids=source_ids(), source_bias=torch.zeros(1, 3)).logits
    assert len(diffs) == generator.config.num_hidden_layers == len(causal_calls) and all(causal_calls)
    assert max(diffs.values()) < 1e-5, diffs
    monkeypatch.undo()
    with torch.no_grad():
        plain = generator(input_ids=ids).logits  # without the source kwargs: SDPA itself
    # the per-layer rounding differences (~1e-7) compound over 30 layers: logits of magnitude ~30 agree to ~1e-4
    torch.testing.assert_close(biased, plain, rtol=1e-4, atol=5e-4)


def test_the_bias_changes_the_logits_and_gets_a_gradient(generator):
    ids, sid = prompt(), source_ids()
    with torch.no_grad():
        plain = generator(input_ids=ids).logits
        none = generator(input_ids=ids, source_ids=sid, source_bias=torch.tensor([[2.0, -3.0, 0.5]]),
                         source_layers=()).logits  # no layer chosen: SDPA everywhere
    torch.testing.assert_close(none, plain)
    for layers in (None, (27, 28, 29)):
        bias = torch.tensor([[2.0, -3.0, 0.5]], requires_grad=True)
        logits = generator(input_ids=ids, source_ids=sid, source_bias=bias, source_layers=layers).logits
        assert (logits[0, :6] - plain[0, :6]).abs().max() < 1e-3  # before the first source: causal, untouched
        assert (logits[0, 7:] - plain[0, 7:]).abs().max() > 0.1  # after it: the bias changes what is read
        (grad,) = torch.autograd.grad(logits[0, -1].log_softmax(-1)[1234], bias)
        assert torch.isfinite(grad).all() and (grad != 0).all()


def padded(t: torch.Tensor, value: int, side: str, length: int = 40) -> torch.Tensor:
    """(1, n) -> (1, length), filled with ``value`` on the ``side`` given."""
    fill = torch.full((1, length - t.shape[1]), value)
    return torch.cat([t, fill] if side == "right" else [fill, t], 1)


def test_padded_batches_give_each_row_its_own_logits(generator):
    """Two prompts of different lengths, right- and left-padded in one batch, give the logits each gives alone at its
    real positions (padding keys get a source of their own with a -1e9 bias; left-padded rows stay finite)."""
    rows = [(prompt(40, 1), source_ids(), torch.tensor([[1.5, -2.0, 0.0]])),
            (prompt(27, 2), source_ids(27, [(3, 10), (12, 20), (21, 25)]), torch.tensor([[-1.0, 0.5, 2.0]]))]
    with torch.no_grad():
        alone = [generator(input_ids=i, source_ids=s, source_bias=b).logits[0] for i, s, b in rows]
        for side in ("right", "left"):
            ids, sids, masks, positions = [], [], [], []
            for i, s, _ in rows:
                ids.append(padded(i, 0, side))
                sids.append(padded(s, -1, side))
                masks.append(padded(torch.ones_like(i), 0, side))
                positions.append((masks[-1].cumsum(1) - 1).clamp(min=0))
            out = generator(input_ids=torch.cat(ids), attention_mask=torch.cat(masks),
                            position_ids=torch.cat(positions), source_ids=torch.cat(sids),
                            source_bias=torch.cat([b for _, _, b in rows])).logits
            assert torch.isfinite(out).all(), side
            for b, (i, _, _) in enumerate(rows):
                n = i.shape[1]
                got = out[b, :n] if side == "right" else out[b, 40 - n:]
                torch.testing.assert_close(got, alone[b], rtol=1e-4, atol=5e-4, msg=side)


def test_decoding_with_a_cache_continues_the_biased_prompt(generator):
    """The prompt through the kernel's causal form (M == N), then three tokens at once and one more through the KV
    cache (fewer queries than keys: the float-mask path), equal the biased forward over the whole sequence."""
    ids, sid, bias = prompt(44, 3), source_ids(44), torch.tensor([[1.0, -1.0, 2.0]])
    with torch.no_grad():
        full = generator(input_ids=ids, source_ids=sid, source_bias=bias).logits[0]
        first = generator(input_ids=ids[:, :40], source_ids=sid[:, :40], source_bias=bias, use_cache=True)
        cache = first.cache
        more = generator(input_ids=ids[:, 40:43], cache=cache, use_cache=True, source_ids=sid[:, :43],
                         source_bias=bias).logits[0]
        last = generator(input_ids=ids[:, 43:], cache=cache, use_cache=True, source_ids=sid,
                         source_bias=bias).logits[0]
    torch.testing.assert_close(first.logits[0], full[:40], rtol=1e-4, atol=5e-4)
    torch.testing.assert_close(torch.cat([more, last]), full[40:], rtol=1e-4, atol=5e-4)
    with pytest.raises(ValueError, match="source_ids must give the source of every key"):
        generator(input_ids=ids[:, :4], source_ids=sid[:, :3], source_bias=bias)
    with pytest.raises(ValueError, match="both"):
        generator(input_ids=ids[:, :4], source_ids=sid[:, :4])


def multi_source_rows(n: int = 6, k: int = 3) -> list[dict]:
    """tests/conftest.py's station rows, each with the evidence among k sources (the others' evidence as
    distractors, the evidence at position i % k): one-source rows give the question tower no gradient."""
    from tests.conftest import station_rows

    rows = station_rows(n)
    out = []
    for i, row in enumerate(rows):
        others = [rows[(i + j) % n]["sources"][0] for j in range(1, k)]
        at = i % k
        out.append({**row, "sources": others[:at] + row["sources"] + others[at:], "relied": [at],
                    "quote_source": at})
    return out


def test_joint_training_linked_by_attention_moves_the_question_tower(tmp_path):
    """`train_joint` with ``link="attention"``: three steps on 6 rows of 3 sources. The answer loss stays finite,
    the gradient reaches the question tower's adapters (saved as ``retriever/``, moved from their zero start), the
    generator's logits differ with the tower's bias, and a rerun resumes (the tower's state kept)."""
    from safetensors.torch import load_file

    from retrieve_generate_model.joint import JointConfig, JointModel
    from retrieve_generate_model.retriever import QueryEncoder
    from retrieve_generate_model.train import AttentionLink, JointTrainConfig, row_example, train_joint
    from synth_pipeline.qa import QAConfig, write_examples

    rows = multi_source_rows()
    write_examples(rows, tmp_path / "train.parquet", QAConfig(), 0)
    write_examples(rows[:2], tmp_path / "heldout.parquet", QAConfig(), 0)
    # float32 (bfloat16 autocast is slower on CPUs without AMX), 6 examples in 3 steps; no reader, head or calibration
    cfg = JointTrainConfig(epochs=1, grad_accum=2, lr=2e-3, warmup_steps=0, checkpoint_every=2, heldout_examples=1,
                           bf16=False, calibrate=False, reader_epochs=0, link="attention", link_lr=1e-2)
    model_cfg = JointConfig(lora_layers=2, lora_r=4, max_source_tokens=48, max_quote_tokens=8, span_head_rank=0,
                            answer_by="walk")
    out = tmp_path / "ckpt"
    report = train_joint(tmp_path / "train.parquet", tmp_path / "heldout.parquet", out, cfg, model_cfg,
                         log=lambda _: None)
    entries = [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "examples" in e]
    assert len(entries) == 3 and all(0 < e["loss"] < 20 for e in entries)  # a finite answer loss at every step
    assert entries[-1]["loss"] < entries[0]["loss"]  # and it falls
    assert all(e["tower_grad_norm"] > 0 for e in entries)  # the answer loss's gradient reaches the tower
    assert report["retriever_link"] == "attention" and report["retriever"]["n"] == 2
    tower = load_file(str(out / "retriever" / "adapter_model.safetensors"))
    moved = [v for k, v in tower.items() if "lora_B" in k]
    assert moved and any(v.abs().sum() > 0 for v in moved)  # B starts at zero: the adapters moved

    # the trained tower's bias changes what the trained generator reads
    model = JointModel.load(out)
    link = AttentionLink(model, cfg)
    link.tower = QueryEncoder.load(out / "retriever", base=link.tower.base)
    link.tower.model.eval()
    ex = row_example(model, rows[0])
    with torch.no_grad():
        biased = link.inputs(rows[0], ex)
        assert biased["source_bias"].abs().max() > 0
        ids = torch.tensor([ex.input_ids])
        with_bias = model.generator(input_ids=ids, **biased).logits
        without = model.generator(input_ids=ids).logits
    assert (with_bias - without).abs().max() > 1e-3

    # resumable: the same command over the finished run re-evaluates with the tower it saved
    again = train_joint(tmp_path / "train.parquet", tmp_path / "heldout.parquet", out, cfg, model_cfg,
                        log=lambda _: None)
    assert again["retriever"] == report["retriever"]
    with pytest.raises(ValueError, match="link"):
        JointTrainConfig(link="bogus")
