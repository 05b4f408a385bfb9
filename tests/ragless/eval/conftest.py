"""Fixtures of the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchdata import write_benchmark_data


@pytest.fixture
def benchmark_data(tmp_path: Path) -> Path:
    """A data folder holding every format: squad v1.1 and v2.0, xquad de, scifact and spf_fr."""
    return write_benchmark_data(tmp_path)
