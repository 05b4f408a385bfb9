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
    torchrun --nproc_per_node 4 -m ragless.cli train rl --train data/qa/train-en-v4/train.parquet --out data/runs/rl

Under torchrun (`model_common.distributed`) the step's prompts are the same seeded draw on every rank and their groups
are dealt to the ranks (every P-th prompt, whole groups: advantages are normalized within a group); each rank samples
its rollouts from its own stream (rank 0's is the single process's: ``seed``, the others ``seed + rank``), the loss is
divided by the number of rollouts learned from over all ranks and the adapters' gradients summed, so every rank takes
the same update. Rank 0 logs the whole step's rewards and saves the state (every rank's sampler state in it). A run with
P processes samples other rollouts than one process would: it is the same algorithm, not the same run.
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
        generator.set_adapter("default")  # peft: the active adapter trainable again, every other one frozen


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


def _silent(msg: str) -> None:
    """The log of ranks other than 0."""


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
    the decoder's bias); one forward pass over the rollout's ids, with the sources' attention bias the rollout was
    sampled with (`Rollout.source_inputs`; none for a model without it)."""
    import torch

    decisions = rollout.decisions
    positions = torch.tensor([d.position for d in decisions])
    with torch.set_grad_enabled(grad):
        logits = generator(input_ids=torch.tensor([rollout.ids]), **rollout.source_inputs
                           ).logits[0, positions].float()  # (D, V)
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
    last step's log entry (on ranks other than 0 under torchrun: the step alone)."""
    from model_common import distributed  # torchrun's process group, shared by the trainers

    with distributed.joined() as world:
        return _train_rl(checkpoint, train, out, cfg, weights, log, world)


def _train_rl(checkpoint, train, out, cfg, weights, log, world) -> dict[str, Any]:
    import os

    import pyarrow.parquet as pq
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    from model_common import distributed
    from retrieve_generate_model.joint import JointModel, Sampler
    from retrieve_generate_model.records import Source

    cfg, weights = cfg or RLConfig(), weights or RewardWeights()
    if cfg.prompts_per_step < world.size:
        raise ValueError(f"--prompts-per-step {cfg.prompts_per_step} leaves some of the {world.size} processes "
                         "without a group of rollouts")
    if not world.main:
        log = _silent
    out = Path(out)
    run = {"checkpoint": str(checkpoint), "train": str(train), "rl": asdict(cfg), "weights": asdict(weights)}
    state_file = out / STATE
    resuming = state_file.is_file()
    if resuming:  # the same run, continued (``steps`` may grow: a run extended)
        saved = json.loads((out / "state" / "run.json").read_text())
        saved["rl"]["steps"] = cfg.steps
        if saved != json.loads(json.dumps(run)):
            raise ValueError(f"{out} holds an RL run with other settings; use another --out or remove {out / 'state'}")
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not an RL run of ours: give a new folder")
    distributed.barrier(world)  # every rank has looked at OUT before rank 0 fills it
    if not resuming and world.main:
        shutil.copytree(checkpoint, out, ignore=shutil.ignore_patterns("state", "log.jsonl", "heldout.json"),
                        dirs_exist_ok=True)
        (out / "state").mkdir()
        (out / "state" / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    distributed.barrier(world)

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
    sampler = Sampler(cfg.temperature, seed=cfg.seed + world.rank)  # each rank its own rollouts
    rows = [r for r in pq.read_table(train).to_pylist() if r["sources"]]
    if not rows:
        raise ValueError(f"{train} has no rows with sources")
    order = random.Random(cfg.seed)
    start = 0
    if state_file.is_file():
        state = torch.load(state_file, weights_only=False)
        set_peft_model_state_dict(generator, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        samplers = state.get("samplers", [state["sampler"]])  # every rank's, when a run of as many ranks saved it
        if len(samplers) == world.size:
            sampler.generator.set_state(samplers[world.rank])
        elif world.main:
            sampler.generator.set_state(state["sampler"])
        order.setstate(state["order"])
        start = state["step"]
        log(f"resuming at step {start}/{cfg.steps}")

    def save(step: int, samplers: list) -> None:
        tmp = state_file.with_suffix(".tmp")
        torch.save({"adapter": get_peft_model_state_dict(generator, adapter_name="default"),
                    "optimizer": optimizer.state_dict(), "sampler": samplers[0], "samplers": samplers,
                    "order": order.getstate(), "step": step}, tmp)
        tmp.replace(state_file)
        generator.save_pretrained(str(out / "generator"), selected_adapters=["default"])
        (out / "generator" / "README.md").unlink(missing_ok=True)

    reward = ComposedReward(weights)
    entry: dict[str, Any] = {}
    with (out / "rl_log.jsonl").open("a") if world.main else open(os.devnull, "w") as log_file:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            batch = order.sample(rows, min(cfg.prompts_per_step, len(rows)))  # the same draw on every rank
            group_rows = [r for r in world.shard(batch) for _ in range(cfg.group_size)]  # this rank's groups
            generator.eval()
            rollouts = [model.rollout(r["question"], [Source.from_dict(s) for s in r["sources"]], sampler)
                        for r in group_rows]
            totals = reward([r.completion for r in rollouts], **reward_columns(group_rows, model.config.k))
            advantages = group_advantages(torch.tensor(totals).view(-1, cfg.group_size)).view(-1)
            t_sample = time.perf_counter() - t0
            learn = [i for i, r in enumerate(rollouts) if r.decisions]  # a tied group still pays its KL
            n_learn = int(distributed.all_sum(world, [len(learn)])[0])  # over every rank
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
                    (loss / n_learn).backward()
                    losses.append(float(loss.detach()))
                    parts.append(s)
                distributed.sum_gradients(world, params)  # the whole step's gradient, on every rank
                if n_learn:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
            # the step as one process would log it: every rank's rollouts, rewards and losses
            ranks = distributed.gather(world, {"totals": totals, "last": reward.last, "losses": losses,
                                               "parts": [{k: float(p[k]) for k in ("kl", "clip_fraction", "ratio")}
                                                         for p in parts],
                                               "abstained": sum(r.answer.abstained for r in rollouts)})
            totals_all = [t for r in ranks for t in r["totals"]]
            losses_all, parts_all = [x for r in ranks for x in r["losses"]], [x for r in ranks for x in r["parts"]]
            components = {k: [v for r in ranks for v in r["last"].get(k, [])] for k in reward.last}
            entry = {"step": step + 1, "reward": round(sum(totals_all) / len(totals_all), 4),
                     "components": {k: (round(v, 4) if v is not None else None)
                                    for k, v in log_means(components).items()},
                     "loss": round(sum(losses_all) / len(losses_all), 5) if losses_all else None,
                     **{k: round(sum(p[k] for p in parts_all) / len(parts_all), 5) if parts_all else None
                        for k in ("kl", "clip_fraction", "ratio")}, "learned_from": n_learn,
                     "abstained": sum(r["abstained"] for r in ranks), "rollouts": len(totals_all),
                     "sample_s": round(t_sample, 1), "step_s": round(time.perf_counter() - t0, 1)}
            if world.main:
                log_file.write(json.dumps(entry) + "\n")
                log_file.flush()
                log(json.dumps(entry))
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                samplers = distributed.gather(world, sampler.generator.get_state())
                if world.main:
                    save(step + 1, samplers)
                distributed.barrier(world)
    generator.eval()
    return entry
