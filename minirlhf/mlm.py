"""Masked-language modelling: BERT's objective, the article's other way to pretrain.

The article sets two tasks side by side. A GPT predicts the *next* token from the
ones before it ("Jacob loves" -> "reading"), so its attention is causal. A masked
language model hides some tokens and predicts them from *both* sides ("Jacob [mask]
reading" -> "loves"), so its attention is bidirectional: `GPTConfig(causal=False)`.
The network, the loss (cross-entropy, -1 targets ignored) and its gradient are the
GPT's; only the attention mask and the data differ. This module makes the data:

    inputs, targets = mask_tokens(idx, tokenizer, rng)        # a training batch
    fill_blank(model, tokenizer, "jacob ___ reading")          # [(" loves", 0.93), ...]

BERT's masking scheme (Devlin et al. 2018, section 3.1): choose 15% of the positions;
of those, 80% become the mask token, 10% a random token, 10% stay as they are. The
loss is taken at the chosen positions only. Why not always the mask? The mask token
never appears when the model is used on real text, so the model must also build a
good guess for a token it can see; and since a visible token may be a random
replacement, it cannot simply copy its input either.
"""
import re

import numpy as np

from minirlhf.errors import MinirlhfError
from minirlhf.layers import softmax_forward

MASK_RATE = 0.15  # share of the positions the model must predict
P_MASK, P_RANDOM = 0.8, 0.1  # of those: replaced by the mask, by a random token (the rest stay)

# A blank in a text to fill: three or more underscores, or [MASK] in any case.
BLANK = re.compile(r"_{3,}|\[mask\]", re.IGNORECASE)


def mask_tokens(idx, tokenizer, rng, rate=MASK_RATE):
    """BERT's masking of a batch of token ids.

    idx (B, T) int -> inputs (B, T), targets (B, T): targets hold the original token at
    the chosen positions and -1 (ignored by the cross-entropy) elsewhere. Padding is
    never chosen. Random tokens are regular ones (never special). The draws have the
    batch's shape whatever its content, so the generator advances the same way for
    every batch of that shape.
    """
    idx = np.asarray(idx)
    chosen = (rng.random(idx.shape) < rate) & (idx != tokenizer.pad_id)  # (B, T)
    action = rng.random(idx.shape)  # which of the three things happens to a chosen token
    random_tokens = rng.integers(0, tokenizer.n_regular, size=idx.shape)
    inputs = np.where(chosen & (action < P_MASK), tokenizer.mask_id, idx)
    inputs = np.where(chosen & (action >= P_MASK) & (action < P_MASK + P_RANDOM), random_tokens, inputs)
    targets = np.where(chosen, idx, -1)
    return inputs, targets


def split_blank(tokenizer, text):
    """The text before and after its one blank. With a BPE tokenizer a word's token
    carries its leading space (" loves"), so the space before the blank goes into it."""
    parts = BLANK.split(text)
    if len(parts) != 2:
        raise MinirlhfError(f"the text must hold exactly one blank (___ or [MASK]); {text!r} has {len(parts) - 1}")
    left, right = parts
    if tokenizer.kind == "bpe" and left.endswith(" "):
        left = left[:-1]
    return left, right


def fill_blank(model, tokenizer, text, top_k=5):
    """The model's top_k guesses for the blank in `text` ("jacob ___ reading"): a list
    of (token text, probability), most likely first. The blank is one token (a word
    piece with BPE, one character with a char tokenizer); special tokens are never
    proposed. `model` must be bidirectional: a causal one would not see "reading"."""
    if getattr(model.config, "causal", True):
        raise MinirlhfError("filling a blank needs a masked-language model (`pretrain --objective mlm`); "
                            "this model is causal and cannot see the words after the blank")
    left, right = split_blank(tokenizer, text)
    before = tokenizer.encode(left)
    ids = before + [tokenizer.mask_id] + tokenizer.encode(right)
    if len(ids) > model.config.block_size:
        raise MinirlhfError(f"the text is {len(ids)} tokens long; the model's context is {model.config.block_size}")
    logits = model.forward(np.array([ids], dtype=np.int64))[0, len(before)].astype(np.float64)  # (V,)
    logits[list(tokenizer.special_ids)] = -np.inf
    probs, _ = softmax_forward(logits)
    best = np.argsort(-probs, kind="stable")[:top_k]
    return [(tokenizer.decode([int(i)]), float(probs[i])) for i in best]
