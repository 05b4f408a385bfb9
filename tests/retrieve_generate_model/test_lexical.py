"""The learned lexical channel: term weights on MiniLM's token states, sparse scoring, training, save/load, and
exact fused retrieval over a memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieve_generate_model.lexical import (
    LexicalConfig,
    LexicalModel,
    LexicalTrainConfig,
    encode,
    fused_attention,
    lexical_scores,
    mean_pooled,
    sparse_matrix,
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
    assert float(again.alpha.detach()) == float(model.alpha.detach()) and torch.equal(again.idf, model.idf)
    # the idf comes from the training passages: a piece in every passage is common, a code word in one is rare
    tok = encoder.model.tokenizer
    common, rare = tok.convert_tokens_to_ids(["engine", "z"])  # "zqx" is z ##q ##x
    assert model.idf[rare] > model.idf[common] > 0 and model.fingerprint() == again.fingerprint()


def random_terms(rng: np.random.Generator, rows: int, vocab: int, per_row: int, empty: tuple[int, ...] = ()):
    """Sparse non-negative vectors, some rows empty (a question sharing no word with the memory)."""
    vectors = []
    for r in range(rows):
        ids = np.sort(rng.choice(vocab, size=0 if r in empty else per_row, replace=False)).astype(np.int32)
        vectors.append((ids, rng.uniform(0.1, 2.0, len(ids)).astype(np.float32)))
    return vectors


@pytest.mark.parametrize("n,k", [(37, 5), (6, 10)])  # k > N returns every key
def test_fused_attention_is_exact_over_the_whole_memory(n, k):
    rng = np.random.default_rng(n)
    vocab, scale, alpha = 50, 20.0, 0.7
    Q = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((4, 16)).astype(np.float32)), dim=1)
    K = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((n, 16)).astype(np.float32)), dim=1)
    q_terms, k_terms = random_terms(rng, 4, vocab, 3, empty=(2,)), random_terms(rng, n, vocab, 4, empty=(0, 1))
    rows, scores, log_z = fused_attention(Q, sparse_matrix(q_terms, vocab), K, sparse_matrix(k_terms, vocab), k,
                                          scale=scale, alpha=alpha)
    full = scale * (Q @ K.T).numpy() + alpha * lexical_scores(q_terms, k_terms, vocab)  # brute force (4, N)
    width = min(k, n)
    assert rows.shape == scores.shape == (4, width)
    for b in range(4):
        expected = np.argsort(-full[b], kind="stable")[:width]
        assert rows[b].tolist() == expected.tolist()
        np.testing.assert_allclose(scores[b].numpy(), full[b][expected], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(float(log_z[b]), np.logaddexp.reduce(full[b].astype(np.float64)), rtol=1e-5)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        fused_attention(Q, sparse_matrix(q_terms, vocab), K, sparse_matrix(k_terms, vocab), k, scale=scale,
                        alpha=-0.1)


def test_encode_is_one_pass_for_both_channels(encoder):
    model = LexicalModel(vocab_mask=vocab_mask(encoder))
    dense, terms = encode(encoder, model, PASSAGES, "passage")
    np.testing.assert_allclose(dense, encoder.embed_passages(PASSAGES), atol=1e-5)
    expected = model.sparse(token_states(encoder, PASSAGES), "passage")
    assert [t[0].tolist() for t in terms] == [e[0].tolist() for e in expected]
    empty_dense, empty_terms = encode(encoder, model, [], "query")
    assert empty_dense.shape == (0, encoder.dim) and empty_terms == []
    assert model.fingerprint() == LexicalModel(vocab_mask=vocab_mask(encoder)).fingerprint()
    with torch.no_grad():
        model.alpha += 0.5
    assert model.fingerprint() != LexicalModel(vocab_mask=vocab_mask(encoder)).fingerprint()
