"""`minirlhf compare RUN...`: one Markdown table of the headline figures of several
pipeline runs (seeds, or step-3 methods), read from their report.json files.

    minirlhf compare runs/demo-seed0 runs/demo-seed1 runs/demo-seed2

The README's tables of three seeds and of PPO vs DPO vs GRPO are this command's output,
so anyone can rerun the runs and check them. The last rows are the mean over the runs
(and, for win rates, how many runs meet a floor).
"""
import json
from pathlib import Path

import numpy as np

from minirlhf.errors import MinirlhfError

COLUMNS = ("run", "method", "seed", "RLHF vs SFT", "RLHF vs base", "SFT vs base", "truthful base/SFT/RLHF",
           "toxic (respectful) base/SFT/RLHF", "gold base/SFT/RLHF", "RM held-out acc (labelers agree)", "KL",
           "RLHF minutes", "total minutes")


def read_report(run):
    path = Path(run) / "report.json"
    if not path.is_file():
        raise MinirlhfError(f"{path}: no such file (is {run} a finished pipeline run?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MinirlhfError(f"{path}: not valid JSON ({e})") from None


def _step3(report):
    """The name the step-3 model has in the evaluation (ppo, dpo or grpo)."""
    return next(iter(report["eval"]["win_rate"])).split("_vs_")[0]


def _win(wr):
    lo, hi = wr["ci95"]
    return f"{wr['value']:.0%} [{lo:.0%}, {hi:.0%}]"


def _triple(by_model, names, fmt):
    return " / ".join(fmt.format(by_model[n]) for n in names)


def _rm_accuracy(rm):
    agree = rm.get("labeler_agreement")
    return f"{rm['val_accuracy']:.0%}" + ("" if agree is None else f" ({agree:.0%})")


def row(run, report):
    ev, rl = report["eval"], _step3(report)
    names = ("base", "sft", rl)
    wins = list(ev["win_rate"].values())
    return [Path(run).name, report["ppo"].get("method", rl), str(report.get("seed", "")),
            *(_win(w) for w in wins),
            _triple(ev["truthfulness"], names, "{:.0%}"), _triple(ev["toxicity"]["respectful"], names, "{:.0%}"),
            _triple(ev["gold_score"], names, "{:.2f}"), _rm_accuracy(report["reward"]),
            f"{report['ppo']['kl_final']:.2f}", f"{report['wall_seconds']['ppo'] / 60:.1f}",
            f"{report['wall_seconds']['total'] / 60:.1f}"]


def mean_row(reports):
    ev = [r["eval"] for r in reports]
    names = [("base", "sft", _step3(r)) for r in reports]

    def mean(get):
        return float(np.mean([get(e, n) for e, n in zip(ev, names)]))

    wins = [float(np.mean([list(e["win_rate"].values())[i]["value"] for e in ev])) for i in range(3)]
    return ["mean", "", "", *(f"{w:.0%}" for w in wins),
            " / ".join(f"{mean(lambda e, n, i=i: e['truthfulness'][n[i]]):.0%}" for i in range(3)),
            " / ".join(f"{mean(lambda e, n, i=i: e['toxicity']['respectful'][n[i]]):.0%}" for i in range(3)),
            " / ".join(f"{mean(lambda e, n, i=i: e['gold_score'][n[i]]):.2f}" for i in range(3)),
            f"{np.mean([r['reward']['val_accuracy'] for r in reports]):.0%}",
            f"{np.mean([r['ppo']['kl_final'] for r in reports]):.2f}",
            f"{np.mean([r['wall_seconds']['ppo'] for r in reports]) / 60:.1f}",
            f"{np.mean([r['wall_seconds']['total'] for r in reports]) / 60:.1f}"]


def markdown_table(runs):
    reports = [read_report(run) for run in runs]
    rows = [row(run, r) for run, r in zip(runs, reports)]
    if len(reports) > 1:
        rows.append(mean_row(reports))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def add_parser(subparsers):
    p = subparsers.add_parser(
        "compare",
        help="one table of several pipeline runs' headline figures (seeds, methods)",
        description="Read RUN/report.json of each pipeline run and print one Markdown table: win rates "
        "(RLHF is the step-3 model: PPO, DPO or GRPO) with 95%% intervals, truthfulness, toxicity when asked "
        "to be respectful, gold score, the reward model's held-out accuracy, the final KL and the wall time; "
        "with several runs, their mean.",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="pipeline run folders")
    p.set_defaults(func=run)


def run(args):
    print(markdown_table(args.runs))
