"""The configs of the segmentation model and its training: plain dataclasses, importable without torch (the CLI
builds its flags from them at start-up)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from preprocess_model.units import MAX_UNIT_CHARS


@dataclass(frozen=True)
class SegmenterConfig:
    """Everything that determines the model's cuts; saved with the checkpoint and recorded in the index manifest."""

    encoder_layers: int = 3  # the first layers of MiniLM that read the windows (all 6 cost twice the time)
    window_tokens: int = 256  # word pieces per window the encoder reads (MiniLM's trained length)
    unit_tokens: int = 48  # word pieces of one unit the model reads; the rest of a longer unit is not read
    overlap_tokens: int = 64  # tokens (whole units, at least one) repeated between windows: context on both sides
    max_segment_tokens: int = 224  # the retriever reads 256; title and section take the rest
    min_fill: float = 0.5  # a cut keeps at least this fraction of max_segment_tokens (the fixed windows' rule)
    max_unit_chars: int = MAX_UNIT_CHARS  # longer lines are read as sentences
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("query", "key", "value", "dense")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegmenterConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})



@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1200  # optimizer steps
    batch_windows: int = 8  # windows per step
    lr: float = 5e-4  # adapters and head
    weight_decay: float = 0.01
    warmup_steps: int = 50
    eval_every: int = 200  # held-out evaluation (and checkpoint) every this many steps
    save_every: int = 50  # resumable state every this many steps
    heldout_docs: int = 200  # held-out rows evaluated (the first ones) ...
    heldout_units: int = 20_000  # ... until their units reach this many (a few long manuals would take minutes)
    max_windows_per_doc: int = 24  # a long manual does not outweigh a hundred short pages (0 = every window)
    seed: int = 0
