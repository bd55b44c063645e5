"""The optimisation loop every gradient-descent stage shares (pretrain, SFT, reward model).

A stage supplies `step_fn(step) -> (loss, grads, n_tokens)`; the loop does the rest the
same way everywhere: learning-rate schedule, global-norm clipping, AdamW, a progress
bar with loss and tokens/s, a metrics.jsonl line per step, periodic evaluation and a
checkpoint after each, and a clean stop when the loss stops being a number.
"""
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minirlhf.errors import MinirlhfError
from minirlhf.flags import flag_type
from minirlhf.optim import AdamW, clip_grad_norm, lr_schedule


@dataclass
class TrainSettings:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_every: int = 100

    def make_optimizer(self, params):
        return AdamW(params, lr=self.lr, betas=(self.beta1, self.beta2), weight_decay=self.weight_decay)

    def lr_at(self, step):
        return lr_schedule(step, self.lr, self.steps, self.warmup, self.min_lr)


def add_train_args(parser, skip=(), **defaults):
    """Add a flag for every TrainSettings field (--steps, --batch-size, --lr, ...),
    with the stage's own defaults; none for the fields in `skip`, which the stage
    derives itself (SFT counts steps in epochs)."""
    base = TrainSettings(**defaults)
    helps = {
        "steps": "optimizer steps in total",
        "batch_size": "sequences per step",
        "lr": "peak learning rate",
        "min_lr": "learning rate at the end of the cosine decay",
        "warmup": "linear warmup steps",
        "weight_decay": "AdamW weight decay (2-D weights only)",
        "beta1": "AdamW beta1",
        "beta2": "AdamW beta2",
        "grad_clip": "clip the global gradient norm to this (0: off)",
        "eval_every": "evaluate and save a checkpoint every this many steps",
    }
    group = parser.add_argument_group("optimisation")
    for f in fields(TrainSettings):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        value = getattr(base, f.name)
        group.add_argument(flag, dest=f.name, type=flag_type(f.name, value), default=value, help=helps[f.name])


def train_settings_from_args(args):
    """TrainSettings from the flags add_train_args added (skipped fields keep their defaults)."""
    return TrainSettings(**{f.name: getattr(args, f.name) for f in fields(TrainSettings) if hasattr(args, f.name)})


def run_loop(settings, optimizer, step_fn, *, start_step, eval_fn, save_fn, metrics, desc, progress=True):
    """Run steps start_step .. settings.steps-1.

    step_fn(step) -> (loss, grads, n_tokens); eval_fn() -> dict of metrics logged at
    each evaluation; save_fn(steps_done) writes a checkpoint. Raises MinirlhfError
    (naming the step and the last good checkpoint) if the loss or gradient is NaN/inf.
    Returns the last evaluation's metrics.
    """
    last_saved = start_step if start_step > 0 else None
    last_eval = {}
    bar = tqdm(total=settings.steps, initial=start_step, desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for step in range(start_step, settings.steps):
            t0 = time.perf_counter()
            lr = settings.lr_at(step)
            loss, grads, n_tokens = step_fn(step)
            grad_norm = clip_grad_norm(grads, settings.grad_clip)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                where = f"the last good checkpoint is from step {last_saved}" if last_saved else "no checkpoint was saved yet"
                raise MinirlhfError(
                    f"training diverged: loss {loss}, gradient norm {grad_norm} at step {step + 1}; stopped, {where}. "
                    "Try a lower --lr or a smaller --grad-clip."
                )
            optimizer.step(grads, lr)
            dt = time.perf_counter() - t0
            metrics.log(step=step + 1, loss=float(loss), lr=lr, grad_norm=grad_norm, tokens_per_s=n_tokens / dt)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{n_tokens / dt:,.0f}", **{k: f"{v:.4f}" for k, v in last_eval.items()})
            done = step + 1
            if done % settings.eval_every == 0 or done == settings.steps:
                last_eval = eval_fn()
                metrics.log(step=done, **last_eval)
                save_fn(done)
                last_saved = done
    finally:
        bar.close()
    return last_eval


def rng_state(rng):
    """A Generator's state as JSON (for state.json), and back."""
    return rng.bit_generator.state


def restore_rng(state):
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


class ResumeState:
    """The fields of a checkpoint's state.json that a resumed stage reads, each checked
    as it is read: a damaged or hand-edited file is an error naming it and the field,
    not a traceback, and not a run that silently starts from a wrong place."""

    def __init__(self, ckpt):
        self.path = Path(ckpt.path) / "state.json"
        self.state = ckpt.state
        if not isinstance(self.state, dict):
            self.fail(f"holds a JSON {type(self.state).__name__}, not an object")

    def fail(self, what):
        raise MinirlhfError(f"{self.path}: {what}; the checkpoint cannot be resumed")

    def get(self, name, default=None):
        if name in self.state:
            return self.state[name]
        if default is None:
            self.fail(f"no {name!r} field")
        return default

    def count(self, name, limit, flag, default=None):
        """A whole number 0..limit: the steps or iterations done (`flag` names what sets limit)."""
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(f"{name!r} must be a whole number 0 or more, got {value!r}")
        if value > limit:
            raise MinirlhfError(f"{self.path}: {name!r} is {value}, more than {limit} ({flag}): a damaged file, "
                                "or a run that went further than this command asks for")
        return value

    def finite(self, name, low=0.0):
        """A finite number >= low."""
        value = self.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < math.inf:
            self.fail(f"{name!r} must be a finite number {low} or more, got {value!r}")
        return float(value)

    def rng(self, name="rng"):
        """The np.random.Generator saved with rng_state."""
        try:
            return restore_rng(self.get(name))
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            self.fail(f"{name!r} is not a saved random-generator state ({e})")
