"""The GPT: GPT-2's architecture, composed from the forward/backward pairs in layers.py.

    from minirlhf import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C), seed=0)
    logits = model.forward(idx)                        # (B, T) ints -> (B, T, V)
    loss, grads = model.loss_and_grads(idx, targets)   # grads: same names and shapes as params

The parameters use Hugging Face GPT-2's names and layouts (weights stored (in, out)),
so a checkpoint maps onto `GPT2LMHeadModel` with no renaming. The language-model head
is tied to the token embedding `wte`: the same (V, C) matrix turns token ids into
vectors at the bottom and vectors into logits at the top, so its gradient is the sum
of both uses (see `lm_backward`).
"""
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from minirlhf import backend
from minirlhf.errors import MinirlhfError
from minirlhf.layers import (
    BLOCK_PARAMS,
    block_backward,
    block_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    dropout_backward,
    dropout_forward,
    embedding_forward,
)
from minirlhf.params import FlatParams
from minirlhf.sampling import sample_next

# Model sizes used by the benchmark and the CLI (vocabulary size comes from the tokenizer).
PRESETS = {
    "tiny": dict(n_layer=2, n_head=4, n_embd=64, block_size=64),
    "small": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),
    "base": dict(n_layer=6, n_head=8, n_embd=256, block_size=256),
}


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0  # residual, attention and embedding dropout (one rate, as in GPT-2)
    # True: a GPT, each token sees only the tokens before it. False: bidirectional, every
    # token sees the whole window: BERT's masked-language model (mlm.py), which fills a
    # blank from both sides but cannot generate text left to right.
    causal: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise MinirlhfError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise MinirlhfError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise MinirlhfError(f"dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.causal, (bool, np.bool_)):
            raise MinirlhfError(f"GPTConfig.causal must be true or false, got {self.causal!r}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise MinirlhfError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    def param_shapes(self):
        """Every parameter's name and shape, GPT-2's names in GPT-2's order."""
        V, T, C = self.vocab_size, self.block_size, self.n_embd
        shapes = {"wte.weight": (V, C), "wpe.weight": (T, C)}
        block = {
            "ln_1.weight": (C,), "ln_1.bias": (C,),
            "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
            "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
            "ln_2.weight": (C,), "ln_2.bias": (C,),
            "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,),
            "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,),
        }  # fmt: skip
        assert tuple(block) == BLOCK_PARAMS
        for i in range(self.n_layer):
            shapes.update({f"h.{i}.{name}": shape for name, shape in block.items()})
        shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
        return shapes


class GPT:
    """A GPT-2 language model whose forward and backward passes are written by hand."""

    def __init__(self, config, seed=0, dtype=np.float32, params=None):
        """A new model with GPT-2's initialisation drawn from `seed`, or, if `params`
        (a dict name -> array) is given, with those values (checked against config)."""
        self.config = config
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise MinirlhfError(f"dtype must be float32 or float64, got {self.dtype}")
        self.params = FlatParams(self.param_shapes(), self.dtype)
        if params is None:
            self._init_weights(np.random.default_rng(seed))
        else:
            self.load_params(params)
        # Each block's parameters under their block-local names (views, not copies).
        self.blocks = [{name: self.params[f"h.{i}.{name}"] for name in BLOCK_PARAMS} for i in range(config.n_layer)]

    def param_shapes(self):
        """Names and shapes of this model's parameters (a subclass adds its head's)."""
        return self.config.param_shapes()

    def _init_weights(self, rng):
        """GPT-2's initialisation: weights N(0, 0.02), biases 0, LayerNorm gain 1.
        The two projections that write into the residual stream (attn.c_proj,
        mlp.c_proj) get std 0.02 / sqrt(2 n_layer): each block adds two terms to the
        stream, and this keeps the stream's variance from growing with depth."""
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.params.items():
            if name.endswith("c_proj.weight"):
                p[...] = rng.normal(0.0, residual_std, p.shape)
            elif name.endswith(".weight") and p.ndim == 2:
                p[...] = rng.normal(0.0, 0.02, p.shape)
            elif "ln_" in name and name.endswith(".weight"):
                p[...] = 1.0
            # biases stay 0

    def load_params(self, params):
        """Copy values into this model's parameters; names and shapes must match exactly."""
        expected = self.params.shapes
        missing = sorted(set(expected) - set(params))
        extra = sorted(set(params) - set(expected))
        if missing or extra:
            raise MinirlhfError(f"parameters do not match the config: missing {missing[:5]}, unexpected {extra[:5]}")
        for name, shape in expected.items():
            if tuple(params[name].shape) != shape:
                raise MinirlhfError(f"parameter {name} has shape {tuple(params[name].shape)}, the config needs {shape}")
            self.params[name][...] = params[name]

    @property
    def n_params(self):
        return self.params.flat.size

    # ------------------------------------------------------------------
    # forward and backward

    def check_idx(self, idx, what="idx"):
        """Reject token ids the model cannot take, with a message instead of an IndexError."""
        idx = np.asarray(idx)
        if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
            raise MinirlhfError(f"{what} must be a 2-D integer array (B, T), got shape {idx.shape} dtype {idx.dtype}")
        if idx.shape[1] > self.config.block_size:
            raise MinirlhfError(f"{what} has {idx.shape[1]} tokens but the model's context is {self.config.block_size}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.config.vocab_size):
            raise MinirlhfError(f"{what} holds token ids outside [0, {self.config.vocab_size})")
        return idx

    def trunk_forward(self, idx, rng=None, kv=None, pos0=0):
        """Tokens -> final hidden states after ln_f.

        idx (B, T) -> h (B, T, C), cache. Dropout is on only when `rng` is given
        (training). `kv`/`pos0`: KV cache for generation (see `generate`).
        """
        self.check_idx(idx)
        cfg, p, ops = self.config, self.params, backend.ops()
        p_drop = cfg.dropout if rng is not None else 0.0
        x, emb_cache = embedding_forward(idx, p["wte.weight"], p["wpe.weight"], pos0)  # (B, T, C)
        x, drop_cache = dropout_forward(x, p_drop, rng)
        block_caches = []
        for i, block in enumerate(self.blocks):
            x, c = block_forward(x, block, cfg.n_head, p_drop, rng, ops, None if kv is None else kv[i], pos0, cfg.causal)
            block_caches.append(c)
        h, lnf_cache = ops.layernorm_forward(x, p["ln_f.weight"], p["ln_f.bias"])  # (B, T, C)
        return h, (emb_cache, drop_cache, block_caches, lnf_cache, ops)

    def trunk_backward(self, dh, cache, grads):
        """dh (B, T, C) -> gradients written into `grads` (a FlatParams). The wte
        gradient from the embedding is *added* to whatever is already there, so a
        tied head's gradient (written first) is kept."""
        emb_cache, drop_cache, block_caches, lnf_cache, ops = cache
        dx, grads["ln_f.weight"][...], grads["ln_f.bias"][...] = ops.layernorm_backward(dh, lnf_cache)
        for i in reversed(range(len(block_caches))):
            dx, g = block_backward(dx, block_caches[i])
            for name, value in g.items():
                grads[f"h.{i}.{name}"][...] = value
        dx = dropout_backward(dx, drop_cache)
        dwte, dwpe = ops.embedding_backward(dx, emb_cache)
        grads["wte.weight"] += dwte
        grads["wpe.weight"][...] = dwpe
        return grads

    def lm_forward(self, idx, rng=None):
        """idx (B, T) -> logits (B, T, V), cache. The head is h @ wte.T (tied)."""
        h, trunk_cache = self.trunk_forward(idx, rng)
        ops = trunk_cache[-1]  # the backend the trunk ran on
        logits = ops.matmul(h, self.params["wte.weight"].T)  # (B, T, V)
        return logits, (h, trunk_cache)

    def lm_backward(self, dlogits, cache, grads=None):
        """dlogits (B, T, V) -> grads (FlatParams, same names and shapes as params).

        The tied weight collects two gradients: here, from logits = h wte^T,
        d wte = dlogits^T h; then, inside trunk_backward, the embedding lookup's."""
        h, trunk_cache = cache
        ops = trunk_cache[-1]  # the backend the forward ran on
        grads = self.params.zeros_like() if grads is None else grads
        C = h.shape[-1]
        V = dlogits.shape[-1]
        grads["wte.weight"][...] = ops.matmul(dlogits.reshape(-1, V).T, h.reshape(-1, C))  # (V, C), the head's share
        dh = ops.matmul(dlogits, self.params["wte.weight"])  # (B, T, C)
        return self.trunk_backward(dh, trunk_cache, grads)

    def forward(self, idx):
        """idx (B, T) int -> logits (B, T, V). No dropout."""
        return self.lm_forward(idx)[0]

    def logprobs_forward(self, idx, targets, rng=None, temperature=1.0):
        """log pi(targets[b, t] | idx[b, :t+1]) for every position: the quantity every
        RL loss is written in. idx, targets (B, T) -> logp (B, T) (0 where target is
        -1), cache. cache[0] is the (tempered) logits (B, T, V), for entropy.
        `temperature` scores the distribution softmax(logits / temperature): the one
        the tokens were sampled from, or the KL to the reference comes out wrong."""
        logits, lm_cache = self.lm_forward(idx, rng)
        if temperature != 1.0:
            logits = logits * (1.0 / temperature)
        ops = backend.ops()
        logp, lp_cache = ops.token_logprobs_forward(logits, np.asarray(targets))
        return logp, (logits, lm_cache, lp_cache, ops, temperature)

    def logprobs_backward(self, dlogp, cache):
        """dlogp (B, T) -> grads (FlatParams)."""
        logits, lm_cache, lp_cache, ops, temperature = cache
        dlogits = ops.token_logprobs_backward(dlogp, lp_cache)
        if temperature != 1.0:
            dlogits *= 1.0 / temperature
        return self.lm_backward(dlogits, lm_cache)

    def loss(self, idx, targets):
        """Mean next-token cross-entropy over targets != -1, forward only."""
        return cross_entropy_forward(self.forward(idx), np.asarray(targets))[0]

    def loss_and_grads(self, idx, targets, rng=None):
        """Mean cross-entropy of next-token prediction over targets != -1, and its
        gradient w.r.t. every parameter. idx, targets (B, T). Pass `rng` to train
        with dropout."""
        logits, cache = self.lm_forward(idx, rng)
        loss, ce_cache = cross_entropy_forward(logits, np.asarray(targets))
        return loss, self.lm_backward(cross_entropy_backward(1.0, ce_cache), cache)

    # ------------------------------------------------------------------
    # generation with a KV cache

    def require_causal(self, what):
        """Refuse a bidirectional (masked-language) model where a causal one is needed."""
        if not self.config.causal:
            raise MinirlhfError(
                f"{what} needs a causal language model; this GPT is bidirectional (causal=False, trained with "
                "`pretrain --objective mlm`): it fills blanks (`sample --fill`) but cannot write left to right"
            )

    def new_kv_cache(self, batch, length):
        """Empty key/value buffers, one (K, V) pair per layer, each (B, H, length, D)."""
        self.require_causal("generation with a KV cache")
        cfg = self.config
        shape = (batch, cfg.n_head, length, cfg.n_embd // cfg.n_head)
        return [(np.zeros(shape, self.dtype), np.zeros(shape, self.dtype)) for _ in range(cfg.n_layer)]

    def cached_logits(self, idx, pos0, kv):
        """Logits for tokens idx (B, t) at positions pos0.., reading and extending `kv`."""
        h, trunk_cache = self.trunk_forward(idx, kv=kv, pos0=pos0)
        ops = trunk_cache[-1]  # the backend the trunk ran on
        return ops.matmul(h, self.params["wte.weight"].T)  # (B, t, V)

    def generate(self, prompts, max_new_tokens, rng, temperature=1.0, top_k=None, top_p=None, stop_id=None):
        """Sample a continuation of each prompt, all prompts in one batch.

        prompts: list of B lists of token ids (lengths may differ). Each step feeds one
        new token per row through the KV cache, so a step costs O(T), not O(T^2).
        Prompts of different lengths need no padding: every row starts at position 0,
        and while a row is still inside its prompt, its next token is the prompt's
        own (the sampled one is discarded). A row stops at `stop_id` (included in its
        output), after max_new_tokens, or at the context limit.

        Returns (responses, finished): B lists of new token ids, and B bools, True
        where the row produced `stop_id`.
        """
        cfg = self.config
        lens = np.array([len(p) for p in prompts])
        if len(prompts) == 0 or lens.min() == 0:
            raise MinirlhfError("generate needs at least one prompt, and no empty prompt")
        if lens.max() >= cfg.block_size:
            raise MinirlhfError(f"a prompt has {lens.max()} tokens; the model's context is {cfg.block_size}")
        B = len(prompts)
        ends = np.minimum(lens + max_new_tokens, cfg.block_size)  # each row's last position + 1
        tokens = np.zeros((B, int(ends.max())), dtype=np.int64)
        for b, p in enumerate(prompts):
            tokens[b, : lens[b]] = p
        self.check_idx(tokens[:, :1], "prompts")
        kv = self.new_kv_cache(B, tokens.shape[1])
        start = int(lens.min())
        logits = self.cached_logits(tokens[:, :start], 0, kv)[:, -1]  # (B, V)
        done = np.zeros(B, dtype=bool)
        finished = np.zeros(B, dtype=bool)
        for pos in range(start, tokens.shape[1]):
            sampled = sample_next(logits, rng, temperature, top_k, top_p)  # (B,)
            generating = (pos >= lens) & ~done
            tokens[:, pos] = np.where(generating, sampled, np.where(pos < lens, tokens[:, pos], 0))
            if stop_id is not None:
                hit = generating & (sampled == stop_id)
                finished |= hit
                done |= hit
            done |= pos + 1 >= ends
            if done.all():
                break
            logits = self.cached_logits(tokens[:, pos : pos + 1], pos, kv)[:, -1]
        responses = []
        for b in range(B):
            row = tokens[b, lens[b] : ends[b]].tolist()
            if finished[b]:
                row = row[: row.index(stop_id) + 1]
            responses.append(row)
        return responses, finished.tolist()


class ScalarModel(GPT):
    """A GPT trunk with a scalar head instead of the LM head: one number per position,
    r[b, t] = h[b, t] . head.weight + head.bias.

    The reward model reads it at the last token of a response (its score for the
    whole prompt + response); PPO's value model reads it at every response position
    (the expected return from there). InstructGPT initialises both from a trained
    GPT: the trunk already "understands" the text, only the head is new.
    """

    def param_shapes(self):
        return {**self.config.param_shapes(), "head.weight": (self.config.n_embd,), "head.bias": (1,)}

    def _init_weights(self, rng):
        super()._init_weights(rng)
        # Unit-variance outputs at the start: h is LayerNorm-ed, so std 1/sqrt(C) per weight.
        self.params["head.weight"][...] = rng.normal(0.0, 1.0 / math.sqrt(self.config.n_embd), self.config.n_embd)

    @classmethod
    def from_gpt(cls, gpt, seed=0):
        """A scalar model whose trunk is a copy of `gpt`'s and whose head is new."""
        model = cls(gpt.config, seed=seed, dtype=gpt.dtype)
        for name, value in gpt.params.items():
            model.params[name][...] = value
        return model

    def values_forward(self, idx, rng=None):
        """idx (B, T) -> values (B, T), cache."""
        h, trunk_cache = self.trunk_forward(idx, rng)
        values = h @ self.params["head.weight"] + self.params["head.bias"][0]  # (B, T)
        return values, (h, trunk_cache)

    def values_backward(self, dvalues, cache):
        """dvalues (B, T) -> grads (FlatParams, trunk and head)."""
        h, trunk_cache = cache
        grads = self.params.zeros_like()
        grads["head.weight"][...] = np.tensordot(dvalues, h, axes=([0, 1], [0, 1]))  # (C,)
        grads["head.bias"][...] = dvalues.sum()
        dh = dvalues[..., None] * self.params["head.weight"]  # (B, T, C)
        return self.trunk_backward(dh, trunk_cache, grads)

    def scores(self, idx, last):
        """The scalar at position last[b] of each row: idx (B, T), last (B,) -> (B,)."""
        values, _ = self.values_forward(idx)
        return values[np.arange(len(last)), last]
