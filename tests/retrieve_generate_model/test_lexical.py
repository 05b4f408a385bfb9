"""The learned lexical channel: term weights on MiniLM's token states, sparse scoring, training, save/load."""

from __future__ import annotations

import numpy as np
import torch

from retrieve_generate_model.lexical import (
    LexicalConfig,
    LexicalModel,
    LexicalTrainConfig,
    lexical_scores,
    mean_pooled,
    token_states,
    train_lexical,
    vocab_mask,
)

PASSAGES = [
    "The Bell Rock Lighthouse was built by Robert Stevenson between 1807 and 1810.",
    "Apples are pressed within days of picking, and the juice is kept cold.",
    "The lighthouse keeper logged every ship that passed the rock.",
]


def test_untrained_scores_count_shared_content_word_pieces(encoder):
    model = LexicalModel(LexicalConfig(init_weight=1.0), vocab_mask=vocab_mask(encoder))
    q = model.sparse(token_states(encoder, ["Who built the Bell Rock Lighthouse?"]), side="query")
    p = model.sparse(token_states(encoder, PASSAGES), side="passage")
    scores = lexical_scores(q, p)
    assert scores.shape == (1, 3) and int(np.argmax(scores[0])) == 0
    tok = encoder.model.tokenizer
    shared = set(tok("Who built the Bell Rock Lighthouse?")["input_ids"]) & set(tok(PASSAGES[0])["input_ids"])
    shared = {i for i in shared if model.vocab_mask[i] > 0}  # no [CLS]/[SEP], no punctuation
    assert np.isclose(scores[0, 0], len(shared), atol=1e-4)
    ids, weights = p[0]
    assert len(set(ids.tolist())) == len(ids) and (weights > 0).all()


def test_states_reproduce_the_dense_embedding(encoder):
    (ids, states), = token_states(encoder, [PASSAGES[0]])
    np.testing.assert_allclose(mean_pooled(states).numpy(), encoder.embed_passages([PASSAGES[0]])[0], atol=1e-5)
    assert ids[0] == encoder.model.tokenizer.cls_token_id and len(ids) == len(states)


def rows() -> list[dict]:
    """Questions that share one rare code word with their passage and common words with a distractor."""
    out = []
    codes = ["zqx", "vbn", "kjh", "wqp", "mnb", "plk"]
    for i, code in enumerate(codes):
        gold = f"Notes about item {code}: the engine was tested in the harbour."
        distractor = f"Notes about the engine tested in the harbour, item {codes[(i + 1) % len(codes)]}."
        sources = [{"seg_id": "g", "doc_id": "d", "title": "", "section": "", "char_start": 0, "char_end": 1,
                    "score": 0.0, "text": t} for t in (gold, distractor)]
        out.append({"question": f"Where was the engine of item {code} tested?", "answerable": True, "relied": [0],
                    "sources": sources})
    return out


def test_training_lowers_the_loss_and_round_trips(tmp_path, encoder):
    torch.manual_seed(0)
    model = LexicalModel(vocab_mask=vocab_mask(encoder))
    history = train_lexical(rows(), model, encoder, LexicalTrainConfig(epochs=15, batch_size=6, lr=0.02),
                            log=lambda _: None)
    assert history[-1]["loss"] < history[0]["loss"]
    model.save(tmp_path / "lexical")
    again = LexicalModel.load(tmp_path / "lexical", encoder)
    states = token_states(encoder, PASSAGES)
    a, b = model.sparse(states, "passage"), again.sparse(states, "passage")
    for (ids1, w1), (ids2, w2) in zip(a, b):
        np.testing.assert_array_equal(ids1, ids2)
        np.testing.assert_allclose(w1, w2, rtol=1e-6)
    assert float(again.alpha.detach()) == float(model.alpha.detach())
