"""Steps 2 and 3 in one: train the SFT policy on the labelers' rankings with DPO.

    minirlhf dpo --policy runs/sft --reward-dir runs/reward --out runs/dpo
    minirlhf dpo --policy runs/sft --comparisons my_rankings.jsonl --out runs/dpo

DPO (minirlhf.dpo) fits the rankings with the reward model's own loss, written in the
policy's implicit reward beta (log pi - log pi_ref): no reward model, no sampling, no
value model, no PPO. The data are the rankings the reward model was trained on
(`--reward-dir`: its comparisons.jsonl, and comparisons_held_out.jsonl to validate
on) or any comparisons file. As for the reward model, each step holds --batch-size
prompts with all C(K,2) comparisons of each ranking (`--shuffle-pairs`: every
comparison its own example, the DPO paper's way); the frozen reference is the SFT model.

At each evaluation it logs the held-out DPO loss and how often the implicit reward
orders held-out answers as the labeler did, and -- to put DPO on PPO's axes -- samples
answers to --sample-prompts prompts and logs their KL to the SFT model, their gold
(labeler) score and, when a reward model is at hand (--reward, or the one in
--reward-dir), its score. Writes OUT/checkpoint (at every evaluation), OUT/metrics.jsonl,
OUT/dpo.png; --resume continues from the checkpoint.
"""
import argparse
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from minirlhf.checkpoint import load_checkpoint, load_gpt, save_gpt
from minirlhf.dpo import dpo_loss
from minirlhf.errors import MinirlhfError
from minirlhf.flags import non_negative_int, positive_float, positive_int, share
from minirlhf.metrics import MetricsLog, read_metrics
from minirlhf.plots import plot_metrics
from minirlhf.reward import load_reward_model
from minirlhf.sample import resolve_checkpoint
from minirlhf.toyworld import World
from minirlhf.train.loop import ResumeState, TrainSettings, add_train_args, run_loop, train_settings_from_args
from minirlhf.train.reward import (
    SAMPLE_STREAM, TRAIN_STREAM, RewardConfig, collect_rankings, encode_rankings, pack_groups, packed_rankings,
    training_schedule,
)
from minirlhf.train.rollout import describe_samples, read_prompts_that_fit, rollout_metrics, sample_rollout


@dataclass
class DPOConfig:
    comparisons: str | None = None  # rankings (best first); default: the reward run's
    held_out_comparisons: str | None = None  # rankings to validate on (default: a share of `comparisons`)
    max_prompts: int | None = None  # a random subset of the training rankings (None: all)
    val_fraction: float = 0.15  # held out of `comparisons` when there is no held-out file
    beta: float = 0.1  # strength of the implicit KL to the reference (the DPO paper's 0.1)
    epochs: int = 1
    shuffle_pairs: bool = False
    sample_prompts: int = 64  # prompts answered at each evaluation to measure KL, gold and RM score (0: none)
    max_new_tokens: int = 48
    temperature: float = 1.0  # of those samples
    # No weight decay: it would pull the weights towards 0, not towards the reference.
    train: TrainSettings = field(default_factory=lambda: TrainSettings(
        steps=0, batch_size=8, lr=1e-4, min_lr=1e-5, warmup=3, weight_decay=0.0, eval_every=20))
    seed: int = 0


def dpo_rankings(config, reward_dir=None, out_dir=None):
    """The training and held-out rankings (`train.reward.Rankings`): from the reward
    run in reward_dir, or from config.comparisons."""
    if reward_dir is not None:
        reward_dir = Path(reward_dir)
        if not (reward_dir / "comparisons.jsonl").is_file():
            raise MinirlhfError(f"{reward_dir}: no comparisons.jsonl (the rankings `minirlhf reward` writes there)")
        held_out = reward_dir / "comparisons_held_out.jsonl"
        config = replace(config, comparisons=str(reward_dir / "comparisons.jsonl"),
                         held_out_comparisons=str(held_out) if held_out.is_file() else config.held_out_comparisons)
    if config.comparisons is None:
        raise MinirlhfError("DPO needs rankings: give --comparisons FILE or --reward-dir DIR")
    source = RewardConfig(comparisons=config.comparisons, held_out_comparisons=config.held_out_comparisons,
                          max_prompts=config.max_prompts, val_fraction=config.val_fraction, seed=config.seed)
    return collect_rankings(None, None, source, out_dir)  # reads files only: no model needed


class SampleProbe:
    """Answers to a fixed set of prompts, drawn with the same random numbers at every
    evaluation (so the curve shows the policy changing, not the dice), measured as
    PPO's rollouts are: rm_reward, gold_score, kl, entropy."""

    def __init__(self, policy, reference, reward_model, tokenizer, prompts, world, config):
        self.models = (policy, reference, reward_model)
        self.tokenizer, self.prompts, self.world, self.config = tokenizer, prompts, world, config

    def __call__(self):
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, SAMPLE_STREAM])
        roll = sample_rollout(*self.models, self.tokenizer, self.prompts, rng, cfg.max_new_tokens, cfg.temperature)
        return rollout_metrics(roll, self.tokenizer, self.world)


def ranking_eval(policy, chunks, ref_logps, beta):
    """Held-out DPO loss (mean over prompts), reward accuracy and margin (over comparisons)."""
    loss = agree = margin = 0.0
    n_prompts = n_pairs = 0
    for (batch, groups), ref_logp in zip(chunks, ref_logps):
        logp, _ = policy.logprobs_forward(batch.idx, batch.targets)
        chunk_loss, _, st = dpo_loss(logp, ref_logp, batch.response_mask, groups, beta)
        pairs = sum(math.comb(len(g), 2) for g in groups)
        loss, n_prompts = loss + chunk_loss * len(groups), n_prompts + len(groups)
        agree, margin, n_pairs = agree + st.reward_accuracy * pairs, margin + st.reward_margin * pairs, n_pairs + pairs
    return {"val_loss": loss / n_prompts, "val_reward_accuracy": agree / n_pairs, "val_reward_margin": margin / n_pairs}


PANELS = {
    "DPO loss": ["loss", "val_loss"],
    "implicit reward accuracy": ["train_reward_accuracy", "val_reward_accuracy"],
    "implicit reward margin": ["train_reward_margin", "val_reward_margin"],
    "sampled answers": ["rm_reward", "gold_score"],
    "KL to the SFT model": ["kl"],
}


def restore(out_dir, policy, optimizer, steps):
    """Load OUT/checkpoint's policy and optimizer state (saved at an evaluation, so no
    training statistics are pending); returns the steps it had done (at most `steps`,
    the run's length). Nothing else needs
    restoring: the order of the batches follows from the seed, DPO draws no random
    numbers, and the sampled answers use the same numbers at every evaluation."""
    ckpt = load_checkpoint(Path(out_dir) / "checkpoint", kind="lm")
    if ckpt.optimizer is None or ckpt.config.get("stage") != "dpo":
        raise MinirlhfError(f"{ckpt.path}: not a DPO checkpoint with optimizer state; it cannot be resumed")
    done = ResumeState(ckpt).count("step", steps, f"the run's {steps} steps")
    ckpt.load_into(policy)
    optimizer.load_state_dict(ckpt.optimizer)
    return done


def run_dpo(policy_path, out_dir, config=None, reward_dir=None, reward_path=None, data_dir="data", prompts_path=None,
            resume=False, progress=True):
    """Train the policy with DPO on rankings (see dpo_rankings). data_dir holds
    ppo_prompts.jsonl (the sampled prompts, unless prompts_path) and world.json (the
    gold score; skipped if absent). The reward model that scores the samples is
    reward_path, else reward_dir's checkpoint (an error if it has none). Returns a summary dict
    with the keys of run_ppo's (reward, gold at start and end, final KL) and the
    held-out ranking metrics."""
    config = config or DPOConfig()
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    t0 = time.perf_counter()
    policy, tokenizer = load_gpt(resolve_checkpoint(policy_path))
    reference, _ = load_gpt(resolve_checkpoint(policy_path))
    rankings = dpo_rankings(config, reward_dir, out_dir)
    if reward_path is None and reward_dir is not None and config.sample_prompts:
        reward_path = Path(reward_dir) / "checkpoint"
        if not reward_path.is_dir():
            raise MinirlhfError(f"{reward_dir}: no checkpoint/ to score the sampled answers with; pass --reward "
                                "CKPT, or --sample-prompts 0, or --comparisons with that folder's comparisons.jsonl")
    reward_model = load_reward_model(resolve_checkpoint(reward_path), tokenizer)[0] if reward_path else None
    block, pad = policy.config.block_size, tokenizer.pad_id
    train_ranked = encode_rankings(tokenizer, rankings.train, block)
    val_chunks = packed_rankings(encode_rankings(tokenizer, rankings.val, block), pad, block)
    val_ref = [reference.logprobs_forward(batch.idx, batch.targets)[0] for batch, _ in val_chunks]
    probe = None
    if config.sample_prompts:
        prompts = read_prompts_that_fit(prompts_path or data_dir / "ppo_prompts.jsonl", tokenizer, block)
        prompts = prompts[:config.sample_prompts]
        world = World.load(data_dir / "world.json") if (data_dir / "world.json").exists() else None
        probe = SampleProbe(policy, reference, reward_model, tokenizer, prompts, world, config)

    rng = np.random.default_rng([config.seed, TRAIN_STREAM])
    epochs = config.epochs
    if config.train.steps:  # an explicit step count: as many epochs as it takes
        epochs = math.ceil(config.train.steps / math.ceil(len(train_ranked) / config.train.batch_size))
    schedule, steps_per_epoch = training_schedule(train_ranked, config.shuffle_pairs, config.train.batch_size, epochs, rng)
    settings = replace(config.train, steps=len(schedule[:config.train.steps or None]))
    optimizer = settings.make_optimizer(policy.params)
    since_eval = []  # (reward accuracy, margin) of the training steps since the last evaluation

    def step_fn(step):
        batch, groups = pack_groups(train_ranked, schedule[step], pad, block)
        ref_logp, _ = reference.logprobs_forward(batch.idx, batch.targets)
        logp, cache = policy.logprobs_forward(batch.idx, batch.targets)
        loss, dlogp, st = dpo_loss(logp, ref_logp, batch.response_mask, groups, config.beta)
        since_eval.append((st.reward_accuracy, st.reward_margin))
        return loss, policy.logprobs_backward(dlogp, cache), batch.idx.size

    def eval_fn():
        record = ranking_eval(policy, val_chunks, val_ref, config.beta)
        if since_eval:
            record["train_reward_accuracy"], record["train_reward_margin"] = np.mean(since_eval, axis=0).tolist()
            since_eval.clear()
        sampled = probe() if probe else {}
        return {**record, **{k: v for k, v in sampled.items() if v is not None}}  # None: no reward model / world

    def save_fn(done):
        save_gpt(out_dir / "checkpoint", policy, tokenizer, optimizer.state_dict(), {"step": done},
                 stage="dpo", dpo=asdict(config))

    start_step = restore(out_dir, policy, optimizer, settings.steps) if resume else 0
    with MetricsLog(out_dir / "metrics.jsonl", resume_after_step=start_step if resume else None) as metrics:
        if not resume:
            metrics.log(step=0, **eval_fn())  # the SFT model: loss log 2, accuracy one half
        run_loop(settings, optimizer, step_fn, start_step=start_step, eval_fn=eval_fn, save_fn=save_fn,
                 metrics=metrics, desc="dpo", progress=progress)
    plot_metrics(out_dir / "metrics.jsonl", out_dir / "dpo.png", PANELS, title=f"DPO (beta {config.beta})")
    evals = [r for r in read_metrics(out_dir / "metrics.jsonl") if "val_loss" in r]
    first, last = evals[0], evals[-1]
    return {
        "method": "dpo",
        "reward_start": first.get("rm_reward"), "reward_end": last.get("rm_reward"),
        "gold_start": first.get("gold_score"), "gold_end": last.get("gold_score"),
        "kl_final": last.get("kl"),
        "val_loss_start": first["val_loss"], "val_loss_end": last["val_loss"],
        "val_reward_accuracy": last["val_reward_accuracy"],
        "train_prompts": len(train_ranked), "val_prompts": len(rankings.val),
        "steps": settings.steps, "steps_per_epoch": steps_per_epoch,
        "wall_seconds": time.perf_counter() - t0,
        "checkpoint": str(out_dir / "checkpoint"),
    }


# ----------------------------------------------------------------------------
# command line


def add_parser(subparsers):
    p = subparsers.add_parser(
        "dpo",
        help="train the SFT policy directly on the rankings with DPO (steps 2 and 3 in one)",
        description="Direct Preference Optimization: the reward model's ranking loss written in the policy's "
        "implicit reward beta (log pi - log pi_ref), with the SFT model as the frozen reference. Writes "
        "OUT/checkpoint, OUT/metrics.jsonl and OUT/dpo.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = DPOConfig()
    p.add_argument("--policy", type=Path, required=True, help="SFT checkpoint (policy and frozen reference)")
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--reward-dir", type=Path, default=None,
                        help="a `minirlhf reward` run: train on its comparisons.jsonl, validate on its "
                        "comparisons_held_out.jsonl, score samples with its checkpoint")
    source.add_argument("--comparisons", default=None,
                        help="rankings (JSONL: prompt, responses best first, optional finished)")
    p.add_argument("--held-out-comparisons", default=None,
                   help="rankings to validate on; if not given, --val-fraction of the training rankings")
    p.add_argument("--reward", type=Path, default=None, help="a reward model to score the sampled answers with")
    p.add_argument("--data", type=Path, default=Path("data"), help="folder with ppo_prompts.jsonl and world.json")
    p.add_argument("--prompts", type=Path, default=None, help="prompts to sample answers to; default DATA/ppo_prompts.jsonl")
    p.add_argument("--beta", type=positive_float, default=d.beta, help="strength of the implicit KL to the SFT model")
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help="passes over the rankings")
    p.add_argument("--shuffle-pairs", action="store_true", help="every comparison its own shuffled example")
    p.add_argument("--max-prompts", type=positive_int, default=None, help="a random subset of this many rankings")
    p.add_argument("--val-fraction", type=share, default=d.val_fraction,
                   help="share of --comparisons held out when there is no held-out file")
    p.add_argument("--sample-prompts", type=non_negative_int, default=d.sample_prompts,
                   help="prompts answered at each evaluation to measure KL, gold and reward-model score (0: none)")
    p.add_argument("--max-new-tokens", type=positive_int, default=d.max_new_tokens, help="longest sampled answer")
    p.add_argument("--seed", type=non_negative_int, default=d.seed)
    p.add_argument("--resume", action="store_true", help="continue OUT where it stopped (its last checkpoint)")
    add_train_args(p, **asdict(d.train))
    p.epilog = "--batch-size counts prompts (whole rankings) per step; --steps 0 means as many as --epochs take."
    p.set_defaults(func=run)


def run(args):
    config = DPOConfig(comparisons=args.comparisons, held_out_comparisons=args.held_out_comparisons,
                       max_prompts=args.max_prompts, val_fraction=args.val_fraction, beta=args.beta, epochs=args.epochs,
                       shuffle_pairs=args.shuffle_pairs, sample_prompts=args.sample_prompts,
                       max_new_tokens=args.max_new_tokens, train=train_settings_from_args(args), seed=args.seed)
    s = run_dpo(args.policy, args.out, config, args.reward_dir, args.reward, args.data, args.prompts, args.resume)
    print(f"held-out DPO loss {s['val_loss_start']:.4f} -> {s['val_loss_end']:.4f}, implicit-reward accuracy "
          f"{s['val_reward_accuracy']:.1%} ({s['val_prompts']} prompts); sampled answers: {describe_samples(s)}; "
          f"{s['steps']} steps in {s['wall_seconds']:.0f} s")
    print(f"policy: {s['checkpoint']}   metrics: {args.out / 'metrics.jsonl'}   plot: {args.out / 'dpo.png'}")
