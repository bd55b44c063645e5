"""Prompt + response pairs as padded token arrays: the batch format of every stage
after pretraining (SFT, reward model, PPO).

A sequence is  prompt tokens + response tokens  (the response ends with end-of-text
when it was finished). Rows are right-padded with the pad token, which is distinct
from end-of-text, so "stop here" stays something the model is trained to say.

For a row with prompt length P and sequence length L:
  idx[b, :L]      the sequence; the model reads all of it
  targets[b, t]   idx[b, t + 1] for P - 1 <= t < L - 1 (the positions that predict a
                  response token), else -1: prompt tokens and padding carry no loss
  last[b]         L - 1, the last real token (where the reward model reads its score)
"""
from dataclasses import dataclass

import numpy as np

from minirlhf.errors import MinirlhfError


@dataclass
class Batch:
    idx: np.ndarray  # (B, T) int64, right-padded
    targets: np.ndarray  # (B, T) int64, -1 outside the response
    last: np.ndarray  # (B,) index of the last real token
    prompt_len: np.ndarray  # (B,)

    @property
    def response_mask(self):
        """(B, T) bool: positions whose next token is a response token (= the actions)."""
        return self.targets != -1


def pack(prompts, responses, pad_id, block_size):
    """prompts, responses: lists of token-id lists -> Batch. A pair longer than
    block_size raises MinirlhfError naming the row (callers add the file and line)."""
    if len(prompts) != len(responses) or not prompts:
        raise MinirlhfError(f"pack needs matching, non-empty lists ({len(prompts)} prompts, {len(responses)} responses)")
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    for row, (p, r, n) in enumerate(zip(prompts, responses, lengths)):
        if not p or not r:
            raise MinirlhfError(f"row {row}: the prompt and the response must each have at least one token")
        if n > block_size:
            raise MinirlhfError(f"row {row}: prompt + response is {n} tokens, the model's context is {block_size}")
    T = max(lengths)
    B = len(prompts)
    idx = np.full((B, T), pad_id, dtype=np.int64)
    targets = np.full((B, T), -1, dtype=np.int64)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        seq = list(p) + list(r)
        idx[b, : len(seq)] = seq
        targets[b, len(p) - 1 : len(seq) - 1] = r  # position t predicts seq[t + 1]
    return Batch(idx, targets, np.array(lengths) - 1, np.array([len(p) for p in prompts]))
