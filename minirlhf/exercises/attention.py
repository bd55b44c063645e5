"""Checkers for the article's four steps of self-attention, and multi-head attention
(notebooks/exercises/01_attention.ipynb). The truth is layers.py.

Shapes: B = 2 sequences of T = 5 tokens, C = 8 channels, H = 2 heads of D = 4. The step
checkers pass head-shaped arrays (B, H, T, D), as multi-head attention will: a step
written for one (T, D) matrix with `.T` breaks on them, and should.
"""
import math

import numpy as np

from minirlhf import layers
from minirlhf.exercises.checking import Mistake, Report, call, unpack

B, T, C, H = 2, 5, 8, 2
D = C // H
FUTURE = np.triu(np.ones((T, T), dtype=bool), k=1)  # s > t: what token t must not see
MASKED = -1e9  # scores at or below this count as masked (-inf is what the reference uses)


def _rng(seed):
    return np.random.default_rng(seed)


def _transpose(a):
    return np.swapaxes(a, -1, -2)


def _heads(seed):
    """q, k, v (B, H, T, D), non-trivial: non-zero mean, spread enough for peaked softmaxes."""
    rng = _rng(seed)
    return tuple(rng.standard_normal((B, H, T, D)) * 1.5 + 0.2 for _ in range(3))


def _attention_inputs(seed):
    rng = _rng(seed)
    x = rng.standard_normal((B, T, C)) + 0.3
    w = rng.standard_normal((C, 3 * C)) / math.sqrt(C)
    b = rng.standard_normal(3 * C) * 0.5
    return x, w, b


def _masked_scores(seed):
    q, k, _ = _heads(seed)
    return np.where(FUTURE, -np.inf, q @ _transpose(k) / math.sqrt(D))


def check_qkv_projection(fn):
    """Step 1. fn(x (B,T,C), w_attn (C,3C), b_attn (3C,)) -> q, k, v, each (B,T,C)."""
    report = Report("check_qkv_projection")
    x, w, b = _attention_inputs(1)
    got = unpack(report, call(report, fn, x, w, b), ("q", "k", "v"))
    qkv, _ = layers.linear_forward(x, w, b)
    expected = np.split(qkv, 3, axis=-1)
    no_bias = np.split(x @ w, 3, axis=-1)
    names = ("q", "k", "v")
    for i, name in enumerate(names):
        swapped = [
            Mistake(f"your {name} is {other}: c_attn's output is q, k, v side by side, in that order "
                    "(GPT-2's layout): q = qkv[..., :C], k = qkv[..., C:2C], v = qkv[..., 2C:].", expected[j])
            for j, other in enumerate(names) if j != i
        ]
        report.compare(name, got[i], expected[i], mistakes=swapped + [
            Mistake("the bias is missing: the projection is x @ w_attn + b_attn.", no_bias[i]),
        ])
    return report.passed()


def check_attention_scores(fn):
    """Step 2. fn(q, k (B,H,T,D)) -> scores (B,H,T,T) = q k^T / sqrt(D), -inf where s > t."""
    report = Report("check_attention_scores")
    q, k, _ = _heads(2)
    got = report.array("scores", call(report, fn, q, k), (B, H, T, T), [
        Mistake("np.dot on stacked arrays is not a batched matrix product: use q @ np.swapaxes(k, -1, -2).",
                np.dot(q, _transpose(k))),
    ])
    _check_causal_mask(report, got <= MASKED)
    raw = q @ _transpose(k)  # (B, H, T, T), unscaled
    visible = lambda a: np.where(FUTURE, 0.0, a)  # noqa: E731  compare the unmasked entries only
    report.compare("scores (unmasked entries)", visible(got), visible(raw / math.sqrt(D)), mistakes=[
        Mistake("the scores are not scaled: divide q k^T by sqrt(D) (D = the head size, q.shape[-1]), so their "
                "spread does not grow with D and the softmax stays soft.", visible(raw)),
        Mistake("divided by D instead of sqrt(D).", visible(raw / D)),
        Mistake("this is k q^T: scores[..., t, s] must be q_t . k_s (rows are queries, columns keys).",
                visible(_transpose(raw) / math.sqrt(D))),
    ])
    return report.passed()


def _check_causal_mask(report, masked):
    if np.array_equal(masked, np.broadcast_to(FUTURE, masked.shape)):
        return
    if not masked.any():
        hint = ("no score is masked: the causal mask is missing. Token t must not see the tokens after it: "
                "set scores[..., t, s] = -inf where s > t (np.triu(np.ones((T, T), bool), k=1)).")
    elif np.array_equal(masked, np.broadcast_to(FUTURE.T, masked.shape)):
        hint = "you masked the past (s < t) instead of the future (s > t): use np.triu(..., k=1), not np.tril."
    elif np.array_equal(masked, np.broadcast_to(np.triu(np.ones((T, T), bool)), masked.shape)):
        hint = "the diagonal is masked too: token t may attend to itself (s = t); use np.triu(..., k=1)."
    else:
        hint = "mask exactly the entries above the diagonal of every (T, T) matrix, the same for every head."
    wrong = np.argwhere(masked != FUTURE)[0].tolist()
    report.fail("the causal mask is wrong: entries with s > t (the future) must be -inf, the others finite.",
                [f"{int((masked != FUTURE).sum())} of {masked.size} entries are masked wrongly, "
                 f"e.g. scores{wrong} is {'masked' if masked[tuple(wrong)] else 'not masked'}."], hint)


def check_attention_weights(fn):
    """Step 3. fn(scores (B,H,T,T)) -> weights: a softmax over the keys (the last axis)."""
    report = Report("check_attention_weights")
    scores = _masked_scores(3)
    got = call(report, fn, scores)
    expected, _ = layers.softmax_forward(scores)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    column_e = np.exp(scores - scores.max(axis=-2, keepdims=True))
    report.compare("weights", got, expected, mistakes=[
        Mistake("the softmax is over the wrong axis: each row (one query, all keys) must sum to 1; "
                "use axis=-1 for the max and the sum.", column_e / column_e.sum(axis=-2, keepdims=True)),
        *(Mistake("the exponentials are not normalised: divide by their sum over the last axis.", unnormalised)
          for unnormalised in (np.exp(scores), e)),
        Mistake("normalised over the whole array: sum over the last axis only (axis=-1, keepdims=True).",
                np.exp(scores) / np.exp(scores).sum()),
    ])
    shifted = call(report, fn, scores + 1000.0)
    report.compare("weights for scores + 1000", shifted, expected, hint=(
        "exp(1000) overflows to inf. softmax(x) = softmax(x - c) for any c: subtract each row's max "
        "(x.max(axis=-1, keepdims=True)) before exp."))
    return report.passed()


def check_attention_output(fn):
    """Step 4. fn(weights (B,H,T,T), v (B,H,T,D)) -> out (B,H,T,D) = weights @ v."""
    report = Report("check_attention_output")
    _, _, v = _heads(4)
    weights, _ = layers.softmax_forward(_masked_scores(4))
    got = call(report, fn, weights, v)
    report.compare("out", got, weights @ v, mistakes=[
        Mistake("the weights are transposed: out[t] = sum_s weights[t, s] v[s], i.e. weights @ v.",
                _transpose(weights) @ v),
        Mistake("np.dot on stacked arrays is not a batched matrix product: use weights @ v.", np.dot(weights, v)),
    ])
    return report.passed()


def _multi_head(qkv, n_head, split=layers.split_heads, merge=layers.merge_heads, q_scale=1.0):
    """Multi-head attention with swappable pieces, to produce the answers of known mistakes."""
    q, k, v = (split(a, n_head) for a in np.split(qkv, 3, axis=-1))
    out, _ = layers.self_attention_forward(q * q_scale, k, v)
    return merge(out)


def check_multi_head_attention(fn):
    """fn(x (B,T,C), w_attn, b_attn, n_head) -> (B,T,C): steps 1-4 on n_head heads of
    size D = C / n_head in parallel, their outputs side by side."""
    report = Report("check_multi_head_attention")
    x, w, b = _attention_inputs(5)
    got = call(report, fn, x, w, b, H)
    qkv, _ = layers.linear_forward(x, w, b)
    expected, _ = layers.attention_forward(qkv, H)
    report.compare("out", got, expected, mistakes=[
        Mistake("the heads are split with a reshape alone: (B, T, C) -> (B, H, T, D) mixes tokens and heads. "
                "Reshape to (B, T, H, D), then transpose(0, 2, 1, 3).",
                _multi_head(qkv, H, split=lambda a, n: a.reshape(B, n, T, C // n))),
        Mistake("the heads are merged with a reshape alone: (B, H, T, D) -> (B, T, C) mixes tokens and heads. "
                "transpose(0, 2, 1, 3) to (B, T, H, D) first, then reshape.",
                _multi_head(qkv, H, merge=lambda o: o.reshape(B, T, C))),
        Mistake("this is single-head attention over all C channels: split q, k and v into n_head heads.",
                _multi_head(qkv, 1)),
        Mistake("the scores are divided by sqrt(C); each head divides by the sqrt of its own size D = C / n_head.",
                _multi_head(qkv, H, q_scale=math.sqrt(D / C))),
    ])
    return report.passed()
