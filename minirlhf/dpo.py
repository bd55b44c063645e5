"""The mathematics of DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your
Language Model is Secretly a Reward Model"): steps 2 and 3 of the article in one loss.

PPO needs a reward model r(x, y) and a KL penalty to the SFT model pi_ref. The policy
that maximises  E[r] - beta KL(pi || pi_ref)  is known in closed form,

    pi*(y | x) = pi_ref(y | x) exp(r(x, y) / beta) / Z(x),

so every policy defines the reward that makes it optimal -- its "implicit reward"

    r_hat(x, y) = beta * (log pi(y | x) - log pi_ref(y | x))     (+ beta log Z(x), the same for every y)

and the reward model's ranking loss (reward.ranking_loss, the Bradley-Terry model of
the labelers' rankings) can be written in the policy's own log-probabilities. For one
comparison, y_w preferred to y_l:

    loss = -log sigmoid( beta [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))] )

beta log Z(x) cancels in the difference, so no sampling, no reward model and no value
model are needed: DPO trains on the rankings directly. log pi(y | x) is the sum of the
response tokens' log-probabilities (the `mask` positions, see sequences.py).

The functions take the per-token log-probs of a packed batch, so the gradient chains
into `GPT.logprobs_backward`:

  sequence_logprobs   sum of the response tokens' log-probs, one per row
  implicit_rewards    beta (log pi - log pi_ref) per row
  dpo_loss            the loss over groups of rows ranked best first, and d loss / d logp
The training loop that uses them is train/dpo.py.
"""
from dataclasses import dataclass

import numpy as np

from minirlhf.reward import grouped_ranking_loss, pairwise_accuracy


def sequence_logprobs(logp, mask):
    """log pi(response) = sum over its tokens of log pi(token | everything before).
    logp, mask (B, T) -> (B,)."""
    return np.where(mask, logp, 0.0).sum(axis=1)


def implicit_rewards(logp, ref_logp, mask, beta):
    """r_hat = beta (log pi(y|x) - log pi_ref(y|x)), one per row: the reward the policy is
    optimal for (up to a per-prompt constant). (B, T) arrays -> (B,)."""
    return beta * (sequence_logprobs(logp, mask) - sequence_logprobs(ref_logp, mask))


@dataclass
class DPOStats:
    reward_accuracy: float  # share of comparisons whose preferred answer has the higher implicit reward
    reward_margin: float  # mean r_hat(better) - r_hat(worse) over the comparisons
    chosen_reward: float  # mean r_hat of the preferred answer of each comparison
    rejected_reward: float  # mean r_hat of the other answer


def dpo_loss(logp, ref_logp, mask, groups, beta=0.1):
    """The DPO loss of a batch, and its gradient w.r.t. the policy's per-token log-probs.

    logp, ref_logp, mask (B, T): policy and reference log-probs of the packed rows;
    groups: a list of index arrays into the rows, each one prompt's responses ranked
    best first. A group of two is one comparison, the DPO paper's form. A group of K is
    a whole ranking: its C(K,2) comparisons averaged, so every prompt weighs the same
    -- exactly InstructGPT's reward-model loss (reward.grouped_ranking_loss), applied to
    the implicit rewards. The loss is the mean over groups.

    Returns (loss, dlogp (B, T), DPOStats). The chain rule through r_hat:
    d loss / d logp[b, t] = beta * d loss / d r_hat[b] on the response tokens, 0 elsewhere.
    """
    rewards = implicit_rewards(logp, ref_logp, mask, beta)  # (B,)
    loss, drewards = grouped_ranking_loss(rewards, groups)
    dlogp = np.where(mask, beta * drewards[:, None], 0.0)
    return loss, dlogp, dpo_stats(rewards, groups)


def dpo_stats(rewards, groups):
    """Diagnostics over every comparison (i ranked above j) of every group."""
    agree, n = pairwise_accuracy(rewards, groups)
    pairs = [(g[i], g[j]) for g in groups for i, j in zip(*np.triu_indices(len(g), k=1))]
    better, worse = (rewards[list(rows)] for rows in zip(*pairs))
    return DPOStats(agree / n, float(np.mean(better - worse)), float(better.mean()), float(worse.mean()))
