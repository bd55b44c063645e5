"""Checkers for the RLHF losses (notebooks/exercises/03_rlhf_losses.ipynb): the reward
model's ranking loss, the KL-shaped per-token reward, GAE, PPO's clipped surrogate.
The truth is reward.py and ppo.py (and finite differences of them, for gradients).

The (B, T) inputs look like real rollouts: each row is prompt tokens (mask False), then
the response (mask True), then padding (False), and one row's response runs to the last
column. The arrays hold junk outside the mask, as real ones do, so an answer that lets
a prompt or padding position leak in is caught.
"""
from math import comb

import numpy as np

from minirlhf import ppo
from minirlhf.exercises.checking import GRAD_TOL, Mistake, Report, call, finite_differences, unpack
from minirlhf.reward import log_sigmoid, ranking_loss

# Response spans [start, stop) of the three rows of every (B, T) input.
SPANS = ((2, 6), (3, 8), (1, 4))
T = 8
GAMMA, LAM, BETA, CLIP = 0.9, 0.8, 0.1, 0.2


def _mask():
    mask = np.zeros((len(SPANS), T), dtype=bool)
    for row, (start, stop) in enumerate(SPANS):
        mask[row, start:stop] = True
    return mask


def _last_token(mask):
    """(B, T) True at each row's last response token."""
    last = np.zeros_like(mask)
    last[np.arange(len(mask)), ppo.last_action_index(mask)] = True
    return last


def _regions(mask):
    return {"outside the mask (prompt or padding positions)": ~mask,
            "on the last response token of a row": _last_token(mask)}


# ----------------------------------------------------------------------------
# the ranking loss


def _pair_loss(r, pairs, dmargin_sign=-1.0):
    """-mean over pairs of log sigmoid(r_i - r_j), and its gradient with d/dmargin of
    -log sigmoid(m) taken as dmargin_sign * sigmoid(dmargin_sign * m) (right: -sigmoid(-m))."""
    better, worse = pairs
    margin = r[better] - r[worse]
    dmargin = dmargin_sign * np.exp(log_sigmoid(dmargin_sign * margin)) / len(better)
    grad = np.zeros_like(r)
    np.add.at(grad, better, dmargin)
    np.add.at(grad, worse, -dmargin)
    return -log_sigmoid(margin).mean(), grad


def check_ranking_loss(fn):
    """fn(scores (K,), best first) -> (loss, dscores (K,)), the InstructGPT ranking loss
    -1/C(K,2) sum_{i<j} log sigmoid(r_i - r_j) of one prompt, and its gradient."""
    report = Report("check_ranking_loss")
    rng = np.random.default_rng(20)
    cases = [(f"(K={K})", rng.standard_normal(K) * 2.0 + 0.5, None) for K in (4, 7)]
    cases.append(("(K=4, margins up to 1000)", np.array([-500.0, 500.0, 0.0, 20.0]),  # ranked first, scored last
                  "log(sigmoid(-1000)) = log(0) = -inf: compute log sigmoid(x) without overflow, as "
                  "-np.logaddexp(0, -x)."))
    for label, r, hint in cases:
        K = len(r)
        loss, dscores = unpack(report, call(report, fn, r), ("loss", "dscores"))
        ref_loss, ref_grad = ranking_loss(r)
        x = r.copy()
        numeric, typical = finite_differences(lambda: ranking_loss(x)[0], x, ref_grad)
        n_pairs = comb(K, 2)
        rev_loss, rev_grad = ranking_loss(r[::-1])  # every pair reversed: "worse beats better"
        adjacent = (np.arange(K - 1), np.arange(1, K))
        adj_loss, adj_grad = _pair_loss(r, adjacent)
        context = [f"scores = {np.array2string(r, precision=3)}"]
        report.compare(f"loss {label}", loss, ref_loss, context=context, hint=hint, mistakes=[
            Mistake(f"normalised twice: the sum over pairs is divided by C(K,2) = {n_pairs} once.",
                    ref_loss / n_pairs),
            Mistake(f"not normalised: divide the sum over pairs by C(K,2) = {n_pairs}, so every prompt weighs the "
                    "same whatever its K.", ref_loss * n_pairs),
            Mistake(f"divided by K; the mean is over the C(K,2) = {n_pairs} pairs.", ref_loss * n_pairs / K),
            Mistake("the pairs are reversed: scores are ordered best first, so in a pair i < j the better one is "
                    "i, and the margin is r_i - r_j.", rev_loss),
            Mistake("only neighbouring pairs: a ranking of K answers holds every pair i < j, C(K,2) of them.",
                    adj_loss),
            Mistake("the sign is flipped: the loss is minus the log-likelihood, -log sigmoid(r_i - r_j).", -ref_loss),
        ])
        report.compare(f"dscores {label}", dscores, numeric, tol=GRAD_TOL, typical=typical, context=context,
                       hint=hint, mistakes=[
            Mistake(f"normalised twice: divide by C(K,2) = {n_pairs} once.", ref_grad / n_pairs),
            Mistake(f"not normalised: the loss divides by C(K,2) = {n_pairs}, so does its gradient.",
                    ref_grad * n_pairs),
            Mistake("the sign is flipped: raising the better answer's score must lower the loss "
                    "(dscores[0] < 0 when r_0 is ranked first).", -ref_grad),
            Mistake("the pairs are reversed: in a pair i < j the better one is i.", rev_grad[::-1]),
            Mistake("d/dm of -log sigmoid(m) is -sigmoid(-m) = sigmoid(m) - 1, not -sigmoid(m).",
                    _pair_loss(r, np.triu_indices(K, k=1), dmargin_sign=1.0)[1]),
            Mistake("only neighbouring pairs: every pair i < j counts.", adj_grad),
        ])
    return report.passed()


# ----------------------------------------------------------------------------
# KL-shaped rewards


def _rollout(seed):
    """logp, ref_logp (B, T) log-probabilities, junk outside the mask; scores (B,)."""
    rng = np.random.default_rng(seed)
    ref_logp = -np.abs(rng.standard_normal((len(SPANS), T))) - 0.5
    logp = ref_logp + rng.standard_normal(ref_logp.shape) * 0.4
    return logp, ref_logp, rng.standard_normal(len(SPANS)) * 2.0


def check_kl_shaped_rewards(fn):
    """fn(logp, ref_logp, scores, mask, beta) -> (rewards, kl), both (B, T):
    kl = log pi - log pi_ref on the response, r = -beta kl, plus the RM score on the last response token."""
    report = Report("check_kl_shaped_rewards")
    mask = _mask()
    logp, ref_logp, scores = _rollout(21)
    rewards, kl = unpack(report, call(report, fn, logp, ref_logp, scores, mask, BETA), ("rewards", "kl"))
    expected, expected_kl = ppo.kl_shaped_rewards(logp, ref_logp, scores, mask, BETA)
    penalty = -BETA * expected_kl  # the KL part, right
    at = lambda where: np.where(where, scores[:, None], 0.0)  # noqa: E731  the score placed at `where`
    first = np.zeros_like(mask)
    first[np.arange(len(SPANS)), np.argmax(mask, axis=1)] = True
    regions = _regions(mask)
    report.compare("kl", kl, expected_kl, regions=regions, mistakes=[
        Mistake("the KL is flipped: kl = log pi - log pi_ref (the policy's log-prob minus the reference's).",
                -expected_kl),
        Mistake("the KL is not masked: it is 0 outside the response (prompt and padding are not actions).",
                logp - ref_logp),
    ])
    report.compare("rewards", rewards, expected, regions=regions, mistakes=[
        Mistake("the score is added on every response token: the reward model judges the whole response once, "
                "so its score goes on the last response token only; the KL penalty is what every token pays.",
                penalty + at(mask)),
        Mistake("the score is added at every position: it goes on the last response token only.", penalty + at(True)),
        Mistake("the score is added at the last column (T - 1), which is padding in a shorter response: "
                "add it at each row's last response token (the last True of its mask).",
                penalty + at(np.arange(T) == T - 1)),
        Mistake("the score is added on the first response token; it belongs on the last.", penalty + at(first)),
        Mistake("the reward model's score is missing: add it on each row's last response token.", penalty),
        Mistake("the KL penalty's sign is flipped: r = -beta * (log pi - log pi_ref), so drifting costs reward.",
                -penalty + at(_last_token(mask))),
        Mistake("beta is missing: r = -beta * kl.", -expected_kl + at(_last_token(mask))),
        Mistake("the KL penalty is not masked: prompt and padding positions get no reward.",
                -BETA * (logp - ref_logp) + at(_last_token(mask))),
    ])
    return report.passed()


# ----------------------------------------------------------------------------
# GAE


def _accumulate(deltas, decay, backwards=True):
    """A_t = delta_t + decay * A_{t+1} (or A_{t-1}, going forwards in time)."""
    out, running = np.zeros_like(deltas), 0.0
    order = range(len(deltas) - 1, -1, -1) if backwards else range(len(deltas))
    for t in order:
        running = deltas[t] + decay * running
        out[t] = running
    return out


def _gae_variant(rewards, values, gamma=GAMMA, decay=GAMMA * LAM, bootstrap=False, reset=True, backwards=True):
    """The advantages GAE gives with the switches that produce the known mistakes: bootstrap
    from the value past the response's end, or run on without resetting there."""
    out = np.zeros(rewards.shape)
    for row, (start, stop) in enumerate(SPANS):
        end = stop if reset else T
        v = values[row, start:end]
        after = values[row, end] if bootstrap and end < T else 0.0
        deltas = rewards[row, start:end] + gamma * np.append(v[1:], after) - v
        out[row, start:stop] = _accumulate(deltas, decay, backwards)[: stop - start]
    return out


def check_gae(fn):
    """fn(rewards, values, mask, gamma, lam) -> (advantages, returns), both (B, T), zero outside the mask:
    delta_t = r_t + gamma V_{t+1} - V_t (V = 0 after the last response token), A_t = delta_t + gamma lam A_{t+1},
    R_t = A_t + V_t."""
    report = Report("check_gae")
    rng = np.random.default_rng(22)
    mask = _mask()
    rewards = rng.standard_normal(mask.shape) * 0.5
    values = rng.standard_normal(mask.shape) + 0.5
    adv, ret = unpack(report, call(report, fn, rewards, values, mask, GAMMA, LAM), ("advantages", "returns"))
    expected, expected_ret = ppo.gae(rewards, values, mask, GAMMA, LAM)
    report.compare("advantages", adv, expected, regions=_regions(mask), mistakes=[
        Mistake("the last response token bootstraps from the value of the position after it (padding): "
                "the response ends there, so V after the last response token is 0.",
                _gae_variant(rewards, values, bootstrap=True)),
        Mistake("the recursion is not reset at the end of the response: padding rewards and values leak in. "
                "Start from A = 0 and V = 0 after each row's last response token.",
                _gae_variant(rewards, values, reset=False)),
        Mistake("gamma and lambda are swapped: delta_t uses gamma; the recursion decays by gamma * lam.",
                _gae_variant(rewards, values, gamma=LAM)),
        Mistake("the recursion decays by gamma only: A_t = delta_t + gamma * lam * A_{t+1}.",
                _gae_variant(rewards, values, decay=GAMMA)),
        Mistake("GAE runs backwards in time: A_t depends on A_{t+1}, so start at the last response token.",
                _gae_variant(rewards, values, backwards=False)),
    ], hint="compute A backwards from each row's last response token, with A and V after it taken as 0, "
            "and leave 0 outside the mask.")
    report.compare("returns", ret, expected_ret, regions=_regions(mask), mistakes=[
        Mistake("returns are the value targets R_t = A_t + V_t (you returned the advantages).", expected),
        Mistake("returns are A_t + V_t, not A_t - V_t.", np.where(mask, expected - values, 0.0)),
        Mistake("returns must be 0 outside the mask, like the advantages.", expected + values),
    ])
    return report.passed()


# ----------------------------------------------------------------------------
# PPO's clipped surrogate


def _surrogate(logp, old_logp, advantages, mask, *, ratio=None, sign=1.0, pick=np.maximum, n=None):
    """mean over the mask of pick(-A rho, -A clip(rho)), with switches for the known mistakes."""
    rho = np.exp(logp - old_logp) if ratio is None else ratio
    a = sign * advantages
    per_token = pick(-a * rho, -a * np.clip(rho, 1 - CLIP, 1 + CLIP))
    return float(np.where(mask, per_token, 0.0).sum() / (n or mask.sum()))


def check_policy_loss(fn):
    """fn(logp, old_logp, advantages, mask, clip) -> (loss, dlogp (B, T)), PPO's clipped surrogate
    mean(max(-A rho, -A clip(rho, 1 - eps, 1 + eps))) over the mask, rho = exp(logp - old_logp)."""
    report = Report("check_policy_loss")
    rng = np.random.default_rng(23)
    mask = _mask()
    logp, old_logp, _ = _rollout(24)  # ratios from ~0.5 to ~2: both clip edges are crossed
    advantages = rng.standard_normal(mask.shape)
    loss, dlogp = unpack(report, call(report, fn, logp, old_logp, advantages, mask, CLIP), ("loss", "dlogp"))
    ref_loss, ref_dlogp, _ = ppo.policy_loss(logp, old_logp, advantages, mask, CLIP)
    x = logp.copy()
    numeric, typical = finite_differences(lambda: ppo.policy_loss(x, old_logp, advantages, mask, CLIP)[0], x,
                                          ref_dlogp)
    args = (logp, old_logp, advantages, mask)
    rho = np.exp(logp - old_logp)
    report.compare("loss", loss, ref_loss, mistakes=[
        Mistake("min instead of max: the loss is the max of -A rho and -A clip(rho) (the min of the two "
                "objectives), a pessimistic bound that removes any gain from moving rho past the clip.",
                _surrogate(*args, pick=np.minimum)),
        Mistake("the advantage's sign is flipped: the loss is -A rho, so minimising it raises the probability "
                "of tokens with A > 0.", _surrogate(*args, sign=-1.0)),
        Mistake("the clipped term is missing: max(-A rho, -A clip(rho, 1 - eps, 1 + eps)).",
                _surrogate(*args, pick=lambda unclipped, clipped: unclipped)),
        Mistake("only the clipped term: take the max of the unclipped and the clipped one.",
                _surrogate(*args, pick=lambda unclipped, clipped: clipped)),
        Mistake("averaged over every position (B*T); average over the response tokens (mask.sum()).",
                _surrogate(*args, n=mask.size)),
        Mistake("rho is a ratio of probabilities, exp(logp - old_logp), not a difference of log-probs.",
                _surrogate(*args, ratio=logp - old_logp)),
        Mistake("rho = exp(logp - old_logp), not logp / old_logp.", _surrogate(*args, ratio=logp / old_logp)),
    ])
    n = mask.sum()
    unclipped_everywhere = np.where(mask, -advantages * rho, 0.0) / n
    report.compare("dlogp", dlogp, numeric, tol=GRAD_TOL, typical=typical, regions=_regions(mask), mistakes=[
        Mistake("where the clipped term is the max, the loss does not depend on logp (clip(rho) is constant "
                "there): the gradient is 0 at those tokens.", unclipped_everywhere),
        Mistake("the factor rho is missing: d rho / d logp = rho, so d(-A rho)/d logp = -A rho.",
                np.where(ref_dlogp != 0, -advantages / n, 0.0)),
        Mistake("the sign is flipped.", -ref_dlogp),
        Mistake("not divided by the number of response tokens: the loss is a mean.", ref_dlogp * n),
        Mistake("divided by every position (B*T): the loss is a mean over the response tokens.",
                ref_dlogp * n / mask.size),
    ])
    return report.passed()

