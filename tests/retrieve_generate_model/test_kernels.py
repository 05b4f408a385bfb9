"""The Triton kernels against their pure-torch references, on CPU through Triton's interpreter.

Triton reads ``TRITON_INTERPRET`` when a ``@triton.jit`` function is defined, so it is set here, before any kernel
module is imported (the package imports them lazily, on the first kernel call). The interpreter runs every tile
operation as a numpy call, so the sizes are small and irregular (never multiples of the tiles) and the tiles are
small, to cross many tile and split boundaries.
"""

from __future__ import annotations

import os
import subprocess
import sys

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from retrieve_generate_model import kernels  # noqa: E402
from retrieve_generate_model.kernels import _triton  # noqa: E402
from retrieve_generate_model.kernels import retrieval_attention_triton as rat  # noqa: E402
from retrieve_generate_model.kernels import source_biased_attention_triton as sbat  # noqa: E402
from retrieve_generate_model.kernels.retrieval_attention import retrieval_attention_ref  # noqa: E402
from retrieve_generate_model.kernels.source_biased_attention import (  # noqa: E402
    key_bias,
    source_biased_attention_ref,
)

if not _triton.is_interpreted(rat._retrieval_topk_lse_kernel):
    pytest.skip("the kernel modules were imported before TRITON_INTERPRET=1 was set", allow_module_level=True)

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def exact_scores(Q, K, idx, scale):
    """float64 score of each returned (query, key) pair; -inf where no key was returned."""
    s = (Q.double() @ K.double().T) * scale
    got = torch.gather(s, 1, idx.clamp(min=0))
    return got.masked_fill(idx < 0, float("-inf"))


def assert_close_to_truth(got, plain, truth, floor=1e-6):
    """The STYLE rule: the kernel's error against float64 is at most about twice plain torch's at the same dtype."""
    err = (got.double() - truth).abs().max().item()
    plain_err = (plain.double() - truth).abs().max().item()
    assert err <= 2 * plain_err + floor, f"error {err:.3g} > 2 x plain torch's {plain_err:.3g} + {floor:g}"


def integer_data(B, N, d, dtype, seed, spread=2):
    """Small integers: every product and sum is exact in every dtype, so scores tie often and compare exactly."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.randint(-spread, spread + 1, (B, d), generator=g).to(dtype)
    K = torch.randint(-spread, spread + 1, (N, d), generator=g).to(dtype)
    return Q, K


# --- retrieval attention --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,d,k,splits,block_n", [(1, 1, 8, 1, 1, 16), (3, 1001, 24, 7, 3, 32),
                                                    (17, 300, 40, 33, 4, 16), (4, 45, 70, 60, 2, 16)])
def test_retrieval_is_exact_where_the_arithmetic_is(dtype, B, N, d, k, splits, block_n):
    """Integer data: the same indices (ties by lower index, across tiles and splits) and bit-equal scores as the
    reference; k > N returns all N; log_z within the STYLE tolerance."""
    Q, K = integer_data(B, N, d, dtype, seed=B * N + k)
    idx, scores, log_z = rat.retrieval_attention_triton(Q, K, k, scale=0.5, splits=splits, block_n=block_n)
    ref_idx, ref_scores, ref_log_z = retrieval_attention_ref(Q, K, k, scale=0.5)
    assert idx.shape == scores.shape == (B, min(k, N)) and idx.dtype == torch.int64 and scores.dtype == torch.float32
    assert torch.equal(idx, ref_idx) and torch.equal(scores, ref_scores)
    truth = torch.logsumexp((Q.double() @ K.double().T) * 0.5, dim=1)
    assert_close_to_truth(log_z, ref_log_z, truth)
    if k >= N:
        assert sorted(idx[0].tolist()) == list(range(N))
        weights = torch.exp(scores.double() - log_z.double()[:, None]).sum(1)
        torch.testing.assert_close(weights, torch.ones(B, dtype=torch.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_retrieval_on_random_data_is_as_accurate_as_plain_torch(dtype):
    g = torch.Generator().manual_seed(7)
    B, N, d, k, scale = 5, 1531, 48, 10, 48 ** -0.5
    Q, K = torch.randn(B, d, generator=g).to(dtype), torch.randn(N, d, generator=g).to(dtype)
    valid = torch.rand(N, generator=g) > 0.2
    idx, scores, log_z = rat.retrieval_attention_triton(Q, K, k, valid=valid, scale=scale, splits=3, block_n=64)
    ref_idx, ref_scores, _ = retrieval_attention_ref(Q, K, k, valid=valid, scale=scale)
    truth = ((Q.double() @ K.double().T) * scale).masked_fill(~valid, float("-inf"))  # the same rounded inputs
    truth_top = torch.sort(truth, dim=1, descending=True).values[:, :k]
    plain = ((Q @ K.T) * scale).masked_fill(~valid, float("-inf"))  # what plain torch computes at this dtype
    plain_top = torch.sort(plain.double(), dim=1, descending=True).values[:, :k]
    assert valid[idx].all()
    assert_close_to_truth(scores, plain_top, truth_top)
    # each returned score is its key's score; the order differs from the reference only among near-ties
    assert_close_to_truth(scores, plain_top, exact_scores(Q, K, idx, scale))
    differ = idx != ref_idx
    assert differ.float().mean() < 0.2
    assert ((scores - ref_scores).abs()[differ] <= 4 * (plain_top - truth_top).abs().max()).all()
    assert_close_to_truth(log_z, torch.logsumexp(plain.float(), 1), torch.logsumexp(truth, 1))


def test_ties_keep_the_lower_index_first_across_tiles_and_splits():
    K = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    K = torch.cat([K, torch.zeros(50, 2), K])  # keys 57..63 repeat 0..6, after a run of zero scores
    Q = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    for splits, block_n in ((1, 16), (2, 16), (4, 16), (1, 64)):
        idx, scores, _ = rat.retrieval_attention_triton(Q, K, 6, splits=splits, block_n=block_n)
        assert idx[0].tolist() == [3, 60, 0, 2, 4, 6] and scores[0].tolist() == [2.0, 2.0, 1.0, 1.0, 1.0, 1.0]
        assert idx[1].tolist() == [1, 5, 7, 8, 9, 10]  # score 0: the lowest indices first
        assert torch.equal(idx, retrieval_attention_ref(Q, K, 6)[0])


def test_duplicate_keys_tie_exactly():
    base_q, base = integer_data(3, 40, 24, torch.float32, seed=3, spread=3)
    g = torch.Generator().manual_seed(3)
    K = base[torch.randint(0, 40, (700,), generator=g)]  # every key appears ~17 times, over tiles and splits
    idx, scores, _ = rat.retrieval_attention_triton(base_q, K, 40, splits=3, block_n=32)
    ref_idx, ref_scores, _ = retrieval_attention_ref(base_q, K, 40)
    assert torch.equal(idx, ref_idx) and torch.equal(scores, ref_scores)
    rows = K[idx]  # the copies of one key come out together, the lower index first
    same = (rows[:, 1:] == rows[:, :-1]).all(-1)
    assert same.any() and (idx[:, 1:] > idx[:, :-1])[same].all()


def test_masked_rows_are_neither_returned_nor_counted():
    Q, K = integer_data(4, 300, 16, torch.float32, seed=0)
    g = torch.Generator().manual_seed(0)
    valid = torch.rand(300, generator=g) > 0.3
    valid[100:200] = False  # a whole split with nothing valid
    got = rat.retrieval_attention_triton(Q, K, 20, valid=valid, splits=3, block_n=32)
    ref = retrieval_attention_ref(Q, K, 20, valid=valid)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]) and valid[got[0]].all()
    torch.testing.assert_close(got[2], ref[2], rtol=1e-5, atol=1e-5)
    few = torch.zeros(300, dtype=torch.bool)
    few[[5, 250]] = True  # fewer valid keys than k: the rest is -1 / -inf
    idx, scores, log_z = rat.retrieval_attention_triton(Q, K, 4, valid=few, splits=2, block_n=64)
    assert (idx[:, 2:] == -1).all() and torch.isneginf(scores[:, 2:]).all()
    assert sorted(idx[0, :2].tolist()) == [5, 250] and torch.isfinite(log_z).all()
    torch.testing.assert_close(log_z, retrieval_attention_ref(Q, K, 4, valid=few)[2])
    idx, scores, log_z = rat.retrieval_attention_triton(Q, K, 3, valid=torch.zeros(300, dtype=torch.bool))
    assert (idx == -1).all() and torch.isneginf(scores).all() and torch.isneginf(log_z).all()


def test_the_kernel_states_its_limits():
    Q, K = integer_data(2, 400, 8, torch.float32, seed=1)
    with pytest.raises(ValueError, match="MAX_K"):
        rat.retrieval_attention_triton(Q, K, rat.MAX_K + 1)
    with pytest.raises(ValueError, match="MAX_K"):
        kernels.retrieval_attention(Q, K, rat.MAX_K + 1, backend="triton")
    # "auto" on CPU is the reference, which has no such limit
    got = kernels.retrieval_attention(Q, K, rat.MAX_K + 1, backend="auto")
    assert torch.equal(got[0], retrieval_attention_ref(Q, K, rat.MAX_K + 1)[0])
    with pytest.raises(ValueError, match="same d"):
        rat.retrieval_attention_triton(Q, torch.randn(5, 7), 1)


# --- the dispatchers -----------------------------------------------------------------------------------------------


def test_dispatcher_backends(monkeypatch):
    Q, K = integer_data(3, 90, 12, torch.float32, seed=2)
    ref = retrieval_attention_ref(Q, K, 5, scale=2.0)
    for backend in ("torch", "triton"):
        got = kernels.retrieval_attention(Q, K, 5, scale=2.0, backend=backend)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    with pytest.raises(ValueError, match="backend"):
        kernels.retrieval_attention(Q, K, 5, backend="cuda-magic")
    with pytest.raises(ValueError, match="backend"):
        kernels.source_biased_attention(*sba_inputs(torch.float32, 1, 1, 2, 3, 4, 2, seed=0), backend="cuda")

    def no_kernel(module):
        raise AssertionError(f"'auto' on CPU must not load the kernel module {module}")

    monkeypatch.setattr(kernels, "load", no_kernel)
    got = kernels.retrieval_attention(Q, K, 5, scale=2.0, backend="auto")
    assert all(torch.equal(a, b) for a, b in zip(got, ref))
    inputs = sba_inputs(torch.float32, 2, 2, 5, 7, 8, 3, seed=0)
    assert torch.equal(kernels.source_biased_attention(*inputs), source_biased_attention_ref(*inputs))


def test_triton_backend_without_triton_says_so(monkeypatch):
    monkeypatch.setattr(_triton, "triton_installed", lambda: False)
    Q, K = integer_data(1, 10, 4, torch.float32, seed=0)
    with pytest.raises(_triton.TritonUnavailable, match="not installed"):
        kernels.retrieval_attention(Q, K, 2, backend="triton")
    assert torch.equal(kernels.retrieval_attention(Q, K, 2)[0], retrieval_attention_ref(Q, K, 2)[0])


def test_cpu_launch_without_the_interpreter_is_refused_with_the_reason():
    def compiled_kernel():  # stands for a @triton.jit function made without TRITON_INTERPRET=1
        pass

    with pytest.raises(_triton.TritonUnavailable, match="TRITON_INTERPRET=1"):
        _triton.check_launchable(compiled_kernel, torch.zeros(2))
    with pytest.raises(ValueError, match="one device"):
        _triton.check_launchable(compiled_kernel, torch.zeros(2), torch.zeros(2, device="meta"))


def test_a_process_without_the_interpreter_gets_the_reason_not_a_driver_error():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    code = ("import torch\n"
            "from retrieve_generate_model.kernels import TritonUnavailable, retrieval_attention\n"
            "try:\n"
            "    retrieval_attention(torch.ones(1, 4), torch.ones(3, 4), 1, backend='triton')\n"
            "except TritonUnavailable as e:\n"
            "    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "set TRITON_INTERPRET=1" in done.stdout, done.stderr[-2000:]


# --- source-biased attention ---------------------------------------------------------------------------------------


def sba_inputs(dtype, B, H, M, N, D, S, seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, D, generator=g).to(dtype) for n in (M, N, N))
    source_ids = torch.randint(-1, S, (B, N), generator=g)  # -1: keys of no source
    source_bias = torch.randn(B, S, generator=g) * 2
    if requires_grad:
        for t in (q, k, v, source_bias):
            t.requires_grad_(True)
    return q, k, v, source_ids, source_bias


def forward_backward(fn, q, k, v, source_ids, source_bias, d_out):
    out = fn(q, k, v, source_ids, source_bias)
    # with no sources (S == 0) the reference does not use source_bias: its gradient is then an empty zeros tensor
    return (out, *torch.autograd.grad(out, (q, k, v, source_bias), d_out, allow_unused=True, materialize_grads=True))


def plain_attention(q, k, v, source_ids, source_bias, causal=False):
    """Plain torch at the inputs' own dtype, the bias added to the logits: the baseline of the STYLE rule."""
    bias = key_bias(source_ids, source_bias).to(q.dtype)
    logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + bias[:, None, None, :]
    if causal:
        logits = logits.masked_fill(torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(logits, dim=-1) @ v


@pytest.mark.parametrize("dtype,blocks", [(torch.float32, (16, 16)), (torch.float16, (32, 16)),
                                          (torch.bfloat16, (16, 32))])
def test_source_biased_attention_forward_and_backward(dtype, blocks):
    B, H, M, N, D, S = 2, 3, 37, 75, 24, 5
    inputs = sba_inputs(dtype, B, H, M, N, D, S, seed=11, requires_grad=True)
    d_out = torch.randn(B, H, M, D, generator=torch.Generator().manual_seed(12)).to(dtype)
    got = forward_backward(lambda *a: sbat.source_biased_attention_triton(*a, blocks=blocks), *inputs, d_out)
    wide = [t.detach().double().requires_grad_(t.requires_grad) for t in inputs]
    wide[3] = inputs[3]
    truth = forward_backward(source_biased_attention_ref, *wide, d_out.double())
    plain = forward_backward(plain_attention, *inputs, d_out)
    names = ("out", "dq", "dk", "dv", "d_source_bias")
    for name, a, p, t in zip(names, got, plain, truth):
        assert a.dtype == p.dtype and a.shape == t.shape, name
        assert_close_to_truth(a, p, t, floor=1e-5)
    assert got[4].abs().sum() > 0  # the retrieval scores do get a gradient


@pytest.mark.parametrize("dtype,blocks", [(torch.float32, (16, 16)), (torch.float16, (16, 32)),
                                          (torch.bfloat16, (32, 16))])
def test_causal_source_biased_attention_forward_and_backward(dtype, blocks):
    """Self-attention over the sequence's own tokens: the tiles above the diagonal are skipped and the diagonal ones
    masked, with BLOCK_M != BLOCK_N so that the diagonal crosses tiles unevenly and N is no multiple of either."""
    B, H, N, D, S = 2, 2, 45, 16, 4
    inputs = sba_inputs(dtype, B, H, N, N, D, S, seed=21, requires_grad=True)
    d_out = torch.randn(B, H, N, D, generator=torch.Generator().manual_seed(22)).to(dtype)
    got = forward_backward(lambda *a: sbat.source_biased_attention_triton(*a, causal=True, blocks=blocks),
                           *inputs, d_out)
    wide = [t.detach().double().requires_grad_(t.requires_grad) for t in inputs]
    wide[3] = inputs[3]
    truth = forward_backward(lambda *a: source_biased_attention_ref(*a, causal=True), *wide, d_out.double())
    plain = forward_backward(lambda *a: plain_attention(*a, causal=True), *inputs, d_out)
    for name, a, p, t in zip(("out", "dq", "dk", "dv", "d_source_bias"), got, plain, truth):
        assert a.dtype == p.dtype and a.shape == t.shape, name
        assert_close_to_truth(a, p, t, floor=1e-5)
    assert got[4].abs().sum() > 0
    # the last key is seen by the last query alone: its gradient comes from that query's row only
    q, k, v, source_ids, source_bias = inputs
    alone = sbat.source_biased_attention_triton(q[:, :, -1:].detach(), k.detach(), v.detach(), source_ids,
                                                source_bias.detach(), blocks=blocks)
    torch.testing.assert_close(got[0][:, :, -1:].float(), alone.float(), rtol=1e-2, atol=1e-2)


def test_causal_reference_is_torch_sdpa_with_the_bias_as_mask_and_refuses_cross_attention():
    q, k, v, source_ids, source_bias = sba_inputs(torch.float32, 2, 3, 11, 11, 8, 3, seed=23)
    mask = key_bias(source_ids, source_bias)[:, None, None, :].expand(2, 1, 11, 11)
    mask = mask.masked_fill(torch.ones(11, 11, dtype=torch.bool).triu(1), float("-inf"))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(source_biased_attention_ref(q, k, v, source_ids, source_bias, causal=True), want)
    one = sba_inputs(torch.float32, 1, 1, 1, 1, 8, 1, seed=24)  # a single token sees itself
    torch.testing.assert_close(sbat.source_biased_attention_triton(*one, causal=True), one[2])
    cross = sba_inputs(torch.float32, 1, 1, 4, 6, 8, 2, seed=25)
    for fn in (source_biased_attention_ref, sbat.source_biased_attention_triton):
        with pytest.raises(ValueError, match="M == N"):
            fn(*cross, causal=True)
    with pytest.raises(ValueError, match="M == N"):
        kernels.source_biased_attention(*cross, causal=True)


def test_source_biased_attention_edges():
    # one query, one key; no sources at all (every id -1); a source masked by a -inf bias
    for B, H, M, N, D, S in ((1, 1, 1, 1, 8, 1), (2, 1, 5, 9, 16, 0)):
        inputs = sba_inputs(torch.float32, B, H, M, N, D, S, seed=5, requires_grad=True)
        d_out = torch.randn(B, H, M, D)
        got = forward_backward(sbat.source_biased_attention_triton, *inputs, d_out)
        ref = forward_backward(source_biased_attention_ref, *inputs, d_out)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    q, k, v, source_ids, source_bias = sba_inputs(torch.float32, 1, 2, 6, 20, 8, 3, seed=6)
    source_ids[0, :5] = 2
    source_bias[0, 2] = float("-inf")
    source_bias.requires_grad_(True)
    out = sbat.source_biased_attention_triton(q, k, v, source_ids, source_bias)
    ref = source_biased_attention_ref(q, k, v, source_ids, source_bias)
    torch.testing.assert_close(out, ref)
    (grad,) = torch.autograd.grad((out * v[:, :, :6]).sum(), source_bias)
    (ref_grad,) = torch.autograd.grad((ref * v[:, :, :6]).sum(), source_bias)
    assert grad[0, 2] == 0 and torch.isfinite(grad).all()
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


def test_source_biased_attention_reference_gradcheck():
    q, k, v, source_ids, source_bias = (t.double() if t.is_floating_point() else t
                                        for t in sba_inputs(torch.float32, 2, 1, 3, 5, 4, 3, seed=8))
    args = [t.requires_grad_(True) for t in (q, k, v, source_bias)]
    assert torch.autograd.gradcheck(lambda q, k, v, b: source_biased_attention_ref(q, k, v, source_ids, b), args)
    q, k, v, source_ids, source_bias = (t.double() if t.is_floating_point() else t
                                        for t in sba_inputs(torch.float32, 2, 2, 5, 5, 4, 3, seed=18))
    args = [t.requires_grad_(True) for t in (q, k, v, source_bias)]
    assert torch.autograd.gradcheck(
        lambda q, k, v, b: source_biased_attention_ref(q, k, v, source_ids, b, causal=True), args)


def test_source_biased_dispatcher_runs_the_kernel_on_request():
    inputs = sba_inputs(torch.float32, 1, 2, 9, 13, 16, 2, seed=9)
    got = kernels.source_biased_attention(*inputs, backend="triton")
    torch.testing.assert_close(got, source_biased_attention_ref(*inputs), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kernels.source_biased_attention(*inputs, backend="torch"),
                               source_biased_attention_ref(*inputs))
    square = sba_inputs(torch.float32, 1, 2, 13, 13, 16, 2, seed=19)
    torch.testing.assert_close(kernels.source_biased_attention(*square, causal=True, backend="triton"),
                               source_biased_attention_ref(*square, causal=True), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="source_ids"):
        kernels.source_biased_attention(*inputs[:3], inputs[3] + 5, inputs[4], backend="triton")
