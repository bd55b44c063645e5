"""Step 3 with GRPO instead of PPO: no value model, a group of answers per prompt.

    minirlhf grpo --policy runs/sft --reward runs/reward --out runs/grpo

Three models take part (PPO has four): the policy (initialised from SFT), the frozen
SFT model as the KL reference, and the frozen reward model. Each iteration:

  1. sample G answers to each of a batch of prompts, all in one batch with the KV cache;
  2. score them with the reward model (minus a penalty for an answer that never
     stops, as in PPO) and compare each with its own group: A = (r - mean) / std
     (grpo.group_advantages) -- the group mean takes the place of PPO's critic;
  3. a few epochs of minibatch steps on grpo.grpo_loss: PPO's clipped surrogate with
     the KL to the SFT model (k3 estimator) in the loss.

Every iteration logs rm_reward, gold_score (the toy world's labeler), kl, entropy,
clip_frac and approx_kl to OUT/metrics.jsonl (the same keys as PPO's, so `minirlhf
eval`'s over-optimisation plot reads it), draws OUT/grpo.png and saves OUT/checkpoint
every --save-every iterations; --resume continues from it.
"""
import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from minirlhf import grpo
from minirlhf.checkpoint import load_checkpoint, load_gpt, save_gpt
from minirlhf.errors import MinirlhfError
from minirlhf.optim import AdamW
from minirlhf.plots import plot_metrics
from minirlhf.reward import load_reward_model
from minirlhf.sample import resolve_checkpoint
from minirlhf.toyworld import World
from minirlhf.train.loop import ResumeState, rng_state
from minirlhf.train.ppo import add_config_args, config_from_args, run_iterations
from minirlhf.train.rollout import checked_step, describe_samples, read_prompts_that_fit, rollout_metrics, sample_rollout


@dataclass
class GRPOConfig:
    iterations: int = 40
    groups: int = 8  # prompts per iteration
    group_size: int = 8  # G: answers sampled per prompt
    minibatch: int = 16  # answers per gradient step
    epochs: int = 2  # passes over each iteration's answers (the paper's mu)
    lr: float = 2e-5
    beta: float = 0.04  # KL coefficient (the GRPO paper's 0.04)
    clip: float = 0.2
    grad_clip: float = 1.0
    temperature: float = 1.0  # sampling temperature, and the one log-probs are computed at
    max_new_tokens: int = 48
    missing_eos_penalty: float = 1.0  # subtracted from the score of an answer that never stops
    save_every: int = 10
    seed: int = 0


class GRPOTrainer:
    """The policy, the frozen reference and reward model, and the optimiser;
    `iteration()` runs one sample + update cycle and returns its metrics."""

    def __init__(self, policy, reference, reward_model, tokenizer, prompts, config, world=None):
        self.policy, self.reference, self.reward_model = policy, reference, reward_model
        self.tokenizer, self.prompts, self.config, self.world = tokenizer, prompts, config, world
        self.rng = np.random.default_rng(config.seed)
        self.optimizer = AdamW(policy.params, lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.iterations_done = 0

    def rollout(self):
        """G answers to each of `groups` prompts (rows grouped: prompt 0's G, then
        prompt 1's, ...), scored, with their group-relative advantages."""
        cfg = self.config
        chosen = self.rng.choice(len(self.prompts), size=min(cfg.groups, len(self.prompts)), replace=False)
        texts = [self.prompts[i] for i in chosen for _ in range(cfg.group_size)]
        roll = sample_rollout(self.policy, self.reference, self.reward_model, self.tokenizer, texts, self.rng,
                              cfg.max_new_tokens, cfg.temperature)
        rewards = roll.scores - cfg.missing_eos_penalty * ~roll.finished  # (B,)
        advantages = grpo.group_advantages(rewards.reshape(len(chosen), cfg.group_size)).reshape(-1)
        return roll, rewards, advantages

    def update(self, roll, advantages):
        """Epochs of minibatch steps on one batch of answers. Returns mean diagnostics."""
        cfg = self.config
        batch, mask = roll.batch, roll.mask
        stats = {"loss": [], "clip_frac": [], "approx_kl": [], "kl_k3": []}
        for _ in range(cfg.epochs):
            order = self.rng.permutation(len(batch.idx))
            for start in range(0, len(order), cfg.minibatch):
                mb = order[start:start + cfg.minibatch]
                logp, cache = self.policy.logprobs_forward(batch.idx[mb], batch.targets[mb], temperature=cfg.temperature)
                loss, dlogp, st = grpo.grpo_loss(logp, roll.logp[mb], roll.ref_logp[mb], advantages[mb], mask[mb],
                                                 cfg.beta, cfg.clip)
                grads = self.policy.logprobs_backward(dlogp, cache)
                checked_step(self.optimizer, grads, loss, cfg.grad_clip, "GRPO", self.iterations_done + 1)
                for key, value in (("loss", loss), *asdict(st).items()):
                    stats[key].append(value)
        return {k: float(np.mean(v)) for k, v in stats.items()}

    def iteration(self):
        roll, rewards, advantages = self.rollout()
        diag = self.update(roll, advantages)
        self.iterations_done += 1
        return {**rollout_metrics(roll, self.tokenizer, self.world), "reward_shaped": float(rewards.mean()), **diag}

    def save(self, out_dir):
        state = {"iteration": self.iterations_done, "rng": rng_state(self.rng)}
        save_gpt(Path(out_dir) / "checkpoint", self.policy, self.tokenizer, self.optimizer.state_dict(), state,
                 stage="grpo", grpo=asdict(self.config))

    def restore(self, out_dir):
        """Continue from OUT/checkpoint (written by `save`)."""
        ckpt = load_checkpoint(Path(out_dir) / "checkpoint", kind="lm")
        if ckpt.optimizer is None:
            raise MinirlhfError(f"{ckpt.path}: not a GRPO checkpoint with optimizer state; it cannot be resumed")
        ckpt.load_into(self.policy)
        self.optimizer.load_state_dict(ckpt.optimizer)
        state = ResumeState(ckpt)
        self.iterations_done = state.count("iteration", self.config.iterations, f"--iterations {self.config.iterations}")
        self.rng = state.rng()


PANELS = {
    "reward": ["rm_reward", "gold_score", "reward_shaped"],
    "KL to the SFT model": ["kl"],
    "entropy": ["entropy"],
    "GRPO diagnostics": ["clip_frac", "approx_kl"],
}


def run_grpo(policy_path, reward_path, out_dir, config=None, data_dir="data", prompts_path=None, resume=False,
             progress=True):
    """Train a policy with GRPO. data_dir holds ppo_prompts.jsonl (the prompts, unless
    prompts_path) and world.json (for the gold score; skipped if absent). Returns a
    summary dict with the same keys as run_ppo's (reward/gold at start and end, final KL)."""
    config = config or GRPOConfig()
    if config.group_size < 2:
        raise MinirlhfError(f"--group-size must be at least 2 (a group of one has nothing to compare with), "
                            f"got {config.group_size}")
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    policy, tokenizer = load_gpt(resolve_checkpoint(policy_path))
    reference, _ = load_gpt(resolve_checkpoint(policy_path))
    reward_model, _ = load_reward_model(resolve_checkpoint(reward_path), tokenizer=tokenizer)
    prompts = read_prompts_that_fit(prompts_path or data_dir / "ppo_prompts.jsonl", tokenizer, policy.config.block_size)
    world = World.load(data_dir / "world.json") if (data_dir / "world.json").exists() else None
    trainer = GRPOTrainer(policy, reference, reward_model, tokenizer, prompts, config, world)
    if resume:
        trainer.restore(out_dir)
    t0 = time.perf_counter()
    summary = run_iterations(trainer, out_dir, config, "grpo", resume, progress)
    plot_metrics(out_dir / "metrics.jsonl", out_dir / "grpo.png", PANELS, title="GRPO")
    return {"method": "grpo", **summary, "wall_seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------
# command line

HELP = {
    "iterations": "sample + update cycles",
    "groups": "prompts per iteration",
    "group_size": "G: answers sampled per prompt, compared with each other",
    "minibatch": "answers per gradient step",
    "epochs": "passes over each iteration's answers",
    "lr": "policy learning rate",
    "beta": "coefficient of the KL to the SFT model (k3 estimator, in the loss)",
    "clip": "clip range epsilon of the surrogate",
    "grad_clip": "global gradient-norm clip",
    "temperature": "sampling temperature (log-probs use the same)",
    "max_new_tokens": "longest answer",
    "missing_eos_penalty": "subtracted from the score of an answer without end-of-text",
    "save_every": "save a checkpoint every this many iterations",
    "seed": "random seed",
}


def add_parser(subparsers):
    p = subparsers.add_parser(
        "grpo",
        help="optimise the SFT policy against the reward model with GRPO (step 3, no value model)",
        description="GRPO: G answers per prompt, advantages relative to the group's mean score, PPO's clipped "
        "surrogate with a KL penalty to the SFT model in the loss. Writes OUT/checkpoint, OUT/metrics.jsonl "
        "and OUT/grpo.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--policy", type=Path, required=True, help="SFT checkpoint (policy and frozen reference)")
    p.add_argument("--reward", type=Path, required=True, help="reward-model checkpoint (or its run directory)")
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--data", type=Path, default=Path("data"),
                   help="folder with ppo_prompts.jsonl and world.json (the gold score; skipped if absent)")
    p.add_argument("--prompts", type=Path, default=None, help="prompts (JSONL with a prompt key); default DATA/ppo_prompts.jsonl")
    p.add_argument("--resume", action="store_true", help="continue OUT where it stopped")
    add_config_args(p, GRPOConfig, HELP, "GRPO")
    p.set_defaults(func=run)


def run(args):
    summary = run_grpo(args.policy, args.reward, args.out, config_from_args(GRPOConfig, args), args.data, args.prompts,
                       args.resume)
    print(f"{describe_samples(summary)}, {summary['iterations']} iterations in {summary['wall_seconds']:.0f} s")
    print(f"policy: {summary['checkpoint']}   metrics: {args.out / 'metrics.jsonl'}   plot: {args.out / 'grpo.png'}")
