"""AdamW, the learning-rate schedule, and gradient clipping.

The optimiser works on the model's flat parameter vector (see params.py): one update
touches every parameter at once. Its state (the moments m, v and the step count) is a
plain dict of arrays, so a checkpoint can save and restore it exactly.
"""
import math

import numpy as np

from minirlhf import backend
from minirlhf.errors import MinirlhfError


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW.

        p <- p - lr * wd * p            only for 2-D weights (matmuls, embeddings):
                                        decaying biases and LayerNorm gains only hurts
        m <- b1 m + (1 - b1) g          running mean of the gradient
        v <- b2 v + (1 - b2) g^2        running mean of its square
        p <- p - lr * m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - b1^t), v_hat likewise

    "Decoupled": the decay shrinks the weights directly instead of being added to the
    gradient, where Adam's per-parameter scaling would weaken it for large gradients.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
        self.params = params
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.decay = np.concatenate([np.full(p.size, p.ndim == 2, dtype=bool) for p in params.values()])
        self.m = np.zeros_like(params.flat)
        self.v = np.zeros_like(params.flat)
        self.t = 0

    def step(self, grads, lr=None):
        """Update params in place from grads (a FlatParams in the same layout).
        On the numba backend one fused pass over the flat buffers (kernels.adamw_update);
        `adamw_update` below is the same update written out in NumPy."""
        lr = self.lr if lr is None else lr
        self.t += 1
        update = adamw_update
        if backend.name() == "numba":
            from minirlhf.kernels import adamw_update as update
        update(self.params.flat, grads.flat, self.m, self.v, self.decay, self.t, lr,
               self.beta1, self.beta2, self.eps, self.weight_decay)  # fmt: skip

    def state_dict(self):
        return {"m": self.m, "v": self.v, "t": np.array(self.t)}

    def load_state_dict(self, state, source="the optimizer state"):
        """Restore m, v and t saved by state_dict(); `source` names where they came from
        (a checkpoint's optimizer.npz) in the error a damaged state raises."""
        check_state(state, self.m.size, source)
        self.m[...] = state["m"]
        self.v[...] = state["v"]
        self.t = int(state["t"])


def check_state(state, size, source):
    """Raise a MinirlhfError naming `source` unless `state` is what AdamW.state_dict()
    writes for `size` parameters: m and v finite float vectors of that size (v >= 0, it
    is a mean of squares) and t a step count, a non-negative integer. Resuming from
    anything else would crash mid-step or silently train with broken moments."""
    names = sorted(state)
    if names != ["m", "t", "v"]:
        raise MinirlhfError(f"{source}: holds arrays {names}, AdamW's state is m, v and t; it is damaged")
    for name in ("m", "v"):
        a = np.asarray(state[name])
        if a.shape != (size,):
            raise MinirlhfError(f"{source}: {name} has shape {a.shape}, the model has {size} parameters; "
                                "it belongs to another model or is damaged")
        if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)):
            raise MinirlhfError(f"{source}: {name} is not finite floating-point data ({a.dtype})")
    if np.any(np.asarray(state["v"]) < 0):
        raise MinirlhfError(f"{source}: v has negative entries; it is a mean of squared gradients")
    t = np.asarray(state["t"])
    is_number = np.issubdtype(t.dtype, np.integer) or np.issubdtype(t.dtype, np.floating)
    if t.shape != () or not is_number or not np.isfinite(t) or t != np.floor(t) or t < 0:
        raise MinirlhfError(f"{source}: the step count t is {t.tolist()!r}, not a non-negative integer")


def adamw_update(p, g, m, v, decay, t, lr, beta1, beta2, eps, weight_decay):
    """One AdamW step on flat arrays, in place: p the parameters, g their gradient, m and v
    the moments, decay a bool mask of the entries that decay, t the step number (from 1).
    The formulas are in AdamW's docstring; each line below is one of them."""
    if weight_decay:
        p[decay] *= 1.0 - lr * weight_decay
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * (g * g)
    m_hat_scale = 1.0 / (1.0 - beta1**t)
    v_hat_scale = 1.0 / (1.0 - beta2**t)
    p -= (lr * m_hat_scale) * m / (np.sqrt(v * v_hat_scale) + eps)


def lr_schedule(step, max_lr, total_steps, warmup_steps=0, min_lr=0.0):
    """Linear warmup from 0 to max_lr over warmup_steps, then cosine decay to min_lr
    at total_steps (and min_lr after). Warmup keeps the first, badly-estimated Adam
    steps small; the cosine lets the end of training settle into a minimum."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def clip_grad_norm(grads, max_norm):
    """Scale all gradients together so their global L2 norm is at most max_norm.
    Returns the norm before clipping (worth logging: spikes warn of instability).
    Clipping the whole vector, not each entry, keeps the update's direction."""
    norm = float(np.sqrt(np.dot(grads.flat, grads.flat)))
    if max_norm is not None and max_norm > 0 and norm > max_norm:
        grads.flat *= max_norm / (norm + 1e-6)
    return norm
