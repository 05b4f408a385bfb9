"""Training under torchrun (model_common/distributed.py): two gloo processes stay in sync and take the steps of one
process on the same global batch, resumed or not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from model_common.distributed import World
from preprocess_model.config import SegmenterConfig, TrainConfig
from preprocess_model.units import BOUNDARY, CONTINUE, HEADING, NOISE, text_units

# the tiny model of tests/preprocess_model/test_model.py, without dropout (the adapters' here, MiniLM's in the script):
# the ranks and the single process must draw nothing at random after the seeded start
SMALL = SegmenterConfig(window_tokens=48, unit_tokens=12, overlap_tokens=16, max_segment_tokens=40, lora_r=4,
                        lora_dropout=0.0)
CFG = TrainConfig(steps=4, batch_windows=6, lr=3e-3, warmup_steps=1, eval_every=2, save_every=2, heldout_docs=2)

TRAIN = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import preprocess_model.train as train
    from preprocess_model.config import SegmenterConfig, TrainConfig

    made = []

    class Recorded(train.SegmentationModel):  # keeps each rank's model to save its parameters afterwards
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for module in self.modules():  # MiniLM's own dropout: each process would draw other masks
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
            made.append(self)

    train.SegmentationModel = Recorded
    save_state = train._save_state

    def save_then_maybe_die(state_dir, model, optimizer, schedule, step):  # an interrupted run: killed after a save
        save_state(state_dir, model, optimizer, schedule, step)
        if step == int(os.environ.get("DIE_AFTER_STEP", "0")):
            os._exit(3)

    train._save_state = save_then_maybe_die
    data, out, cfg, model = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
    model["lora_targets"] = tuple(model["lora_targets"])
    report = train.train_segmenter(data, data, out, TrainConfig(**cfg), SegmenterConfig(**model), log=lambda m: None)
    rank = int(os.environ.get("RANK", "0"))
    torch.save(made[-1].trainable_state(), f"{out}/rank{rank}-of-{os.environ.get('WORLD_SIZE', '1')}.pt")
    """
)


def write_rows(path: Path) -> None:
    rows = []
    for i in range(8):
        lines = [f"Chapter {i}", f"The first paragraph of chapter {i} talks about rivers.", "It goes on a while.",
                 f"Page {i + 1}", f"A second paragraph about mountains number {i}.", "Its second line."]
        text = "\n".join(lines)
        units = text_units(text)
        rows.append({"doc_id": f"d{i}", "text": text, "unit_starts": [s for s, _ in units],
                     "unit_ends": [e for _, e in units], "labels": [HEADING, BOUNDARY, CONTINUE, NOISE, BOUNDARY,
                                                                   CONTINUE],
                     "segment_starts": [units[1][0], units[4][0]]})
    pq.write_table(pa.Table.from_pylist(rows), path)


def run(tmp_path: Path, out: Path, processes: int, die_after_step: int = 0) -> None:
    """TRAIN under torchrun with ``processes`` processes (one intra-op thread each)."""
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    args = [str(tmp_path / "rows.parquet"), str(out), json.dumps(asdict(CFG)), json.dumps(asdict(SMALL))]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           str(script), *args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env |= {"OMP_NUM_THREADS": "1", "DIE_AFTER_STEP": str(die_after_step)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert (proc.returncode != 0) == bool(die_after_step), proc.stderr[-4000:]


def run_one_process(tmp_path: Path, out: Path, monkeypatch) -> None:
    """What TRAIN does in one process, run in this one (no interpreter to start, no torch and MiniLM to load again):
    the same recorded model without dropout, with one intra-op thread as TRAIN's processes have, so that each
    window's arithmetic is theirs."""
    import preprocess_model.train as train

    made = []

    class Recorded(train.SegmentationModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for module in self.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
            made.append(self)

    monkeypatch.setattr(train, "SegmentationModel", Recorded)
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # a world of one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.train_segmenter(tmp_path / "rows.parquet", tmp_path / "rows.parquet", out, CFG, SMALL,
                              log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    torch.save(made[-1].trainable_state(), out / "rank0-of-1.pt")


def losses(out: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_a_world_of_one_shards_nothing():
    world = World()
    assert world.main and not world.distributed and world.shard([3, 1, 2]) == [3, 1, 2]
    assert World(rank=1, size=2).shard(list(range(7))) == [1, 3, 5]


@pytest.mark.slow
def test_two_gloo_processes_stay_in_sync_and_match_one_process_on_the_global_batch(tmp_path, monkeypatch):
    write_rows(tmp_path / "rows.parquet")
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run_one_process(tmp_path, single, monkeypatch)
    run(tmp_path, ddp, processes=2, die_after_step=2)  # rank 0 killed after saving step 2: torchrun ends them all
    assert torch.load(ddp / "state" / "state.pt")["step"] == 2 and not list(ddp.glob("rank*.pt"))
    run(tmp_path, ddp, processes=2)  # the same command again resumes at step 2
    ranks = {r: torch.load(ddp / f"rank{r}-of-2.pt") for r in (0, 1)}
    one = torch.load(single / "rank0-of-1.pt")
    assert set(ranks[0]) == set(ranks[1]) == set(one) and any("lora" in k for k in one)
    for key in one:
        assert torch.equal(ranks[0][key], ranks[1][key]), f"{key}: the ranks drifted apart"
        # float sums in another order, amplified by Adam where a gradient is near zero: within lr / 30
        torch.testing.assert_close(ranks[0][key], one[key], rtol=1e-4, atol=1e-4, msg=f"{key}: not one process's")
    # rank 0 alone wrote the log, with the global batch's loss (the killed run died before its evaluation at step 2)
    assert len(losses(single)) == 2 and losses(ddp) == pytest.approx(losses(single)[1:], rel=1e-4)
    assert (ddp / "state" / "state.pt").is_file() and (ddp / "segmenter.safetensors").is_file()


TRAIN_JOINT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from peft import get_peft_model_state_dict
    import retrieve_generate_model.train as train
    from retrieve_generate_model.joint import JointConfig

    made = []

    class Recorded(train.JointModel):  # keeps each rank's model to save its adapters afterwards
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    train.JointModel = Recorded
    train_rows, heldout, out = sys.argv[1], sys.argv[2], sys.argv[3]
    # the generator's settings of the one-process run; of the later stages, rank 0 runs the evaluation alone
    cfg = train.JointTrainConfig(**{**json.loads(sys.argv[4]), "calibrate": False, "head_examples": 0,
                                    "reader_epochs": 0, "retriever_examples": 0})
    model_cfg = JointConfig.from_dict(json.loads(sys.argv[5]))
    train.train_joint(train_rows, heldout, out, cfg, model_cfg, log=lambda m: None)
    state = {k: v.float() for k, v in get_peft_model_state_dict(made[-1].generator).items()}
    torch.save(state, f"{out}/rank{os.environ.get('RANK', '0')}-of-{os.environ.get('WORLD_SIZE', '1')}.pt")
    """
)


@pytest.mark.slow
def test_the_joint_generator_trained_by_two_processes_is_the_one_process_generator(tmp_path, tiny_joint):
    """Two torchrun processes train the generator of tests/conftest.py's `tiny_joint` (the one-process run: its
    saved adapters and log) on its rows with its settings."""
    from safetensors.torch import load_file

    script = tmp_path / "train_joint.py"
    script.write_text(TRAIN_JOINT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    ddp = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tiny_joint.train), str(tiny_joint.heldout), str(ddp),
                           json.dumps(asdict(tiny_joint.cfg)), json.dumps(asdict(tiny_joint.model_cfg))],
                          capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one = load_file(str(tiny_joint.folder / "generator" / "adapter_model.safetensors"))
    ranks = [torch.load(ddp / f"rank{r}-of-2.pt") for r in (0, 1)]
    assert one and any(v.abs().sum() > 0 for k, v in one.items() if "lora_B" in k)  # trained (B starts at zero)
    assert set(ranks[0]) == set(ranks[1]) == set(one)
    for key in one:
        assert torch.equal(ranks[0][key], ranks[1][key]), f"{key}: the ranks drifted apart"
        torch.testing.assert_close(ranks[0][key], one[key], rtol=1e-3, atol=1e-5, msg=f"{key}: not one process's")

    def logged(out: Path) -> list[float]:
        lines = (out / "log.jsonl").read_text().splitlines()
        return [entry["loss"] for entry in map(json.loads, lines) if "of" in entry]  # the generator's steps

    assert len(logged(tiny_joint.folder)) == 3 and logged(ddp) == pytest.approx(logged(tiny_joint.folder), rel=1e-3)
    assert (ddp / "heldout.json").is_file()  # rank 0 ran the later stages and the evaluation


TRAIN_RL = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from peft import get_peft_model_state_dict
    import retrieve_generate_model.joint as joint
    from ragless.components import checkpoint_path
    from rewards.rl import RLConfig, train_rl

    made, load = [], joint.JointModel.load

    def recording_load(*args, **kwargs):  # keeps each rank's model to save its adapters afterwards
        made.append(load(*args, **kwargs))
        return made[-1]

    joint.JointModel.load = recording_load
    train, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = RLConfig(steps=steps, prompts_per_step=2, group_size=2, temperature=1.5, lr=1e-3, save_every=1)
    train_rl(checkpoint_path("joint"), train, out, cfg, log=lambda m: None)
    state = get_peft_model_state_dict(made[-1].generator, adapter_name="default")
    torch.save(state, f"{out}/rank{os.environ['RANK']}.pt")
    """
)


@pytest.mark.slow
def test_rl_steps_under_two_processes_keep_the_ranks_in_sync_and_resume(tmp_path):
    from tests.rewards.test_rl import rows

    pq.write_table(pa.Table.from_pylist(rows()), tmp_path / "rows.parquet")
    script = tmp_path / "train_rl.py"
    script.write_text(TRAIN_RL)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "rl"
    for steps in (1, 2):  # one step, then the same run extended by one: resumed with both ranks' sampler states
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(script), str(tmp_path / "rows.parquet"), str(out), str(steps)],
                              capture_output=True, text=True, timeout=1200, env=env)
        assert proc.returncode == 0, proc.stderr[-4000:]
        ranks = [torch.load(out / f"rank{r}.pt") for r in (0, 1)]
        assert ranks[0] and all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0]), "the ranks drifted apart"
    log = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2]  # rank 0 alone logs, each step once ...
    assert all(e["rollouts"] == 4 for e in log)  # ... with both ranks' rollouts (2 prompts x 2)
    assert log[0]["components"]["format_validity"] == 1.0
    state = torch.load(out / "state" / "rl.pt", weights_only=False)
    assert state["step"] == 2 and len(state["samplers"]) == 2
    assert not torch.equal(state["samplers"][0], state["samplers"][1])  # each rank drew its own rollouts
