"""The LSTM language model the article compares the transformer with, written by hand.

The article (section "Large Language Models") says next-token prediction was long
done by LSTMs, and names two limitations of their sequential structure:

1. the model cannot weight some surrounding words more than others (in "Jacob ___
   reading", the nearby "reading" pulls towards "hates" even when what we know about
   Jacob says "loves");
2. the input is processed one step at a time, so everything the model knows about the
   past must squeeze through a fixed-size state carried from step to step.

Here is that model, so the claims can be measured (`minirlhf longrange`) rather than
believed. Its memory is the pair (h, c), both (B, H), updated once per token:

    a = x_t Wx + h_{t-1} Wh + b                 (B, 4H): four gates' pre-activations
    i = sigmoid(a_i)  f = sigmoid(a_f)          input gate, forget gate
    g = tanh(a_g)     o = sigmoid(a_o)          candidate cell value, output gate
    c_t = f * c_{t-1} + i * g                   the cell: keep some, write some
    h_t = o * tanh(c_t)                         what the next layer (and step) sees

Gates in PyTorch's order (i, f, g, o), weights stored (in, out) like the GPT's, so
`torch.nn.LSTM`'s weight_ih_l0 is Wx.T, weight_hh_l0 is Wh.T and b = bias_ih + bias_hh.

The layer functions are forward/backward pairs in the CS231n style (`lstm_step_*` for
one step, `lstm_*` for a whole sequence by backpropagation through time); the model
is an embedding, `n_layer` stacked LSTMs, and an output head tied to the embedding
(as the GPT's is) or a separate matrix. There are no positions: an LSTM knows where it
is only through what its state has accumulated, which is limitation 2 again.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np

from minirlhf import backend
from minirlhf.errors import MinirlhfError
from minirlhf.layers import cross_entropy_backward, cross_entropy_forward, dropout_backward, dropout_forward
from minirlhf.model import GPT, GPTConfig
from minirlhf.params import FlatParams

# ----------------------------------------------------------------------------
# The layer: one step, then a whole sequence


def sigmoid(x):
    """1 / (1 + e^-x), written with tanh so that no input overflows exp."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def gates_forward(a, prev_c):
    """The cell, given the gates' pre-activations a (B, 4H) and the old cell prev_c (B, H)
    -> next_h (B, H), next_c (B, H), cache. Everything but the matmuls."""
    H = prev_c.shape[1]
    i, f, o = sigmoid(a[:, :H]), sigmoid(a[:, H : 2 * H]), sigmoid(a[:, 3 * H :])
    g = np.tanh(a[:, 2 * H : 3 * H])
    next_c = f * prev_c + i * g
    tanh_c = np.tanh(next_c)
    return o * tanh_c, next_c, (prev_c, i, f, g, o, tanh_c)


def gates_backward(dnext_h, dnext_c, cache):
    """dnext_h, dnext_c (B, H) -> da (B, 4H), dprev_c (B, H).

    The cell collects two gradients: the one handed back by the next step (dnext_c)
    and the one through h = o tanh(c), d tanh(c)/dc = 1 - tanh(c)^2. From there each
    product rule is one line; sigmoid' = s (1 - s), tanh' = 1 - t^2. The forget gate's
    f multiplies dc on its way to prev_c: f near 1 lets a gradient (and a memory)
    survive many steps, which is what the LSTM was invented for.
    """
    prev_c, i, f, g, o, tanh_c = cache
    dc = dnext_c + dnext_h * o * (1.0 - tanh_c**2)
    da = np.concatenate(
        [
            dc * g * i * (1.0 - i),  # input gate
            dc * prev_c * f * (1.0 - f),  # forget gate
            dc * i * (1.0 - g**2),  # candidate
            dnext_h * tanh_c * o * (1.0 - o),  # output gate
        ],
        axis=1,
    )  # (B, 4H)
    return da, dc * f


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    """One time step.   x (B, D), prev_h (B, H), prev_c (B, H), Wx (D, 4H), Wh (H, 4H),
    b (4H,) -> next_h (B, H), next_c (B, H), cache."""
    next_h, next_c, cell = gates_forward(x @ Wx + prev_h @ Wh + b, prev_c)
    return next_h, next_c, (x, prev_h, Wx, Wh, cell)


def lstm_step_backward(dnext_h, dnext_c, cache):
    """dnext_h, dnext_c (B, H) -> dx (B, D), dprev_h (B, H), dprev_c (B, H), dWx, dWh, db.
    a = x Wx + prev_h Wh + b is linear: each input's gradient is da times the other factor."""
    x, prev_h, Wx, Wh, cell = cache
    da, dprev_c = gates_backward(dnext_h, dnext_c, cell)
    return da @ Wx.T, da @ Wh.T, dprev_c, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def lstm_forward(x, h0, Wx, Wh, b, c0=None):
    """Run the LSTM over a whole sequence, one step after another.

    x (B, T, D), h0 (B, H), c0 (B, H) or None (zeros) -> h (B, T, H), c_T (B, H), cache.
    c_T, the last cell state, lets generation continue where a call stopped.

    The same computation as T calls of lstm_step_forward, but x Wx + b, which does not
    depend on the past, is done for all steps in one matmul before the loop: only
    h_{t-1} Wh must wait for the previous step. (That wait is limitation 2 in code: a
    transformer computes all positions at once; an LSTM cannot.)
    """
    B, T, _ = x.shape
    xa = (x.reshape(B * T, -1) @ Wx + b).reshape(B, T, -1)  # (B, T, 4H)
    prev_h = h0
    prev_c = np.zeros_like(h0) if c0 is None else c0
    h = np.empty((B, T, h0.shape[1]), dtype=h0.dtype)
    cells = []
    for t in range(T):
        prev_h, prev_c, cell = gates_forward(xa[:, t] + prev_h @ Wh, prev_c)
        h[:, t] = prev_h
        cells.append(cell)
    return h, prev_c, (x, h0, h, Wx, Wh, cells)


def lstm_backward(dh, cache):
    """Backpropagation through time. dh (B, T, H): the loss's gradient w.r.t. every h_t
    from above (the head or the next layer) -> dx (B, T, D), dh0, dc0 (B, H), dWx, dWh, db.

    Walking back from the last step, each step's h receives dh[:, t] from above plus
    what step t + 1 hands back through Wh; the weights' gradients are sums over steps
    (every step uses the same weights), done as one matmul each after the loop."""
    x, h0, h, Wx, Wh, cells = cache
    B, T, H = dh.shape
    da = np.empty((B, T, 4 * H), dtype=dh.dtype)
    dprev_h = np.zeros((B, H), dtype=dh.dtype)
    dprev_c = np.zeros((B, H), dtype=dh.dtype)
    for t in reversed(range(T)):
        da[:, t], dprev_c = gates_backward(dh[:, t] + dprev_h, dprev_c, cells[t])
        dprev_h = da[:, t] @ Wh.T
    da2 = da.reshape(B * T, 4 * H)
    prev_h = np.concatenate([h0[:, None], h[:, :-1]], axis=1).reshape(B * T, H)  # h_{t-1} for every t
    dx = (da2 @ Wx.T).reshape(x.shape)
    return dx, dprev_h, dprev_c, x.reshape(B * T, -1).T @ da2, prev_h.T @ da2, da2.sum(axis=0)


# ----------------------------------------------------------------------------
# The language model


@dataclass
class LSTMConfig:
    vocab_size: int
    block_size: int  # the training window; generation stops there too, as the GPT's does
    n_layer: int = 1
    n_embd: int = 128  # embedding size = hidden size H of every layer (a tied head needs them equal)
    dropout: float = 0.0  # on the embedding and on each layer's output, never on the recurrence
    tie_weights: bool = True  # logits = h wte^T; False: a separate lm_head.weight (H, V)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise MinirlhfError(f"LSTMConfig.{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise MinirlhfError(f"dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.tie_weights, bool):
            raise MinirlhfError(f"LSTMConfig.tie_weights must be true or false, got {self.tie_weights!r}")

    def to_dict(self):
        return asdict(self)

    # The same strict reader as the GPT's config: unknown keys are an error.
    from_dict = classmethod(GPTConfig.from_dict.__func__)

    def param_shapes(self):
        V, C = self.vocab_size, self.n_embd
        shapes = {"wte.weight": (V, C)}
        for layer in range(self.n_layer):
            shapes.update({f"lstm.{layer}.Wx": (C, 4 * C), f"lstm.{layer}.Wh": (C, 4 * C), f"lstm.{layer}.b": (4 * C,)})
        if not self.tie_weights:
            shapes["lm_head.weight"] = (C, V)
        return shapes

    @property
    def n_params(self):
        return sum(math.prod(s) for s in self.param_shapes().values())


FORGET = slice(1, 2)  # the forget gate's block among the four (i, f, g, o)


class LSTMLanguageModel:
    """Embedding -> n_layer LSTMs -> logits, with the interface the training loop and
    `generate` use (the same as the GPT's): params, loss, loss_and_grads, forward."""

    def __init__(self, config, seed=0, dtype=np.float32, params=None):
        self.config = config
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise MinirlhfError(f"dtype must be float32 or float64, got {self.dtype}")
        self.params = FlatParams(config.param_shapes(), self.dtype)
        if params is None:
            self._init_weights(np.random.default_rng(seed))
        else:
            self.load_params(params)

    def _init_weights(self, rng):
        """PyTorch's LSTM initialisation, U(-1/sqrt(H), 1/sqrt(H)) for the gates, and
        its word-language-model example's U(-0.1, 0.1) for embedding and head. The
        forget gate's bias starts at 1 (Jozefowicz et al. 2015): f = sigmoid(1) ~ 0.73,
        so the untrained cell already keeps most of what it holds, and gradients can
        reach back further from the first step on. A fair start for the LSTM."""
        H = self.config.n_embd
        bound = 1.0 / math.sqrt(H)
        for name, p in self.params.items():
            if name.startswith("lstm."):
                p[...] = rng.uniform(-bound, bound, p.shape)
                if name.endswith(".b"):
                    p.reshape(4, H)[FORGET] = 1.0
            else:
                p[...] = rng.uniform(-0.1, 0.1, p.shape)

    # Borrowed from the GPT: they read only self.config and self.params.
    load_params = GPT.load_params
    n_params = GPT.n_params
    check_idx = GPT.check_idx

    def _head(self):
        """The output matrix (H, V): wte^T when tied."""
        return self.params["wte.weight"].T if self.config.tie_weights else self.params["lm_head.weight"]

    def lm_forward(self, idx, rng=None, state=None):
        """idx (B, T) -> logits (B, T, V), cache. Dropout only when `rng` is given.
        `state`: per layer an (h, c) pair to start from (generation), updated in place."""
        self.check_idx(idx)
        cfg, p, ops = self.config, self.params, backend.ops()
        p_drop = cfg.dropout if rng is not None else 0.0
        B = idx.shape[0]
        x = p["wte.weight"][idx]  # (B, T, C)
        x, drop_cache = dropout_forward(x, p_drop, rng)
        layer_caches = []
        for layer in range(cfg.n_layer):
            h0, c0 = (np.zeros((B, cfg.n_embd), self.dtype), None) if state is None else state[layer]
            w = [p[f"lstm.{layer}.{n}"] for n in ("Wx", "Wh", "b")]
            x, c_last, lstm_cache = lstm_forward(x, h0, *w, c0=c0)  # (B, T, C)
            if state is not None:
                state[layer] = (x[:, -1].copy(), c_last)
            x, layer_drop = dropout_forward(x, p_drop, rng)
            layer_caches.append((lstm_cache, layer_drop))
        logits = ops.matmul(x, self._head())  # (B, T, V)
        return logits, (idx, x, drop_cache, layer_caches, ops)

    def lm_backward(self, dlogits, cache):
        """dlogits (B, T, V) -> grads (FlatParams, same names and shapes as params).
        As in the GPT, a tied wte gets two gradients: the head's and the lookup's."""
        idx, h, drop_cache, layer_caches, ops = cache
        grads = self.params.zeros_like()
        C, V = h.shape[-1], dlogits.shape[-1]
        dhead = ops.matmul(h.reshape(-1, C).T, dlogits.reshape(-1, V))  # (C, V)
        if self.config.tie_weights:
            grads["wte.weight"][...] = dhead.T
        else:
            grads["lm_head.weight"][...] = dhead
        dx = ops.matmul(dlogits, np.ascontiguousarray(self._head().T))  # (B, T, C)
        for layer in reversed(range(self.config.n_layer)):
            lstm_cache, layer_drop = layer_caches[layer]
            dx = dropout_backward(dx, layer_drop)
            dx, _, _, *dw = lstm_backward(dx, lstm_cache)
            for n, g in zip(("Wx", "Wh", "b"), dw):
                grads[f"lstm.{layer}.{n}"][...] = g
        dx = dropout_backward(dx, drop_cache)
        np.add.at(grads["wte.weight"], idx.reshape(-1), dx.reshape(-1, C))  # the lookup scatters back
        return grads

    def forward(self, idx):
        """idx (B, T) int -> logits (B, T, V). No dropout."""
        return self.lm_forward(idx)[0]

    def loss(self, idx, targets):
        """Mean next-token cross-entropy over targets != -1, forward only."""
        return cross_entropy_forward(self.forward(idx), np.asarray(targets))[0]

    def loss_and_grads(self, idx, targets, rng=None):
        """Mean next-token cross-entropy over targets != -1 and its gradient w.r.t.
        every parameter. Pass `rng` to train with dropout."""
        logits, cache = self.lm_forward(idx, rng)
        loss, ce_cache = cross_entropy_forward(logits, np.asarray(targets))
        return loss, self.lm_backward(cross_entropy_backward(1.0, ce_cache), cache)

    # ------------------------------------------------------------------
    # generation: the GPT's loop, with the recurrent state as its "cache"

    def new_kv_cache(self, batch, length):
        """What `generate` keeps between steps. A GPT keeps every past key and value,
        growing with the text; an LSTM keeps one (h, c) per layer, whatever the length.
        Cheap, and exactly the bottleneck of the article's second limitation."""
        zeros = np.zeros((batch, self.config.n_embd), self.dtype)
        return [(zeros, zeros) for _ in range(self.config.n_layer)]

    def cached_logits(self, idx, pos0, state):
        """Logits for tokens idx (B, t) that follow the pos0 tokens summarised by `state`
        (updated in place). An LSTM needs no position: the state is the past."""
        return self.lm_forward(idx, state=state)[0]

    generate = GPT.generate  # same sampling loop, same contract: see GPT.generate


def matched_lstm_config(target_params, vocab_size, block_size, n_layer=1, tie_weights=True):
    """The LSTMConfig whose parameter count is closest to `target_params` (e.g. a GPT's
    n_params), varying only the hidden size: comparisons at equal parameter budget."""
    def config(C):
        return LSTMConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_embd=C, tie_weights=tie_weights)

    C = 1
    while config(C + 1).n_params <= target_params:  # the count grows with C: stop at the last one below
        C += 1
    below, above = config(C), config(C + 1)
    return below if target_params - below.n_params <= above.n_params - target_params else above


__all__ = [
    "LSTMConfig",
    "LSTMLanguageModel",
    "gates_forward",
    "gates_backward",
    "lstm_step_forward",
    "lstm_step_backward",
    "lstm_forward",
    "lstm_backward",
    "matched_lstm_config",
]
