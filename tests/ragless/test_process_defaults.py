"""What importing ragless sets for the process: passive OpenMP threads and a fixed glibc mmap threshold."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = "import os, ragless; print(ragless.HEAP_TUNED, os.environ['OMP_WAIT_POLICY'])"


def probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "OMP_WAIT_POLICY")}
    return subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the mmap threshold is a glibc setting")
def test_glibc_mmap_threshold_is_fixed_unless_the_user_set_one():
    assert probe() == "True PASSIVE"
    assert probe(MALLOC_MMAP_THRESHOLD_="4194304", OMP_WAIT_POLICY="ACTIVE") == "False ACTIVE"  # explicit settings win
