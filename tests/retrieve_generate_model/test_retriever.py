"""The retriever's question tower: LoRA on MiniLM, trained contrastively against frozen passage vectors."""

from __future__ import annotations

import numpy as np

from retrieve_generate_model.retriever import QueryEncoder, RetrieverTrainConfig, rank_of_evidence, train_retriever

TOPICS = ["volcano", "harbour", "violin", "glacier", "orchard", "lighthouse", "compiler", "telescope"]


def rows() -> list[dict]:
    """Questions that name their passage only by a code word the base encoder cannot know ("zq3" ...)."""
    out = []
    for i in range(len(TOPICS)):
        sources = [{"seg_id": f"s{j}", "doc_id": f"d{j}", "title": "", "section": "", "char_start": 0,
                    "char_end": 10, "score": 0.0, "text": f"Notes about the {TOPICS[j]}: its code is zq{j}."}
                   for j in (i, (i + 1) % len(TOPICS), (i + 2) % len(TOPICS))]
        out.append({"question": f"What is code zq{i} about?", "answerable": True, "relied": [0], "sources": sources})
    return out


def test_training_moves_the_evidence_up_and_round_trips(tmp_path, encoder):
    q = QueryEncoder(base=encoder)
    base = q.embed_queries(["What is code zq1 about?"])
    np.testing.assert_allclose(base, encoder.embed_queries(["What is code zq1 about?"]), atol=1e-5)  # B starts at 0
    before = rank_of_evidence(q, rows())
    history = train_retriever(rows(), q, RetrieverTrainConfig(epochs=6, batch_size=4, lr=3e-3), log=lambda _: None)
    after = rank_of_evidence(q, rows())
    assert history[-1]["loss"] < history[0]["loss"] and after["mrr"] >= before["mrr"]
    assert np.allclose(np.linalg.norm(q.embed_queries(["x", "y"]), axis=1), 1.0, atol=1e-5)
    q.save(tmp_path / "retriever")
    again = QueryEncoder.load(tmp_path / "retriever", base=encoder)
    np.testing.assert_allclose(again.embed_queries(["What is code zq3 about?"]),
                               q.embed_queries(["What is code zq3 about?"]), atol=1e-5)
    # the passage tower is untouched: the index's vectors stay valid
    np.testing.assert_allclose(encoder.embed_queries(["What is code zq1 about?"]), base, atol=1e-5)
    assert len(q.embed_queries([])) == 0
