"""`minirlhf sample`: continue a prompt with a trained model.

    minirlhf sample --ckpt runs/pretrain --prompt "jacob loves" --num-samples 3
    minirlhf sample --ckpt runs/mlm --fill "jacob ___ reading"     (a masked-language model)
"""
import argparse
from pathlib import Path

import numpy as np

from minirlhf.checkpoint import load_lm
from minirlhf.errors import MinirlhfError
from minirlhf.flags import non_negative_int, positive_float, positive_int, top_p_float
from minirlhf.mlm import fill_blank, split_blank


def resolve_checkpoint(path):
    """Accept a checkpoint directory or a run directory that holds one in checkpoint/."""
    path = Path(path)
    return path / "checkpoint" if (path / "checkpoint" / "config.json").exists() else path


def generate_ids(model, tokenizer, prompts, rng, max_new_tokens=100, temperature=1.0, top_k=None, top_p=None):
    """Continue each prompt string. Returns (prompt_ids, response_ids, finished):
    token-id lists, where a finished response ends with end-of-text. An empty prompt
    starts from end-of-text, as a fresh document would."""
    prompt_ids = [tokenizer.encode(p) or [tokenizer.eot_id] for p in prompts]
    responses, finished = model.generate(prompt_ids, max_new_tokens, rng, temperature, top_k, top_p, stop_id=tokenizer.eot_id)
    return prompt_ids, responses, finished


def response_text(tokenizer, response_ids, finished):
    """The text of a response, without its end-of-text token."""
    return tokenizer.decode(response_ids[:-1] if finished else response_ids)


def complete(model, tokenizer, prompts, rng, max_new_tokens=100, temperature=1.0, top_k=None, top_p=None):
    """Continue each prompt string -> [(response text, finished)]."""
    _, responses, finished = generate_ids(model, tokenizer, prompts, rng, max_new_tokens, temperature, top_k, top_p)
    return [(response_text(tokenizer, r, f), f) for r, f in zip(responses, finished)]


def add_parser(subparsers):
    p = subparsers.add_parser(
        "sample",
        help="generate text from a checkpoint",
        description="Sample continuations of a prompt from a checkpoint, with a KV cache. "
        "The output stops at the end-of-text token or after --max-new-tokens. "
        "A masked-language model (pretrain --objective mlm) cannot continue a prompt; "
        "it fills a blank instead: --fill \"jacob ___ reading\" prints its --top-k guesses.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint directory (or a run directory holding checkpoint/)")
    text = p.add_mutually_exclusive_group()  # a masked-language model fills a blank instead of continuing
    text.add_argument("--prompt", default="", help="text to continue (empty: start a new document)")
    p.add_argument("--num-samples", type=positive_int, default=1)
    p.add_argument("--max-new-tokens", type=positive_int, default=100)
    p.add_argument("--temperature", type=positive_float, default=1.0, help="<1 sharper, >1 more random")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token (ignores temperature)")
    p.add_argument("--top-k", type=positive_int, default=None,
                   help="sample among the k most likely tokens only (with --fill: how many guesses to print, default 5)")
    p.add_argument("--top-p", type=top_p_float, default=None, help="sample among the smallest set of tokens with this much probability")
    p.add_argument("--seed", type=non_negative_int, default=0)
    text.add_argument("--fill", metavar="TEXT", default=None,
                   help="masked-language model only: TEXT with one blank (___ or [MASK]); print the most likely "
                   "tokens for it with their probabilities, instead of sampling")
    p.set_defaults(func=run)


def print_fill(model, tokenizer, text, top_k):
    """One line per guess: its probability and the text with the blank filled."""
    left, right = split_blank(tokenizer, text)
    for token, prob in fill_blank(model, tokenizer, text, top_k):
        print(f"{prob:7.2%}  {left}{token}{right}")


def run(args):
    path = resolve_checkpoint(args.ckpt)
    model, tokenizer = load_lm(path)  # a GPT (causal, or masked-language) or an LSTM
    if args.fill is not None:
        print_fill(model, tokenizer, args.fill, args.top_k or 5)
        return
    if not getattr(model.config, "causal", True):
        raise MinirlhfError(f"{path}: holds a masked-language model (pretrain --objective mlm), which cannot continue "
                            'a prompt; ask it to fill a blank: --fill "jacob ___ reading"')
    rng = np.random.default_rng(args.seed)
    temperature = None if args.greedy else args.temperature
    outputs = complete(model, tokenizer, [args.prompt] * args.num_samples, rng, args.max_new_tokens, temperature, args.top_k, args.top_p)
    for i, (text, finished) in enumerate(outputs):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}{'' if finished else ' (cut at --max-new-tokens)'}")
        print(args.prompt + text)
