"""The reward model: a GPT that reads a prompt and a response and returns one number.

Step 2 of the article (InstructGPT's "RM"). Labelers do not write a score for an
answer -- people are bad at that -- they *rank* K = 4..9 answers to the same prompt.
A ranking of K answers holds C(K,2) comparisons "a is better than b", and the reward
model r(x, y) is trained so that the better answer of each pair scores higher:

    loss(x) = -1/C(K,2) * sum over pairs (better y_w, worse y_l) of log sigmoid(r(x, y_w) - r(x, y_l))

This is the Bradley-Terry model: P(y_w preferred) = sigmoid(r_w - r_l), fitted by maximum
likelihood. Only differences of scores matter, so the scale's zero is free; InstructGPT
fixes it after training by shifting the bias so labeler demonstrations score 0 on average.

The model is `ScalarModel`: the SFT model's transformer with its LM head replaced by a
scalar head, read at the last token of the response (the end-of-text token when the
answer stopped), which by causal attention has seen the whole prompt and response.

    rm, tokenizer = load_reward_model("runs/reward/checkpoint")
    r = score(rm, prompt_ids, response_ids)          # (B,) -- what PPO calls on its rollouts
    r = score_texts(rm, tokenizer, prompts, responses, finished)
    loss, dscores = ranking_loss(scores)             # one prompt's scores, best first
"""
from math import comb

import numpy as np

from minirlhf.checkpoint import check_same_tokenizer, load_checkpoint, save_checkpoint
from minirlhf.errors import MinirlhfError
from minirlhf.model import ScalarModel
from minirlhf.sequences import pack

SCORE_BATCH = 64  # sequences per forward pass when scoring (bounds the activations' memory)


# ----------------------------------------------------------------------------
# the loss


def log_sigmoid(x):
    """log sigmoid(x) = -log(1 + e^-x), without overflow for large |x|."""
    return -np.logaddexp(0.0, -x)


def ranking_loss(scores):
    """The InstructGPT ranking loss of one prompt, and its gradient.

    scores (K,): the reward model's scores of K >= 2 responses, ordered best to worst
    (as the labeler ranked them). Every pair i < j is a comparison "i beat j":

        loss = -1/C(K,2) * sum_{i<j} log sigmoid(r_i - r_j)
        d loss / d r_i = -1/C(K,2) * (sum_{j>i} sigmoid(r_j - r_i) - sum_{j<i} sigmoid(r_i - r_j))

    since d/dd log sigmoid(d) = 1 - sigmoid(d) = sigmoid(-d). The C(K,2) normalisation
    makes every prompt weigh the same whatever its K; it is applied once (a known
    public implementation divides by it twice, shrinking large-K prompts' gradients).

    Returns (loss, dscores) with dscores shaped like scores.
    """
    r = np.asarray(scores, dtype=np.float64)
    if r.ndim != 1 or len(r) < 2:
        raise MinirlhfError(f"ranking_loss needs a 1-D array of at least 2 scores, got shape {r.shape}")
    n_pairs = comb(len(r), 2)
    better, worse = np.triu_indices(len(r), k=1)  # every pair (i, j) with i ranked above j
    margin = r[better] - r[worse]  # (C(K,2),)
    loss = -log_sigmoid(margin).sum() / n_pairs
    dmargin = -np.exp(log_sigmoid(-margin)) / n_pairs  # d loss / d margin = -sigmoid(-margin) / C(K,2)
    dscores = np.zeros_like(r)
    np.add.at(dscores, better, dmargin)
    np.add.at(dscores, worse, -dmargin)
    return float(loss), dscores


def grouped_ranking_loss(scores, groups):
    """The loss of a batch: the mean over groups of each group's `ranking_loss`.

    scores (N,): the scores of every sequence in the batch; groups: a list of index
    arrays into scores, each one prompt's responses best to worst. In InstructGPT's
    way a group is a prompt's whole ranking (one batch element per prompt); with
    shuffled pairs every group is one pair [better, worse]. A sequence may appear in
    several groups (its gradients add up). Returns (loss, dscores (N,)).
    """
    dscores = np.zeros(len(scores))
    total = 0.0
    for group in groups:
        loss, dgroup = ranking_loss(scores[group])
        total += loss
        np.add.at(dscores, group, dgroup)
    return total / len(groups), dscores / len(groups)


def pairwise_accuracy(scores, groups):
    """(agreements, pairs): over every pair i < j of every group, how often the model
    scores the labeler's better response higher. A tie (e.g. the same response twice)
    counts one half: the model has no preference, so it is right half the time."""
    agree = n = 0.0
    for group in groups:
        r = np.asarray(scores)[group]
        better, worse = np.triu_indices(len(r), k=1)
        agree += np.sum(r[better] > r[worse]) + 0.5 * np.sum(r[better] == r[worse])
        n += len(better)
    return float(agree), int(n)


# ----------------------------------------------------------------------------
# scoring token sequences


def response_tokens(tokenizer, response, finished=True):
    """A response's token ids as the model saw them: its text, then end-of-text if it stopped."""
    return tokenizer.encode(response) + ([tokenizer.eot_id] if finished else [])


def scores_forward(rm, batch, rng=None):
    """The score of each packed sequence, read at its last token.

    batch: a `sequences.Batch`; rng: dropout during training. -> scores (B,), cache."""
    values, cache = rm.values_forward(batch.idx, rng)  # (B, T)
    rows = np.arange(len(batch.last))
    return values[rows, batch.last], (cache, batch.last, values.shape)


def scores_backward(rm, dscores, cache):
    """dscores (B,) -> grads (FlatParams): the gradient flows only into the last token's value."""
    values_cache, last, shape = cache
    dvalues = np.zeros(shape, dtype=rm.dtype)  # (B, T)
    dvalues[np.arange(len(last)), last] = dscores
    return rm.values_backward(dvalues, values_cache)


def score(rm, prompt_ids, response_ids, batch_size=SCORE_BATCH, pad_id=0):
    """The reward model's score of each (prompt, response): token-id lists -> (B,) array.

    A finished response's ids end with end-of-text (as `generate` returns them), so the
    score is read at that token. This is the function PPO calls on its rollouts.
    The padding's value cannot change a score: it sits after each row's last token,
    and attention is causal.
    """
    out = np.empty(len(prompt_ids))
    for start in range(0, len(prompt_ids), batch_size):
        stop = start + batch_size
        batch = pack(prompt_ids[start:stop], response_ids[start:stop], pad_id, rm.config.block_size)
        out[start:stop] = scores_forward(rm, batch)[0]
    return out


def score_texts(rm, tokenizer, prompts, responses, finished=None):
    """score() for strings. finished[b] False: response b was cut off (no end-of-text)."""
    finished = [True] * len(responses) if finished is None else finished
    prompt_ids = [tokenizer.encode(p) for p in prompts]
    response_ids = [response_tokens(tokenizer, r, f) for r, f in zip(responses, finished)]
    return score(rm, prompt_ids, response_ids, pad_id=tokenizer.pad_id)


def normalise_bias(rm, tokenizer, prompts, responses):
    """Shift head.bias so these responses (labeler demonstrations) score 0 on average,
    as InstructGPT did before RL. Returns the mean score before the shift."""
    mean = float(np.mean(score_texts(rm, tokenizer, prompts, responses)))
    rm.params["head.bias"][...] -= mean
    return mean


# ----------------------------------------------------------------------------
# checkpoints


def save_reward_model(path, rm, tokenizer, normalisation, **meta):
    """Save a reward model: config kind "reward", its demonstration normalisation, and
    `meta` (e.g. stage, data files)."""
    config = {"kind": "reward", "model": rm.config.to_dict(), "dtype": rm.dtype.name,
              "normalisation": normalisation, **meta}
    save_checkpoint(path, rm.params, config, tokenizer)


def load_reward_model(path, tokenizer=None, dtype=None):
    """A reward checkpoint -> (ScalarModel, tokenizer). Pass the policy's `tokenizer` to
    check that the two share token ids (the RM scores the policy's ids directly)."""
    ckpt = load_checkpoint(path, kind="reward")
    try:
        rm = ScalarModel(ckpt.model_config, dtype=dtype or ckpt.config.get("dtype", "float32"), params=ckpt.params)
    except MinirlhfError as e:
        raise MinirlhfError(f"{ckpt.path / 'params.npz'}: {e}") from None
    if tokenizer is not None:
        check_same_tokenizer(ckpt.tokenizer, tokenizer, f"the reward model {ckpt.path}", "the policy")
    return rm, ckpt.tokenizer


__all__ = [
    "ranking_loss", "grouped_ranking_loss", "pairwise_accuracy", "log_sigmoid", "response_tokens",
    "scores_forward", "scores_backward", "score", "score_texts", "normalise_bias",
    "save_reward_model", "load_reward_model",
]
