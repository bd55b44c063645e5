"""Step 2 of the article: the reward model, trained on labelers' rankings.

  1. Rankings. For each RM prompt, sample K = 4..9 answers from the SFT model at
     temperature 1 and have a labeler rank them best to worst: the training labelers
     for most prompts, and a held-out labeler -- one who made none of the training
     data, as in InstructGPT -- for a held-out share of the prompts. Or bring your
     own rankings (--comparisons).
  2. Training. The SFT model's transformer with a new scalar head (`ScalarModel`),
     trained for one epoch on the ranking loss (`minirlhf.reward.ranking_loss`). As in
     InstructGPT, each prompt's K answers are one batch element: K forward passes give
     all C(K,2) comparisons. `--shuffle-pairs` does what InstructGPT found overfits:
     every comparison a separate example, shuffled, so each answer is seen K-1 times
     per epoch in K-1 different updates.
  3. Normalisation. Shift the head's bias so labeler demonstrations score 0 on average.

    minirlhf reward --init runs/sft/checkpoint --out runs/reward

writes OUT/comparisons.jsonl and OUT/comparisons_held_out.jsonl (the rankings, reusable
with --comparisons / --held-out-comparisons), OUT/checkpoint/ (kind "reward"),
metrics.jsonl, accuracy.png and report.json. `--compare-pairing` trains both ways on
the same rankings (OUT/grouped/, OUT/shuffled/) and draws OUT/pairing.png.
"""
import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations
from pathlib import Path

import numpy as np

from minirlhf.checkpoint import load_gpt
from minirlhf.datasets import load_comparisons, load_prompts, load_sft, write_jsonl
from minirlhf.errors import MinirlhfError
from minirlhf.evaluate import model_responder
from minirlhf.flags import non_negative_int, positive_float, positive_int, share
from minirlhf.metrics import MetricsLog, read_metrics, series
from minirlhf.model import ScalarModel
from minirlhf.plots import plot_metrics, plt
from minirlhf.reward import (
    grouped_ranking_loss, normalise_bias, pairwise_accuracy, response_tokens, save_reward_model, score,
    scores_backward, scores_forward,
)
from minirlhf.sample import resolve_checkpoint
from minirlhf.sequences import pack
from minirlhf.toyworld.labeler import HELD_OUT_LABELER, TRAINING_LABELERS, Labeler, gold_score
from minirlhf.toyworld.tasks import parse_prompt
from minirlhf.toyworld.world import World
from minirlhf.train.loop import TrainSettings, add_train_args, run_loop, train_settings_from_args

SAMPLED_PROMPTS = 250  # RM prompts sampled and ranked by default: the stage takes about a minute
GENERATE_BATCH = 256  # rows sampled together (bounds the KV cache's memory)
EVAL_CHUNK = 8  # rankings scored per forward pass in evaluation
# Independent random streams, so e.g. more epochs do not change the sampled rankings.
SPLIT_STREAM, SAMPLE_STREAM, LABEL_STREAM, TRAIN_STREAM = range(4)


@dataclass
class RewardConfig:
    data: str = "data"  # folder with world.json (the labeler's world), rm_prompts.jsonl, sft.jsonl
    prompts: str | None = None  # RM prompts (default DATA/rm_prompts.jsonl)
    comparisons: str | None = None  # your own rankings instead of sampling
    held_out_comparisons: str | None = None  # held-out rankings (default: a share of `comparisons`)
    demos: str | None = None  # demonstrations that score 0 after training (default DATA/sft.jsonl)
    max_prompts: int | None = None  # a random subset of the prompts / rankings (None: SAMPLED_PROMPTS, all of a file)
    val_fraction: float = 0.15
    k_min: int = 4
    k_max: int = 9
    max_new_tokens: int = 48
    temperature: float = 1.0
    n_demos: int = 256
    shuffle_pairs: bool = False
    epochs: int = 1
    eval_train_prompts: int = 40  # training rankings re-scored at each evaluation (the train curve)
    train: TrainSettings = field(default_factory=lambda: TrainSettings(
        steps=0, batch_size=8, lr=3e-4, min_lr=3e-5, warmup=3, eval_every=5))
    seed: int = 0

    def path(self, name, default_file):
        value = getattr(self, name)
        return Path(value) if value is not None else Path(self.data) / default_file


# ----------------------------------------------------------------------------
# rankings: [(record, where)], a record {"prompt", "responses": [best, ..., worst],
# "finished", "labeler_id"} and where the file:line it came from (for error messages)


def read_prompts(path, tokenizer, block_size, max_new_tokens):
    """[(prompt, "file:line")]. A prompt the labeler cannot read, or that leaves no
    room for an answer in the model's context, is an error naming its line; so is
    --max-new-tokens if the longest prompt and an answer that long do not fit."""
    prompts, longest = [], (0, "")
    for line, record in load_prompts(path, line_numbers=True):
        where = f"{path}:{line}"
        at(where, parse_prompt, record["prompt"])
        n = len(at(where, tokenizer.encode, record["prompt"]))
        if n >= block_size:
            raise MinirlhfError(f"{where}: the prompt is {n} tokens; the model's context of "
                                f"{block_size} leaves no room for an answer")
        prompts.append((record["prompt"], where))
        if n > longest[0]:
            longest = (n, where)
    if longest[0] + max_new_tokens > block_size:
        raise MinirlhfError(f"--max-new-tokens {max_new_tokens}: the longest prompt ({longest[1]}, {longest[0]} "
                            f"tokens) and an answer that long do not fit the model's context of {block_size}; "
                            f"use --max-new-tokens {block_size - longest[0]} or less")
    return prompts


def at(where, fn, *args):
    """fn(*args), with any MinirlhfError it raises prefixed by `where` (file:line)."""
    try:
        return fn(*args)
    except MinirlhfError as e:
        raise MinirlhfError(f"{where}: {e}") from None


def sample_rankings(sft, tokenizer, labelers, prompts, config, rng, progress=True):
    """For each prompt, K ~ U{k_min..k_max} answers from the SFT model, ranked by its
    labeler. prompts: [(prompt, where)]; labelers: one Labeler per prompt."""
    ks = rng.integers(config.k_min, config.k_max + 1, size=len(prompts))
    rows = [prompt for (prompt, _), k in zip(prompts, ks) for _ in range(k)]
    respond = model_responder(sft, tokenizer, config.max_new_tokens, config.temperature, GENERATE_BATCH,
                              desc="sampling answers" if progress else None)
    answers = respond(rows, rng)
    rankings, start = [], 0
    for (prompt, where), k, labeler in zip(prompts, ks, labelers):
        texts, finished = zip(*answers[start:start + k])
        start += k
        order = labeler.rank(prompt, texts, finished, rng=rng)
        record = {"prompt": prompt, "responses": [texts[i] for i in order],
                  "finished": [finished[i] for i in order], "labeler_id": labeler.labeler_id}
        rankings.append((record, where))
    return rankings


def labeler_agreement(rankings, labelers, rng):
    """Share of the pairs of `rankings` that other labelers (one per ranking) order the
    same way when they rank the same answers. InstructGPT compares its RM's accuracy
    with this agreement (72.6 +- 1.5%): the labels cannot be predicted much better
    than one labeler predicts another."""
    agree = n = 0
    for (record, _), labeler in zip(rankings, labelers):
        order = labeler.rank(record["prompt"], record["responses"], record["finished"], rng=rng)
        position = np.argsort(order)  # where the second labeler put each answer (0: best)
        a, m = pairwise_accuracy(-position, [np.arange(len(order))])
        agree, n = agree + a, n + m
    return agree / n


def read_rankings(path):
    """[(record, "file:line")] from a comparisons file; "finished" defaults to all true."""
    return [({**r, "finished": r.get("finished", [True] * len(r["responses"]))}, f"{path}:{line}")
            for line, r in load_comparisons(path, line_numbers=True)]


def subset(items, n, rng):
    """A random n of the items (all of them, shuffled, if n is None)."""
    return [items[i] for i in rng.permutation(len(items))[:n]]


def split(items, val_fraction, rng):
    """Shuffle; then (train, held out), with round(val_fraction * n), at least 1, held out."""
    n_val = max(1, round(val_fraction * len(items)))
    if len(items) - n_val < 1:
        raise MinirlhfError(f"{len(items)} prompts are too few to hold out {n_val} and train on the rest")
    order = rng.permutation(len(items))
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


def training_labelers(world, n):
    """n labelers taking turns through the training labelers."""
    return [Labeler(world, TRAINING_LABELERS[i % len(TRAINING_LABELERS)]) for i in range(n)]


@dataclass
class Rankings:
    """The data of a reward model: training and held-out rankings [(record, where)],
    and, when the toy world's labelers made them, what the labels are worth."""

    train: list
    val: list
    labeler_agreement: float | None = None  # training vs held-out labeler on the held-out answers
    val_gold: list | None = None  # gold scores of the held-out answers (one array per ranking)


def collect_rankings(sft, tokenizer, config, out_dir, progress=True):
    """Rankings sampled and labelled (written to out_dir as comparisons.jsonl and
    comparisons_held_out.jsonl), or read from config.comparisons."""
    split_rng = np.random.default_rng([config.seed, SPLIT_STREAM])
    if config.comparisons is not None:
        train = subset(read_rankings(config.comparisons), config.max_prompts, split_rng)
        if config.held_out_comparisons is not None:
            return Rankings(train, read_rankings(config.held_out_comparisons))
        return Rankings(*split(train, config.val_fraction, split_rng))
    if not 2 <= config.k_min <= config.k_max:
        raise MinirlhfError(f"need 2 <= k_min <= k_max, got {config.k_min} and {config.k_max}")
    world = World.load(Path(config.data) / "world.json")
    prompts = read_prompts(config.path("prompts", "rm_prompts.jsonl"), tokenizer, sft.config.block_size,
                           config.max_new_tokens)
    prompts = subset(prompts, config.max_prompts or SAMPLED_PROMPTS, split_rng)
    train_prompts, val_prompts = split(prompts, config.val_fraction, split_rng)
    sample_rng = np.random.default_rng([config.seed, SAMPLE_STREAM])
    held_out = [Labeler(world, HELD_OUT_LABELER)] * len(val_prompts)
    train = sample_rankings(sft, tokenizer, training_labelers(world, len(train_prompts)), train_prompts, config,
                            sample_rng, progress)
    val = sample_rankings(sft, tokenizer, held_out, val_prompts, config, sample_rng, progress)
    # The label noise: the training labelers re-rank the held-out labeler's answers.
    ceiling = labeler_agreement(val, training_labelers(world, len(val)), np.random.default_rng([config.seed, LABEL_STREAM]))
    write_jsonl(Path(out_dir) / "comparisons.jsonl", [record for record, _ in train])
    write_jsonl(Path(out_dir) / "comparisons_held_out.jsonl", [record for record, _ in val])
    gold = [np.array([gold_score(world, r["prompt"], text, f) for text, f in zip(r["responses"], r["finished"])])
            for r, _ in val]
    return Rankings(train, val, ceiling, gold)


def ranking_scores(rm, ranked):
    """The reward model's score of every answer of `ranked` [(prompt ids, [answer ids])]:
    one array per ranking, in its order."""
    prompts = [prompt for prompt, responses in ranked for _ in responses]
    scores = score(rm, prompts, [r for _, responses in ranked for r in responses])
    return np.split(scores, np.cumsum([len(responses) for _, responses in ranked])[:-1])


def gold_accuracy(scores, gold):
    """How often the reward model orders two held-out answers as their gold scores do
    (pairs with different gold scores only): its grasp of the true quality, apart from
    the labelers' noise. The gold score is the quality PPO is meant to raise through
    the reward model. scores, gold: one array per ranking (`ranking_scores`)."""
    agree = n = 0.0
    for s, g in zip(scores, gold):
        i, j = np.triu_indices(len(g), k=1)
        differ = g[i] != g[j]
        same_sign = np.sign(s[i] - s[j]) == np.sign(g[i] - g[j])
        agree += np.sum(same_sign[differ]) + 0.5 * np.sum((s[i] == s[j])[differ])
        n += np.sum(differ)
    return agree / n if n else None


def best_of_k(scores, gold):
    """Mean gold score of the answer the reward model picks among each held-out prompt's
    K answers (its highest score), of a random one, and of the best one. The first
    against the second is what best-of-K sampling -- and so, roughly, PPO -- can gain
    through this reward model; the third is what a perfect one would gain."""
    return {"rm_pick": float(np.mean([g[np.argmax(s)] for s, g in zip(scores, gold)])),
            "random": float(np.mean([g.mean() for g in gold])),
            "best": float(np.mean([g.max() for g in gold]))}


# ----------------------------------------------------------------------------
# token ids and batches


def encode_ranking(tokenizer, record, block_size, where):
    """(prompt ids, [response ids best first]); a ranking that cannot be encoded or does
    not fit the model's context is an error naming `where` (file:line)."""
    prompt = at(where, tokenizer.encode, record["prompt"])
    responses = [at(where, response_tokens, tokenizer, r, f) for r, f in zip(record["responses"], record["finished"])]
    if not prompt or not all(responses):
        raise MinirlhfError(f"{where}: the prompt and every response need at least one token "
                            "(an unfinished response cannot be empty)")
    longest = len(prompt) + max(len(r) for r in responses)
    if longest > block_size:
        raise MinirlhfError(f"{where}: prompt + response is {longest} tokens, more than the model's "
                            f"context of {block_size}")
    return prompt, responses


def encode_rankings(tokenizer, rankings, block_size):
    return [encode_ranking(tokenizer, record, block_size, where) for record, where in rankings]


def whole_rankings(ranked):
    """One group per prompt: all its responses, best first, as (prompt, response) keys."""
    return [[(c, i) for i in range(len(responses))] for c, (_, responses) in enumerate(ranked)]


def all_pairs(ranked):
    """One group per comparison: [(c, better), (c, worse)] for every pair of every prompt."""
    return [[(c, i), (c, j)] for c, (_, responses) in enumerate(ranked)
            for i, j in combinations(range(len(responses)), 2)]


def pack_groups(ranked, groups, pad_id, block_size):
    """Groups of (prompt, response) keys -> (Batch, groups as row-index arrays).

    Each distinct response to a prompt is packed and scored once, however many groups
    (shuffled pairs) or ranks it fills: a third of the SFT model's samples repeat another
    sample to the same prompt ("loves skating." six times), and their scores are equal
    anyway. The gradients of a shared row add up, as for a shared weight."""
    rows = {}
    index_groups = [np.array([rows.setdefault((c, tuple(ranked[c][1][i])), len(rows)) for c, i in group])
                    for group in groups]
    prompts = [ranked[c][0] for c, _ in rows]
    responses = [list(response) for _, response in rows]
    return pack(prompts, responses, pad_id, block_size), index_groups


def training_schedule(ranked, shuffle_pairs, prompts_per_step, epochs, rng):
    """The groups of every optimizer step, epoch after epoch, shuffled each epoch.

    Grouped: prompts_per_step whole rankings per step. Shuffled pairs: every comparison
    its own group, with as many comparisons per step as the grouped way has on
    average -- the same comparisons per epoch in the same number of steps, so the two
    differ only in whether a prompt's comparisons share one update."""
    units = all_pairs(ranked) if shuffle_pairs else whole_rankings(ranked)
    steps_per_epoch = math.ceil(len(ranked) / prompts_per_step)
    per_step = math.ceil(len(units) / steps_per_epoch)
    steps = []
    for _ in range(epochs):
        order = rng.permutation(len(units))
        steps += [[units[k] for k in order[s:s + per_step]] for s in range(0, len(units), per_step)]
    return steps, steps_per_epoch


def ranking_metrics(rm, chunks):
    """(pairwise accuracy, mean ranking loss per prompt) of packed rankings."""
    agree = pairs = total = 0.0
    n_groups = 0
    for batch, groups in chunks:
        scores = scores_forward(rm, batch)[0]
        a, n = pairwise_accuracy(scores, groups)
        agree, pairs = agree + a, pairs + n
        total += grouped_ranking_loss(scores, groups)[0] * len(groups)
        n_groups += len(groups)
    return agree / pairs, total / n_groups


def packed_rankings(ranked, pad_id, block_size):
    """Whole rankings packed EVAL_CHUNK at a time for evaluation, sorted by length so
    that a chunk's rows need little padding (the order does not change the metrics)."""
    longest = [len(prompt) + max(map(len, responses)) for prompt, responses in ranked]
    rankings = whole_rankings(ranked)
    groups = [rankings[c] for c in np.argsort(longest, kind="stable")]
    return [pack_groups(ranked, groups[s:s + EVAL_CHUNK], pad_id, block_size) for s in range(0, len(groups), EVAL_CHUNK)]


# ----------------------------------------------------------------------------
# the stage


def read_demos(config, tokenizer, block_size):
    """(prompts, responses) of the first n_demos demonstrations, checked to fit."""
    path = config.path("demos", "sft.jsonl")
    numbered = load_sft(path, line_numbers=True)[:config.n_demos]
    for line, record in numbered:
        encode_ranking(tokenizer, {"prompt": record["prompt"], "responses": [record["response"]], "finished": [True]},
                       block_size, f"{path}:{line}")
    return [r["prompt"] for _, r in numbered], [r["response"] for _, r in numbered]


def fit(sft, tokenizer, rankings, demos, config, out_dir, progress=True):
    """Train a reward model from `sft` on the rankings; normalise it on `demos`; save it
    in out_dir/checkpoint. Returns a summary dict."""
    out_dir = Path(out_dir)
    block, pad = sft.config.block_size, tokenizer.pad_id
    train_ranked = encode_rankings(tokenizer, rankings.train, block)
    val_ranked = encode_rankings(tokenizer, rankings.val, block)
    rng = np.random.default_rng([config.seed, TRAIN_STREAM])
    rm = ScalarModel.from_gpt(sft, seed=config.seed)
    epochs = config.epochs
    if config.train.steps:  # an explicit step count: as many epochs as it takes
        epochs = math.ceil(config.train.steps / math.ceil(len(train_ranked) / config.train.batch_size))
    schedule, steps_per_epoch = training_schedule(train_ranked, config.shuffle_pairs, config.train.batch_size, epochs, rng)
    schedule = schedule[:config.train.steps or None]
    settings = replace(config.train, steps=len(schedule))
    optimizer = settings.make_optimizer(rm.params)
    val_chunks = packed_rankings(val_ranked, pad, block)
    train_chunks = packed_rankings(train_ranked[:config.eval_train_prompts], pad, block)

    def step_fn(step):
        batch, groups = pack_groups(train_ranked, schedule[step], pad, block)
        scores, cache = scores_forward(rm, batch, rng if rm.config.dropout else None)
        loss, dscores = grouped_ranking_loss(scores, groups)
        return loss, scores_backward(rm, dscores, cache), batch.idx.size

    def eval_fn():
        val_accuracy, val_loss = ranking_metrics(rm, val_chunks)
        return {"val_accuracy": val_accuracy, "val_loss": val_loss,
                "train_accuracy": ranking_metrics(rm, train_chunks)[0]}

    t0 = time.perf_counter()
    with MetricsLog(out_dir / "metrics.jsonl") as metrics:
        # Saved once, after normalisation: an un-normalised RM is of no use to PPO.
        run_loop(settings, optimizer, step_fn, start_step=0, eval_fn=eval_fn, save_fn=lambda done: None,
                 metrics=metrics, desc="reward (shuffled pairs)" if config.shuffle_pairs else "reward", progress=progress)
    train_seconds = time.perf_counter() - t0
    train_accuracy, train_loss = ranking_metrics(rm, packed_rankings(train_ranked, pad, block))
    val_accuracy, val_loss = ranking_metrics(rm, val_chunks)
    val_gold_accuracy = val_best_of_k = None
    if rankings.val_gold:
        val_scores = ranking_scores(rm, val_ranked)
        val_gold_accuracy, val_best_of_k = gold_accuracy(val_scores, rankings.val_gold), best_of_k(val_scores, rankings.val_gold)
    demo_mean = normalise_bias(rm, tokenizer, *demos)
    normalisation = {"demos": str(config.path("demos", "sft.jsonl")), "n_demos": len(demos[0]),
                     "mean_before": demo_mean}
    save_reward_model(out_dir / "checkpoint", rm, tokenizer, normalisation, stage="reward",
                      pairing="shuffled pairs" if config.shuffle_pairs else "grouped")
    plot_metrics(out_dir / "metrics.jsonl", out_dir / "accuracy.png",
                 {"ranking loss": ["loss", "val_loss"], "pairwise accuracy": ["train_accuracy", "val_accuracy"]},
                 title="reward model" + (" (shuffled pairs)" if config.shuffle_pairs else ""))
    return {
        "pairing": "shuffled pairs" if config.shuffle_pairs else "grouped",
        "train_accuracy": train_accuracy, "train_loss": train_loss,
        "val_accuracy": val_accuracy, "val_loss": val_loss, "labeler_agreement": rankings.labeler_agreement,
        "val_gold_accuracy": val_gold_accuracy, "val_best_of_k": val_best_of_k,
        "train_prompts": len(train_ranked), "val_prompts": len(val_ranked),
        "train_pairs": len(all_pairs(train_ranked)), "val_pairs": len(all_pairs(val_ranked)),
        "steps": settings.steps, "steps_per_epoch": steps_per_epoch, "epochs": settings.steps / steps_per_epoch,
        "demo_mean_before": demo_mean, "train_seconds": train_seconds,
        "checkpoint": str(out_dir / "checkpoint"),
    }


def prepare(init, config, out_dir, progress=True):
    """Load the SFT model, collect the rankings and the demonstrations."""
    sft, tokenizer = load_gpt(resolve_checkpoint(init))
    rankings = collect_rankings(sft, tokenizer, config, out_dir, progress)
    return sft, tokenizer, rankings, read_demos(config, tokenizer, sft.config.block_size)


def write_report(out_dir, summary):
    (Path(out_dir) / "report.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def reward(init, out_dir, config=None, progress=True):
    """The whole stage: rankings, training, normalisation. Returns the summary (also
    written to out_dir/report.json)."""
    config = config or RewardConfig()
    t0 = time.perf_counter()
    summary = fit(*prepare(init, config, out_dir, progress), config, out_dir, progress)
    summary.update(wall_seconds=time.perf_counter() - t0, config=asdict(config))
    write_report(out_dir, summary)
    return summary


def retrain(sft, sampler, tokenizer, earlier, config, out_dir, progress=True):
    """Step 2 again, for iterated RLHF: rank `sampler`'s answers (the current policy)
    to the RM prompts, add them to the `earlier` training rankings, and train a fresh
    reward model from `sft` on all of them. The new rankings show the labelers'
    verdict on what the policy does *now* -- including any way it found to please
    the old reward model that people do not like. Returns (summary, rankings)."""
    new = collect_rankings(sampler, tokenizer, config, out_dir, progress)
    rankings = replace(new, train=list(earlier) + new.train)
    summary = fit(sft, tokenizer, rankings, read_demos(config, tokenizer, sft.config.block_size), config, out_dir, progress)
    write_report(out_dir, {**summary, "earlier_train_prompts": len(earlier), "new_train_prompts": len(new.train)})
    return summary, rankings


def compare_pairing(init, out_dir, config=None, progress=True):
    """Train the reward model both ways on the same rankings -- grouped (InstructGPT)
    and shuffled pairs -- into out_dir/grouped and out_dir/shuffled, and plot their
    held-out accuracy and loss over training in out_dir/pairing.png."""
    config = config or RewardConfig()
    t0 = time.perf_counter()
    data = prepare(init, config, out_dir, progress)
    runs = {name: fit(*data, replace(config, shuffle_pairs=shuffle), Path(out_dir) / name, progress)
            for name, shuffle in (("grouped", False), ("shuffled", True))}
    plot_pairing(out_dir, runs, data[2].labeler_agreement)
    summary = {**runs, "wall_seconds": time.perf_counter() - t0, "config": asdict(config)}
    write_report(out_dir, summary)
    return summary


def plot_pairing(out_dir, runs, ceiling):
    """Held-out accuracy and loss against epochs, one line per way of batching."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, summary in runs.items():
        records = read_metrics(Path(out_dir) / name / "metrics.jsonl")
        for ax, key in zip(axes, ("val_accuracy", "val_loss")):
            steps, values = series(records, key)
            ax.plot(np.array(steps) / summary["steps_per_epoch"], values, marker="o", markersize=3, label=summary["pairing"])
    if ceiling is not None:
        axes[0].axhline(ceiling, color="grey", linestyle="--", label="labeler agreement")
    for ax, title in zip(axes, ("held-out pairwise accuracy", "held-out ranking loss")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("reward model: a prompt's comparisons in one batch element vs shuffled pairs")
    fig.tight_layout()
    fig.savefig(Path(out_dir) / "pairing.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------
# command line


def add_parser(subparsers):
    p = subparsers.add_parser(
        "reward",
        help="train the reward model on rankings of the SFT model's answers",
        description="Sample K = 4..9 answers per RM prompt from the SFT model, have the toy world's labelers "
        "rank them (or read --comparisons), and train a reward model -- the SFT transformer with a scalar head -- "
        "on the ranking loss -1/C(K,2) sum log sigmoid(r_better - r_worse), one epoch, each prompt's ranking "
        "one batch element. Then shift its bias so demonstrations score 0. Writes OUT/checkpoint/, "
        "OUT/comparisons*.jsonl, OUT/metrics.jsonl, OUT/accuracy.png, OUT/report.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = RewardConfig()
    p.add_argument("--init", type=Path, required=True, help="the SFT checkpoint (or a run directory holding checkpoint/)")
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    data = p.add_argument_group("data")
    data.add_argument("--data", default=d.data, help="folder with world.json, rm_prompts.jsonl and sft.jsonl")
    data.add_argument("--prompts", default=None, help="RM prompts to sample answers for; if not given, DATA/rm_prompts.jsonl")
    data.add_argument("--comparisons", default=None,
                      help="train on these rankings (JSONL: prompt, responses best first, optional finished) instead of sampling")
    data.add_argument("--held-out-comparisons", default=None,
                      help="held-out rankings to measure accuracy on; if not given, --val-fraction of --comparisons' prompts")
    data.add_argument("--demos", default=None, help="demonstrations that should score 0 on average; if not given, DATA/sft.jsonl")
    data.add_argument("--n-demos", type=positive_int, default=d.n_demos, help="how many demonstrations (the first ones)")
    data.add_argument("--max-prompts", type=positive_int, default=d.max_prompts,
                      help=f"use a random subset of this many RM prompts, or of --comparisons' rankings; "
                      f"if not given, {SAMPLED_PROMPTS} prompts when sampling, all rankings of a file")
    data.add_argument("--val-fraction", type=share, default=d.val_fraction,
                      help="share of prompts ranked by the held-out labeler and kept out of training")
    data.add_argument("--k-min", type=positive_int, default=d.k_min, help="fewest answers per prompt")
    data.add_argument("--k-max", type=positive_int, default=d.k_max, help="most answers per prompt")
    data.add_argument("--max-new-tokens", type=positive_int, default=d.max_new_tokens, help="answers longer than this are cut off")
    data.add_argument("--temperature", type=positive_float, default=d.temperature, help="sampling temperature for the answers")
    how = p.add_argument_group("training")
    how.add_argument("--epochs", type=positive_int, default=d.epochs, help="passes over the rankings (InstructGPT: 1; more overfits)")
    how.add_argument("--shuffle-pairs", action="store_true",
                     help="every comparison an independent, shuffled example instead of each prompt's ranking one batch element")
    how.add_argument("--compare-pairing", action="store_true",
                     help="train both ways on the same rankings (OUT/grouped, OUT/shuffled) and plot OUT/pairing.png")
    how.add_argument("--eval-train-prompts", type=positive_int, default=d.eval_train_prompts,
                     help="training rankings re-scored at each evaluation for the training-accuracy curve")
    add_train_args(p, **asdict(d.train))
    p.add_argument("--seed", type=non_negative_int, default=d.seed)
    p.epilog = ("--batch-size counts prompts (whole rankings) per step; --steps 0 means as many as --epochs take. "
                "The checkpoint is written once, after training and the bias shift.")
    p.set_defaults(func=run)


def run(args):
    config = RewardConfig(
        data=args.data, prompts=args.prompts, comparisons=args.comparisons, held_out_comparisons=args.held_out_comparisons,
        demos=args.demos, max_prompts=args.max_prompts, val_fraction=args.val_fraction, k_min=args.k_min,
        k_max=args.k_max, max_new_tokens=args.max_new_tokens, temperature=args.temperature, n_demos=args.n_demos,
        shuffle_pairs=args.shuffle_pairs, epochs=args.epochs, eval_train_prompts=args.eval_train_prompts,
        train=train_settings_from_args(args), seed=args.seed,
    )
    if args.compare_pairing:
        summary = compare_pairing(args.init, args.out, config)
        for name in ("grouped", "shuffled"):
            print_summary(summary[name])
        print(f"{summary['wall_seconds']:.1f} s   plot: {args.out / 'pairing.png'}")
    else:
        summary = reward(args.init, args.out, config)
        print_summary(summary)
        print(f"{summary['wall_seconds']:.1f} s   checkpoint: {summary['checkpoint']}   report: {args.out / 'report.json'}")


def print_summary(s):
    agreement = "" if s["labeler_agreement"] is None else f", labeler agreement {s['labeler_agreement']:.1%}"
    gold = "" if s["val_gold_accuracy"] is None else f", held-out vs gold score {s['val_gold_accuracy']:.1%}"
    print(f"{s['pairing']}: pairwise accuracy train {s['train_accuracy']:.1%} ({s['train_pairs']} pairs), "
          f"held-out {s['val_accuracy']:.1%} ({s['val_pairs']} pairs){agreement}{gold}; "
          f"{s['steps']} steps; demonstrations scored {s['demo_mean_before']:+.3f} before the bias shift")
    if s.get("val_best_of_k"):
        b = s["val_best_of_k"]
        print(f"gold score of the answer it picks among each held-out prompt's K: {b['rm_pick']:.3f} "
              f"(a random one {b['random']:.3f}, the best one {b['best']:.3f})")
