"""`ragless train rl`: GRPO on the joint model's own constrained decoder, rewarded by `rewards`.

The policy is the generator's choices as `JointModel.answer` makes them — the route (answer or abstain), the sources
relied on and their order, the cited source and the quote's tokens — sampled within the layout (`joint.Sampler`), so
every completion is well formed and every quote verbatim by construction; the reader's answer span stays its best
(it is not the generator's to choose). A step:

1. ``prompts_per_step`` synthetic rows (`ragless synth qa`, corpus text only), ``group_size`` rollouts each;
2. each rollout scored by the composed reward (`RewardWeights`), every component logged;
3. advantages normalized within each row's group (`grpo.group_advantages`);
4. the log-probability of every decision under the policy (with gradients) and under the reference — by default the
   generator as RL found it (a frozen copy of the SFT adapters, a second peft adapter), or with ``reference="base"``
   the generator with its adapters disabled (SmolLM2 itself) — each restricted to what the layout allowed
   there (`grpo.decision_logprobs`), and ``updates_per_batch`` steps on `grpo.grpo_loss`.

Resumable: the adapters, the optimizer, the step and the samplers' state are saved every ``save_every`` steps in
``OUT/state/rl.pt``; the same command continues from there. ``OUT`` starts as a copy of the SFT checkpoint (its
reader, lexical channel and config travel with it) and ends as a joint checkpoint folder with the RL adapters.

    ragless train rl --checkpoint checkpoints/joint --train data/qa/train-en-v4/train.parquet --out data/runs/rl
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rewards.composition import ComposedReward, RewardWeights, log_means
from rewards.grpo import decision_logprobs, group_advantages, grpo_loss

STATE = "state/rl.pt"
REFERENCE = "reference"  # the peft adapter name of the frozen SFT copy


@contextmanager
def reference_policy(generator, reference: str):
    """The generator as the reference policy inside the block: the frozen SFT adapters, or none (the base); the
    trained adapters ("default") are active again after it, the only ones with gradients."""
    if reference == "base":
        with generator.disable_adapter():
            yield
        return
    generator.set_adapter(REFERENCE, inference_mode=True)
    try:
        yield
    finally:
        generator.set_adapter("default")
        for name, p in generator.named_parameters():  # set_adapter made "default" trainable, as it was
            if f".{REFERENCE}." in name:
                p.requires_grad_(False)


@dataclass(frozen=True)
class RLConfig:
    steps: int = 50
    prompts_per_step: int = 4
    group_size: int = 4  # rollouts per prompt: the group its advantages are normalized in
    temperature: float = 1.0  # the sampler's (and the log-probabilities')
    lr: float = 2e-5
    clip: float = 0.2
    beta: float = 0.04  # the KL penalty to the reference (the base generator, adapters disabled)
    updates_per_batch: int = 1
    max_grad_norm: float = 1.0
    save_every: int = 5
    seed: int = 0
    # the policy the KL keeps close to: "sft", the checkpoint's generator as RL found it (a frozen copy of its
    # adapters), or "base", SmolLM2 with the adapters disabled. Against "base", the penalty pulls the policy back
    # toward a model that never learned the layout: in a first run (beta 0.04) the KL per decision fell from 2.3 to
    # 0.4 in 6 steps while the reward did not rise
    reference: str = "sft"

    def __post_init__(self) -> None:
        if self.reference not in ("sft", "base"):
            raise ValueError(f"reference must be 'sft' or 'base', got {self.reference!r}")


def reward_columns(rows: list[dict[str, Any]], k: int) -> dict[str, list[Any]]:
    """The reward functions' columns for synthetic rows, as the model is shown them (the first ``k`` sources):
    evidence is the quoted sentence of the evidence source, when it is among those shown."""
    cols: dict[str, list[Any]] = {"sources": [], "answers": [], "answerable": [], "evidence": [], "lang": []}
    for row in rows:
        shown = row["sources"][:k]
        cols["sources"].append([s["text"] for s in shown])
        cols["answers"].append([row["answer"]] if row["answerable"] else [])
        cols["answerable"].append(bool(row["answerable"]))
        q = row.get("quote_source", -1)
        seen = row["answerable"] and q is not None and 0 <= q < len(shown)
        cols["evidence"].append([(q + 1, row["quote_start"], row["quote_end"])] if seen else None)
        cols["lang"].append(row.get("lang") or "en")
    return cols


def rollout_logprobs(generator, rollout, temperature: float, grad: bool):
    """(1, D) log-probabilities of a rollout's D decisions under ``generator``, each over its allowed tokens (with
    the decoder's bias); one forward pass over the rollout's ids."""
    import torch

    decisions = rollout.decisions
    positions = torch.tensor([d.position for d in decisions])
    with torch.set_grad_enabled(grad):
        logits = generator(input_ids=torch.tensor([rollout.ids])).logits[0, positions].float()  # (D, V)
    allowed = torch.zeros_like(logits, dtype=torch.bool)
    bias = torch.zeros_like(logits)
    for i, d in enumerate(decisions):
        allowed[i, d.allowed] = True
        for token, b in d.bias.items():
            bias[i, token] = b
    chosen = torch.tensor([d.chosen for d in decisions])
    return decision_logprobs((logits + bias)[None], chosen[None], allowed[None], temperature)


def train_rl(checkpoint: str | Path, train: str | Path, out: str | Path, cfg: RLConfig | None = None,
             weights: RewardWeights | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) the generator of the joint checkpoint ``checkpoint`` by GRPO into ``out``; returns the
    last step's log entry."""
    import pyarrow.parquet as pq
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    from retrieve_generate_model.joint import JointModel, Sampler
    from retrieve_generate_model.records import Source

    cfg, weights = cfg or RLConfig(), weights or RewardWeights()
    out = Path(out)
    run = {"checkpoint": str(checkpoint), "train": str(train), "rl": asdict(cfg), "weights": asdict(weights)}
    state_file = out / STATE
    if state_file.is_file():  # the same run, continued (``steps`` may grow: a run extended)
        saved = json.loads((out / "state" / "run.json").read_text())
        saved["rl"]["steps"] = cfg.steps
        if saved != json.loads(json.dumps(run)):
            raise ValueError(f"{out} holds an RL run with other settings; use another --out or remove {out / 'state'}")
    else:
        if out.exists() and any(out.iterdir()):
            raise ValueError(f"{out} exists and is not an RL run of ours: give a new folder")
        shutil.copytree(checkpoint, out, ignore=shutil.ignore_patterns("state", "log.jsonl", "heldout.json"),
                        dirs_exist_ok=True)
        (out / "state").mkdir()
        (out / "state" / "run.json").write_text(json.dumps(run, indent=1) + "\n")

    torch.manual_seed(cfg.seed)
    model = JointModel.load(out)
    generator = model.generator
    if cfg.reference == "sft":  # a frozen copy of the adapters RL starts from (never those of OUT: they move)
        generator.load_adapter(str(Path(checkpoint) / "generator"), adapter_name=REFERENCE, is_trainable=False)
        generator.set_adapter("default")
    for name, p in generator.named_parameters():
        p.requires_grad_("lora_" in name and f".{REFERENCE}." not in name)
    params = [p for p in generator.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sampler = Sampler(cfg.temperature, seed=cfg.seed)
    rows = [r for r in pq.read_table(train).to_pylist() if r["sources"]]
    if not rows:
        raise ValueError(f"{train} has no rows with sources")
    order = random.Random(cfg.seed)
    start = 0
    if state_file.is_file():
        state = torch.load(state_file, weights_only=False)
        set_peft_model_state_dict(generator, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.generator.set_state(state["sampler"])
        order.setstate(state["order"])
        start = state["step"]
        log(f"resuming at step {start}/{cfg.steps}")

    def save(step: int) -> None:
        tmp = state_file.with_suffix(".tmp")
        torch.save({"adapter": get_peft_model_state_dict(generator, adapter_name="default"),
                    "optimizer": optimizer.state_dict(), "sampler": sampler.generator.get_state(),
                    "order": order.getstate(), "step": step}, tmp)
        tmp.replace(state_file)
        generator.save_pretrained(str(out / "generator"), selected_adapters=["default"])
        (out / "generator" / "README.md").unlink(missing_ok=True)

    reward = ComposedReward(weights)
    entry: dict[str, Any] = {}
    with (out / "rl_log.jsonl").open("a") as log_file:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            batch = order.sample(rows, min(cfg.prompts_per_step, len(rows)))
            group_rows = [r for r in batch for _ in range(cfg.group_size)]
            generator.eval()
            rollouts = [model.rollout(r["question"], [Source.from_dict(s) for s in r["sources"]], sampler)
                        for r in group_rows]
            totals = reward([r.completion for r in rollouts], **reward_columns(group_rows, model.config.k))
            advantages = group_advantages(torch.tensor(totals).view(len(batch), cfg.group_size)).view(-1)
            t_sample = time.perf_counter() - t0
            learn = [i for i, r in enumerate(rollouts) if r.decisions]  # a tied group still pays its KL
            with torch.no_grad(), reference_policy(generator, cfg.reference):
                ref = {i: rollout_logprobs(generator, rollouts[i], cfg.temperature, grad=False) for i in learn}
            losses, parts = [], []
            generator.train()
            old: dict[int, torch.Tensor] = {}
            for _ in range(cfg.updates_per_batch):
                optimizer.zero_grad(set_to_none=True)
                for i in learn:  # one sequence at a time: memory stays that of one forward pass
                    logp = rollout_logprobs(generator, rollouts[i], cfg.temperature, grad=True)
                    old.setdefault(i, logp.detach())
                    loss, s = grpo_loss(logp, old[i], ref[i], advantages[i: i + 1], torch.ones_like(logp),
                                        cfg.clip, cfg.beta)
                    (loss / len(learn)).backward()
                    losses.append(float(loss.detach()))
                    parts.append(s)
                if learn:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
            entry = {"step": step + 1, "reward": round(sum(totals) / len(totals), 4),
                     "components": {k: (round(v, 4) if v is not None else None)
                                    for k, v in log_means(reward.last).items()},
                     "loss": round(sum(losses) / len(losses), 5) if losses else None,
                     **{k: round(sum(p[k] for p in parts) / len(parts), 5) if parts else None
                        for k in ("kl", "clip_fraction", "ratio")}, "learned_from": len(learn),
                     "abstained": sum(r.answer.abstained for r in rollouts), "rollouts": len(rollouts),
                     "sample_s": round(t_sample, 1), "step_s": round(time.perf_counter() - t0, 1)}
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()
            log(json.dumps(entry))
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                save(step + 1)
    generator.eval()
    return entry
