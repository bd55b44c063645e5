"""The article's two LSTM limitations, measured: "Jacob ___ reading" as a toy task.

The article (section "Large Language Models") fills the blank in "Jacob ___ reading":
"reading" is usually said with "hates", but Jacob is an avid reader, so a good model
weights "Jacob" (what it knows about him) above the nearby "reading" and says
"loves". It blames the LSTM on two counts: it cannot weight some words more than
others (limitation 1), and it reads one step at a time through a fixed-size state,
so what was said long ago fades (limitation 2). This module builds that situation
and measures both models on it.

A sequence is some filler text holding a statement about a person and an activity
(the fact), then a question about them:

    the rain fell ... jacob loves reading . old street was long ... near river reading , jacob [loves]
                      ^^^^^^^^^^^^^^^^^^^                                      ^^^^^^^^^^^^^^^^ ^^^^^^^
                      the fact: its verb is D tokens before the answer         the query        the decisive word

Each activity has a usual verb ("reading" -> "hates", as in the article), and each
statement agrees with it with probability `prior` (0.75): in this text, reading is
mostly hated. The decisive word is the verb of the statement about the person asked
about, D tokens back (with --n-facts > 1, among statements about other people, before
or after it). A model that goes by the nearby words (the activity's usual verb) is
right when the fact agrees with them and wrong when it does not. So for
each distance D we report the decisive word's accuracy on the *counter-prior* cases
(Jacob the avid reader: 0% for a model that follows the nearby word, 50% for a coin)
and on the cases where the fact agrees with the nearby word.

    minirlhf longrange --out runs/longrange

trains a GPT and an LSTM with the same parameter budget (the LSTM's hidden size is
chosen to match), the same batches, steps, learning-rate schedule and seed, to predict
the decisive word (the filler is random: predicting it teaches nothing, and as 63 of
every 64 targets it would drown the one that matters; --lm-loss trains on every next
token instead), reports the wall time of a training step of each, and writes
OUT/table.md, OUT/results.json, OUT/accuracy_vs_distance.png and each model's
OUT/<arch>/metrics.jsonl. The LSTM's learning rate is its best of {1e-3, 3e-3, 1e-2}
(--lstm-lr); with the same budget the GPT solves the task at every distance within a few
hundred steps, the LSTM gets no further than the usual verb (it catches up after about
2250 steps at distances up to 64: the gap measured is how much sooner attention finds the fact).
"""
import argparse
import json
import shlex
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from minirlhf.errors import MinirlhfError
from minirlhf.flags import non_negative_float, non_negative_int, unit_float
from minirlhf.lstm import LSTMLanguageModel, matched_lstm_config
from minirlhf.metrics import MetricsLog
from minirlhf.model import GPT, GPTConfig
from minirlhf.plots import plot_metrics, plt
from minirlhf.train.loop import TrainSettings, add_train_args, run_loop, train_settings_from_args

# The activities and the verb each is usually said with (the article's "reading" -> "hates").
USUAL_VERB = {
    "reading": "hates", "running": "loves", "cooking": "hates", "singing": "loves",
    "swimming": "hates", "painting": "loves", "dancing": "hates", "hiking": "loves",
}  # fmt: skip
NAMES = ("jacob", "maria", "ken", "aiko", "omar", "lena", "yuki", "paul")
VERBS = ("loves", "hates")
FILLER = (
    "the a day was long and rain fell on town people walked home it quiet later then some bird sang near river old street"
).split()
PAD = "<pad>"
VOCAB = (*NAMES, *VERBS, *USUAL_VERB, *FILLER, ".", ",", PAD)
ID = {w: i for i, w in enumerate(VOCAB)}
ACTIVITIES = tuple(USUAL_VERB)
STATEMENT = 4  # tokens: name verb activity .
QUERY = 3  # tokens: activity , name
MIN_DISTANCE = STATEMENT + QUERY - 1  # the fact right before the query: its verb is 6 tokens before the answer


@dataclass
class Batch:
    """Sequences of one length, with where to read the decisive prediction."""

    idx: np.ndarray  # (B, T) input tokens
    targets: np.ndarray  # (B, T) next tokens
    query: np.ndarray  # (B,) position whose next token is the decisive word (the query's name)
    answer: np.ndarray  # (B,) the decisive word's id (the fact's verb)
    nearby: np.ndarray  # (B,) the verb the query's activity word usually comes with


def place_statements(rng, length, n):
    """Start positions of n non-overlapping statements inside a filler stretch of `length`
    tokens, uniformly among all arrangements: shuffle n blocks among the filler tokens."""
    items = length - (STATEMENT - 1) * n  # each block counts as one item among the filler tokens
    is_block = np.zeros(items, dtype=bool)
    is_block[rng.choice(items, size=n, replace=False)] = True
    return [i + (STATEMENT - 1) * k for k, i in enumerate(np.flatnonzero(is_block))]


def make_sequence(rng, length, distance, counter, n_facts=3, prior=0.75):
    """Token ids of one sequence of `length` tokens, ending with the decisive word, whose
    fact's verb is `distance` tokens before it; n_facts - 1 other statements (other
    people, same activity, verbs agreeing with the usual one with probability `prior`)
    sit in the filler before and after it. `counter`: the fact contradicts the activity's
    usual verb. Returns (ids, id of the usual verb)."""
    start = length - 2 - distance  # where the fact's statement begins
    before, after = start, length - QUERY - 1 - (start + STATEMENT)  # filler stretches around it
    others = n_facts - 1
    splits = [k for k in range(others + 1) if k * STATEMENT <= before and 0 <= (others - k) * STATEMENT <= after]
    if not 1 <= n_facts <= len(NAMES) or distance < MIN_DISTANCE or not splits:
        raise MinirlhfError(f"a sequence of {length} tokens has no room for {n_facts} statements with one at distance {distance}")
    names = [NAMES[i] for i in rng.choice(len(NAMES), size=n_facts, replace=False)]
    activity = ACTIVITIES[rng.integers(len(ACTIVITIES))]
    usual = USUAL_VERB[activity]
    unusual = VERBS[1 - VERBS.index(usual)]
    n_before = splits[rng.integers(len(splits))]
    words = [FILLER[i] for i in rng.integers(len(FILLER), size=length)]
    starts = place_statements(rng, before, n_before) + [start + STATEMENT + s for s in place_statements(rng, after, others - n_before)]
    for name, s in zip(names[1:], starts):
        words[s : s + STATEMENT] = [name, usual if rng.random() < prior else unusual, activity, "."]
    fact = [names[0], unusual if counter else usual, activity, "."]
    words[start : start + STATEMENT] = fact
    words[-QUERY - 1 :] = [activity, ",", names[0], fact[1]]
    return [ID[w] for w in words], ID[usual]


def make_batch(rng, length, distances, counter, n_facts=3, prior=0.75):
    """One sequence per entry of `distances` (ints) and `counter` (bools)."""
    seqs = [make_sequence(rng, length, int(d), bool(c), n_facts, prior) for d, c in zip(distances, counter)]
    tokens = np.array([s for s, _ in seqs], dtype=np.int64)  # (B, length)
    B = len(seqs)
    return Batch(tokens[:, :-1], tokens[:, 1:], np.full(B, length - 2), tokens[:, -1], np.array([u for _, u in seqs]))


def decisive_targets(batch):
    """The batch's targets with every position but the decisive word ignored (-1)."""
    targets = np.full_like(batch.targets, -1)  # (B, T)
    targets[np.arange(len(batch.query)), batch.query] = batch.answer
    return targets


def training_batch(rng, batch_size, max_distance, n_facts, prior):
    """Distances uniform in [MIN_DISTANCE, max_distance]; the fact goes against the
    nearby word with probability 1 - prior, as every statement in the text does."""
    distances = rng.integers(MIN_DISTANCE, max_distance + 1, size=batch_size)
    return make_batch(rng, max_distance + 2, distances, rng.random(batch_size) >= prior, n_facts, prior)


def evaluation_batch(distance, size, seed, max_distance, n_facts, prior):
    """`size` sequences at one distance, half of them counter-prior (fixed by `seed`)."""
    counter = np.arange(size) % 2 == 0
    return make_batch(np.random.default_rng(seed), max_distance + 2, np.full(size, distance), counter, n_facts, prior)


def decisive_scores(model, batch):
    """(accuracy on counter-prior cases, accuracy on cases where the fact agrees with the
    nearby word, share of counter-prior cases answered with the nearby word's verb)."""
    logits = model.forward(batch.idx)  # (B, T, V)
    predicted = logits[np.arange(len(batch.query)), batch.query].argmax(axis=-1)
    counter = batch.answer != batch.nearby
    correct = predicted == batch.answer
    return float(correct[counter].mean()), float(correct[~counter].mean()), float((predicted == batch.nearby)[counter].mean())


# ----------------------------------------------------------------------------
# the experiment


@dataclass
class LongRangeConfig:
    distances: tuple = (8, 16, 32, 64, 96)  # where accuracy is measured
    max_distance: int = 96  # training distances are uniform in [8, max_distance]
    prior: float = 0.75  # P(a statement agrees with the activity's usual verb) in training
    # Statements per sequence: the fact asked about and n_facts - 1 about other people. One is the
    # article's sentence; more turn it into associative recall (find *this* name, read the next
    # word), which a 2-layer GPT solves only once it has grown an induction circuit, many more
    # steps than this default budget (3 facts, 1500 steps: 25-30% on the counter-prior cases).
    n_facts: int = 1
    lm_loss: bool = False  # train on every next token (mostly random filler), not only on the decisive word
    gpt: dict = field(default_factory=lambda: dict(n_layer=2, n_head=4, n_embd=64))
    lstm_layers: int = 1
    lstm_lr: float = 1e-3  # the LSTM's peak learning rate (its best of 1e-3, 3e-3, 1e-2); 0: the GPT's (train.lr)
    train: TrainSettings = field(default_factory=lambda: TrainSettings(steps=1000, batch_size=32, lr=3e-3, warmup=100,
                                                                       min_lr=3e-4, weight_decay=0.0, eval_every=250))
    eval_size: int = 256
    seed: int = 0

    def check(self):
        if not 0.0 <= self.prior <= 1.0:
            raise MinirlhfError(f"prior must be in [0, 1], got {self.prior}")
        if self.max_distance < MIN_DISTANCE:
            raise MinirlhfError(f"max distance {self.max_distance} is below the shortest sequence's {MIN_DISTANCE}")
        bad = [d for d in self.distances if not MIN_DISTANCE <= d <= self.max_distance]
        if bad or not self.distances:
            raise MinirlhfError(f"distances must be between {MIN_DISTANCE} and --max-distance {self.max_distance}, got {bad or 'none'}")
        if not 1 <= self.n_facts <= len(NAMES) or (self.n_facts - 1) * STATEMENT > self.max_distance - MIN_DISTANCE:
            raise MinirlhfError(f"{self.n_facts} statements do not fit in sequences of distance up to {self.max_distance} "
                                f"(at most {len(NAMES)} people, {STATEMENT} tokens each)")
        if self.lstm_lr < 0:
            raise MinirlhfError(f"lstm lr must be positive (or 0: the GPT's), got {self.lstm_lr}")
        if self.eval_size < 2:
            raise MinirlhfError(f"eval size must be at least 2 (one counter-prior case, one not), got {self.eval_size}")


def build_models(config):
    """The GPT, and the LSTM whose hidden size brings its parameter count closest to the GPT's."""
    block_size = config.max_distance + 1
    gpt = GPT(GPTConfig(vocab_size=len(VOCAB), block_size=block_size, **config.gpt), seed=config.seed)
    lstm_cfg = matched_lstm_config(gpt.n_params, len(VOCAB), block_size, n_layer=config.lstm_layers)
    return {"gpt": gpt, "lstm": LSTMLanguageModel(lstm_cfg, seed=config.seed)}


def train_one(model, config, settings, eval_sets, out_dir, progress):
    """Train `model` on the task; log decisive accuracies per distance. Returns the mean
    wall time of a training step's forward and backward, in seconds."""
    rng = np.random.default_rng(config.seed)  # the same batches for every architecture
    optimizer = settings.make_optimizer(model.params)
    compute = []

    def step_fn(step):
        batch = training_batch(rng, settings.batch_size, config.max_distance, config.n_facts, config.prior)
        targets = batch.targets if config.lm_loss else decisive_targets(batch)
        t0 = time.perf_counter()
        loss, grads = model.loss_and_grads(batch.idx, targets)
        compute.append(time.perf_counter() - t0)
        return loss, grads, int((targets != -1).sum())

    def eval_fn():
        return {f"counter_D{d}": decisive_scores(model, batch)[0] for d, batch in eval_sets.items()}

    with MetricsLog(out_dir / "metrics.jsonl") as metrics:
        run_loop(settings, optimizer, step_fn, start_step=0, eval_fn=eval_fn, save_fn=lambda steps: None,
                 metrics=metrics, desc=type(model).__name__, progress=progress)
    plot_metrics(out_dir / "metrics.jsonl", out_dir / "training.png",
                 {"loss": ["loss"], "decisive accuracy, counter-prior": [f"counter_D{d}" for d in eval_sets]})
    return float(np.mean(compute))


def run_longrange(out_dir, config=None, progress=True, command=None):
    """Train both architectures, measure them, write the table and the plot. Returns results."""
    config = config or LongRangeConfig()
    config.check()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MinirlhfError(f"{out_dir}: exists and is not a directory")
    eval_sets = {d: evaluation_batch(d, config.eval_size, config.seed + 1000 + d, config.max_distance, config.n_facts, config.prior)
                 for d in config.distances}
    results = {"config": {**asdict(config), "train": asdict(config.train)}, "models": {}}
    for arch, model in build_models(config).items():
        t0 = time.perf_counter()
        lr = config.lstm_lr if arch == "lstm" and config.lstm_lr else config.train.lr
        settings = replace(config.train, lr=lr, min_lr=config.train.min_lr * lr / config.train.lr)  # same schedule shape
        step_seconds = train_one(model, config, settings, eval_sets, out_dir / arch, progress)
        scores = {d: decisive_scores(model, batch) for d, batch in eval_sets.items()}
        results["models"][arch] = {
            "n_params": model.n_params,
            "model": model.config.to_dict(),
            "lr": lr,
            "wall_seconds": time.perf_counter() - t0,
            "step_seconds": step_seconds,
            "by_distance": {str(d): dict(zip(("counter_prior", "prior_agrees", "follows_nearby"), s)) for d, s in scores.items()},
        }
    results["command"] = command
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "table.md").write_text(results_table(results) + "\n")
    plot_accuracy(results, out_dir / "accuracy_vs_distance.png")
    return results


def results_table(results):
    """Markdown: decisive-word accuracy per distance, both models, and how it was made."""
    gpt, lstm = results["models"]["gpt"], results["models"]["lstm"]
    train = results["config"]["train"]
    lrs = f"peak lr {gpt['lr']:g}" + ("" if lstm["lr"] == gpt["lr"] else f" (GPT) and {lstm['lr']:g} (LSTM)")
    lines = [
        f"Decisive-word accuracy (GPT {gpt['n_params']:,} parameters, LSTM {lstm['n_params']:,}; "
        f"{train['steps']} steps of {train['batch_size']} sequences each, same batches, schedule and seed; {lrs}).",
        "Counter-prior: the fact contradicts the nearby word (Jacob the avid reader); following the nearby word scores 0%.",
        "",
        "| distance D | GPT, counter-prior | LSTM, counter-prior | GPT, fact agrees | LSTM, fact agrees |",
        "|---:|---:|---:|---:|---:|",
    ]
    for d in gpt["by_distance"]:
        g, s = gpt["by_distance"][d], lstm["by_distance"][d]
        lines.append(f"| {d} | {g['counter_prior']:.0%} | {s['counter_prior']:.0%} | {g['prior_agrees']:.0%} | {s['prior_agrees']:.0%} |")
    lines += ["", f"Wall time of a training step (forward + backward, {train['batch_size']} sequences of "
                  f"{results['config']['max_distance'] + 1} tokens): GPT {gpt['step_seconds'] * 1e3:.0f} ms, "
                  f"LSTM {lstm['step_seconds'] * 1e3:.0f} ms."]
    if results.get("command"):
        lines += ["", f"Made by: `{results['command']}`"]
    return "\n".join(lines)


def plot_accuracy(results, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    for arch, color in (("gpt", "tab:blue"), ("lstm", "tab:red")):
        by_d = results["models"][arch]["by_distance"]
        ds = [int(d) for d in by_d]
        ax.plot(ds, [by_d[str(d)]["counter_prior"] for d in ds], "o-", color=color, label=f"{arch.upper()}, counter-prior")
        ax.plot(ds, [by_d[str(d)]["prior_agrees"] for d in ds], "s--", color=color, alpha=0.5, label=f"{arch.upper()}, fact agrees")
    ax.axhline(0.5, color="gray", lw=0.8, ls=":", label="coin flip")
    ax.set_xlabel("distance D from the fact to the decisive word (tokens)")
    ax.set_ylabel("decisive-word accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("Jacob ___ reading: transformer vs LSTM, same parameters")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------
# command line


def distance_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    return tuple(values)


def command_line(out, config):
    """The `minirlhf longrange` command that reruns `config` (flags that differ from the defaults)."""
    default, words = LongRangeConfig(), ["minirlhf", "longrange", "--out", str(out)]
    values = {**asdict(config), **config.gpt, **asdict(config.train)}
    defaults = {**asdict(default), **default.gpt, **asdict(default.train)}
    for name, value in values.items():
        if name not in ("gpt", "train") and value != defaults[name]:
            flag = "--" + name.replace("_", "-")
            words += [flag] if value is True else [flag, ",".join(map(str, value)) if name == "distances" else str(value)]
    return shlex.join(words)


def add_parser(subparsers):
    defaults = LongRangeConfig()
    p = subparsers.add_parser(
        "longrange",
        help="the article's LSTM limitations, measured: transformer vs LSTM on 'Jacob ___ reading'",
        description="Train a GPT and an LSTM of the same parameter count on the same toy long-range task (a fact "
        "stated D tokens before the word it decides, with a nearby word that suggests the opposite), and report "
        "the decisive word's accuracy per distance. Writes OUT/table.md, OUT/results.json, "
        "OUT/accuracy_vs_distance.png and OUT/<arch>/metrics.jsonl.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="directory to write")
    p.add_argument("--distances", type=distance_list, default=defaults.distances, help="distances to measure, e.g. 8,32,96")
    p.add_argument("--max-distance", type=int, default=defaults.max_distance, help="longest training distance")
    p.add_argument("--prior", type=unit_float, default=defaults.prior, help="how often a statement agrees with its activity's usual verb")
    p.add_argument("--n-facts", type=int, default=defaults.n_facts, help="statements per sequence (about different people)")
    p.add_argument("--lm-loss", action="store_true", help="train on every next token, not only the decisive word")
    for name, value in defaults.gpt.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=value, help=f"the GPT's {name}")
    p.add_argument("--lstm-layers", type=int, default=defaults.lstm_layers, help="LSTM layers (its hidden size is chosen to match the GPT's parameters)")
    p.add_argument("--lstm-lr", type=non_negative_float, default=defaults.lstm_lr, help="the LSTM's peak lr (min lr scaled alike); 0: --lr")
    add_train_args(p, **asdict(defaults.train))
    p.add_argument("--eval-size", type=int, default=defaults.eval_size, help="sequences per distance in the measurement")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.set_defaults(func=run)


def run(args):
    config = LongRangeConfig(
        distances=args.distances, max_distance=args.max_distance, prior=args.prior, n_facts=args.n_facts,
        lm_loss=args.lm_loss, gpt={k: getattr(args, k) for k in LongRangeConfig().gpt}, lstm_layers=args.lstm_layers,
        lstm_lr=args.lstm_lr,
        train=train_settings_from_args(args), eval_size=args.eval_size, seed=args.seed,
    )  # fmt: skip
    results = run_longrange(args.out, config, command=command_line(args.out, config))
    print(results_table(results))
    print(f"\nwritten: {args.out / 'table.md'}, {args.out / 'results.json'}, {args.out / 'accuracy_vs_distance.png'}")
