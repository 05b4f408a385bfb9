"""Retrieval in `Asker`: attention over the segment memory, the same top-k as exact search, weights over the memory."""

from __future__ import annotations

import numpy as np
import pytest

from ragless.ask import AskConfig, Asker
from ragless.ingest import delete_documents
from tests.ragless.test_ingest import ingest, write_corpus


@pytest.fixture()
def index(tmp_path, encoder):
    paths = write_corpus(tmp_path / "corpus", 8)
    ingest(tmp_path / "index", paths, encoder)
    delete_documents(tmp_path / "index", [str(paths[0])])  # a deleted document's rows must not be attended to
    return tmp_path / "index"


def test_retrieval_attention_matches_exact_search_and_normalizes_over_the_memory(index):
    asker = Asker(index, AskConfig(k=5, scale=20.0, answerer="prompted"))  # the index encoder asks
    questions = ["Which property does the violin number 2 have?", "harbour facts", "telescope 7"]
    got = asker.retrieve(questions)
    exact = asker.reader.search(asker.encoder.embed_queries(questions), 5)  # FAISS, exact inner product
    memory = asker.reader.memory()
    assert memory.shape == (len(asker.reader), asker.reader.dim)
    live = {s.seg_id for s in asker.reader.iter_segments()}
    for sources, hits, q in zip(got, exact, asker.encoder.embed_queries(questions)):
        assert [s.seg_id for s in sources] == [h.segment.seg_id for h in hits]
        assert all(s.seg_id in live for s in sources)
        np.testing.assert_allclose([s.score for s in sources], [h.score for h in hits], atol=1e-5)
        all_scores = 20.0 * memory @ q
        expected = np.exp(20.0 * np.array([h.score for h in hits]) - np.logaddexp.reduce(all_scores))
        np.testing.assert_allclose([s.weight for s in sources], expected, rtol=1e-4)
        assert 0 < sum(s.weight for s in sources) <= 1 + 1e-6  # the k weights are a part of one distribution
    assert asker.retrieve([]) == [] and len(asker.retrieve(["x"], k=1000)[0]) == len(asker.reader)
