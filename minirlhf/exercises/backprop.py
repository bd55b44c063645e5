"""Checkers for hand-derived backward passes (notebooks/exercises/02_backprop.ipynb):
softmax, LayerNorm, attention (steps 2-4), cross-entropy.

The truth is finite differences of the reference forward in layers.py, in float64, for
a random upstream gradient `dout` (so a backward that mixes up positions cannot pass);
the checker also says how close the reference backward gets to the same numbers, which
is the error a correct answer should have (~1e-10).
"""
import math

import numpy as np

from minirlhf import layers
from minirlhf.exercises.checking import GRAD_TOL, Mistake, Report, call, finite_differences, unpack


def _rng(seed):
    return np.random.default_rng(seed)


def _upstream(forward, dout):
    """L = sum(forward() * dout): the scalar whose gradient a backward pass computes."""
    return lambda: float(np.sum(forward()[0] * dout))


def check_softmax_backward(fn):
    """fn(dout, y) -> dx, where y = softmax(x) over the last axis; dout, y, dx (..., N)."""
    report = Report("check_softmax_backward")
    rng = _rng(10)
    x = rng.standard_normal((3, 4, 6)) * 2.0 + 0.5
    y, _ = layers.softmax_forward(x)
    dout = rng.standard_normal(x.shape)
    got = call(report, fn, dout, y)
    expected, typical = finite_differences(_upstream(lambda: layers.softmax_forward(x), dout), x,
                                           layers.softmax_backward(dout, y))
    s = lambda axis: (dout * y).sum(axis=axis, keepdims=axis is not None)  # noqa: E731
    report.compare("dx", got, expected, tol=GRAD_TOL, typical=typical, mistakes=[
        Mistake("this is dout * y * (1 - y), the diagonal of the Jacobian diag(y) - y y^T only: softmax "
                "couples the entries (raising one lowers the others); with the off-diagonal part, "
                "dx = y * (dout - sum(dout * y)).", dout * y * (1 - y)),
        Mistake("this is y * dout: the -y y^T part of the Jacobian diag(y) - y y^T is missing, "
                "dx = y * (dout - sum(dout * y, axis=-1, keepdims=True)).", dout * y),
        *(Mistake("the sum is over the wrong axis: each softmax is over the last axis, so is the sum "
                  "(axis=-1, keepdims=True).", y * (dout - s(axis))) for axis in range(x.ndim - 1)),
        Mistake("the sum is over the whole array: sum over the last axis only (axis=-1, keepdims=True).",
                y * (dout - s(None))),
        Mistake("the sum needs the weights y: sum(dout * y), not sum(dout).",
                y * (dout - dout.sum(axis=-1, keepdims=True))),
        Mistake("the outer factor y is missing: dx = y * (dout - sum(dout * y)).", dout - s(-1)),
        Mistake("the sign is flipped.", -expected),
    ])
    return report.passed()


def check_layernorm_backward(fn):
    """fn(dout, xhat, rstd, w) -> dx, dw, db for out = xhat * w + b, xhat = (x - mean) * rstd
    over the last axis. x, dout, xhat, dx (..., C); rstd (..., 1); w, dw, db (C,)."""
    report = Report("check_layernorm_backward")
    rng = _rng(11)
    x = rng.standard_normal((2, 3, 8)) * 2.0 + 0.7
    w = rng.standard_normal(8) + 1.0
    b = rng.standard_normal(8)
    (_, cache), dout = layers.layernorm_forward(x, w, b), rng.standard_normal(x.shape)
    xhat, rstd, _ = cache
    got = unpack(report, call(report, fn, dout, xhat, rstd, w), ("dx", "dw", "db"))
    loss = _upstream(lambda: layers.layernorm_forward(x, w, b), dout)
    ref_dx, ref_dw, ref_db = layers.layernorm_backward(dout, cache)
    dx, dx_typical = finite_differences(loss, x, ref_dx)
    dw, dw_typical = finite_differences(loss, w, ref_dw)
    db, db_typical = finite_differences(loss, b, ref_db)
    g = dout * w  # the gradient w.r.t. xhat
    mean = lambda a: a.mean(axis=-1, keepdims=True)  # noqa: E731
    report.compare("dx", got[0], dx, tol=GRAD_TOL, typical=dx_typical, mistakes=[
        Mistake("the mean and the variance are treated as constants: every x_i also moves the mean and the "
                "variance all outputs share: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * w.",
                rstd * g),
        Mistake("the path through the variance (rstd) is missing: subtract xhat * mean(g * xhat) too.",
                rstd * (g - mean(g))),
        Mistake("the path through the mean is missing: subtract mean(g) too.", rstd * (g - mean(g * xhat) * xhat)),
        Mistake("the scale w is missing: the gradient w.r.t. xhat is g = dout * w, not dout.",
                rstd * (dout - mean(dout) - xhat * mean(dout * xhat))),
    ])
    positions = dout * xhat  # (2, 3, 8): dw before summing over positions
    report.compare("dw", got[1], dw, tol=GRAD_TOL, typical=dw_typical, mistakes=[
        Mistake("dw and db are swapped: dw = sum(dout * xhat), db = sum(dout).", db),
        Mistake("dw multiplies dout by the input x; out = xhat * w + b, so dw = sum(dout * xhat).",
                (dout * x).reshape(-1, 8).sum(axis=0)),
        Mistake("dw is not summed over positions: w is shared by every position, so sum its gradient "
                "over every axis but the last.", positions),
        Mistake("dw is summed over the first axis only: sum over every axis but the last.", positions.sum(axis=0)),
    ])
    report.compare("db", got[2], db, tol=GRAD_TOL, typical=db_typical, mistakes=[
        Mistake("db is not summed over positions: sum dout over every axis but the last.", dout),
        Mistake("db is summed over the first axis only: sum over every axis but the last.", dout.sum(axis=0)),
    ])
    return report.passed()


def check_attention_backward(fn):
    """fn(dout, q, k, v, weights) -> dq, dk, dv for causal attention
    out = softmax(q k^T / sqrt(D) + mask) @ v; every array (B, H, T, D) except weights (B, H, T, T)."""
    report = Report("check_attention_backward")
    rng = _rng(12)
    q, k, v = (rng.standard_normal((2, 2, 5, 4)) * 1.5 + 0.2 for _ in range(3))
    out, cache = layers.self_attention_forward(q, k, v)
    weights, dout = cache[3], rng.standard_normal(out.shape)
    got = unpack(report, call(report, fn, dout, q, k, v, weights), ("dq", "dk", "dv"))
    loss = _upstream(lambda: layers.self_attention_forward(q, k, v), dout)
    ref_dq, ref_dk, ref_dv = layers.self_attention_backward(dout, cache)
    dq, dq_typical = finite_differences(loss, q, ref_dq)
    dk, dk_typical = finite_differences(loss, k, ref_dk)
    dv, dv_typical = finite_differences(loss, v, ref_dv)
    t = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731
    scale = 1.0 / math.sqrt(q.shape[-1])
    dweights = dout @ t(v)
    dscores = layers.softmax_backward(dweights, weights) * scale
    unscaled, no_softmax = dscores / scale, dweights * scale  # two known slips on the way to dscores
    report.compare("dv", got[2], dv, tol=GRAD_TOL, typical=dv_typical, mistakes=[
        Mistake("a transpose is missing: out = weights @ v, so dv = weights^T @ dout.", weights @ dout),
    ])
    report.compare("dq", got[0], dq, tol=GRAD_TOL, typical=dq_typical, mistakes=[
        Mistake("the 1/sqrt(D) of the forward is missing in the backward: dscores = softmax_backward(...) / sqrt(D).",
                unscaled @ k),
        Mistake("the softmax's backward is skipped: dscores = softmax_backward(dweights, weights) / sqrt(D), "
                "with dweights = dout @ v^T.", no_softmax @ k),
        Mistake("dscores is transposed: scores = q k^T / sqrt(D), so dq = dscores @ k.", t(dscores) @ k),
    ])
    report.compare("dk", got[1], dk, tol=GRAD_TOL, typical=dk_typical, mistakes=[
        Mistake("a transpose is missing: scores = q k^T / sqrt(D), so dk = dscores^T @ q.", dscores @ q),
        Mistake("the 1/sqrt(D) of the forward is missing in the backward.", t(unscaled) @ q),
        Mistake("the softmax's backward is skipped: dscores = softmax_backward(dweights, weights) / sqrt(D).",
                t(no_softmax) @ q),
    ])
    return report.passed()


def check_cross_entropy_backward(fn):
    """fn(logits (B,T,V), targets (B,T) int, -1 = ignore) -> dlogits (B,T,V), the gradient of
    the mean of -log softmax(logits)[target] over the positions whose target is not -1."""
    report = Report("check_cross_entropy_backward")
    rng = _rng(13)
    logits = rng.standard_normal((2, 5, 7)) * 2.0 + 0.4
    targets = rng.integers(0, 7, size=(2, 5))
    targets[0, 3:] = targets[1, 0] = -1  # ignored: padding, a prompt token
    got = call(report, fn, logits, targets)
    ce = lambda: layers.cross_entropy_forward(logits, targets, ops=layers)  # noqa: E731  the NumPy reference
    expected, typical = finite_differences(lambda: ce()[0], logits, layers.cross_entropy_backward(1.0, ce()[1]))
    valid = (targets != -1)[..., None]  # (B, T, 1)
    n = int(valid.sum())
    p, _ = layers.softmax_forward(logits)
    onehot = np.eye(7)[targets] * valid  # zero rows at ignored positions
    wrapped = np.eye(7)[targets]  # what indexing with -1 does: the last class
    report.compare("dlogits", got, expected, tol=GRAD_TOL, typical=typical,
                   regions={"at a position whose target is -1 (ignored)": ~valid}, mistakes=[
        Mistake("the sign is flipped: (onehot - softmax) is the gradient of log p; the loss is -log p, "
                "so dlogits = (softmax - onehot) / n.", (onehot - p) * valid / n),
        Mistake("the -1 at the target is missing: dlogits = (softmax - onehot(target)) / n.", p * valid / n),
        Mistake("divided by every position (B*T); the mean is over the n positions whose target is not -1.",
                (p - onehot) * valid / targets.size),
        Mistake("not divided by n: the loss is a mean over the n positions whose target is not -1.",
                (p - onehot) * valid),
        Mistake("positions whose target is -1 must get zero gradient (they are not in the loss); "
                "note that indexing with -1 picks the last class.", (p - wrapped) / n),
        Mistake("positions whose target is -1 must get zero gradient; yours get softmax / n there.",
                (p - onehot) / n),
    ])
    return report.passed()
