"""ragless: the application that composes the two models — store and index, ingestion, asking, CLI, evaluation.

Importing it sets one process default, before torch or faiss load: OpenMP threads wait passively. Spinning threads
take the cores from each other whenever anything else runs on the machine (measured on 2 busy cores: SmolLM2 decoding
~10x slower, a MiniLM query embedding 1.5 s instead of 17 ms). An explicit OMP_WAIT_POLICY wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
