"""Data-parallel training under `torchrun`: the few collective steps the trainers share.

A trainer run by ``torchrun --nproc_per_node P`` finds ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous in
its environment; `setup` joins the process group (gloo on CPU, NCCL when CUDA is there) and returns a `World`;
without ``WORLD_SIZE > 1`` it returns the single-process world and nothing else changes.

How the trainers use it (the same recipe for each; the segmenter's is `preprocess_model.train.train_segmenter`):

- every rank builds the same model from the same seed and `broadcast`s rank 0's trainable parameters anyway;
- the *global* batch of an optimizer step is what a single process would take (the seeded order is a function of the
  step), and each rank takes its share of it (`World.shard`: every P-th example);
- each rank's loss is its share of the global loss (a sum over its examples divided by the global count, not by its
  own), so that summing the gradients over ranks (`sum_gradients`: one all-reduce of the flattened LoRA gradients)
  gives exactly the single-process gradient of the global batch; clipping and the optimizer step then run
  identically on every rank, which stay in sync without ever exchanging parameters;
- rank 0 alone writes the resumable state, checkpoints and logs (`World.main`), between `barrier`s, so that a resumed
  run reads a whole state whatever rank was fastest.

Gradients are all-reduced by hand rather than through `DistributedDataParallel`: only the adapters train, their
gradients are a few megabytes, and a global-count loss needs the sum rather than DDP's mean.

    torchrun --nproc_per_node 2 -m ragless.cli train segmenter --train data/seg/train.parquet \\
        --heldout data/seg/heldout.parquet --out checkpoints/my-segmenter          # gloo on CPU
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-endpoint HOST:29500 -m ragless.cli train joint ...   # NCCL
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as tdist

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one that saves and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of a global batch: every ``size``-th item from ``rank`` (the whole batch alone)."""
        return list(items[self.rank:: self.size])


def setup(timeout_s: float = 1800.0) -> World:
    """Join torchrun's process group when ``WORLD_SIZE > 1`` (once per process; later calls return the same world).

    Backend: NCCL when CUDA is available (each rank on GPU ``LOCAL_RANK``), else gloo. ``timeout_s`` bounds how long a
    collective waits for a rank that is evaluating or saving (rank 0 evaluates held-out data alone).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if not tdist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        tdist.init_process_group("nccl" if cuda else "gloo", timeout=dt.timedelta(seconds=timeout_s))
    return World(rank=rank, size=size, local_rank=local_rank, device=device)


@contextmanager
def joined(timeout_s: float = 1800.0) -> Iterator[World]:
    """`setup` for the length of a trainer run; leaves the process group at the end if it was the one to join it."""
    already = tdist.is_available() and tdist.is_initialized()
    world = setup(timeout_s)
    try:
        yield world
    finally:
        if not already:
            cleanup(world)


def barrier(world: World) -> None:
    if world.distributed:
        tdist.barrier()


def all_sum(world: World, values: Sequence[float]) -> list[float]:
    """The sums over ranks of a few numbers (losses, counts), in float64."""
    if not world.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device(world))
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t.cpu().tolist()


def gather(world: World, obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank (for logs and per-rank state)."""
    if not world.distributed:
        return [obj]
    out: list[T] = [None] * world.size  # type: ignore[list-item]
    tdist.all_gather_object(out, obj)
    return out


def sum_gradients(world: World, params: Sequence[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its sum over ranks (a rank without one contributes zeros): one
    all-reduce of the flattened gradients."""
    if not world.distributed:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads]).to(_collective_device(world))
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    flat = flat.to(params[0].device) if params else flat
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset: offset + n].view_as(p).to(p.dtype).clone()
        offset += n


@torch.no_grad()
def broadcast(world: World, params: Sequence[torch.Tensor]) -> None:
    """Make every rank's ``params`` rank 0's (after building or loading, in case anything drew randomness)."""
    if not world.distributed:
        return
    for p in params:
        t = p.data.to(_collective_device(world))
        tdist.broadcast(t, src=0)
        p.data.copy_(t.to(p.device))


def cleanup(world: World) -> None:
    """Leave the process group (at the end of a trainer run under torchrun)."""
    if world.distributed and tdist.is_initialized():
        tdist.destroy_process_group()


def _collective_device(world: World) -> torch.device:
    return world.device if tdist.get_backend() == "nccl" else torch.device("cpu")
