"""`minirlhf compare` reads pipeline report.json files: one that is valid JSON but of another
shape (a `minirlhf eval` report, a reward stage's report, a hand-edited one) is refused with
one line naming the file and the key, never a KeyError or a format-code traceback."""
import copy
import json

import pytest

from minirlhf.cli import main

WIN = {"value": 0.5, "ci95": [0.4, 0.6], "n": 10}
PER_MODEL = {"base": 0.25, "sft": 0.5, "dpo": 0.75}
REPORT = {  # the keys compare reads, as a pipeline run with --method dpo writes them
    "seed": 1,
    "wall_seconds": {"ppo": 60.0, "total": 600.0},
    "reward": {"val_accuracy": 0.625, "labeler_agreement": None},
    "ppo": {"kl_final": 1.5, "method": "dpo"},
    "eval": {"win_rate": {"dpo_vs_sft": dict(WIN), "dpo_vs_base": {**WIN, "value": 0.875}, "sft_vs_base": dict(WIN)},
             "truthfulness": dict(PER_MODEL), "toxicity": {"respectful": dict(PER_MODEL)}, "gold_score": dict(PER_MODEL)},
}


def write_run(folder, report):
    folder.mkdir()
    text = report if isinstance(report, (str, bytes)) else json.dumps(report)
    (folder / "report.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    return folder


DELETE = object()


def changed(keys, value):
    """REPORT with report[keys[0]][keys[1]]... set to `value` (or deleted if value is DELETE)."""
    report = copy.deepcopy(REPORT)
    inner = report
    for key in keys[:-1]:
        inner = inner[key]
    if value is DELETE:
        del inner[keys[-1]]
    else:
        inner[keys[-1]] = value
    return report


def test_a_valid_report_makes_a_row_with_the_win_rates_in_column_order(tmp_path, capsys):
    # The win rates are read by name: a report listing them in another order keeps its columns.
    report = changed(("eval", "win_rate"), dict(reversed(list(REPORT["eval"]["win_rate"].items()))))
    assert main(["compare", str(write_run(tmp_path / "a", report))]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("| a | dpo | 1 | 50% [40%, 60%] | 88% [40%, 60%] | 50% [40%, 60%] | 25% / 50% / 75% |"), row
    assert row.endswith("| 62% | 1.50 | 1.0 | 10.0 |"), row


@pytest.mark.parametrize("report, says", [
    ([], "not a pipeline report (a JSON object), got a list"),
    ({}, "no 'eval' (a pipeline report has it"),
    ({"eval": REPORT["eval"]}, "this is a `minirlhf eval` report; compare reads the pipeline's report.json"),
    ({"val_accuracy": 0.6, "checkpoint": "rm/checkpoint"}, "no 'eval'"),  # a reward stage's report
    (changed(("eval",), "x"), "'eval' must be an object, got a string"),
    (changed(("eval", "win_rate"), {}), "'eval.win_rate' must compare one RLHF model with sft and base"),
    (changed(("eval", "win_rate", "ppo_vs_sft"), WIN), "'eval.win_rate' must compare one RLHF model with sft and base "
     "(ppo_vs_sft, ppo_vs_base, sft_vs_base), got ['dpo_vs_base', 'dpo_vs_sft', 'ppo_vs_sft', 'sft_vs_base']"),
    (changed(("eval", "win_rate", "dpo_vs_sft", "value"), "48%"),
     "'eval.win_rate.dpo_vs_sft.value' must be a number, got a string"),
    (changed(("eval", "win_rate", "sft_vs_base"), DELETE), "no 'eval.win_rate.sft_vs_base'"),
    (changed(("eval", "win_rate", "dpo_vs_base", "ci95"), [0.1]), "'eval.win_rate.dpo_vs_base.ci95' must be two numbers"),
    (changed(("eval", "truthfulness"), [0.1, 0.2, 0.3]), "'eval.truthfulness' must be an object, got a list"),
    (changed(("eval", "gold_score", "dpo"), True), "'eval.gold_score.dpo' must be a number, got true/false"),
    (changed(("ppo",), {}), "no 'ppo.kl_final'"),
    (changed(("ppo", "method"), ["dpo"]), "'ppo.method' must be a string, got a list"),
    (changed(("wall_seconds",), None), "'wall_seconds' must be an object, got null"),
    (changed(("reward", "val_accuracy"), "0.6"), "'reward.val_accuracy' must be a number, got a string"),
    (changed(("reward", "labeler_agreement"), "high"), "'reward.labeler_agreement' must be a number"),
    (b"\xff\xfe{}", "not UTF-8 text (bad byte at offset 0)"),
    ("[" * 100_000, "not valid JSON"),
])
def test_a_report_of_the_wrong_shape_is_a_one_line_error_naming_file_and_key(tmp_path, capsys, report, says):
    good = write_run(tmp_path / "good", REPORT)
    bad = write_run(tmp_path / "bad", report)
    assert main(["compare", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"minirlhf compare: error: {bad / 'report.json'}: {says}" in err, err
    assert len(err.strip().splitlines()) == 1
