"""Supervised fine-tuning (SFT): "Step 1" of the article.

InstructGPT's labelers wrote a good response to each of ~13k prompts, and GPT-3 was
fine-tuned on these prompt/response pairs ("demonstrations") to give the SFT model.
The loss is pretraining's next-token cross-entropy with one change: only the
response's tokens count. The model reads the prompt as context, but is never asked to
predict it, so what it learns is how to *answer*, not how to write prompts. Every
response ends with end-of-text, which is a target like any other, so the model also
learns to stop once the answer is given (a pretrained model rambles on).

InstructGPT trained 16 epochs with a cosine learning rate and residual dropout 0.2;
its validation loss started rising after one epoch, yet later epochs still improved
the answers as people judged them. Here the recipe is the same, scaled down: a few
epochs, a validation loss after each, a checkpoint after each. Optionally a share of
every batch is pretraining text with its full next-token loss (the "ptx" mix that
InstructGPT used in PPO), which keeps the model from forgetting the pretraining text.

The defaults were measured on the toy world (small preset, 2000 demonstrations): 3
epochs take well under a minute, after which every sampled answer stops with
end-of-text, none is toxic and about half follow the format exactly (the pretrained
model: none stops). The validation loss is still falling after 3 epochs, so there is
nothing yet for dropout to prevent: at this length it only cost a little, and its
default is 0 (use --dropout 0.2 with many more epochs, as InstructGPT did).

    minirlhf sft --init runs/pretrain --data data/sft.jsonl --out runs/sft

writes runs/sft/checkpoint/, metrics.jsonl and loss.png.
"""
import argparse
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from minirlhf.checkpoint import load_checkpoint, save_gpt
from minirlhf.datasets import load_corpus, load_sft
from minirlhf.errors import MinirlhfError
from minirlhf.flags import non_negative_int, share, unit_float
from minirlhf.metrics import MetricsLog
from minirlhf.plots import plot_metrics
from minirlhf.sample import resolve_checkpoint
from minirlhf.sequences import pack
from minirlhf.train.loop import TrainSettings, add_train_args, rng_state, run_loop, train_settings_from_args
from minirlhf.train.pretrain import sample_windows

# SFT's optimisation defaults (the rest are TrainSettings'); steps and eval_every are
# not among them: they follow from the number of epochs.
TRAIN_DEFAULTS = dict(batch_size=32, lr=2e-3, min_lr=2e-4, warmup=10)
EVAL_BATCH_SIZE = 64
GROUP_BATCHES = 8  # batches drawn together and sorted by length (see epoch_batches)


@dataclass
class SFTConfig:
    epochs: int = 3
    dropout: float = 0.0  # residual/attention/embedding dropout while fine-tuning
    val_fraction: float = 0.1  # share of the demonstrations held out for the validation loss
    ptx_fraction: float = 0.0  # share of each batch's rows that are pretraining text
    ptx_text: str | None = None  # default: the text recorded in the init checkpoint
    seed: int = 0
    # train.steps and train.eval_every are ignored: epochs x batches per epoch, and one epoch
    train: TrainSettings = field(default_factory=lambda: TrainSettings(**TRAIN_DEFAULTS))


def _encode(tokenizer, text, where, what):
    try:
        return tokenizer.encode(text)
    except MinirlhfError as e:
        raise MinirlhfError(f"{where}: the {what}: {e}") from None


def encode_demonstrations(numbered_records, tokenizer, block_size, path):
    """[(line, {"prompt": str, "response": str})] -> [(prompt ids, response ids)].

    The response gets end-of-text appended (the model must learn to stop); an empty
    prompt becomes end-of-text, as in `sample.generate_ids` (a fresh document). A
    record the tokenizer cannot encode or that does not fit the model's context is an
    error naming `path` and the record's line."""
    examples = []
    for line, record in numbered_records:
        where = f"{path}:{line}"
        prompt = _encode(tokenizer, record["prompt"], where, "prompt") or [tokenizer.eot_id]
        response = _encode(tokenizer, record["response"], where, "response") + [tokenizer.eot_id]
        if len(prompt) >= block_size:
            raise MinirlhfError(f"{where}: the prompt is {len(prompt)} tokens, but the model's context is "
                                f"{block_size}: there is no room left for a response")
        if len(prompt) + len(response) > block_size:
            raise MinirlhfError(f"{where}: prompt ({len(prompt)} tokens) + response ({len(response)} tokens with "
                                f"end-of-text) do not fit the model's context of {block_size} tokens")
        examples.append((prompt, response))
    return examples


def split_examples(examples, val_fraction, rng):
    """A random (train, validation) split of the demonstrations, drawn from rng."""
    if not 0.0 < val_fraction < 1.0:
        raise MinirlhfError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    order = rng.permutation(len(examples))
    n_val = round(len(examples) * val_fraction)
    if n_val < 1 or n_val >= len(examples):
        raise MinirlhfError(f"{len(examples)} demonstrations cannot be split {1 - val_fraction:g}/{val_fraction:g} "
                            "into training and validation sets that both hold one; add demonstrations")
    return [examples[i] for i in order[n_val:]], [examples[i] for i in order[:n_val]]


def epoch_batches(lengths, batch_rows, rng):
    """One epoch as a list of index arrays, one per batch, every example once.

    A random order, sorted by length within windows of GROUP_BATCHES batches, cut
    into batches, and the batches shuffled: each batch holds sequences of similar
    length, so it carries little padding (on the toy data about half the tokens a
    plain shuffle would give, at the same number of steps), and an epoch's batches
    still come in random order with random neighbours."""
    order = rng.permutation(len(lengths))
    window = GROUP_BATCHES * batch_rows
    windows = np.split(order, range(window, len(order), window))
    order = np.concatenate([w[np.argsort(lengths[w], kind="stable")] for w in windows])
    batches = np.split(order, range(batch_rows, len(order), batch_rows))
    return [batches[i] for i in rng.permutation(len(batches))]


def make_batch(examples, tokenizer, block_size):
    """Demonstrations -> a padded Batch whose targets are the response tokens only."""
    prompts, responses = zip(*examples)
    return pack(list(prompts), list(responses), tokenizer.pad_id, block_size)


def response_loss(model, examples, tokenizer, batch_size=EVAL_BATCH_SIZE):
    """Mean cross-entropy per response token over `examples` (no dropout). Weighted by
    tokens, so the number does not depend on how the set is cut into batches."""
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = make_batch(examples[i : i + batch_size], tokenizer, model.config.block_size)
        n = int(np.count_nonzero(batch.targets != -1))
        total += model.loss(batch.idx, batch.targets) * n
        count += n
    return total / count


def add_pretraining_rows(idx, targets, tokens, n_rows, rng):
    """Append n_rows random windows of pretraining text, as long as the batch, with a
    target at every position: the batch's mean loss then mixes the SFT loss with the
    plain language-modelling loss. idx, targets (B, T) -> (B + n_rows, T)."""
    x, y = sample_windows(tokens, idx.shape[1], n_rows, rng)  # (n_rows, T) each
    return np.concatenate([idx, x]), np.concatenate([targets, y])


def rows_per_batch(batch_size, ptx_fraction):
    """(demonstration rows, pretraining rows) of one batch."""
    if not 0.0 <= ptx_fraction < 1.0:
        raise MinirlhfError(f"--ptx-fraction must be in [0, 1), got {ptx_fraction}")
    n_ptx = round(batch_size * ptx_fraction)
    if ptx_fraction > 0 and n_ptx == 0:
        raise MinirlhfError(f"--ptx-fraction {ptx_fraction} of a batch of {batch_size} rows is no row; "
                            f"use at least {1 / batch_size:.3g} or a larger --batch-size")
    if n_ptx == batch_size:
        raise MinirlhfError(f"--ptx-fraction {ptx_fraction} leaves no row of a batch of {batch_size} for demonstrations")
    return batch_size - n_ptx, n_ptx


def pretraining_tokens(text_path, tokenizer, block_size):
    """The ptx text as one token array, long enough for a window of the whole context."""
    if text_path is None:
        raise MinirlhfError("--ptx-fraction needs pretraining text: the init checkpoint records none, pass --ptx-text FILE")
    text = load_corpus(text_path)
    tokens = np.asarray(_encode(tokenizer, text, text_path, "pretraining text"), dtype=np.int64)
    if len(tokens) < block_size + 2:
        raise MinirlhfError(f"{text_path}: {len(tokens)} tokens, fewer than a window of {block_size} + 2")
    return tokens


def sft(init_ckpt, data_path, out_dir, config=None, progress=True):
    """Fine-tune the language model at `init_ckpt` (a checkpoint directory, or a run
    directory holding checkpoint/) on the demonstrations in `data_path` (JSONL with
    "prompt" and "response"). Returns a summary dict (val_losses per epoch, ...)."""
    config = config or SFTConfig()
    if config.epochs < 1:
        raise MinirlhfError(f"--epochs must be at least 1, got {config.epochs}")
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoint"
    init_dir = resolve_checkpoint(init_ckpt)
    if ckpt_dir.resolve() == init_dir.resolve():
        raise MinirlhfError(f"--out {out_dir} would overwrite the checkpoint it starts from ({init_dir}); choose another folder")
    init = load_checkpoint(init_dir, kind="lm")
    tokenizer, model = init.tokenizer, init.gpt()
    model.config = replace(model.config, dropout=config.dropout)  # replace() validates the rate
    block_size = model.config.block_size

    examples = encode_demonstrations(load_sft(data_path, line_numbers=True), tokenizer, block_size, data_path)
    rng = np.random.default_rng(config.seed)
    train, val = split_examples(examples, config.val_fraction, rng)
    train_probe = train[: len(val)]  # a fixed slice of the training set, the size of val: shows overfitting
    n_demos, n_ptx = rows_per_batch(config.train.batch_size, config.ptx_fraction)
    text_path = config.ptx_text or init.config.get("text")
    ptx_tokens = pretraining_tokens(text_path, tokenizer, block_size) if n_ptx else None

    lengths = np.array([len(p) + len(r) for p, r in train])
    per_epoch = math.ceil(len(train) / n_demos)
    settings = replace(config.train, steps=config.epochs * per_epoch, eval_every=per_epoch)
    optimizer = settings.make_optimizer(model.params)
    batches = None  # this epoch's batches of training demonstrations
    history = []

    def step_fn(step):
        nonlocal batches
        if step % per_epoch == 0:
            batches = epoch_batches(lengths, n_demos, rng)
        batch = make_batch([train[j] for j in batches[step % per_epoch]], tokenizer, block_size)
        idx, targets = batch.idx, batch.targets  # (B, T), -1 outside the responses
        if n_ptx:
            idx, targets = add_pretraining_rows(idx, targets, ptx_tokens, n_ptx, rng)
        loss, grads = model.loss_and_grads(idx, targets, rng=rng if config.dropout else None)
        return loss, grads, idx.size

    def eval_fn():
        history.append({"epoch": len(history) + 1, "val_loss": response_loss(model, val, tokenizer),
                        "train_loss_eval": response_loss(model, train_probe, tokenizer)})
        return history[-1]

    def save_fn(steps_done):
        save_gpt(ckpt_dir, model, tokenizer, optimizer.state_dict(),
                 {"step": steps_done, "epoch": steps_done // per_epoch, "rng": rng_state(rng)},
                 stage="sft", init=str(init_dir), data=str(data_path), text=text_path)

    t0 = time.perf_counter()
    with MetricsLog(out_dir / "metrics.jsonl") as metrics:
        before = response_loss(model, val, tokenizer)  # the pretrained model's, for comparison
        metrics.log(step=0, epoch=0, val_loss=before, train_loss_eval=response_loss(model, train_probe, tokenizer))
        run_loop(settings, optimizer, step_fn, start_step=0, eval_fn=eval_fn, save_fn=save_fn,
                 metrics=metrics, desc="sft", progress=progress)
    wall = time.perf_counter() - t0
    plot_metrics(out_dir / "metrics.jsonl", out_dir / "loss.png",
                 {"SFT loss (response tokens)": ["loss", "train_loss_eval", "val_loss"]},
                 title=f"sft: {Path(data_path).name} from {init_dir}")
    return {
        "val_loss_before": before,
        "val_losses": [h["val_loss"] for h in history],
        "val_loss": history[-1]["val_loss"],
        "train_loss": history[-1]["train_loss_eval"],
        "epochs": config.epochs,
        "steps": settings.steps,
        "train_demonstrations": len(train),
        "val_demonstrations": len(val),
        "wall_seconds": wall,
        "checkpoint": str(ckpt_dir),
    }


# ----------------------------------------------------------------------------
# command line


def add_parser(subparsers):
    defaults = SFTConfig()
    p = subparsers.add_parser(
        "sft",
        help="fine-tune a pretrained model on prompt/response demonstrations",
        description="Supervised fine-tuning (step 1 of RLHF): continue training a pretrained checkpoint on "
        "prompt/response pairs. Only response tokens (and the end-of-text after each) are predicted; the "
        "prompt is context. Runs --epochs passes with a cosine learning rate, reports the validation loss "
        "after each and saves a checkpoint. Writes OUT/checkpoint/, OUT/metrics.jsonl, OUT/loss.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--init", type=Path, required=True, help="pretrained checkpoint (or a run directory holding checkpoint/)")
    p.add_argument("--data", type=Path, required=True, help='JSONL demonstrations: {"prompt": ..., "response": ...} per line')
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="passes over the training demonstrations")
    p.add_argument("--dropout", type=unit_float, default=defaults.dropout, help="residual/attention/embedding dropout")
    p.add_argument("--val-fraction", type=share, default=defaults.val_fraction, help="share of demonstrations held out")
    p.add_argument("--ptx-fraction", type=unit_float, default=defaults.ptx_fraction,
                   help="share of each batch's rows that are pretraining text with the plain next-token loss")
    p.add_argument("--ptx-text", type=Path, default=None,
                   help="pretraining text for --ptx-fraction; None: the text the init checkpoint was trained on")
    add_train_args(p, skip=("steps", "eval_every"), **TRAIN_DEFAULTS)
    p.add_argument("--seed", type=non_negative_int, default=defaults.seed, help="seeds the validation split, the shuffles and dropout")
    p.set_defaults(func=run)


def run(args):
    config = SFTConfig(epochs=args.epochs, dropout=args.dropout, val_fraction=args.val_fraction,
                       ptx_fraction=args.ptx_fraction, ptx_text=str(args.ptx_text) if args.ptx_text else None, seed=args.seed,
                       train=train_settings_from_args(args))
    summary = sft(args.init, args.data, args.out, config)
    curve = " ".join(f"{v:.4f}" for v in summary["val_losses"])
    print(f"val loss {summary['val_loss_before']:.4f} before, then per epoch: {curve} "
          f"(train {summary['train_loss']:.4f}); {summary['steps']} steps, "
          f"{summary['wall_seconds']:.1f} s")
    print(f"checkpoint: {summary['checkpoint']}   metrics: {args.out / 'metrics.jsonl'}   plot: {args.out / 'loss.png'}")
