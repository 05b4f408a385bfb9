"""ragless: the application that composes the two models — store and index, ingestion, asking, CLI, evaluation.

Importing it sets two process defaults, before torch or faiss load:

- OpenMP threads wait passively. Spinning threads take the cores from each other whenever anything else runs on the
  machine (measured on 2 busy cores: SmolLM2 decoding ~10x slower, a MiniLM query embedding 1.5 s instead of 17 ms).
  An explicit OMP_WAIT_POLICY wins.
- glibc serves allocations of 1 MiB and more with their own mappings, returned to the system when freed. Its default
  threshold adapts upwards, so the encoder's activations (a few MiB each, every batch a different size) land in the
  heap, fragment it, and the resident set creeps up batch after batch: ingesting 3x the corpus peaked 1.28 GB against
  0.88 GB with the fixed threshold (bench/ingest.py). An explicit MALLOC_MMAP_THRESHOLD_ wins; other C libraries
  are left alone.
"""

import ctypes
import ctypes.util
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt parameter number, glibc <malloc.h>


def _fix_mmap_threshold() -> bool:
    """Set glibc's M_MMAP_THRESHOLD (which also stops it adapting); False where there is no glibc or it refused."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


HEAP_TUNED = _fix_mmap_threshold()
