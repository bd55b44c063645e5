"""Step 3 of the article: optimise the policy against the reward model with PPO.

    minirlhf ppo --policy runs/sft --reward runs/reward --out runs/ppo

Four models take part, as in InstructGPT:
  policy     the model being trained, initialised from SFT
  reference  a frozen copy of the SFT model: the KL penalty is measured against it
  reward     the frozen reward model: one score per finished response
  value      a critic initialised from the reward model, trained alongside the policy

Each iteration: sample responses to a batch of prompts (KV cache, at the temperature the
log-probs are computed at), score them, shape the per-token reward with the KL penalty
(ppo.kl_shaped_rewards), compute advantages (ppo.gae, whitened), then a few epochs of
minibatch updates of the clipped surrogate (policy) and the clipped value loss (value).
Every iteration logs the RM reward, the gold (labeler) score, the KL to the reference,
entropy, clip fraction, approx-KL and value loss to metrics.jsonl.

`--gold-reward SCALE` (toy world only) optimises the labeler's noiseless gold score
instead of the reward model's: PPO with a perfect reward model. What it reaches is what
the policy itself can learn in the run's budget, whatever the reward model's errors
(Gao et al.'s gold reward model, here the labeler itself).
"""
import argparse
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minirlhf import ppo
from minirlhf.checkpoint import load_checkpoint, load_gpt, save_checkpoint, save_gpt
from minirlhf.datasets import load_sft
from minirlhf.errors import MinirlhfError
from minirlhf.flags import flag_type
from minirlhf.metrics import MetricsLog, read_metrics
from minirlhf.model import ScalarModel
from minirlhf.optim import AdamW
from minirlhf.plots import plot_metrics
from minirlhf.reward import load_reward_model, scores_forward
from minirlhf.sample import generate_ids, resolve_checkpoint
from minirlhf.sequences import pack
from minirlhf.toyworld import World, gold_score
from minirlhf.train.loop import ResumeState, rng_state
from minirlhf.train.reward import RewardConfig, read_rankings, retrain
from minirlhf.train.pretrain import sample_windows
from minirlhf.train.rollout import checked_step, describe_samples, gold_scores, read_prompts_that_fit
from minirlhf.train.sft import pretraining_tokens


@dataclass
class PPOConfig:
    iterations: int = 40
    rollouts: int = 64  # prompts sampled per iteration
    minibatch: int = 16
    epochs: int = 4  # passes over each iteration's rollouts
    lr: float = 2e-5
    value_lr: float = 5e-5
    beta: float = 0.02  # KL coefficient (InstructGPT's 0.02)
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: int = 10000
    gamma: float = 1.0  # InstructGPT: no discount
    lam: float = 0.95
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    grad_clip: float = 1.0
    temperature: float = 1.0  # sampling temperature, and the one log-probs are computed at
    max_new_tokens: int = 48
    missing_eos_penalty: float = 1.0  # subtracted from the score of a response that never stops
    ptx_coef: float = 0.0  # PPO-ptx: weight of the pretraining loss (InstructGPT: 27.8)
    ptx_batch: int = 8
    gold_reward: float = 0.0  # > 0: reward SCALE * (gold score - the demonstrations' mean), not the RM's score
    save_every: int = 10
    rounds: int = 1  # >1: retrain the reward model on the policy's answers between rounds
    seed: int = 0


class PPOTrainer:
    """Holds the four models, the optimisers and the controller; `iteration()` runs one
    rollout + update cycle and returns its metrics."""

    def __init__(self, policy, reference, reward_model, value_model, tokenizer, prompts, config, world=None,
                 ptx_tokens=None, rng=None, gold_zero=0.0):
        self.policy, self.reference, self.reward_model, self.value_model = policy, reference, reward_model, value_model
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.config = config
        self.world = world
        self.ptx_tokens = ptx_tokens
        self.gold_zero = gold_zero  # the gold score that --gold-reward turns into a reward of 0
        self.rng = rng if rng is not None else np.random.default_rng(config.seed)
        self.policy_opt = AdamW(policy.params, lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.value_opt = AdamW(value_model.params, lr=config.value_lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.kl_ctl = ppo.AdaptiveKLController(config.beta, config.kl_target, config.kl_horizon)
        self.iterations_done = 0
        self.round = 0  # reward-model retrains done (iterated RLHF)

    # -- one iteration -----------------------------------------------------

    def rollout(self):
        """Sample responses to a batch of prompts and score everything the update needs."""
        cfg, tok = self.config, self.tokenizer
        chosen = self.rng.choice(len(self.prompts), size=min(cfg.rollouts, len(self.prompts)), replace=False)
        texts = [self.prompts[i] for i in chosen]
        prompt_ids, response_ids, finished = generate_ids(self.policy, tok, texts, self.rng, cfg.max_new_tokens, cfg.temperature)
        batch = pack(prompt_ids, response_ids, tok.pad_id, self.policy.config.block_size)
        mask = batch.response_mask
        logp, cache = self.policy.logprobs_forward(batch.idx, batch.targets, temperature=cfg.temperature)
        ref_logp, _ = self.reference.logprobs_forward(batch.idx, batch.targets, temperature=cfg.temperature)
        values, _ = self.value_model.values_forward(batch.idx)
        scores, _ = scores_forward(self.reward_model, batch)  # (B,), read at each last token
        gold = self.gold(texts, response_ids, finished)  # (B,) or None
        # --gold-reward: a perfect reward model in place of the trained one (still logged as rm_reward)
        optimised = cfg.gold_reward * (gold - self.gold_zero) if cfg.gold_reward else scores
        finished = np.array(finished)
        shaped_scores = optimised - cfg.missing_eos_penalty * ~finished
        rewards, kl = ppo.kl_shaped_rewards(logp, ref_logp, shaped_scores, mask, self.kl_ctl.beta)
        advantages, returns = ppo.gae(rewards, values, mask, cfg.gamma, cfg.lam)
        return {
            "texts": texts, "response_ids": response_ids, "finished": finished, "batch": batch, "mask": mask,
            "logp": logp, "values": values, "scores": scores, "gold": gold, "kl": kl, "rewards": rewards,
            "advantages": ppo.whiten(advantages, mask), "returns": returns,
            "entropy": ppo.entropy_from_logits(cache[0], mask),
        }

    def update(self, roll):
        """Epochs of minibatch updates on one rollout batch. Returns mean diagnostics."""
        cfg = self.config
        batch, mask = roll["batch"], roll["mask"]
        stats = {"policy_loss": [], "value_loss": [], "clip_frac": [], "approx_kl": [], "ptx_loss": []}
        n = len(batch.idx)
        for _ in range(cfg.epochs):
            order = self.rng.permutation(n)
            for start in range(0, n, cfg.minibatch):
                mb = order[start : start + cfg.minibatch]
                logp, cache = self.policy.logprobs_forward(batch.idx[mb], batch.targets[mb], temperature=cfg.temperature)
                loss, dlogp, st = ppo.policy_loss(logp, roll["logp"][mb], roll["advantages"][mb], mask[mb], cfg.clip)
                grads = self.policy.logprobs_backward(dlogp, cache)
                if cfg.ptx_coef > 0 and self.ptx_tokens is not None:
                    x, y = sample_windows(self.ptx_tokens, self.policy.config.block_size, cfg.ptx_batch, self.rng)
                    ptx_loss, ptx_grads = self.policy.loss_and_grads(x, y)
                    grads.flat += cfg.ptx_coef * ptx_grads.flat
                    stats["ptx_loss"].append(ptx_loss)
                self._step(self.policy_opt, grads, loss)
                values, vcache = self.value_model.values_forward(batch.idx[mb])
                vloss, dvalues = ppo.value_loss(values, roll["values"][mb], roll["returns"][mb], mask[mb], cfg.value_clip)
                self._step(self.value_opt, self.value_model.values_backward(cfg.vf_coef * dvalues, vcache), vloss)
                stats["policy_loss"].append(loss)
                stats["value_loss"].append(vloss)
                stats["clip_frac"].append(st.clip_frac)
                stats["approx_kl"].append(st.approx_kl)
        return {k: float(np.mean(v)) for k, v in stats.items() if v}

    def _step(self, optimizer, grads, loss):
        checked_step(optimizer, grads, loss, self.config.grad_clip, "PPO", self.iterations_done + 1)

    def iteration(self):
        roll = self.rollout()
        diag = self.update(roll)
        kl_per_seq = float(roll["kl"].sum(axis=1).mean())
        record = {
            "rm_reward": float(roll["scores"].mean()),
            "gold_score": None if roll["gold"] is None else float(roll["gold"].mean()),
            "kl": kl_per_seq,
            "reward_total": float(roll["rewards"].sum(axis=1).mean()),
            "entropy": roll["entropy"],
            "beta": self.kl_ctl.beta,
            "response_tokens": float(roll["mask"].sum(axis=1).mean()),
            "finished_rate": float(roll["finished"].mean()),
            **diag,
        }
        if self.config.adaptive_kl:
            self.kl_ctl.update(kl_per_seq, len(roll["texts"]))
        self.iterations_done += 1
        return record

    def gold(self, prompts, response_ids, finished):
        """(B,) gold (labeler) score of each response: the truth the RM only estimates.
        None when the prompts are not the toy world's (the labeler cannot read them)."""
        score = gold_scores(self.world, self.tokenizer, prompts, response_ids, finished)
        if score is None:
            if self.config.gold_reward:
                raise MinirlhfError("--gold-reward: the labeler cannot judge these prompts (they are not the toy "
                                    "world's, or there is no world.json)")
            self.world = None  # not the toy world's prompts: stop asking
        return score

    # -- checkpoints -------------------------------------------------------

    def save(self, out_dir):
        out_dir = Path(out_dir)
        state = {"iteration": self.iterations_done, "rng": rng_state(self.rng), "beta": self.kl_ctl.beta,
                 "round": self.round}
        save_checkpoint(out_dir / "value", self.value_model.params,
                        {"kind": "reward", "model": self.value_model.config.to_dict(), "dtype": self.value_model.dtype.name,
                         "stage": "ppo-value"}, self.tokenizer, self.value_opt.state_dict())
        # The policy is saved last: its state.json marks the iteration as complete.
        save_gpt(out_dir / "checkpoint", self.policy, self.tokenizer, self.policy_opt.state_dict(), state,
                 stage="ppo", ppo=asdict(self.config))

    def restore(self, out_dir):
        """Continue from OUT/checkpoint and OUT/value (written by `save`)."""
        out_dir = Path(out_dir)
        policy_ckpt = load_checkpoint(out_dir / "checkpoint", kind="lm")
        value_ckpt = load_checkpoint(out_dir / "value", kind="reward")
        policy_ckpt.load_into(self.policy)
        value_ckpt.load_into(self.value_model)
        if policy_ckpt.optimizer is None or value_ckpt.optimizer is None:
            raise MinirlhfError(f"{out_dir}: the checkpoint has no optimizer state; it cannot be resumed")
        self.policy_opt.load_state_dict(policy_ckpt.optimizer)
        self.value_opt.load_state_dict(value_ckpt.optimizer)
        state = ResumeState(policy_ckpt)
        self.iterations_done = state.count("iteration", self.config.iterations, f"--iterations {self.config.iterations}")
        self.rng = state.rng()
        self.kl_ctl.beta = state.finite("beta")
        self.round = state.count("round", self.config.rounds - 1, f"the last round of --rounds {self.config.rounds}",
                                 default=0)


PANELS = {
    "reward": ["rm_reward", "gold_score", "reward_total"],
    "KL to the SFT model": ["kl"],
    "entropy": ["entropy"],
    "PPO diagnostics": ["clip_frac", "approx_kl"],
    "value loss": ["value_loss"],
}


def rankings_of(reward_path):
    """The training rankings a reward-model run saved (comparisons.jsonl beside its
    checkpoint), which iterated rounds add to."""
    for folder in (Path(reward_path), Path(reward_path).parent):
        if (folder / "comparisons.jsonl").is_file():
            return [record for record in read_rankings(folder / "comparisons.jsonl")]
    raise MinirlhfError(f"{reward_path}: --rounds needs the rankings this reward model was trained on "
                        "(comparisons.jsonl in its run directory)")


def demonstrations_gold(world, path, n=RewardConfig.n_demos):
    """Mean gold score of the first n demonstrations in `path`: --gold-reward's zero, as
    the reward model is normalised so that the same demonstrations score 0 on average."""
    if world is None:
        raise MinirlhfError(f"--gold-reward needs the toy world's labeler: no world.json beside {path}")
    demos = load_sft(path)[:n]
    return float(np.mean([gold_score(world, d["prompt"], d["response"]) for d in demos]))


def run_ppo(policy_path, reward_path, out_dir, config=None, data_dir="data", prompts_path=None, ptx_text=None,
            reward_config=None, resume=False, progress=True):
    """Train a policy with PPO; with config.rounds > 1, retrain the reward model on new
    rankings of the policy's answers between rounds (steps 2 and 3, iterated).
    data_dir holds world.json (for the gold score and new rankings), ppo_prompts.jsonl
    and rm_prompts.jsonl. Returns a summary dict (reward at start/end, final KL, ...)."""
    config = config or PPOConfig()
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    policy, tokenizer = load_gpt(resolve_checkpoint(policy_path))
    reference, _ = load_gpt(resolve_checkpoint(policy_path))
    reward_model, _ = load_reward_model(resolve_checkpoint(reward_path), tokenizer=tokenizer)
    value_model = ScalarModel(reward_model.config, dtype=reward_model.dtype, params=reward_model.params)
    prompts = read_prompts_that_fit(prompts_path or data_dir / "ppo_prompts.jsonl", tokenizer, policy.config.block_size)
    world = World.load(data_dir / "world.json") if (data_dir / "world.json").exists() else None
    ptx_tokens = None
    if config.ptx_coef > 0:
        if ptx_text is None:
            raise MinirlhfError("--ptx-coef needs --ptx-text (the pretraining text to mix in)")
        ptx_tokens = pretraining_tokens(ptx_text, tokenizer, policy.config.block_size)
    earlier = rankings_of(reward_path) if config.rounds > 1 else None
    reward_config = replace(reward_config or RewardConfig(), data=str(data_dir))
    gold_zero = demonstrations_gold(world, data_dir / "sft.jsonl") if config.gold_reward else 0.0
    trainer = PPOTrainer(policy, reference, reward_model, value_model, tokenizer, prompts, config, world, ptx_tokens,
                         gold_zero=gold_zero)
    if resume:
        trainer.restore(out_dir)
        if trainer.round:
            trainer.reward_model, _ = load_reward_model(out_dir / f"reward_round{trainer.round + 1}" / "checkpoint", tokenizer)
            earlier = rankings_of(out_dir / f"reward_round{trainer.round + 1}")
    per_round = math.ceil(config.iterations / config.rounds)

    def new_round(metrics):
        """Steps 2 and 3 again, when a round is over: new rankings of this policy's
        answers, a new reward model."""
        nonlocal earlier
        if trainer.iterations_done // per_round <= trainer.round:
            return
        trainer.round += 1
        round_dir = out_dir / f"reward_round{trainer.round + 1}"
        round_config = replace(reward_config, seed=reward_config.seed + trainer.round)
        summary, rankings = retrain(reference, policy, tokenizer, earlier, round_config, round_dir, progress)
        earlier = rankings.train
        trainer.reward_model, _ = load_reward_model(round_dir / "checkpoint", tokenizer)
        metrics.log(step=trainer.iterations_done, round=trainer.round + 1, rm_val_accuracy=summary["val_accuracy"])

    t0 = time.perf_counter()
    summary = run_iterations(trainer, out_dir, config, "ppo", resume, progress, before_iteration=new_round)
    plot_metrics(out_dir / "metrics.jsonl", out_dir / "ppo.png", PANELS, title="PPO")
    return {**summary, "rounds": config.rounds, "wall_seconds": time.perf_counter() - t0}


def run_iterations(trainer, out_dir, config, desc, resume=False, progress=True, before_iteration=None):
    """The loop PPO and GRPO share: `trainer.iteration()` until config.iterations, a
    metrics.jsonl line for each, `trainer.save(out_dir)` every config.save_every and at
    the end, a progress bar with the RM reward, gold score and KL. before_iteration(metrics),
    if given, runs before each iteration (PPO's reward-model rounds).
    Returns the numbers the pipeline reports: reward, gold at start and end, final KL."""
    with MetricsLog(out_dir / "metrics.jsonl", resume_after_step=trainer.iterations_done if resume else None) as metrics:
        bar = tqdm(total=config.iterations, initial=trainer.iterations_done, desc=desc, unit="it", disable=not progress,
                   dynamic_ncols=True)
        try:
            while trainer.iterations_done < config.iterations:
                if before_iteration is not None:
                    before_iteration(metrics)
                record = trainer.iteration()
                metrics.log(step=trainer.iterations_done, **record)
                bar.update(1)
                bar.set_postfix(rm=f"{record['rm_reward']:.3f}", gold=f"{record['gold_score'] or float('nan'):.3f}",
                                kl=f"{record['kl']:.2f}")
                if trainer.iterations_done % config.save_every == 0 or trainer.iterations_done == config.iterations:
                    trainer.save(out_dir)
        finally:
            bar.close()
    # From the file, not this process's iterations: a resumed run reports the whole run.
    records = [r for r in read_metrics(out_dir / "metrics.jsonl") if "rm_reward" in r]
    first, last = (records[0], records[-1]) if records else ({}, {})
    return {
        "reward_start": first.get("rm_reward"),
        "reward_end": last.get("rm_reward"),
        "gold_start": first.get("gold_score"),
        "gold_end": last.get("gold_score"),
        "kl_final": last.get("kl"),
        "iterations": trainer.iterations_done,
        "checkpoint": str(out_dir / "checkpoint"),
    }


# ----------------------------------------------------------------------------
# command line

HELP = {
    "iterations": "rollout + update cycles",
    "rollouts": "prompts sampled per iteration",
    "minibatch": "rollouts per gradient step",
    "epochs": "passes over each iteration's rollouts",
    "lr": "policy learning rate",
    "value_lr": "value-model learning rate",
    "beta": "KL penalty coefficient (the start value with --adaptive-kl)",
    "adaptive_kl": "adapt beta to hold the KL near --kl-target",
    "kl_target": "target KL (nats per response) for --adaptive-kl",
    "kl_horizon": "horizon (rollouts) of the adaptive KL controller",
    "gamma": "discount",
    "lam": "GAE lambda",
    "clip": "PPO clip range epsilon",
    "value_clip": "value clip range",
    "vf_coef": "value-loss coefficient",
    "grad_clip": "global gradient-norm clip",
    "temperature": "sampling temperature (log-probs use the same)",
    "max_new_tokens": "longest response",
    "missing_eos_penalty": "subtracted from the score of a response without end-of-text",
    "ptx_coef": "PPO-ptx: weight of the pretraining loss (needs --ptx-text)",
    "ptx_batch": "pretraining windows per minibatch for PPO-ptx",
    "gold_reward": "toy world only: reward SCALE x (the labeler's gold score - the demonstrations' mean) instead "
                   "of the reward model's score: PPO with a perfect reward model (e.g. 5; 0: off)",
    "save_every": "save a checkpoint every this many iterations",
    "rounds": "iterate steps 2 and 3: split the iterations into this many rounds and, between rounds, "
              "rank the policy's answers, retrain the reward model on all rankings so far",
    "seed": "random seed",
}


def add_config_args(parser, config_cls, helps, title):
    """A flag for every field of a flat config dataclass (--iterations, --lr, ...), its
    default the dataclass's, its range checked (`flag_type`); booleans are switches. GRPO's command
    shares this."""
    group = parser.add_argument_group(title)
    defaults = config_cls()
    for f in fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            group.add_argument(flag, dest=f.name, action="store_true", help=helps[f.name])
        else:
            group.add_argument(flag, dest=f.name, type=flag_type(f.name, value), default=value, help=helps[f.name])


def config_from_args(config_cls, args):
    return config_cls(**{f.name: getattr(args, f.name) for f in fields(config_cls)})


def add_ppo_args(parser):
    add_config_args(parser, PPOConfig, HELP, "PPO")


def ppo_config_from_args(args):
    return config_from_args(PPOConfig, args)


def add_parser(subparsers):
    p = subparsers.add_parser(
        "ppo",
        help="optimise the SFT policy against the reward model with PPO (step 3)",
        description="PPO with a per-token KL penalty to the SFT model. Writes OUT/checkpoint (the policy), "
        "OUT/value (the critic), OUT/metrics.jsonl and OUT/ppo.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--policy", type=Path, required=True, help="SFT checkpoint (policy and frozen reference)")
    p.add_argument("--reward", type=Path, required=True, help="reward-model checkpoint (also initialises the value model)")
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--data", type=Path, default=Path("data"),
                   help="folder with ppo_prompts.jsonl, world.json (the gold score; skipped if absent) and, for --rounds, "
                        "rm_prompts.jsonl and sft.jsonl")
    p.add_argument("--prompts", type=Path, default=None, help="PPO prompts (JSONL with a prompt key); default DATA/ppo_prompts.jsonl")
    p.add_argument("--ptx-text", type=Path, default=None, help="pretraining text for PPO-ptx")
    p.add_argument("--resume", action="store_true", help="continue OUT where it stopped")
    add_ppo_args(p)
    p.set_defaults(func=run)


def run(args):
    summary = run_ppo(args.policy, args.reward, args.out, ppo_config_from_args(args), args.data, args.prompts,
                      args.ptx_text, resume=args.resume)
    print(f"{describe_samples(summary)}, {summary['iterations']} iterations in {summary['wall_seconds']:.0f} s")
    print(f"policy: {summary['checkpoint']}   metrics: {args.out / 'metrics.jsonl'}   plot: {args.out / 'ppo.png'}")
