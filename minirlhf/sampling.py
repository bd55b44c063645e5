"""Turning next-token logits into a token: temperature, top-k, top-p (nucleus).

RL needs care here: PPO's log-probabilities must be those of the distribution the
tokens were actually drawn from. Sample RL rollouts at the temperature the policy is
scored at, with top_k/top_p off, or the KL to the reference comes out negative.
"""
import numpy as np

from minirlhf.errors import MinirlhfError
from minirlhf.layers import softmax_forward


def next_token_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """logits (B, V) -> probabilities (B, V) after temperature, top-k and top-p."""
    if temperature <= 0:
        raise MinirlhfError("temperature must be > 0 (use temperature=None or greedy decoding for argmax)")
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.shape[-1]:
        if top_k < 1:
            raise MinirlhfError(f"top_k must be >= 1, got {top_k}")
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]  # the k-th largest logit
        z = np.where(z < kth, -np.inf, z)
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise MinirlhfError(f"top_p must be in (0, 1], got {top_p}")
    probs, _ = softmax_forward(z)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass
        # *before* it is still short of top_p (so the most likely token always stays).
        keep_sorted = (np.cumsum(sorted_p, axis=-1) - sorted_p) < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def sample_next(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """Draw one token per row of logits (B, V) -> (B,) ints. temperature=None is greedy.

    One uniform number per row, mapped through the row's cumulative distribution, so
    the same generator state always gives the same tokens."""
    if temperature is None:
        return logits.argmax(axis=-1)
    probs = next_token_probs(logits, temperature, top_k, top_p)
    u = rng.random((probs.shape[0], 1))
    cdf = np.cumsum(probs, axis=-1)
    # The last entry of cdf may fall a rounding error short of 1; clamp the index.
    return np.minimum((cdf < u * cdf[:, -1:]).sum(axis=-1), probs.shape[-1] - 1)
