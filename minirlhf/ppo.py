"""The mathematics of PPO for language models, as small pure functions on (B, T) arrays.

A response is a sequence of actions: at position t the policy picks token idx[t + 1].
`mask` (B, T) marks the positions that are actions (the response tokens, see
sequences.py). Everything here is per position and masked, so the same functions serve
rollouts of any lengths.

  kl_shaped_rewards   r_t = -beta (log pi - log pi_ref), plus the RM score at the end
  gae                 advantages and returns, Generalised Advantage Estimation
  whiten              normalise advantages over the valid positions
  policy_loss         the clipped surrogate, and its gradient w.r.t. log pi
  value_loss          the clipped value loss, and its gradient w.r.t. the values
  AdaptiveKLController  beta that steers the KL towards a target

The training loop that uses them is train/ppo.py.
"""
from dataclasses import dataclass

import numpy as np


def masked_mean(x, mask):
    """Mean of x over the positions where mask is True (0 if there are none)."""
    n = mask.sum()
    return float((x * mask).sum() / n) if n else 0.0


def whiten(x, mask, shift_mean=True):
    """(x - mean) / sqrt(var + 1e-8) over the masked positions; zero elsewhere.
    Whitened advantages keep the policy step the same size whatever the reward scale."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) / np.sqrt(var + 1e-8)
    if not shift_mean:
        out += mean
    return np.where(mask, out, 0.0)


def last_action_index(mask):
    """(B,) the position of each row's last action (its last response token's predictor)."""
    T = mask.shape[1]
    return T - 1 - np.argmax(mask[:, ::-1], axis=1)


def kl_shaped_rewards(logp, ref_logp, scores, mask, beta):
    """The per-token reward of InstructGPT's PPO.

        kl_t = log pi(a_t | s_t) - log pi_ref(a_t | s_t)
        r_t  = -beta * kl_t           on every response token
        r_T += score                  on the last response token (the reward model's verdict)

    The KL term is paid token by token: each token that drifts from the SFT model
    costs something, so the policy cannot buy reward with gibberish the RM misjudges.
    logp, ref_logp, mask (B, T); scores (B,). Returns rewards (B, T) and kl (B, T).
    """
    kl = np.where(mask, logp - ref_logp, 0.0)
    rewards = -beta * kl
    rewards[np.arange(len(scores)), last_action_index(mask)] += scores
    return rewards, kl


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalised Advantage Estimation (Schulman et al. 2016), backwards in time:

        delta_t = r_t + gamma V_{t+1} - V_t          (V after the last response token is 0)
        A_t     = delta_t + gamma lam A_{t+1}
        R_t     = A_t + V_t                           (the value target)

    lam trades bias (lam=0: trust V) for variance (lam=1: the actual return).
    rewards, values, mask (B, T) -> advantages, returns (B, T), zero outside mask.
    """
    B, T = rewards.shape
    mask = mask.astype(bool)
    advantages = np.zeros((B, T))
    running = np.zeros(B)
    for t in reversed(range(T)):
        next_in = mask[:, t + 1] if t + 1 < T else np.zeros(B, dtype=bool)
        next_value = np.where(next_in, values[:, t + 1], 0.0) if t + 1 < T else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = np.where(mask[:, t], delta + gamma * lam * np.where(next_in, running, 0.0), 0.0)
        advantages[:, t] = running
    returns = np.where(mask, advantages + values, 0.0)
    return advantages, returns


@dataclass
class PolicyStats:
    clip_frac: float  # share of tokens where the clipped branch was taken
    approx_kl: float  # 0.5 mean (log pi - log pi_old)^2: how far this update moved


def policy_loss(logp, old_logp, advantages, mask, clip=0.2):
    """The clipped surrogate objective (Schulman et al. 2017), as a loss to minimise:

        rho = exp(log pi - log pi_old)
        L   = mean( max(-A rho, -A clip(rho, 1 - eps, 1 + eps)) )

    Taking the max of the two losses (the min of the two objectives) removes any
    incentive to push rho outside [1 - eps, 1 + eps]: one batch of rollouts cannot
    move the policy far. Returns (loss, dlogp (B, T), PolicyStats).
    The gradient: d/dlogp (-A rho) = -A rho where the unclipped branch is the max, and 0
    where the clipped branch wins (it is constant in rho there).
    """
    n = max(int(mask.sum()), 1)
    ratio = np.exp(np.where(mask, logp - old_logp, 0.0))
    unclipped = -advantages * ratio
    clipped = -advantages * np.clip(ratio, 1.0 - clip, 1.0 + clip)
    loss = float(np.where(mask, np.maximum(unclipped, clipped), 0.0).sum() / n)
    dlogp = np.where(mask & (unclipped >= clipped), -advantages * ratio, 0.0) / n
    stats = PolicyStats(
        clip_frac=masked_mean(clipped > unclipped, mask),
        approx_kl=0.5 * masked_mean((logp - old_logp) ** 2, mask),
    )
    return loss, dlogp, stats


def value_loss(values, old_values, returns, mask, clip=0.2):
    """The clipped value loss:

        V_c = V_old + clip(V - V_old, -eps, eps)
        L   = 0.5 mean( max((V - R)^2, (V_c - R)^2) )

    Like the policy's clip, it keeps one batch from dragging the value function far
    from where it was. Returns (loss, dvalues (B, T))."""
    n = max(int(mask.sum()), 1)
    clipped = old_values + np.clip(values - old_values, -clip, clip)
    err = (values - returns) ** 2
    err_clipped = (clipped - returns) ** 2
    loss = float(0.5 * np.where(mask, np.maximum(err, err_clipped), 0.0).sum() / n)
    inside = np.abs(values - old_values) < clip  # where the clipped value still moves with V
    dvalues = np.where(err >= err_clipped, values - returns, np.where(inside, clipped - returns, 0.0))
    return loss, np.where(mask, dvalues, 0.0) / n


def entropy_from_logits(logits, mask):
    """Mean entropy (nats) of the next-token distributions at the masked positions."""
    z = logits - logits.max(axis=-1, keepdims=True)
    logq = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    ent = -(np.exp(logq) * logq).sum(axis=-1)
    return masked_mean(ent, mask)


class AdaptiveKLController:
    """Steer beta so the measured KL tracks a target (Ziegler et al. 2019):

        e    = clip(KL / target - 1, -0.2, 0.2)
        beta = beta * (1 + e * n / horizon)        n: rollouts in the batch

    Too much KL raises beta (pull back to the SFT model), too little lowers it."""

    def __init__(self, beta, target, horizon):
        self.beta = beta
        self.target = target
        self.horizon = horizon

    def update(self, kl, n):
        error = np.clip(kl / self.target - 1.0, -0.2, 0.2)
        self.beta *= 1.0 + error * n / self.horizon
        return self.beta
