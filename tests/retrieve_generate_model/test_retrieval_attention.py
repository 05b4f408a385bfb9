"""The pure-torch retrieval attention against the unfused computation in float64, at irregular sizes."""

from __future__ import annotations

import pytest
import torch

from retrieve_generate_model.kernels.retrieval_attention import retrieval_attention_ref


def unfused(Q, K, k, valid=None, scale=1.0):
    """The whole (B, N) score matrix in float64: the definition the streamed version must match."""
    s = (Q.double() @ K.double().T) * scale
    if valid is not None:
        s = s.masked_fill(~valid, float("-inf"))
    log_z = torch.logsumexp(s, dim=1)
    # best first, lower index first among equals: sort by index, then stably by score
    scores, order = torch.sort(s, dim=1, descending=True, stable=True)
    width = min(k, K.shape[0])
    idx = order[:, :width].masked_fill(torch.isneginf(scores[:, :width]), -1)
    return idx, scores[:, :width], log_z


@pytest.mark.parametrize("B,N,d,k,block", [(1, 1, 8, 1, 4), (3, 1000, 24, 7, 97), (5, 257, 16, 300, 64),
                                           (2, 513, 384, 10, 100_000)])
def test_matches_the_unfused_definition_in_float32(B, N, d, k, block):
    g = torch.Generator().manual_seed(B * N + k)
    Q, K = torch.randn(B, d, generator=g), torch.randn(N, d, generator=g)
    idx, scores, log_z = retrieval_attention_ref(Q, K, k, scale=0.125, block_n=block)
    ref_idx, ref_scores, ref_log_z = unfused(Q, K, k, scale=0.125)
    assert idx.shape == scores.shape == (B, min(k, N)) and idx.dtype == torch.int64
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(scores.double(), ref_scores, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_z.double(), ref_log_z, rtol=1e-5, atol=1e-5)
    # the returned weights are normalized over all N keys, not over the k returned
    weights = torch.exp(scores.double() - log_z.double()[:, None])
    assert (weights.sum(1) <= 1 + 1e-6).all()
    if k >= N:
        torch.testing.assert_close(weights.sum(1), torch.ones(B, dtype=torch.float64), rtol=1e-5, atol=1e-5)


def test_ties_keep_the_lower_index_first_across_blocks():
    K = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    Q = torch.tensor([[1.0, 0.0]])
    for block in (1, 2, 3, 7):
        idx, scores, _ = retrieval_attention_ref(Q, K, 4, block_n=block)
        assert idx.tolist() == [[3, 0, 2, 4]] and scores.tolist() == [[2.0, 1.0, 1.0, 1.0]]


def test_masked_rows_are_neither_returned_nor_counted():
    g = torch.Generator().manual_seed(0)
    Q, K = torch.randn(4, 16, generator=g), torch.randn(300, 16, generator=g)
    valid = torch.rand(300, generator=g) > 0.3
    idx, scores, log_z = retrieval_attention_ref(Q, K, 20, valid=valid, block_n=37)
    ref_idx, ref_scores, ref_log_z = unfused(Q, K, 20, valid=valid)
    assert torch.equal(idx, ref_idx) and valid[idx].all()
    torch.testing.assert_close(log_z.double(), ref_log_z, rtol=1e-5, atol=1e-5)
    # fewer valid keys than k: the rest is -1 / -inf; none valid: log_z is -inf
    few = torch.zeros(300, dtype=torch.bool)
    few[[5, 250]] = True
    idx, scores, log_z = retrieval_attention_ref(Q, K, 4, valid=few, block_n=64)
    assert (idx[:, 2:] == -1).all() and torch.isneginf(scores[:, 2:]).all()
    assert sorted(idx[0, :2].tolist()) == [5, 250] and torch.isfinite(log_z).all()
    idx, scores, log_z = retrieval_attention_ref(Q, K, 3, valid=torch.zeros(300, dtype=torch.bool))
    assert (idx == -1).all() and torch.isneginf(scores).all() and torch.isneginf(log_z).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_are_at_least_as_accurate_as_plain_torch(dtype):
    g = torch.Generator().manual_seed(1)
    Q, K = torch.randn(6, 384, generator=g).to(dtype), torch.randn(1001, 384, generator=g).to(dtype)
    _, scores, log_z = retrieval_attention_ref(Q, K, 10, scale=384 ** -0.5, block_n=128)
    _, ref_scores, ref_log_z = unfused(Q, K, 10, scale=384 ** -0.5)  # the same low-precision inputs, in float64
    plain = (Q @ K.T).double() * 384 ** -0.5  # what plain torch computes at this dtype
    plain_error = (torch.sort(plain, dim=1, descending=True).values[:, :10] - ref_scores).abs().max()
    assert (scores.double() - ref_scores).abs().max() <= 2 * plain_error + 1e-6
    torch.testing.assert_close(log_z.double(), ref_log_z, rtol=1e-4, atol=1e-4)


def test_bad_input_is_refused_with_a_reason():
    Q, K = torch.randn(2, 8), torch.randn(5, 8)
    with pytest.raises(ValueError, match="same d"):
        retrieval_attention_ref(Q, torch.randn(5, 7), 1)
    with pytest.raises(ValueError, match="dtype"):
        retrieval_attention_ref(Q, K.double(), 1)
    with pytest.raises(ValueError, match="positive"):
        retrieval_attention_ref(Q, K, 0)
    with pytest.raises(ValueError, match="bool"):
        retrieval_attention_ref(Q, K, 1, valid=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty"):
        retrieval_attention_ref(Q, K[:0], 1)


def test_the_dispatcher_runs_the_reference_and_refuses_unknown_backends():
    from retrieve_generate_model.kernels import retrieval_attention

    g = torch.Generator().manual_seed(1)
    Q, K = torch.randn(2, 8, generator=g), torch.randn(50, 8, generator=g)
    for backend in ("auto", "torch"):
        got = retrieval_attention(Q, K, 3, scale=2.0, backend=backend)
        for a, b in zip(got, retrieval_attention_ref(Q, K, 3, scale=2.0)):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="backend"):
        retrieval_attention(Q, K, 3, backend="cuda-magic")


@pytest.mark.parametrize("block", [3, 7, 1000])
def test_many_ties_at_the_kth_score_take_the_lowest_indices(block):
    # integer scores in {0, 1, 2}: dozens of keys tie at the k-th score, inside blocks and across them
    g = torch.Generator().manual_seed(block)
    K = torch.randint(0, 3, (60, 1), generator=g).float()
    Q = torch.tensor([[1.0], [-1.0]])
    valid = torch.ones(60, dtype=torch.bool)
    valid[::5] = False
    for k in (1, 4, 13, 59):
        idx, scores, _ = retrieval_attention_ref(Q, K, k, valid=valid, block_n=block)
        ref_idx, ref_scores, _ = unfused(Q, K, k, valid=valid)
        assert torch.equal(idx, ref_idx) and torch.equal(scores.double(), ref_scores)
