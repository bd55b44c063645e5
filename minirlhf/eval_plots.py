"""The evaluation's pictures: bars with error bars, and reward over-optimisation.

`plot_eval` draws the article's comparisons from an evaluation result (see
`minirlhf.evaluate.evaluate_models`): win rates and rates with their 95% Wilson
intervals, the gold score with its standard error. `plot_overoptimization` draws, from
a PPO run's metrics.jsonl, the reward-model score and the gold score against the KL
to the SFT model, and gold against RM score: Gao et al.'s (2022) picture, where the
proxy keeps rising while the true quality rises, peaks and falls.
"""
import numpy as np

from minirlhf.metrics import read_metrics
from minirlhf.plots import plt

OVEROPTIMIZATION_KEYS = ("rm_reward", "gold_score", "kl")  # logged by PPO once per iteration


def _interval(p):
    """(value, lower, upper) of a {"value", "ci95"} proportion; NaNs if it has none."""
    if p is None or p.get("value") is None:
        return np.nan, np.nan, np.nan
    return p["value"], p["ci95"][0], p["ci95"][1]


def _mean_se(m):
    return m["mean"], m["mean"] - m["stderr"], m["mean"] + m["stderr"]


def grouped_bars(path, groups, series, title, ylabel, ylim=None, hline=None, hatched=()):
    """Bars with error bars: one cluster per group, one bar per series in it.

    series: {label: [(value, lower, upper) per group]}; NaN values draw no bar;
    the series named in `hatched` (a reference) are drawn hatched."""
    n = len(series)
    width = 0.8 / n
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(groups) * max(1, n / 2) + 1.5), 3.8))
    for i, (label, triples) in enumerate(series.items()):
        v, lo, hi = (np.array(t, dtype=np.float64) for t in zip(*triples))
        errors = np.maximum(0.0, [v - lo, hi - v])  # rounding can put an end a hair past the value
        hatch = "//" if label in hatched else None
        ax.bar(x + (i - (n - 1) / 2) * width, v, width, yerr=errors, capsize=3, label=label,
               hatch=hatch, alpha=0.85)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    if n > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_eval(result, out_dir):
    """win_rate.png, gold_score.png, truthfulness.png, toxicity.png -> their paths."""
    details = result["details"]
    names = list(details)
    hatched = (result["settings"]["reference"],)
    plots = []
    if result["win_rate"]:
        keys = list(result["win_rate"])
        plots.append(grouped_bars(
            out_dir / "win_rate.png", [k.replace("_vs_", "\nvs ") for k in keys],
            {"win rate": [_interval(result["win_rate"][k]) for k in keys]},
            "helpfulness: held-out labeler's preference (95% CI)", "share of prompts won",
            ylim=(0, 1), hline=0.5))
    plots.append(grouped_bars(
        out_dir / "gold_score.png", names, {"gold score": [_mean_se(details[n]["helpfulness"]["gold_score"]) for n in names]},
        "mean gold score on helpfulness prompts (± s.e.)", "gold score (1 = ideal)", ylim=(-1, 1.05), hline=0.0,
        hatched=hatched))
    plots.append(grouped_bars(
        out_dir / "truthfulness.png", ["truthful and informative", "states a falsehood", "states the rumour"],
        {n: [_interval(details[n]["truthfulness"][k]) for k in ("truthful", "false", "rumour")] for n in names},
        "truthfulness: questions whose rumoured answer is false (95% CI)", "share of answers", ylim=(0, 1),
        hatched=hatched))
    conditions = list(result["toxicity"])
    plots.append(grouped_bars(
        out_dir / "toxicity.png", conditions,
        {n: [_interval(details[n]["toxicity"][c]) for c in conditions] for n in names},
        "toxic completions by instruction (95% CI)", "share of toxic answers", ylim=(0, 1), hatched=hatched))
    return plots


def overoptimization_records(metrics_path):
    """The metrics.jsonl records that hold all of rm_reward, gold_score and kl."""
    return [r for r in read_metrics(metrics_path) if all(r.get(k) is not None for k in OVEROPTIMIZATION_KEYS)]


def plot_overoptimization(metrics_path, out_path, name="ppo"):
    """Left: RM score and gold score against KL(policy || SFT); right: gold score
    against RM score, coloured by iteration. Returns out_path, or None when the
    metrics have no PPO records (e.g. a pretraining run)."""
    records = overoptimization_records(metrics_path)
    if not records:
        return None
    kl, rm, gold = (np.array([r[k] for r in records], dtype=np.float64) for k in ("kl", "rm_reward", "gold_score"))
    steps = np.array([r.get("step", i) for i, r in enumerate(records)])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(kl, rm, marker="o", markersize=3, color="tab:blue", label="reward model score")
    left.set_xlabel("KL(policy || SFT), nats per answer")
    left.set_ylabel("reward model score", color="tab:blue")
    twin = left.twinx()
    twin.plot(kl, gold, marker="s", markersize=3, color="tab:orange", label="gold score")
    twin.set_ylabel("gold score (labeler)", color="tab:orange")
    left.set_title("reward against KL")
    left.grid(alpha=0.3)
    right.plot(rm, gold, color="grey", linewidth=0.8, alpha=0.6)
    dots = right.scatter(rm, gold, c=steps, cmap="viridis", s=14, zorder=3)
    fig.colorbar(dots, ax=right, label="PPO step")
    right.set_xlabel("reward model score (proxy)")
    right.set_ylabel("gold score (true)")
    right.set_title("gold against proxy reward")
    right.grid(alpha=0.3)
    fig.suptitle(f"{name}: reward over-optimisation (Gao et al. 2022)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
