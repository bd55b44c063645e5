"""The GPT's layers as forward/backward pairs, in plain NumPy.

Every layer is a pair of functions, the shape CS231n and llm.c use:

    out, cache = x_forward(inputs...)        # compute, and remember what backward needs
    grads      = x_backward(dout, cache)     # dL/dinputs, given dL/dout

so each can be checked alone against finite differences (see `gradcheck.py`), and the
model (`model.py`) is nothing but their composition. No autograd: every backward is
derived by hand, and the derivation is written next to it.

Shapes: B batch, T time (tokens), C channels (n_embd), H heads, D = C // H head size,
V vocabulary. Every function works in the dtype of its inputs (float32 or float64).

The "hot" ops (linear, matmul, layernorm, gelu, softmax, attention, token_logprobs,
embedding_backward, and the MLP) also have fast versions in `kernels.py` with the
same signatures; `backend.py` chooses one set. The composite layers here (`mlp`,
`block`) call the primitives through `ops`, so one composition runs on either backend
(the numba backend replaces `mlp` as a whole: it fuses its three steps).
"""
import math

import numpy as np

from minirlhf.errors import MinirlhfError

# ----------------------------------------------------------------------------
# Token + position embedding


def embedding_forward(idx, wte, wpe, pos0=0):
    """x[b, t] = wte[idx[b, t]] + wpe[pos0 + t].

    idx (B, T) int, wte (V, C), wpe (T_max, C) -> out (B, T, C). `pos0` is where the
    tokens start in the sequence (non-zero only when generating with a KV cache).
    """
    T = idx.shape[1]
    out = wte[idx] + wpe[pos0 : pos0 + T]  # (B, T, C)
    return out, (idx, wte.shape, wpe.shape, pos0)


def embedding_backward(dout, cache):
    """A lookup is a sparse matmul with a one-hot matrix, so its gradient scatters:
    each row of dout is added to the wte row of the token it came from (a token seen
    twice gets both contributions, hence `np.add.at` rather than fancy assignment).

    dout (B, T, C) -> dwte (V, C), dwpe (T_max, C).
    """
    idx, wte_shape, wpe_shape, pos0 = cache
    C = dout.shape[-1]
    dwte = np.zeros(wte_shape, dtype=dout.dtype)
    np.add.at(dwte, idx.reshape(-1), dout.reshape(-1, C))
    dwpe = np.zeros(wpe_shape, dtype=dout.dtype)
    dwpe[pos0 : pos0 + idx.shape[1]] = dout.sum(axis=0)
    return dwte, dwpe


# ----------------------------------------------------------------------------
# Linear (GPT-2's "Conv1D": the weight is stored (in, out))


def linear_forward(x, w, b):
    """out = x @ w + b.   x (..., Cin), w (Cin, Cout), b (Cout,) -> out (..., Cout).

    The matmul is done on x flattened to 2-D: NumPy sends (N, Cin) @ (Cin, Cout) to one
    BLAS call, but loops over the leading axes of a 3-D x without BLAS (~10x slower)."""
    out = x.reshape(-1, x.shape[-1]) @ w + b
    return out.reshape(*x.shape[:-1], w.shape[1]), (x, w)


def linear_backward(dout, cache):
    """dx = dout @ w.T, dw = x.T @ dout (summed over every leading position), db = sum dout.

    dout (..., Cout) -> dx (..., Cin), dw (Cin, Cout), db (Cout,).
    """
    x, w = cache
    dout2 = dout.reshape(-1, dout.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    dx = (dout2 @ w.T).reshape(x.shape)
    dw = x2.T @ dout2
    db = dout2.sum(axis=0)
    return dx, dw, db


def matmul(a, b):
    """a (..., K) @ b (K, M) -> (..., M): the LM head's products (logits = h wte^T and
    its gradients). Plain `@` here; kernels.py splits the rows between the cores."""
    return a @ b


# ----------------------------------------------------------------------------
# LayerNorm


def layernorm_forward(x, w, b, eps=1e-5):
    """Normalise each position's C features to mean 0, variance 1, then scale and shift.

    x (..., C), w (C,), b (C,) -> out (..., C). The variance is the biased one (divide
    by C), as in GPT-2 and PyTorch.
    """
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = xc * rstd
    out = xhat * w + b
    return out, (xhat, rstd, w)


def layernorm_backward(dout, cache):
    """With xhat = (x - mean) * rstd and g = dout * w (the gradient w.r.t. xhat):

        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))

    The two subtracted means are the paths through `mean` and through `rstd`: every
    x_i moves the mean and the variance that all outputs share.

    dout (..., C) -> dx (..., C), dw (C,), db (C,).
    """
    xhat, rstd, w = cache
    C = dout.shape[-1]
    dw = (dout * xhat).reshape(-1, C).sum(axis=0)
    db = dout.reshape(-1, C).sum(axis=0)
    g = dout * w
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, dw, db


# ----------------------------------------------------------------------------
# GELU, the tanh approximation GPT-2 uses

GELU_SCALE = math.sqrt(2.0 / math.pi)


def gelu_forward(x):
    """out = 0.5 x (1 + tanh(s (x + 0.044715 x^3))), s = sqrt(2/pi).  Any shape."""
    t = np.tanh(GELU_SCALE * (x + 0.044715 * x**3))
    out = 0.5 * x * (1.0 + t)
    return out, (x, t)


def gelu_backward(dout, cache):
    """Product rule on 0.5 x (1 + t), with dt/dx = (1 - t^2) s (1 + 3 * 0.044715 x^2)."""
    x, t = cache
    dt_dx = (1.0 - t * t) * GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x)
    dx = dout * (0.5 * (1.0 + t) + 0.5 * x * dt_dx)
    return dx


# ----------------------------------------------------------------------------
# Softmax over the last axis


def softmax_forward(x):
    """y = exp(x - max) / sum exp(x - max). Subtracting the max changes nothing
    mathematically and keeps exp from overflowing. -inf entries get probability 0.

    x (..., N) -> y (..., N).
    """
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    y = e / e.sum(axis=-1, keepdims=True)
    return y, y


def softmax_backward(dout, cache):
    """The Jacobian is diag(y) - y y^T, so dx = y * (dout - sum(dout * y))."""
    y = cache
    return y * (dout - (dout * y).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------
# Dropout (inverted: scale the kept units at training time, so inference is a no-op)


def dropout_mask(shape, p, rng, dtype):
    """Mask of 0 and 1/(1-p), or None when dropout is off (p == 0 or no rng).
    Drawn here, from the caller's generator, so both backends use the same mask."""
    if p == 0.0 or rng is None:
        return None
    return (rng.random(shape) >= p).astype(dtype) / dtype.type(1.0 - p)


def dropout_forward(x, p, rng):
    """Zero each unit with probability p. x any shape -> out, same shape."""
    mask = dropout_mask(x.shape, p, rng, x.dtype)
    return (x if mask is None else x * mask), mask


def dropout_backward(dout, cache):
    mask = cache
    return dout if mask is None else dout * mask


# ----------------------------------------------------------------------------
# Self-attention, in the article's four steps
#   1. a query, key and value vector for every token  (the c_attn linear, in `block`)
#   2. the dot product of each query with every key   (scores)
#   3. softmax of the scores                           (weights)
#   4. the weighted sum of the value vectors            (out)
# then "multi-head": the same four steps on H smaller projections in parallel.


def self_attention_forward(q, k, v, causal=True, attn_mask=None):
    """One head of scaled dot-product attention, steps 2-4.

    q (..., Tq, D), k and v (..., Tk, D) -> out (..., Tq, D). Usually Tq == Tk; when
    generating with a KV cache the Tq queries are the *last* Tq of the Tk positions.
    Scores are divided by sqrt(D) so their spread does not grow with D and the
    softmax stays soft. With `causal`, the token at position t only sees positions
    <= t (a language model must not peek at what it is predicting).
    `attn_mask` is an optional dropout mask (..., Tq, Tk) applied to the weights.
    """
    D = q.shape[-1]
    Tq, Tk = q.shape[-2], k.shape[-2]
    scores = (q @ np.swapaxes(k, -1, -2)) * (1.0 / math.sqrt(D))  # step 2: (..., Tq, Tk)
    if causal:
        future = np.triu(np.ones((Tq, Tk), dtype=bool), k=Tk - Tq + 1)
        scores = np.where(future, -np.inf, scores)
    weights, _ = softmax_forward(scores)  # step 3: each row sums to 1
    dropped = weights if attn_mask is None else weights * attn_mask
    out = dropped @ v  # step 4: (..., T, D)
    return out, (q, k, v, weights, attn_mask)


def self_attention_backward(dout, cache):
    """dout (..., T, D) -> dq, dk, dv (..., T, D). Each step backwards in turn:
    out = P v gives dP = dout v^T and dv = P^T dout; then softmax; then
    scores = q k^T / sqrt(D) gives dq = dS k / sqrt(D), dk = dS^T q / sqrt(D).
    Masked (future) positions have P = 0, so the softmax backward zeroes them."""
    q, k, v, weights, attn_mask = cache
    D = q.shape[-1]
    dropped = weights if attn_mask is None else weights * attn_mask
    dv = np.swapaxes(dropped, -1, -2) @ dout
    dweights = dout @ np.swapaxes(v, -1, -2)
    if attn_mask is not None:
        dweights = dweights * attn_mask
    dscores = softmax_backward(dweights, weights) * (1.0 / math.sqrt(D))
    dq = dscores @ k
    dk = np.swapaxes(dscores, -1, -2) @ q
    return dq, dk, dv


def split_heads(x, n_head):
    """(B, T, C) -> (B, H, T, D)."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, H, T, D) -> (B, T, C)."""
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def attention_forward(qkv, n_head, dropout=0.0, rng=None, causal=True):
    """Multi-head attention on the output of c_attn: causal for a GPT, or, with
    causal=False, bidirectional (every token sees the whole window, as in BERT's
    masked-language model: the article's "Jacob [mask] reading" needs "reading").

    qkv (B, T, 3C), split into q, k, v in that order (GPT-2's layout), each split
    into n_head heads -> out (B, T, C), the heads' outputs side by side.
    """
    B, T, C3 = qkv.shape
    q, k, v = (split_heads(a, n_head) for a in np.split(qkv, 3, axis=-1))  # (B, H, T, D) each
    attn_mask = dropout_mask((B, n_head, T, T), dropout, rng, qkv.dtype)
    out, cache = self_attention_forward(q, k, v, causal=causal, attn_mask=attn_mask)
    return merge_heads(out), (cache, n_head)


def attention_backward(dout, cache):
    """dout (B, T, C) -> dqkv (B, T, 3C)."""
    head_cache, n_head = cache
    dq, dk, dv = self_attention_backward(split_heads(dout, n_head), head_cache)
    return np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)


def kv_cache_attention_forward(qkv, n_head, kv, pos0):
    """Attention for generation, forward only: the keys and values of earlier tokens
    are kept in `kv` instead of being recomputed at every new token.

    qkv (B, t, 3C) for the t new tokens at positions pos0 .. pos0+t-1; kv = (K, V),
    buffers (B, H, T_max, D) whose first pos0 positions are filled. The new keys and
    values are written into the buffers; out (B, t, C) equals what the full causal
    attention gives at those positions.
    """
    t = qkv.shape[1]
    q, k, v = (split_heads(a, n_head) for a in np.split(qkv, 3, axis=-1))  # (B, H, t, D) each
    K, V = kv
    K[:, :, pos0 : pos0 + t] = k
    V[:, :, pos0 : pos0 + t] = v
    out, _ = self_attention_forward(q, K[:, :, : pos0 + t], V[:, :, : pos0 + t], causal=True)
    return merge_heads(out)


# ----------------------------------------------------------------------------
# Log-probabilities of target tokens, and the cross-entropy loss built on them


def token_logprobs_forward(logits, targets):
    """log p(target) under softmax(logits), position by position.

    logits (..., V), targets (...) int -> logp (...), 0 where target == -1 (ignored).
    Computed as logits[target] - logsumexp(logits), which never takes the log of a
    tiny probability. This one op serves pretraining, SFT (targets masked to the
    response), and the policy-gradient losses (log pi of sampled tokens).
    """
    m = logits.max(axis=-1, keepdims=True)
    lse = m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))  # (..., 1)
    valid = targets != -1
    safe = np.where(valid, targets, 0)
    picked = np.take_along_axis(logits, safe[..., None], axis=-1)  # (..., 1)
    logp = np.where(valid, (picked - lse)[..., 0], 0.0).astype(logits.dtype)
    return logp, (logits, lse, safe, valid)


def token_logprobs_backward(dlogp, cache):
    """d logp / d logits = onehot(target) - softmax(logits); ignored positions get 0.

    dlogp (...) -> dlogits (..., V).
    """
    logits, lse, safe, valid = cache
    dlogp = np.where(valid, dlogp, 0.0).astype(logits.dtype)
    dlogits = -np.exp(logits - lse) * dlogp[..., None]  # (..., V)
    V = logits.shape[-1]
    flat = dlogits.reshape(-1, V)
    flat[np.arange(flat.shape[0]), safe.reshape(-1)] += dlogp.reshape(-1)
    return dlogits


def cross_entropy_forward(logits, targets, ops=None):
    """Mean of -log p(target) over positions whose target is not -1.

    logits (..., V), targets (...) -> loss (float). If every target is -1 the loss
    is 0 (there is nothing to predict), not NaN.
    """
    ops = _ops(ops)
    logp, cache = ops.token_logprobs_forward(logits, targets)
    count = max(int((targets != -1).sum()), 1)
    loss = -float(logp.sum()) / count
    return loss, (cache, count, logp.shape, logp.dtype, ops)


def cross_entropy_backward(dloss, cache):
    """dloss (float) -> dlogits (..., V)."""
    lp_cache, count, shape, dtype, ops = cache
    dlogp = np.full(shape, -dloss / count, dtype=dtype)
    return ops.token_logprobs_backward(dlogp, lp_cache)


# ----------------------------------------------------------------------------
# Composite layers: the MLP and the pre-LayerNorm residual block


def _ops(ops):
    if ops is None:
        from minirlhf import backend

        return backend.ops()
    return ops


def mlp_forward(x, w_fc, b_fc, w_proj, b_proj, ops=None):
    """Linear C -> 4C, GELU, linear 4C -> C.   x (B, T, C) -> out (B, T, C)."""
    ops = _ops(ops)
    h, fc_cache = ops.linear_forward(x, w_fc, b_fc)  # (B, T, 4C)
    a, gelu_cache = ops.gelu_forward(h)
    out, proj_cache = ops.linear_forward(a, w_proj, b_proj)  # (B, T, C)
    return out, (fc_cache, gelu_cache, proj_cache, ops)


def mlp_backward(dout, cache):
    """dout (B, T, C) -> dx, dw_fc, db_fc, dw_proj, db_proj."""
    fc_cache, gelu_cache, proj_cache, ops = cache
    da, dw_proj, db_proj = ops.linear_backward(dout, proj_cache)
    dh = ops.gelu_backward(da, gelu_cache)
    dx, dw_fc, db_fc = ops.linear_backward(dh, fc_cache)
    return dx, dw_fc, db_fc, dw_proj, db_proj


BLOCK_PARAMS = (
    "ln_1.weight", "ln_1.bias",
    "attn.c_attn.weight", "attn.c_attn.bias",
    "attn.c_proj.weight", "attn.c_proj.bias",
    "ln_2.weight", "ln_2.bias",
    "mlp.c_fc.weight", "mlp.c_fc.bias",
    "mlp.c_proj.weight", "mlp.c_proj.bias",
)  # fmt: skip


def block_forward(x, p, n_head, dropout=0.0, rng=None, ops=None, kv=None, pos0=0, causal=True):
    """One transformer block, GPT-2's pre-LayerNorm form:

        x = x + dropout(attn(ln_1(x)))
        x = x + dropout(mlp(ln_2(x)))

    x (B, T, C); p maps the names in BLOCK_PARAMS to arrays -> out (B, T, C).
    Normalising *before* each sublayer leaves the residual stream x untouched, so
    gradients reach early layers through the identity path. With a KV cache `kv`
    (generation), x holds the tokens from position pos0 on and no backward is possible.
    `causal=False` makes the attention bidirectional (a masked-language model).
    """
    ops = _ops(ops)
    h, ln1_cache = ops.layernorm_forward(x, p["ln_1.weight"], p["ln_1.bias"])
    qkv, c_attn_cache = ops.linear_forward(h, p["attn.c_attn.weight"], p["attn.c_attn.bias"])  # step 1: (B, T, 3C)
    if kv is None:
        a, attn_cache = ops.attention_forward(qkv, n_head, dropout, rng, causal)  # steps 2-4: (B, T, C)
    elif causal:
        a, attn_cache = ops.kv_cache_attention_forward(qkv, n_head, kv, pos0), None
    else:  # a cached key never sees the tokens after it, which bidirectional attention needs
        raise MinirlhfError("a KV cache is for causal attention only; a bidirectional model has no left-to-right generation")
    a, c_proj_cache = ops.linear_forward(a, p["attn.c_proj.weight"], p["attn.c_proj.bias"])
    a, drop1_cache = dropout_forward(a, dropout, rng)
    x = x + a
    h, ln2_cache = ops.layernorm_forward(x, p["ln_2.weight"], p["ln_2.bias"])
    m, mlp_cache = ops.mlp_forward(h, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"], p["mlp.c_proj.weight"], p["mlp.c_proj.bias"], ops)
    m, drop2_cache = dropout_forward(m, dropout, rng)
    out = x + m
    return out, (ln1_cache, c_attn_cache, attn_cache, c_proj_cache, drop1_cache, ln2_cache, mlp_cache, drop2_cache, ops)


def block_backward(dout, cache):
    """dout (B, T, C) -> dx (B, T, C), grads dict keyed by BLOCK_PARAMS.

    Each residual connection passes dout straight through *and* into its branch,
    so dx is the sum of the two paths."""
    ln1_cache, c_attn_cache, attn_cache, c_proj_cache, drop1_cache, ln2_cache, mlp_cache, drop2_cache, ops = cache
    g = {}
    dm = dropout_backward(dout, drop2_cache)
    dh, g["mlp.c_fc.weight"], g["mlp.c_fc.bias"], g["mlp.c_proj.weight"], g["mlp.c_proj.bias"] = ops.mlp_backward(dm, mlp_cache)
    dx_ln2, g["ln_2.weight"], g["ln_2.bias"] = ops.layernorm_backward(dh, ln2_cache)
    dx = dout + dx_ln2
    da = dropout_backward(dx, drop1_cache)
    da, g["attn.c_proj.weight"], g["attn.c_proj.bias"] = ops.linear_backward(da, c_proj_cache)
    dqkv = ops.attention_backward(da, attn_cache)
    dh, g["attn.c_attn.weight"], g["attn.c_attn.bias"] = ops.linear_backward(dqkv, c_attn_cache)
    dx_ln1, g["ln_1.weight"], g["ln_1.bias"] = ops.layernorm_backward(dh, ln1_cache)
    return dx + dx_ln1, g
