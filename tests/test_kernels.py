"""The Numba kernels (kernels.py) against the NumPy reference (layers.py, optim.py).

For every hot op: the forward outputs and the backward gradients (for a random upstream
gradient) agree to 1e-10 relative in float64 and 1e-5 in float32, on odd shapes, on
non-contiguous views, with ignored targets and with dropout drawn from the same seed.
Finite-difference checks: test_layers.py for the primitives, here for the ops only the
numba backend composes its own way (linear, the fused MLP, embedding_backward).
"""
import inspect

import numpy as np
import pytest

from minirlhf import backend, kernels, layers, optim
from minirlhf.errors import MinirlhfError
from minirlhf.gradcheck import check_layer, max_abs_diff, rel_error

DTYPES = [np.float64, np.float32]
TOL = {np.float64: 1e-10, np.float32: 1e-5}


def assert_agree(got, want, dtype, what):
    """Same shape, same dtype (the input's), values within the dtype's tolerance."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != reference {want.shape}"
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, expected {np.dtype(dtype)}"
    rel = rel_error(got, want)
    assert rel < TOL[dtype], f"{what}: rel error {rel:.2e} (max abs diff {max_abs_diff(got, want):.2e})"


def check_op(op, args, rng, dtype, what, dout_view=None, reference=None):
    """Run op's forward and backward on both backends and compare every output.

    args are the forward's arguments (shared, so both backends see the same arrays);
    dout_view, if given, turns the upstream gradient into a non-contiguous view.
    Returns the kernels' forward output."""
    fwd_k, bwd_k = getattr(kernels, op + "_forward"), getattr(kernels, op + "_backward")
    fwd_l, bwd_l = getattr(layers, op + "_forward"), getattr(layers, op + "_backward")
    if reference is not None:  # a composite whose reference takes the numpy ops
        fwd_l = lambda *a: getattr(layers, op + "_forward")(*a, ops=reference)  # noqa: E731
    out_k, cache_k = fwd_k(*args)
    out_l, cache_l = fwd_l(*args)
    assert_agree(out_k, out_l, dtype, f"{what} forward")
    dout = rng.standard_normal(out_l.shape).astype(dtype)
    if dout_view is not None:
        dout = dout_view(dout)
    grads_k = bwd_k(dout, cache_k)
    grads_l = bwd_l(dout, cache_l)
    if not isinstance(grads_k, tuple):
        grads_k, grads_l = (grads_k,), (grads_l,)
    assert len(grads_k) == len(grads_l)
    for i, (g_k, g_l) in enumerate(zip(grads_k, grads_l)):
        assert_agree(g_k, g_l, dtype, f"{what} backward, gradient {i}")
    return out_k


def test_same_ops_and_signatures_as_reference():
    for op in backend.HOT_OPS:
        assert inspect.signature(getattr(kernels, op)) == inspect.signature(getattr(layers, op)), op
    assert backend.ops("numba").attention_forward is kernels.attention_forward


# ----------------------------------------------------------------------------
# LayerNorm, GELU, softmax


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 33, 48), (2, 3, 8), (1, 1, 7), (5, 13), (24,)])
def test_layernorm(rng, dtype, shape):
    C = shape[-1]
    x = (rng.standard_normal(shape) * 2.0 + 0.7).astype(dtype)
    w = (rng.standard_normal(C) + 1.0).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    check_op("layernorm", (x, w, b), rng, dtype, f"layernorm{shape}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_many_rows_and_eps(rng, dtype):
    """Enough rows for many dw, db reduction chunks (and a partial last one); a
    non-default eps."""
    x = (rng.standard_normal((3, 211, 40)) * 0.01).astype(dtype)  # small variance: eps matters
    w = (rng.standard_normal(40) + 1.0).astype(dtype)
    b = rng.standard_normal(40).astype(dtype)
    check_op("layernorm", (x, w, b, 1e-3), rng, dtype, "layernorm eps=1e-3")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 17, 40), (7,), (1, 1), ()])
def test_gelu(rng, dtype, shape):
    # Below x = -2.5 the float32 reference itself loses digits (see the next test), so
    # one-element shapes could fail on the reference's error rather than the kernel's.
    x = rng.uniform(-2.5, 4.0, size=shape).astype(dtype)
    check_op("gelu", (x,), rng, dtype, f"gelu{shape}")


def test_gelu_float32_accurate_where_the_reference_cancels():
    """layers.gelu_forward computes 1 + tanh(u) with tanh(u) ~ -1 for negative x, which
    in float32 loses digits (relative error 1e-5 at x = -3, 0.3 at x = -5); the kernel's
    x * sigmoid(2u) keeps ~1e-6. Truth: the float64 reference on the same inputs."""
    x = np.linspace(-6.0, -2.0, 41).astype(np.float32)
    truth = layers.gelu_forward(x.astype(np.float64))[0]
    kernel_error = np.abs(kernels.gelu_forward(x)[0] - truth) / np.abs(truth)
    reference_error = np.abs(layers.gelu_forward(x)[0] - truth) / np.abs(truth)
    assert kernel_error.max() < 1e-5 < 1e-2 < reference_error.max()


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_large_inputs(rng, dtype):
    """Large |x|: tanh saturates, the kernel's exp(-|2u|) underflows to 0; no NaN, no inf."""
    extremes = [-80.0, -30.0, -12.0, -9.0, 9.0, 12.0, 30.0, 80.0]
    x = np.concatenate([rng.standard_normal(200) * 3.0, extremes]).astype(dtype)
    out = check_op("gelu", (x,), rng, dtype, "gelu large |x|")
    assert np.isfinite(out).all()
    dx = kernels.gelu_backward(np.ones_like(x), kernels.gelu_forward(x)[1])
    assert np.isfinite(dx).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 37), (6, 256), (9,), (1, 1)])
def test_softmax(rng, dtype, shape):
    x = (rng.standard_normal(shape) * 3.0).astype(dtype)
    check_op("softmax", (x,), rng, dtype, f"softmax{shape}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_with_minus_inf(rng, dtype):
    """-inf entries (a causal mask) get probability exactly 0 and gradient 0."""
    T = 9
    x = (rng.standard_normal((2, T, T)) * 4.0).astype(dtype)
    x[:, np.triu(np.ones((T, T), dtype=bool), k=1)] = -np.inf
    y = check_op("softmax", (x,), rng, dtype, "softmax -inf")
    assert (y[:, np.triu(np.ones((T, T), dtype=bool), k=1)] == 0).all()


# ----------------------------------------------------------------------------
# Linear layers, the LM head's matmul, the fused MLP, the embedding's backward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, c_out", [((4, 33, 24), 40), ((7, 5), 3), ((1, 1, 1, 9), 1)])
def test_linear(rng, dtype, shape, c_out):
    x = (rng.standard_normal(shape) + 0.3).astype(dtype)
    w = rng.standard_normal((shape[-1], c_out)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    check_op("linear", (x, w, b), rng, dtype, f"linear{shape}x{c_out}")
    check_op("linear", (x[..., ::2], w[::2], b), rng, dtype, "linear on strided views",
             dout_view=lambda d: np.asfortranarray(d))


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_backward_by_blocks_of_columns(rng, dtype, monkeypatch):
    """dw and db split into several blocks of columns (and a partial last one), each
    block's bias gradient summed by _column_sums, against the reference; the sums alone
    against NumPy's, on rows a power of two apart (the MLP's 4C columns)."""
    monkeypatch.setattr(kernels, "_COLUMNS", 16)
    x = rng.standard_normal((3, 11, 8)).astype(dtype)
    w, b = rng.standard_normal((8, 40)).astype(dtype), rng.standard_normal(40).astype(dtype)
    check_op("linear", (x, w, b), rng, dtype, "linear with 3 blocks of columns")
    a = rng.standard_normal((70, 64)).astype(dtype)
    sums = np.full(64, np.nan, dtype)
    for c0, c1 in ((0, 16), (16, 64)):
        kernels._column_sums(a, c0, c1, sums)
    assert_agree(sums, a.sum(axis=0), dtype, "column sums")


def test_linear_bad_shapes(rng):
    with pytest.raises(MinirlhfError, match="linear"):
        kernels.linear_forward(rng.standard_normal((2, 5)), rng.standard_normal((4, 3)), np.zeros(3))
    with pytest.raises(MinirlhfError, match="linear"):
        kernels.linear_forward(rng.standard_normal((2, 4)), rng.standard_normal((4, 3)), np.zeros(4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul(rng, dtype):
    h = rng.standard_normal((3, 50, 16)).astype(dtype)
    wte = rng.standard_normal((37, 16)).astype(dtype)
    assert_agree(kernels.matmul(h, wte.T), layers.matmul(h, wte.T), dtype, "h @ wte.T")
    d = rng.standard_normal((150, 37)).astype(dtype)
    assert_agree(kernels.matmul(d.T, h.reshape(-1, 16)), d.T @ h.reshape(-1, 16), dtype, "d.T @ h")
    v = rng.standard_normal(16).astype(dtype)
    assert_agree(kernels.matmul(h, v), h @ v, dtype, "a matrix times a vector (NumPy's own path)")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 21, 12), (300, 8), (1, 1, 4)])
def test_mlp(rng, dtype, shape, monkeypatch):
    """The fused MLP (blocks of rows, GELU recomputed in the backward) against
    layers.mlp_forward composed from the NumPy ops. Small row blocks, so a call has
    several blocks and a partial last one."""
    monkeypatch.setattr(kernels, "_MLP_ROWS", 16)
    C = shape[-1]
    x = (rng.standard_normal(shape) * 1.5).astype(dtype)
    params = (rng.standard_normal((C, 4 * C)) * 0.5, rng.standard_normal(4 * C) * 0.3,
              rng.standard_normal((4 * C, C)) * 0.5, rng.standard_normal(C) * 0.3)
    check_op("mlp", (x, *[a.astype(dtype) for a in params]), rng, dtype, f"mlp{shape}",
             reference=backend.ops("numpy"))


@pytest.mark.parametrize("op, make_args", [
    ("linear", lambda rng: [rng.standard_normal((2, 3, 5)) + 0.3, rng.standard_normal((5, 7)), rng.standard_normal(7)]),
    ("mlp", lambda rng: [rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 16)) * 0.5,
                         rng.standard_normal(16) * 0.1, rng.standard_normal((16, 4)) * 0.5, rng.standard_normal(4) * 0.1]),
])  # fmt: skip
def test_fused_ops_against_finite_differences(rng, op, make_args):
    forward, backward = getattr(kernels, op + "_forward"), getattr(kernels, op + "_backward")
    for i, rel, diff in check_layer(forward, backward, make_args(rng), rng):
        assert rel < 1e-6, f"{op}: input {i} rel error {rel:.2e} (max abs diff {diff:.2e})"


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_backward(rng, dtype):
    """Repeated tokens sum their gradients; positions start at pos0 (KV-cache offsets)."""
    V, T_max, C = 11, 9, 6
    idx = rng.integers(0, V, size=(4, 5))
    idx[:, 0] = 3  # one token many times
    wte, wpe = rng.standard_normal((V, C)).astype(dtype), rng.standard_normal((T_max, C)).astype(dtype)
    for pos0 in (0, 4):
        _, cache = layers.embedding_forward(idx, wte, wpe, pos0)
        dout = rng.standard_normal((4, 5, C)).astype(dtype)
        for got, want, name in zip(kernels.embedding_backward(dout, cache), layers.embedding_backward(dout, cache),
                                   ("dwte", "dwpe")):  # fmt: skip
            assert_agree(got, want, dtype, f"embedding {name} pos0={pos0}")


# ----------------------------------------------------------------------------
# AdamW, fused


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_update_matches_reference(rng, dtype):
    """kernels.adamw_update (one pass) against optim.adamw_update (NumPy, a pass per
    formula) over several steps, with a decay mask, on a buffer of several items."""
    n = 3 * kernels._ELEMENTS_PER_ITEM + 17
    decay = rng.random(n) < 0.7
    p0 = rng.standard_normal(n).astype(dtype)
    states = [[p0.copy(), np.zeros(n, dtype), np.zeros(n, dtype)] for _ in range(2)]
    for t in range(1, 4):
        g = rng.standard_normal(n).astype(dtype)
        for update, (p, m, v) in zip((kernels.adamw_update, optim.adamw_update), states):
            update(p, g, m, v, decay, t, 3e-3, 0.9, 0.95, 1e-8, 0.1)
    for (got, want), name in zip(zip(*states), ("p", "m", "v")):
        assert_agree(got, want, dtype, f"AdamW {name}")
    assert not np.allclose(states[0][0], p0)


# ----------------------------------------------------------------------------
# Attention


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "B, T, C, H",
    [
        (2, 16, 32, 4),  # plain
        (2, 1, 12, 3),  # a single token
        (3, 37, 24, 3),  # T not a multiple of anything, head size 8
        (2, 23, 20, 1),  # a single head, C not a power of two
        (1, 5, 6, 6),  # head size 1
        (2, 80, 48, 2),  # long rows, and enough work to be split between threads
    ],
)
def test_attention(rng, dtype, B, T, C, H):
    qkv = (rng.standard_normal((B, T, 3 * C)) * 1.3).astype(dtype)
    check_op("attention", (qkv, H), rng, dtype, f"attention B={B} T={T} C={C} H={H}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_attention_many_blocks_and_parts(rng, dtype, causal, dropout, monkeypatch):
    """Small causal blocks and every call split between threads: a sequence spans many
    query blocks (the last one partial, T not a multiple of the block), as base's
    T = 256 does, and the batch is cut into parts of one or two sequences. Causal and
    bidirectional (the masked LM's), with and without dropout, against the reference."""
    monkeypatch.setattr(kernels, "_CAUSAL_BLOCK", 8)
    monkeypatch.setattr(kernels, "_MIN_PARALLEL_WORK", 0)
    monkeypatch.setattr(kernels, "THREADS", 2)  # 8 parts for 11 sequences
    B, T, C, H = 11, 45, 12, 3
    qkv = (rng.standard_normal((B, T, 3 * C)) * 1.3).astype(dtype)
    out_k, cache_k = kernels.attention_forward(qkv, H, dropout, np.random.default_rng(4), causal=causal)
    out_l, cache_l = layers.attention_forward(qkv, H, dropout, np.random.default_rng(4), causal=causal)
    assert_agree(out_k, out_l, dtype, f"attention forward, many blocks, causal={causal}")
    dout = rng.standard_normal(out_l.shape).astype(dtype)
    assert_agree(kernels.attention_backward(dout, cache_k), layers.attention_backward(dout, cache_l), dtype,
                 f"attention backward, many blocks, causal={causal}")


@pytest.mark.parametrize("causal", [True, False])
def test_attention_keeps_the_reference_weights_of_its_blocks_only(rng, causal, monkeypatch):
    """The forward keeps the softmax weights for the backward, as the reference does, but
    only the query blocks' keys 0..r1-1: for block [r0, r1) the reference's weights
    P[:, :, r0:r1, :r1] (0 above the diagonal), not the masked rest of the T x T."""
    monkeypatch.setattr(kernels, "_CAUSAL_BLOCK", 8)
    B, T, C, H = 2, 21, 12, 3
    qkv = rng.standard_normal((B, T, 3 * C))
    _, (_, blocks, *_) = kernels.attention_forward(qkv, H, causal=causal)
    _, ((_, _, _, weights, _), _) = layers.attention_forward(qkv, H, causal=causal)
    spans = [(0, 8), (8, 16), (16, 21)] if causal else [(0, T)]
    assert [w.shape for w in blocks] == [(B, H, r1 - r0, r1) for r0, r1 in spans]
    for (r0, r1), w in zip(spans, blocks):
        np.testing.assert_allclose(w, weights[:, :, r0:r1, :r1], rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t, pos0", [(1, 0), (1, 13), (4, 0), (3, 9)])
def test_kv_cache_attention(rng, dtype, t, pos0):
    """Generation's attention: the same output as the reference, and the same keys and
    values written into the cache (one new token, or a prompt of several)."""
    B, C, H, T_max = 3, 12, 3, 16
    qkv = (rng.standard_normal((B, t, 3 * C)) * 1.3).astype(dtype)
    cache = rng.standard_normal((2, B, H, T_max, C // H)).astype(dtype)
    kv_k, kv_l = (cache[0].copy(), cache[1].copy()), (cache[0].copy(), cache[1].copy())
    out = kernels.kv_cache_attention_forward(qkv, H, kv_k, pos0)
    assert_agree(out, layers.kv_cache_attention_forward(qkv, H, kv_l, pos0), dtype, f"kv-cache attention t={t}")
    for got, want in zip(kv_k, kv_l):
        np.testing.assert_array_equal(got, want)


def test_kv_cache_attention_unusual_buffers_use_the_reference(rng):
    """A cache of another dtype than qkv (or a strided one) goes to the reference."""
    qkv = rng.standard_normal((2, 1, 3 * 8)).astype(np.float32)
    kv = (np.zeros((2, 2, 5, 4)), np.zeros((2, 2, 5, 4)))  # float64 buffers
    want = layers.kv_cache_attention_forward(qkv, 2, (kv[0].copy(), kv[1].copy()), 2)
    np.testing.assert_array_equal(kernels.kv_cache_attention_forward(qkv, 2, kv, 2), want)
    assert kv[0][:, :, 2].any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_dropout_same_seed_same_result(rng, dtype):
    """Both backends draw the mask with layers.dropout_mask from the generator they are
    given, so the same seed drops the same weights, and uses up the generator equally."""
    B, T, C, H = 2, 19, 24, 2
    qkv = rng.standard_normal((B, T, 3 * C)).astype(dtype)
    rng_k, rng_l = np.random.default_rng(7), np.random.default_rng(7)
    out_k, cache_k = kernels.attention_forward(qkv, H, 0.3, rng_k)
    out_l, cache_l = layers.attention_forward(qkv, H, 0.3, rng_l)
    assert_agree(out_k, out_l, dtype, "attention+dropout forward")
    assert rng_k.random() == rng_l.random()  # same number of draws
    dout = rng.standard_normal(out_l.shape).astype(dtype)
    assert_agree(kernels.attention_backward(dout, cache_k), layers.attention_backward(dout, cache_l), dtype,
                 "attention+dropout backward")
    no_drop, _ = kernels.attention_forward(qkv, H)
    assert not np.allclose(out_k, no_drop)  # the mask did something
    same, _ = kernels.attention_forward(qkv, H, 0.3, None)  # no generator: dropout off
    np.testing.assert_array_equal(same, no_drop)


def test_attention_is_causal(rng):
    qkv = rng.standard_normal((1, 8, 3 * 8))
    out, _ = kernels.attention_forward(qkv, 2)
    qkv2 = qkv.copy()
    qkv2[0, 5:] += 1.0
    out2, _ = kernels.attention_forward(qkv2, 2)
    np.testing.assert_array_equal(out[0, :5], out2[0, :5])


# ----------------------------------------------------------------------------
# Token log-probabilities


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 5, 11), (7, 64), (13,)])
def test_token_logprobs(rng, dtype, shape):
    V = shape[-1]
    logits = (rng.standard_normal(shape) * 2.0).astype(dtype)
    targets = rng.integers(0, V, size=shape[:-1])
    if targets.ndim:
        targets.reshape(-1)[::3] = -1  # every third position ignored
    logp = check_op("token_logprobs", (logits, targets), rng, dtype, f"token_logprobs{shape}")
    assert (logp[targets == -1] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_token_logprobs_large_logits_and_vocabulary(rng, dtype):
    """Logits of size 100 (exp would overflow without the max), and a GPT-2-sized vocabulary
    (a float32 sum of 50257 terms must still agree to 1e-5)."""
    logits = (rng.standard_normal((3, 4, 17)) * 100.0).astype(dtype)
    targets = rng.integers(0, 17, size=(3, 4))
    check_op("token_logprobs", (logits, targets), rng, dtype, "token_logprobs large logits")
    logits = (rng.standard_normal((3, 50257)) * 3.0).astype(dtype)
    targets = np.array([5, -1, 50256])
    check_op("token_logprobs", (logits, targets), rng, dtype, "token_logprobs V=50257")


def test_token_logprobs_all_ignored(rng):
    logits = rng.standard_normal((2, 3, 4))
    logp, cache = kernels.token_logprobs_forward(logits, -np.ones((2, 3), dtype=np.int64))
    assert not logp.any()
    assert not kernels.token_logprobs_backward(np.ones((2, 3)), cache).any()


def test_token_logprobs_bad_targets(rng):
    logits = rng.standard_normal((2, 5))
    with pytest.raises(MinirlhfError, match="targets"):
        kernels.token_logprobs_forward(logits, np.array([0, 5]))
    with pytest.raises(MinirlhfError, match="targets"):
        kernels.token_logprobs_forward(logits, np.array([0, -2]))
    with pytest.raises(MinirlhfError, match="shape"):
        kernels.token_logprobs_forward(logits, np.array([0, 1, 2]))


# ----------------------------------------------------------------------------
# The vectorised exp, NaN


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_nonpositive_matches_numpy(rng, dtype):
    """kernels._exp_nonpositive (range reduction + Taylor series, vectorised) against
    np.exp: ~1 ulp where the result is a normal number, 0 below EXP_MIN and at -inf,
    NaN stays NaN, and positive inputs (rounding excursions of x - max) give 1."""
    x = np.concatenate([-rng.random(5000) * 120, -rng.random(100) * 1e-6,
                        [0.0, -0.0, -0.3465, -0.3466, -0.6931, kernels.EXP_MIN + 1e-3]])
    x = x.astype(dtype)
    got = x.copy()
    kernels._exp_nonpositive(got)
    want = np.exp(x.astype(np.float64))
    normal = (x > kernels.EXP_MIN) & (want > np.finfo(dtype).tiny)
    rel = np.abs(got[normal] - want[normal]) / want[normal]
    assert rel.max() < {np.float64: 5e-16, np.float32: 1.5e-7}[dtype], rel.max()
    tiny = (x > kernels.EXP_MIN) & ~normal  # subnormal results: absolutely tiny errors
    assert np.abs(got[tiny] - want[tiny]).max(initial=0.0) <= 2 * np.finfo(dtype).smallest_subnormal
    assert (got[x < kernels.EXP_MIN] == 0).all()
    special = np.array([-np.inf, np.nan, 1e-3, 5.0], dtype)
    kernels._exp_nonpositive(special)
    assert special[0] == 0 and np.isnan(special[1]) and special[2] == 1 and special[3] == 1


def test_nan_spreads_like_the_reference(rng):
    """A NaN in the input must show up in the same outputs on both backends (the
    training loop stops on NaN losses, so a kernel must never hide one)."""
    x = rng.standard_normal((3, 5))
    x[1, 2] = np.nan
    qkv = rng.standard_normal((1, 4, 12))
    qkv[0, 1, 0] = np.nan
    for op, args in [("softmax", (x,)), ("gelu", (x,)), ("layernorm", (x, np.ones(5), np.zeros(5))),
                     ("token_logprobs", (x, np.array([0, 4, -1]))), ("attention", (qkv, 2))]:
        out_k, cache_k = getattr(kernels, op + "_forward")(*args)
        out_l, cache_l = getattr(layers, op + "_forward")(*args)
        np.testing.assert_array_equal(np.isnan(out_k), np.isnan(out_l), err_msg=op)
        assert np.isnan(out_k).any(), op
        dout = np.ones_like(out_l)
        g_k = getattr(kernels, op + "_backward")(dout, cache_k)
        g_l = getattr(layers, op + "_backward")(dout, cache_l)
        g_k, g_l = (g_k[0], g_l[0]) if isinstance(g_k, tuple) else (g_k, g_l)
        # (the reference's full T x T products also spread 0 * NaN to positions the
        # causal kernel never touches, so only "some NaN" is compared for gradients)
        assert np.isnan(g_k).any() and np.isnan(g_l).any(), f"{op} backward"


# ----------------------------------------------------------------------------
# Layouts, dtypes, threads


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(rng, dtype):
    """Strided and transposed views (of inputs and of upstream gradients) work."""
    big = (rng.standard_normal((3, 10, 40)) * 2.0 + 0.5).astype(dtype)
    x = big[:, ::2, 3:27]  # (3, 5, 24), strided on two axes
    w = (rng.standard_normal(48) + 1.0).astype(dtype)[::2]
    b = rng.standard_normal(24).astype(dtype)
    check_op("layernorm", (x, w, b), rng, dtype, "layernorm view", dout_view=lambda d: np.asfortranarray(d))
    check_op("gelu", (big[..., ::3],), rng, dtype, "gelu view")
    check_op("softmax", (big[0].T,), rng, dtype, "softmax transposed", dout_view=lambda d: d.T.copy().T)

    B, T, C, H = 2, 11, 16, 2
    wide = rng.standard_normal((B, 2 * T, 3 * C + 5)).astype(dtype)
    qkv = wide[:, ::2, 2 : 2 + 3 * C]  # a strided slice, as if cut from a bigger buffer
    assert not qkv.flags.c_contiguous
    check_op("attention", (qkv, H), rng, dtype, "attention view", dout_view=lambda d: np.asfortranarray(d))

    logits = rng.standard_normal((4, 6, 30)).astype(dtype)[:, ::2, :23]
    targets = rng.integers(0, 23, size=(4, 3))
    targets[0, 1] = -1
    check_op("token_logprobs", (logits, targets.T.copy().T), rng, dtype, "token_logprobs view",
             dout_view=lambda d: np.asfortranarray(d))


def test_integer_input_computes_in_float64():
    out, _ = kernels.gelu_forward(np.arange(-3, 4))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, layers.gelu_forward(np.arange(-3, 4))[0], rtol=1e-12)


def test_float32_upstream_gradient_keeps_float64(rng):
    """The gradient comes back in the forward's dtype even if dout is of another."""
    x = rng.standard_normal((3, 8))
    _, cache = kernels.softmax_forward(x)
    assert kernels.softmax_backward(np.ones((3, 8), np.float32), cache).dtype == np.float64


def test_upstream_gradient_of_the_wrong_shape(rng):
    """The kernels do not check their indices, so the wrappers check dout's shape."""
    x = rng.standard_normal((2, 3, 8))
    for op, args in [("layernorm", (x, np.ones(8), np.zeros(8))), ("gelu", (x,)), ("softmax", (x,)),
                     ("attention", (rng.standard_normal((2, 3, 24)), 2)),
                     ("token_logprobs", (x, np.zeros((2, 3), dtype=np.int64)))]:
        out, cache = getattr(kernels, op + "_forward")(*args)
        with pytest.raises(MinirlhfError, match="dout"):
            getattr(kernels, op + "_backward")(np.ones(out.size + 1), cache)
        with pytest.raises(MinirlhfError, match="dout"):
            getattr(kernels, op + "_backward")(np.ones(out.size), cache)  # right size, flattened


def test_bad_attention_shapes(rng):
    with pytest.raises(MinirlhfError, match="n_head"):
        kernels.attention_forward(rng.standard_normal((2, 4, 3 * 10)), 3)
    with pytest.raises(MinirlhfError, match="n_head"):
        kernels.attention_forward(rng.standard_normal((4, 3 * 8)), 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_results_do_not_depend_on_the_number_of_threads(rng, dtype, monkeypatch):
    """Calls split between threads give bit-identical results to one thread."""
    qkv = rng.standard_normal((2, 64, 3 * 64)).astype(dtype)
    x = rng.standard_normal((70, 33, 64)).astype(dtype)
    w, b = rng.standard_normal(64).astype(dtype), rng.standard_normal(64).astype(dtype)
    w_fc, b_fc = rng.standard_normal((64, 256)).astype(dtype) * 0.1, rng.standard_normal(256).astype(dtype)
    logits = rng.standard_normal((300, 257)).astype(dtype)
    targets = rng.integers(-1, 257, size=300)

    def run():
        out, cache = kernels.attention_forward(qkv, 4)
        results = [out, kernels.attention_backward(out, cache)]
        y, cache = kernels.layernorm_forward(x, w, b)
        results += [y, *kernels.layernorm_backward(x, cache)]
        y, cache = kernels.gelu_forward(x)
        results += [y, kernels.gelu_backward(x, cache)]
        y, cache = kernels.softmax_forward(x)
        results += [y, kernels.softmax_backward(x, cache)]
        lp, cache = kernels.token_logprobs_forward(logits, targets)
        results += [lp, kernels.token_logprobs_backward(lp, cache)]
        y, cache = kernels.linear_forward(x, w_fc, b_fc)
        results += [y, *kernels.linear_backward(y, cache), kernels.matmul(x, w_fc)]
        y, cache = kernels.mlp_forward(x, w_fc, b_fc, w_fc.T.copy(), b)
        results += [y, *kernels.mlp_backward(x, cache)]
        p, m, v = (a.copy() for a in (x.reshape(-1), np.zeros(x.size, dtype), np.zeros(x.size, dtype)))
        kernels.adamw_update(p, x.reshape(-1)[::-1], m, v, p > 0, 1, 1e-2, 0.9, 0.95, 1e-8, 0.1)
        return results + [p, m, v]

    monkeypatch.setattr(kernels, "_MIN_PARALLEL_WORK", 0)  # split even these small calls
    monkeypatch.setattr(kernels, "THREADS", 3)
    threaded = run()
    monkeypatch.setattr(kernels, "THREADS", 1)
    for a, b_ in zip(threaded, run()):
        np.testing.assert_array_equal(a, b_)


def test_parallel_hands_errors_to_the_caller(monkeypatch):
    """An exception in a part run by a helper thread is raised in the calling thread,
    and the helpers are still there for the next call."""
    monkeypatch.setattr(kernels, "THREADS", 3)
    done = []

    def kernel(lo, hi):
        if lo <= 5 < hi:
            raise ValueError("part with item 5")
        done.append((lo, hi))

    with pytest.raises(ValueError, match="item 5"):
        kernels._parallel(kernel, 12, 1 << 30)
    done.clear()
    kernels._parallel(lambda lo, hi: done.append((lo, hi)), 12, 1 << 30)
    assert sorted(done) == [(i, i + 1) for i in range(12)]
