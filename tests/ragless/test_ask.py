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


def test_an_index_with_the_lexical_channel_retrieves_by_the_exact_fused_score(tmp_path, encoder, lexical_checkpoint,
                                                                             capsys):
    import torch

    from ragless.components import lexical_channel, make_segmenter
    from ragless.ingest import IngestConfig, IngestJob
    from retrieve_generate_model.encoder import passage_text
    from retrieve_generate_model.lexical import lexical_scores, token_states

    checkpoint, model = lexical_checkpoint  # untrained, alpha 0.5
    paths = write_corpus(tmp_path / "corpus", 6)
    lexical = lexical_channel(str(checkpoint), encoder)
    IngestJob(tmp_path / "index", make_segmenter("fixed-window"), encoder, IngestConfig(batch_docs=4),
              lexical=lexical).run([str(p) for p in paths], progress=False)
    delete_documents(tmp_path / "index", [str(paths[1])])  # its rows stay in the shard, dead

    asker = Asker(tmp_path / "index", AskConfig(k=4, scale=20.0, answerer="prompted"))
    assert asker.lexical is not None and asker.reader.has_lexical
    questions = ["Which property does the violin number 2 have?", "telescope 4 fact 3"]
    got = asker.retrieve(questions)
    segments = list(asker.reader.iter_segments())  # the live ones: the deleted document's rows are not attended to
    texts = [passage_text(s.text, asker.reader.catalog[s.doc_id].title, s.section) for s in segments]
    p_terms = model.sparse(token_states(encoder, texts), "passage")  # recomputed from the text: what ingest stored
    q_terms = model.sparse(token_states(encoder, questions), "query")
    fused = 20.0 * encoder.embed_queries(questions) @ asker.reader.memory().T + 0.5 * lexical_scores(q_terms, p_terms)
    for b, sources in enumerate(got):
        best = np.argsort(-fused[b], kind="stable")[:4]
        assert [s.seg_id for s in sources] == [segments[i].seg_id for i in best]
        np.testing.assert_allclose([s.score for s in sources], fused[b][best] / 20.0, rtol=1e-4, atol=1e-4)
        expected = np.exp(fused[b][best] - np.logaddexp.reduce(fused[b].astype(np.float64)))
        np.testing.assert_allclose([s.weight for s in sources], expected, rtol=1e-3)

    with torch.no_grad():  # the checkpoint's channel changes after ingestion: the index must be re-made
        model.alpha.fill_(0.9)
    model.save(checkpoint / "lexical")
    with pytest.raises(ValueError, match="re-ingest"):
        Asker(tmp_path / "index", AskConfig(answerer="prompted"))
    from ragless.cli import main  # the command line says so and exits 2, without a traceback

    assert main(["ask", "--index", str(tmp_path / "index"), "violin?"]) == 2
    assert "re-ingest" in capsys.readouterr().err
