"""Sample responses from a policy and measure them: what GRPO's iterations and DPO's
evaluations share with PPO's rollouts.

A rollout is a batch of prompts, the policy's responses (sampled with the KV cache,
at the temperature the log-probs are then computed at), the policy's and the frozen
reference's per-token log-probs, and the reward model's scores. From it come the
numbers every step-3 method logs, so PPO, DPO and GRPO curves can be put side by side:

  rm_reward    mean reward-model score (the proxy being optimised)
  gold_score   mean toy-world labeler score (the truth the RM only estimates)
  kl           mean over responses of sum_t (log pi - log pi_ref): KL(pi || SFT) in nats per answer
  entropy      mean entropy of the policy's next-token distributions on its own answers
"""
from dataclasses import dataclass

import numpy as np

from minirlhf.datasets import load_prompts
from minirlhf.errors import MinirlhfError
from minirlhf.optim import clip_grad_norm
from minirlhf.ppo import entropy_from_logits
from minirlhf.reward import scores_forward
from minirlhf.sample import generate_ids, response_text
from minirlhf.sequences import Batch, pack
from minirlhf.toyworld import PromptFormatError, gold_score
from minirlhf.train.reward import at


@dataclass
class Rollout:
    prompts: list  # (B,) prompt texts, one per response
    response_ids: list  # (B,) token-id lists; a finished one ends with end-of-text
    finished: np.ndarray  # (B,) bool: the response stopped by itself
    batch: Batch  # prompt + response packed; batch.response_mask marks the actions
    logp: np.ndarray  # (B, T) policy log-probs of the sampled tokens
    ref_logp: np.ndarray  # (B, T) the reference's log-probs of the same tokens
    entropy: float
    scores: np.ndarray | None  # (B,) reward-model scores (None without a reward model)

    @property
    def mask(self):
        return self.batch.response_mask

    def kl(self):
        """(B,) sum over each response of log pi - log pi_ref."""
        return np.where(self.mask, self.logp - self.ref_logp, 0.0).sum(axis=1)


def sample_rollout(policy, reference, reward_model, tokenizer, prompts, rng, max_new_tokens, temperature=1.0):
    """Sample one response per prompt (repeat a prompt for several) and score it all."""
    prompt_ids, response_ids, finished = generate_ids(policy, tokenizer, prompts, rng, max_new_tokens, temperature)
    batch = pack(prompt_ids, response_ids, tokenizer.pad_id, policy.config.block_size)
    logp, cache = policy.logprobs_forward(batch.idx, batch.targets, temperature=temperature)
    ref_logp, _ = reference.logprobs_forward(batch.idx, batch.targets, temperature=temperature)
    scores = scores_forward(reward_model, batch)[0] if reward_model is not None else None
    return Rollout(list(prompts), response_ids, np.array(finished), batch, logp, ref_logp,
                   entropy_from_logits(cache[0], batch.response_mask), scores)


def gold_scores(world, tokenizer, prompts, response_ids, finished):
    """(B,) gold (labeler) score of each response, or None without a world or when the
    prompts are not the toy world's (the labeler cannot read them)."""
    if world is None:
        return None
    texts = [response_text(tokenizer, r, f) for r, f in zip(response_ids, finished)]
    try:
        return np.array([gold_score(world, p, t, f) for p, t, f in zip(prompts, texts, finished)])
    except PromptFormatError:
        return None


def mean_gold_score(world, tokenizer, prompts, response_ids, finished):
    """Mean of `gold_scores`, or None where it is None."""
    scores = gold_scores(world, tokenizer, prompts, response_ids, finished)
    return None if scores is None else float(scores.mean())


def rollout_metrics(roll, tokenizer, world=None):
    """The numbers every step-3 method logs (see the module docstring)."""
    return {
        "rm_reward": float(roll.scores.mean()) if roll.scores is not None else None,
        "gold_score": mean_gold_score(world, tokenizer, roll.prompts, roll.response_ids, roll.finished),
        "kl": float(roll.kl().mean()),
        "entropy": roll.entropy,
        "response_tokens": float(roll.mask.sum(axis=1).mean()),
        "finished_rate": float(roll.finished.mean()),
    }


def describe_samples(summary):
    """"RM reward a -> b, gold c -> d, KL e": what a run's sampled answers did, as the
    PPO, GRPO and DPO commands print it ("n/a" where there is no number: no reward
    model, prompts the labeler cannot read, nothing sampled)."""
    def num(x):
        return "n/a" if x is None else f"{x:.3f}"
    return (f"RM reward {num(summary['reward_start'])} -> {num(summary['reward_end'])}, "
            f"gold {num(summary['gold_start'])} -> {num(summary['gold_end'])}, KL {num(summary['kl_final'])}")


def read_prompts_that_fit(path, tokenizer, block_size):
    """The prompt strings of a JSONL file; one too long to leave room for an answer is
    an error naming its line."""
    prompts = []
    for line, record in load_prompts(path, line_numbers=True):
        n = len(at(f"{path}:{line}", tokenizer.encode, record["prompt"]))
        if n >= block_size:
            raise MinirlhfError(f"{path}:{line}: the prompt is {n} tokens; the model's context of {block_size} "
                                "leaves no room for an answer")
        prompts.append(record["prompt"])
    return prompts


def checked_step(optimizer, grads, loss, grad_clip, method, iteration):
    """Clip the gradient and take the optimizer step, unless the loss or the gradient is
    no longer finite: then stop before the bad update reaches the weights, so the last
    saved checkpoint stays the last good one."""
    norm = clip_grad_norm(grads, grad_clip)
    if not (np.isfinite(loss) and np.isfinite(norm)):
        raise MinirlhfError(
            f"{method} diverged at iteration {iteration} (loss {loss}, gradient norm {norm}); "
            "stopped, the last saved checkpoint is intact. Try a lower --lr or a larger --beta.")
    optimizer.step(grads)
