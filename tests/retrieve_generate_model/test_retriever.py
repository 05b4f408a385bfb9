"""The retriever's question tower: LoRA on MiniLM, trained contrastively against frozen passage vectors, and
distilled from the generator's preferences."""

from __future__ import annotations

import numpy as np
import torch

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


def test_distillation_moves_the_retriever_toward_the_generators_preference(encoder):
    """Targets that prefer each row's second source (as if the generator answered best from it): trained on them
    alone, the question tower's distribution over each row's sources moves toward them (KL down by more than 30%) and
    ranks that source first more often."""
    torch.manual_seed(0)  # the adapters' initialization
    q = QueryEncoder(base=encoder)
    data = rows()
    targets = [[0.05, 0.9, 0.05] for _ in data]

    def second_first() -> float:
        return float(np.mean([int(np.argmax(p)) == 1 for p in preferences()]))

    def kl() -> float:  # KL(targets || the retriever's distribution over each row's sources)
        return float(np.mean([sum(t * np.log(t / x) for t, x in zip(target, p))
                              for target, p in zip(targets, preferences())]))

    def preferences() -> list[np.ndarray]:
        from retrieve_generate_model.encoder import passage_text

        out = []
        for row, vec in zip(data, q.embed_queries([r["question"] for r in data])):
            P = encoder.embed_passages([passage_text(s["text"], "", "") for s in row["sources"]])
            logits = q.config.scale * (P @ vec)
            out.append(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
        return out

    before, kl_before = second_first(), kl()
    cfg = RetrieverTrainConfig(epochs=8, batch_size=4, lr=3e-3, contrastive_weight=0.0, distill_weight=1.0)
    train_retriever(data, q, cfg, log=lambda _: None, targets=targets)
    assert second_first() > before and kl() < 0.7 * kl_before
