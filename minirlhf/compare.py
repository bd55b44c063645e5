"""`minirlhf compare RUN...`: one Markdown table of the headline figures of several
pipeline runs (seeds, or step-3 methods), read from their report.json files.

    minirlhf compare runs/demo-seed0 runs/demo-seed1 runs/demo-seed2

The README's tables of three seeds and of PPO vs DPO vs GRPO are this command's output,
so anyone can rerun the runs and check them. The last rows are the mean over the runs
(and, for win rates, how many runs meet a floor).
"""
from pathlib import Path

import numpy as np

from minirlhf.datasets import json_type, read_json
from minirlhf.errors import MinirlhfError

COLUMNS = ("run", "method", "seed", "RLHF vs SFT", "RLHF vs base", "SFT vs base", "truthful base/SFT/RLHF",
           "toxic (respectful) base/SFT/RLHF", "gold base/SFT/RLHF", "RM held-out acc (labelers agree)", "KL",
           "RLHF minutes", "total minutes")


NUMBER = (int, float)
_KINDS = {dict: "an object", list: "a list", str: "a string", NUMBER: "a number"}


def read_report(run):
    """RUN/report.json, checked to hold every figure the table reads (see check_report)."""
    path = Path(run) / "report.json"
    if not path.is_file():
        raise MinirlhfError(f"{path}: no such file (is {run} a finished pipeline run?)")
    report = read_json(path)
    check_report(path, report)
    return report


def _field(report, path, keys, kind):
    """report[keys[0]][keys[1]]..., which must be of `kind`; an error names the file and the
    first key that is missing or of the wrong type ("eval.win_rate.ppo_vs_sft.value")."""
    value = report
    for depth, key in enumerate(keys, start=1):
        dotted = ".".join(keys[:depth])
        if key not in value:
            raise MinirlhfError(f"{path}: no '{dotted}' (a pipeline report has it; is this a finished pipeline run?)")
        value, want = value[key], kind if depth == len(keys) else dict
        if not isinstance(value, want) or isinstance(value, bool):
            raise MinirlhfError(f"{path}: '{dotted}' must be {_KINDS[want]}, got {json_type(value)}")
    return value


def _win_rate_names(step3):
    """The three pairs of the table's win-rate columns, in COLUMNS' order."""
    return (f"{step3}_vs_sft", f"{step3}_vs_base", "sft_vs_base")


def check_report(path, report):
    """Refuse, naming the file and the key, a report.json that is not a finished pipeline's:
    the table reads its figures without further checks."""
    if not isinstance(report, dict):
        raise MinirlhfError(f"{path}: not a pipeline report (a JSON object), got {json_type(report)}")
    if set(report) == {"eval"}:
        raise MinirlhfError(f"{path}: this is a `minirlhf eval` report; compare reads the pipeline's report.json "
                            "in the run folder")
    win_rate = _field(report, path, ("eval", "win_rate"), dict)
    step3 = _step3(report)
    if step3 is None:
        raise MinirlhfError(f"{path}: 'eval.win_rate' must compare one RLHF model with sft and base "
                            f"(ppo_vs_sft, ppo_vs_base, sft_vs_base), got {sorted(win_rate) or 'nothing'}")
    for name in _win_rate_names(step3):
        _field(report, path, ("eval", "win_rate", name, "value"), NUMBER)
        ci95 = _field(report, path, ("eval", "win_rate", name, "ci95"), list)
        if len(ci95) != 2 or not all(isinstance(v, NUMBER) and not isinstance(v, bool) for v in ci95):
            raise MinirlhfError(f"{path}: 'eval.win_rate.{name}.ci95' must be two numbers, got {ci95!r}")
    for group in (("truthfulness",), ("toxicity", "respectful"), ("gold_score",)):
        for model in ("base", "sft", step3):
            _field(report, path, ("eval", *group, model), NUMBER)
    for keys in (("ppo", "kl_final"), ("wall_seconds", "ppo"), ("wall_seconds", "total"), ("reward", "val_accuracy")):
        _field(report, path, keys, NUMBER)
    if "method" in report["ppo"]:
        _field(report, path, ("ppo", "method"), str)
    if report["reward"].get("labeler_agreement") is not None:
        _field(report, path, ("reward", "labeler_agreement"), NUMBER)


def _step3(report):
    """The name the step-3 model has in the evaluation (ppo, dpo or grpo): the one model
    other than sft that comes first in a win-rate pair ("ppo_vs_sft"); None if not one."""
    names = {pair.split("_vs_")[0] for pair in report["eval"]["win_rate"]} - {"sft"}
    return names.pop() if len(names) == 1 else None


def _win_rates(report):
    """The win-rate entries of the table's columns (RLHF vs SFT, RLHF vs base, SFT vs base)."""
    return [report["eval"]["win_rate"][name] for name in _win_rate_names(_step3(report))]


def _win(wr):
    lo, hi = wr["ci95"]
    return f"{wr['value']:.0%} [{lo:.0%}, {hi:.0%}]"


def _rm_accuracy(rm):
    agree = rm.get("labeler_agreement")
    return f"{rm['val_accuracy']:.0%}" + ("" if agree is None else f" ({agree:.0%})")


def figures(report):
    """The numbers a row shows, read once: {column group: value or (base, SFT, RLHF)}."""
    ev, names = report["eval"], ("base", "sft", _step3(report))
    return {
        "truthful": [ev["truthfulness"][n] for n in names],
        "toxic": [ev["toxicity"]["respectful"][n] for n in names],
        "gold": [ev["gold_score"][n] for n in names],
        "kl": report["ppo"]["kl_final"],
        "rl_minutes": report["wall_seconds"]["ppo"] / 60,
        "total_minutes": report["wall_seconds"]["total"] / 60,
    }


def _cells(f):
    """The columns after the win rates and the RM accuracy's place, formatted."""
    return [" / ".join(f"{v:.0%}" for v in f["truthful"]), " / ".join(f"{v:.0%}" for v in f["toxic"]),
            " / ".join(f"{v:.2f}" for v in f["gold"])]


def _tail(f):
    return [f"{f['kl']:.2f}", f"{f['rl_minutes']:.1f}", f"{f['total_minutes']:.1f}"]


def row(run, report):
    f = figures(report)
    return [Path(run).name, report["ppo"].get("method", _step3(report)), str(report.get("seed", "")),
            *(_win(w) for w in _win_rates(report)),
            *_cells(f), _rm_accuracy(report["reward"]), *_tail(f)]


def mean_row(reports):
    all_figures = [figures(r) for r in reports]
    mean = {key: np.mean([f[key] for f in all_figures], axis=0) for key in all_figures[0]}
    wins = np.mean([[w["value"] for w in _win_rates(r)] for r in reports], axis=0)
    return ["mean", "", "", *(f"{w:.0%}" for w in wins), *_cells(mean),
            f"{np.mean([r['reward']['val_accuracy'] for r in reports]):.0%}", *_tail(mean)]


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
