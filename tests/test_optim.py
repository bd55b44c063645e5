"""AdamW, the schedule and clipping against their formulas written out independently."""
import math

import numpy as np
import pytest

from minirlhf.errors import MinirlhfError
from minirlhf.optim import AdamW, clip_grad_norm, lr_schedule
from minirlhf.params import FlatParams


def make_params(rng):
    p = FlatParams({"w": (3, 4), "b": (4,), "ln.weight": (4,)}, np.float64)
    p.flat[...] = rng.standard_normal(p.flat.size)
    return p


def test_adamw_matches_the_formula_entry_by_entry(rng):
    params = make_params(rng)
    start = {k: v.copy() for k, v in params.items()}
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.95, 1e-8, 0.1
    opt = AdamW(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    grads_seq = [params.zeros_like() for _ in range(3)]
    for g in grads_seq:
        g.flat[...] = rng.standard_normal(g.flat.size)
        opt.step(g)
    for name, p0 in start.items():
        for i in np.ndindex(p0.shape):
            p, m, v = p0[i], 0.0, 0.0
            for t, g in enumerate(grads_seq, start=1):
                gi = g[name][i]
                if name == "w":  # only the 2-D weight decays
                    p *= 1 - lr * wd
                m = b1 * m + (1 - b1) * gi
                v = b2 * v + (1 - b2) * gi * gi
                p -= lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
            assert abs(params[name][i] - p) < 1e-12, f"{name}{i}: {params[name][i]} vs {p}"


def test_adamw_matches_torch_if_installed(rng):
    torch = pytest.importorskip("torch")
    params = make_params(rng)
    tparams = [torch.tensor(v.copy(), requires_grad=True) for v in params.values()]
    groups = [{"params": [tparams[0]], "weight_decay": 0.1}, {"params": tparams[1:], "weight_decay": 0.0}]
    topt = torch.optim.AdamW(groups, lr=0.01, betas=(0.9, 0.95), eps=1e-8)
    opt = AdamW(params, lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for _ in range(4):
        g = params.zeros_like()
        g.flat[...] = rng.standard_normal(g.flat.size)
        opt.step(g)
        for t, gv in zip(tparams, g.values()):
            t.grad = torch.tensor(gv.copy())
        topt.step()
    for t, v in zip(tparams, params.values()):
        np.testing.assert_allclose(v, t.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_adamw_state_round_trip(rng):
    params = make_params(rng)
    opt = AdamW(params, lr=0.01)
    g = params.zeros_like()
    g.flat[...] = 1.0
    opt.step(g)
    clone = params.copy()
    opt2 = AdamW(clone, lr=0.01)
    opt2.load_state_dict({k: np.array(v) for k, v in opt.state_dict().items()})
    opt.step(g)
    opt2.step(g)
    np.testing.assert_array_equal(params.flat, clone.flat)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda s: s.pop("t"), r"holds arrays \['m', 'v'\]"),
        (lambda s: s.pop("v"), r"holds arrays \['m', 't'\]"),
        (lambda s: s.update(m=np.zeros(3)), r"m has shape \(3,\), the model has 20 parameters"),
        (lambda s: s.update(v=np.full(20, np.nan)), "v is not finite"),
        (lambda s: s.update(m=np.zeros(20, dtype=np.int64)), "m is not finite floating-point data"),
        (lambda s: s.update(v=-np.ones(20)), "v has negative entries"),
        (lambda s: s.update(t=np.array(np.nan)), "step count t is nan"),
        (lambda s: s.update(t=np.array(-1)), "step count t is -1"),
        (lambda s: s.update(t=np.array(1.5)), "step count t is 1.5"),
        (lambda s: s.update(t=np.array([1, 2])), r"step count t is \[1, 2\]"),
    ],
)
def test_damaged_state_is_refused_naming_its_source(rng, damage, message):
    opt = AdamW(make_params(rng))
    state = {k: np.array(v) for k, v in opt.state_dict().items()}
    damage(state)
    fresh = AdamW(make_params(rng))
    with pytest.raises(MinirlhfError, match="^run/optimizer.npz: .*" + message):
        fresh.load_state_dict(state, source="run/optimizer.npz")
    assert fresh.t == 0 and not fresh.m.any()  # nothing half-loaded


def test_lr_schedule_shape():
    kw = dict(max_lr=1e-3, total_steps=1000, warmup_steps=100, min_lr=1e-4)
    assert lr_schedule(0, **kw) == pytest.approx(1e-5)
    assert lr_schedule(99, **kw) == pytest.approx(1e-3)
    assert lr_schedule(100, **kw) == pytest.approx(1e-3)
    assert lr_schedule(550, **kw) == pytest.approx(0.5 * (1e-3 + 1e-4))
    assert lr_schedule(1000, **kw) == pytest.approx(1e-4)
    values = [lr_schedule(s, **kw) for s in range(100, 1000)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay after warmup


def test_clip_grad_norm(rng):
    g = make_params(rng)
    norm = float(np.linalg.norm(g.flat))
    direction = g.flat / norm
    assert clip_grad_norm(g, 2 * norm) == pytest.approx(norm)
    assert np.linalg.norm(g.flat) == pytest.approx(norm)  # below the limit: untouched
    assert clip_grad_norm(g, 0.5) == pytest.approx(norm)
    assert np.linalg.norm(g.flat) == pytest.approx(0.5, rel=1e-5)
    np.testing.assert_allclose(g.flat / np.linalg.norm(g.flat), direction, rtol=1e-10)  # same direction
