"""Pretraining: next-token prediction on a text file (the "GPT" in ChatGPT).

The model reads windows of block_size tokens and, at every position, predicts the
next token; the loss is the mean cross-entropy. Nothing else: no instructions, no
preferences. What a model learns this way is whatever the text does, including its
falsehoods and insults, which is why the later stages exist.

    minirlhf pretrain --text data/corpus.txt --out runs/pretrain

writes runs/pretrain/checkpoint/ (model, tokenizer, optimizer state), metrics.jsonl
and loss.png. `--resume` continues an interrupted run exactly where it stopped.
`--arch lstm` trains the article's predecessor, an LSTM (lstm.py), the same way.
`--objective mlm` trains BERT's masked-language model instead (mlm.py): a bidirectional
GPT that predicts 15% hidden tokens of each window from both sides; it fills blanks
(`minirlhf sample --fill "jacob ___ reading"`) but cannot generate.
"""
import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minirlhf.checkpoint import load_checkpoint, save_gpt
from minirlhf.datasets import load_corpus
from minirlhf.errors import MinirlhfError
from minirlhf.flags import non_negative_int, positive_int, share, unit_float
from minirlhf.lstm import LSTMConfig, LSTMLanguageModel
from minirlhf.metrics import MetricsLog
from minirlhf.mlm import mask_tokens
from minirlhf.model import GPT, PRESETS, GPTConfig
from minirlhf.plots import plot_metrics
from minirlhf.tokenizer import train_tokenizer
from minirlhf.train.loop import (
    ResumeState, TrainSettings, add_train_args, rng_state, run_loop, train_settings_from_args,
)


@dataclass
class PretrainConfig:
    arch: str = "gpt"  # "gpt" or "lstm" (an LSTM ignores n_head; n_embd is its hidden size)
    objective: str = "clm"  # "clm": next-token prediction (GPT); "mlm": masked tokens, bidirectional (BERT)
    tokenizer: str = "bpe"  # "char" or "bpe"
    vocab_size: int = 512  # BPE only; a char tokenizer's vocabulary is the text's characters
    model: dict = field(default_factory=lambda: dict(PRESETS["small"]))  # n_layer, n_head, n_embd, block_size
    dropout: float = 0.0
    train: TrainSettings = field(default_factory=TrainSettings)
    eval_batches: int = 10
    val_fraction: float = 0.1
    seed: int = 0
    dtype: str = "float32"


def split_tokens(tokens, val_fraction, block_size):
    """First (1 - val_fraction) of the token stream for training, the rest for
    validation: a contiguous split, so no validation window overlaps a training one."""
    n_val = int(len(tokens) * val_fraction)
    train, val = tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]
    for name, part in (("training", train), ("validation", val)):
        if len(part) < block_size + 2:
            raise MinirlhfError(
                f"the {name} split has {len(part)} tokens, fewer than a block of {block_size} + 2; "
                "use a longer text, a smaller --block-size or a different --val-fraction"
            )
    return train, val


def sample_windows(tokens, block_size, batch_size, rng):
    """batch_size random windows: inputs x (B, T) and targets y (B, T), y shifted by one."""
    starts = rng.integers(0, len(tokens) - block_size - 1, size=batch_size)
    windows = tokens[starts[:, None] + np.arange(block_size + 1)]  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]


def objective_of(model):
    """The objective a model is built for: "mlm" if it is a bidirectional GPT, else "clm"."""
    return "clm" if getattr(model.config, "causal", True) else "mlm"


def training_batch(tokens, block_size, batch_size, rng, tokenizer, objective):
    """A batch (inputs, targets) for the objective: random windows and, for "clm", the
    windows shifted by one; for "mlm", the windows masked BERT's way (mlm.mask_tokens)."""
    x, y = sample_windows(tokens, block_size, batch_size, rng)
    return (x, y) if objective == "clm" else mask_tokens(x, tokenizer, rng)


def new_model(config, vocab_size):
    """A freshly initialised GPT or LSTM for `config` (a PretrainConfig)."""
    if config.objective not in ("clm", "mlm"):
        raise MinirlhfError(f"unknown objective {config.objective!r}; choose clm or mlm")
    if config.arch == "gpt":
        gpt_config = GPTConfig(vocab_size=vocab_size, dropout=config.dropout, causal=config.objective == "clm", **config.model)
        return GPT(gpt_config, seed=config.seed, dtype=config.dtype)
    if config.objective == "mlm":
        raise MinirlhfError("--objective mlm needs bidirectional attention, i.e. --arch gpt; an LSTM reads left to right")
    if config.arch == "lstm":
        sizes = {k: v for k, v in config.model.items() if k != "n_head"}
        return LSTMLanguageModel(LSTMConfig(vocab_size=vocab_size, dropout=config.dropout, **sizes), seed=config.seed,
                                 dtype=config.dtype)
    raise MinirlhfError(f"unknown architecture {config.arch!r}; choose gpt or lstm")


def pretrain(text_path, out_dir, config=None, resume=False, progress=True):
    """Train a GPT (or an LSTM: config.arch) on a text file. Returns a summary dict (val_loss, wall_seconds, ...)."""
    config = config or PretrainConfig()
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoint"
    text = load_corpus(text_path)
    settings = config.train
    if not resume and settings.steps < 1:
        raise MinirlhfError(f"--steps {settings.steps}: pretraining needs at least one step")

    if resume:
        ckpt = load_checkpoint(ckpt_dir, kind="lm")
        tokenizer, model = ckpt.tokenizer, ckpt.lm()  # the checkpoint's arch and objective, like its sizes
        state = ResumeState(ckpt)
        start_step = state.count("step", settings.steps, f"--steps {settings.steps}")
        rng = state.rng()
    else:
        tokenizer = train_tokenizer(config.tokenizer, text, config.vocab_size if config.tokenizer == "bpe" else None,
                                    mask_token=config.objective == "mlm")
        model = new_model(config, tokenizer.vocab_size)
        start_step = 0
        rng = np.random.default_rng(config.seed)
    block_size = model.config.block_size
    objective = objective_of(model)

    tokens = np.asarray(tokenizer.encode(text), dtype=np.int64)
    train_tokens, val_tokens = split_tokens(tokens, config.val_fraction, block_size)
    eval_rng = np.random.default_rng(config.seed + 1)  # fixed evaluation windows: comparable curves
    eval_sets = {
        name: [training_batch(part, block_size, settings.batch_size, eval_rng, tokenizer, objective)
               for _ in range(config.eval_batches)]
        for name, part in (("train_loss_eval", train_tokens), ("val_loss", val_tokens))
    }

    optimizer = settings.make_optimizer(model.params)
    if resume:
        if ckpt.optimizer is None:
            raise MinirlhfError(f"{ckpt_dir}: has no optimizer.npz; it cannot be resumed")
        optimizer.load_state_dict(ckpt.optimizer)

    def step_fn(step):
        x, y = training_batch(train_tokens, block_size, settings.batch_size, rng, tokenizer, objective)
        loss, grads = model.loss_and_grads(x, y, rng=rng if model.config.dropout else None)
        return loss, grads, x.size

    def eval_fn():
        return {name: float(np.mean([model.loss(x, y) for x, y in batches])) for name, batches in eval_sets.items()}

    def save_fn(steps_done):
        save_gpt(ckpt_dir, model, tokenizer, optimizer.state_dict(), {"step": steps_done, "rng": rng_state(rng)},
                 stage="pretrain", objective=objective, text=str(text_path))

    t0 = time.perf_counter()
    with MetricsLog(out_dir / "metrics.jsonl", resume_after_step=start_step if resume else None) as metrics:
        final = run_loop(settings, optimizer, step_fn, start_step=start_step, eval_fn=eval_fn, save_fn=save_fn,
                         metrics=metrics, desc="pretrain", progress=progress)
    final = final or eval_fn()  # a finished run resumed: no step left, its checkpoint's losses
    wall = time.perf_counter() - t0
    plot_metrics(out_dir / "metrics.jsonl", out_dir / "loss.png",
                 {"pretraining loss": ["loss", "train_loss_eval", "val_loss"]},
                 title=f"pretrain{' (masked LM)' if objective == 'mlm' else ''}: {Path(text_path).name}")
    return {
        "val_loss": final.get("val_loss"),
        "train_loss": final.get("train_loss_eval"),
        "steps": settings.steps,
        "steps_run": settings.steps - start_step,
        "tokens": int(len(tokens)),
        "n_params": model.n_params,
        "wall_seconds": wall,
        "checkpoint": str(ckpt_dir),
    }


# ----------------------------------------------------------------------------
# command line


def add_model_args(parser):
    group = parser.add_argument_group("model")
    group.add_argument("--preset", choices=sorted(PRESETS), default="small",
                       help="model size: " + "; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
    for name in ("n_layer", "n_head", "n_embd", "block_size"):
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=None, help=f"override the preset's {name}")
    group.add_argument("--dropout", type=unit_float, default=0.0, help="residual/attention/embedding dropout")
    group.add_argument("--dtype", choices=["float32", "float64"], default="float32")


def model_from_args(args):
    model = dict(PRESETS[args.preset])
    model.update({k: getattr(args, k) for k in model if getattr(args, k) is not None})
    return model


def add_parser(subparsers):
    p = subparsers.add_parser(
        "pretrain",
        help="train a GPT on a text file (next-token prediction, or masked tokens: --objective mlm)",
        description="Pretrain a GPT from scratch on a UTF-8 text file: train a tokenizer on it, then "
        "minimise next-token cross-entropy (or, with --objective mlm, the cross-entropy of masked tokens) with AdamW. Writes OUT/checkpoint/, OUT/metrics.jsonl, OUT/loss.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--text", type=Path, required=True, help="UTF-8 text file to train on (any language)")
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--arch", choices=["gpt", "lstm"], default="gpt",
                   help="the transformer, or the LSTM the article compares it with (n_embd is its hidden size, "
                   "n_head is unused; --resume keeps the checkpoint's arch)")
    p.add_argument("--objective", choices=["clm", "mlm"], default="clm",
                   help="clm: predict the next token (a GPT); mlm: BERT's masked-language model, bidirectional "
                   "attention, predict 15%% masked tokens (fill a blank with `minirlhf sample --fill`; it cannot "
                   "generate; --resume keeps the checkpoint's objective)")
    p.add_argument("--tokenizer", choices=["char", "bpe"], default="bpe", help="character-level or byte-level BPE")
    p.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size (ignored for char)")
    add_model_args(p)
    add_train_args(p)
    p.add_argument("--eval-batches", type=positive_int, default=10, help="batches per loss estimate")
    p.add_argument("--val-fraction", type=share, default=0.1, help="share of the text held out for validation")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint where it stopped")
    p.set_defaults(func=run)


def run(args):
    config = PretrainConfig(
        arch=args.arch, objective=args.objective, tokenizer=args.tokenizer, vocab_size=args.vocab_size, model=model_from_args(args), dropout=args.dropout,
        train=train_settings_from_args(args), eval_batches=args.eval_batches, val_fraction=args.val_fraction,
        seed=args.seed, dtype=args.dtype,
    )
    summary = pretrain(args.text, args.out, config, resume=args.resume)
    if not summary["steps_run"]:
        print(f"{summary['checkpoint']} had already done all {summary['steps']} steps: nothing left to train")
    print(f"val loss {summary['val_loss']:.4f} (train {summary['train_loss']:.4f}) after {summary['steps']} steps, "
          f"{summary['n_params']:,} parameters, {summary['wall_seconds']:.1f} s")
    print(f"checkpoint: {summary['checkpoint']}   metrics: {args.out / 'metrics.jsonl'}   plot: {args.out / 'loss.png'}")
