"""The components an index is made with, by name: chosen once at construction, recorded in the manifest.

An index records ``{"segmenter": {"name", "config"}, "encoder": {"name", "config"}}``; reopening it rebuilds the same
components from that record, and a writer refuses to mix components into an index made by others.
"""

from __future__ import annotations

from typing import Any

from preprocess_model.segmenting import Segmenter
from ragless.baselines import FixedWindowConfig, FixedWindowSegmenter
from retrieve_generate_model.encoder import Encoder, EncoderConfig

DEFAULT_SEGMENTER = "fixed-window"  # until the trained preprocessing model ships (issue 4)


def make_segmenter(name: str = DEFAULT_SEGMENTER, config: dict[str, Any] | None = None) -> Segmenter:
    if name == FixedWindowSegmenter.name:
        return FixedWindowSegmenter(FixedWindowConfig(**(config or {})))
    raise ValueError(f"unknown segmenter {name!r}; known: {FixedWindowSegmenter.name}")


def make_encoder(name: str = Encoder.name, config: dict[str, Any] | None = None) -> Encoder:
    if name != Encoder.name:
        raise ValueError(f"unknown encoder {name!r}; known: {Encoder.name}")
    config = config or {}
    return Encoder(EncoderConfig(model_dir=config.get("model_dir"), max_tokens=config.get("max_tokens", 256)))


def describe(segmenter: Segmenter, encoder: Encoder) -> dict[str, Any]:
    """The record of both components, as the manifest stores it."""
    return {
        "segmenter": {"name": segmenter.name, "config": segmenter.config()},
        "encoder": {"name": encoder.name, "config": encoder.config()},
    }


def encoder_for(manifest: dict[str, Any]) -> Encoder:
    """The encoder that made an index's vectors, rebuilt from its manifest; an error if this install differs."""
    recorded = manifest["components"]["encoder"]
    encoder = make_encoder(recorded["name"], recorded["config"])
    if encoder.config() != recorded["config"]:
        raise ValueError(
            f"the index's vectors were made by {recorded['config']}, this install has {encoder.config()}: re-ingest"
        )
    return encoder
