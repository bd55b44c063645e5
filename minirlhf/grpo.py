"""The mathematics of GRPO (Shao et al. 2024, DeepSeekMath, "Group Relative Policy
Optimization"): PPO for language models without the value model.

PPO needs a critic V(s) -- a second transformer as large as the policy -- to know
whether a response was better or worse than expected. GRPO gets the expectation from
the data instead: it samples G responses to the same prompt, scores them all with the
reward model, and measures each one against its siblings,

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)         (every token of response i)

The rest is PPO's clipped surrogate (ppo.policy_loss), plus a KL penalty to the SFT
model inside the loss (PPO puts it into the reward instead), estimated per token with
Schulman's "k3" estimator as in the GRPO paper:

    kl_t = pi_ref / pi - log(pi_ref / pi) - 1  =  exp(ref - logp) - (ref - logp) - 1

k3 is >= 0 for every token (k1 = logp - ref can be negative on a single sample), and
its mean under pi is exactly KL(pi || pi_ref), with less variance than k1.

    L = 1/G sum_i 1/|o_i| sum_t [ max(-A_i rho_t, -A_i clip(rho_t, 1 - eps, 1 + eps)) + beta kl_t ]

Each response counts once whatever its length (the paper's 1/|o_i|). `mask` (B, T)
marks the response tokens, as everywhere (sequences.py).

  group_advantages  (r - group mean) / (group std + eps)
  k3_kl             the per-token KL estimate and its gradient
  grpo_loss         the loss above, and its gradient w.r.t. log pi
The training loop that uses them is train/grpo.py.
"""
from dataclasses import dataclass

import numpy as np

from minirlhf.ppo import masked_mean, policy_loss


def group_advantages(rewards, eps=1e-4):
    """rewards (P, G): G responses to each of P prompts -> advantages (P, G).

    The population standard deviation (ddof 0) of each group: a group's advantages then
    have mean 0 and (up to eps) standard deviation 1. A group whose responses all scored
    the same says nothing about which is better: its advantages are 0."""
    rewards = np.asarray(rewards, dtype=np.float64)
    mean = rewards.mean(axis=1, keepdims=True)
    std = rewards.std(axis=1, keepdims=True)
    return (rewards - mean) / (std + eps)


def k3_kl(logp, ref_logp):
    """kl_t = exp(ref - logp) - (ref - logp) - 1 and d kl_t / d logp = 1 - exp(ref - logp)."""
    ratio = np.exp(ref_logp - logp)  # pi_ref / pi
    return ratio - (ref_logp - logp) - 1.0, 1.0 - ratio


@dataclass
class GRPOStats:
    clip_frac: float  # share of response tokens where the clipped branch was taken
    approx_kl: float  # 0.5 mean (log pi - log pi_old)^2: how far this update moved
    kl_k3: float  # mean per-token k3 estimate of KL(pi || pi_ref)


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, beta=0.04, clip=0.2):
    """The GRPO loss of a batch of responses and its gradient w.r.t. the policy's log-probs.

    logp, old_logp, ref_logp, mask (B, T): the policy now, the policy that sampled the
    responses, and the frozen reference; advantages (B,): one per response (from
    group_advantages). Returns (loss, dlogp (B, T), GRPOStats).
    """
    mask = mask.astype(bool)
    n_rows = len(mask)
    lengths = np.maximum(mask.sum(axis=1), 1)  # (B,) |o_i|
    weight = np.where(mask, 1.0 / (n_rows * lengths)[:, None], 0.0)  # (B, T): 1/G 1/|o_i| per token
    # ppo.policy_loss averages over all tokens (divides by their number n). Its clip
    # branch depends only on the sign of A, so handing it A * n * weight gives the
    # per-response average -- PPO's surrogate, reused, weighted the GRPO way.
    token_adv = np.asarray(advantages, dtype=np.float64)[:, None] * (mask.sum() * weight)
    surrogate, dlogp, ppo_stats = policy_loss(logp, old_logp, token_adv, mask, clip)
    kl, dkl = k3_kl(np.where(mask, logp, 0.0), np.where(mask, ref_logp, 0.0))
    loss = surrogate + beta * float((weight * kl).sum())
    dlogp = dlogp + beta * weight * dkl
    return loss, dlogp, GRPOStats(ppo_stats.clip_frac, ppo_stats.approx_kl, masked_mean(kl, mask))
