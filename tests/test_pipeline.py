"""`minirlhf pipeline`: the tiny preset end to end (every stage's folder, report.json's
keys, PPO raising the reward model's score), and an interrupted run (Ctrl-C mid-PPO)
that keeps its last checkpoint intact and finishes with --resume."""
import json
import shutil

import numpy as np
import pytest

from minirlhf.checkpoint import load_checkpoint
from minirlhf.cli import main
from minirlhf.metrics import read_metrics
from minirlhf.pipeline import PRESETS, STAGES
from minirlhf.train.ppo import PPOTrainer

INTERRUPT_AT = 3  # the tiny preset saves PPO checkpoints every 2 iterations


@pytest.fixture(scope="module")
def interrupted_then_resumed(tmp_path_factory):
    """Run the tiny pipeline, press Ctrl-C during PPO's 4th iteration, then --resume.
    Returns (run folder, exit codes, the checkpoint state seen right after the interrupt)."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    args = ["pipeline", "--preset", "tiny", "--seed", "0", "--out", str(out)]
    real_iteration = PPOTrainer.iteration

    def ctrl_c_at_iteration(self):
        if self.iterations_done == INTERRUPT_AT:
            raise KeyboardInterrupt
        return real_iteration(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PPOTrainer, "iteration", ctrl_c_at_iteration)
        first = main(args)
    after_interrupt = {
        "finished": sorted(s for s in STAGES if (out / s / "summary.json").exists()),
        "state": load_checkpoint(out / "ppo" / "checkpoint", kind="lm").state,
    }
    second = main(args + ["--resume"])
    return out, (first, second), after_interrupt


def test_ctrl_c_mid_ppo_exits_130_and_keeps_the_last_checkpoint(interrupted_then_resumed):
    _, (first, _), after = interrupted_then_resumed
    assert first == 130
    assert after["finished"] == sorted(["data", "pretrain", "sft", "reward"])
    assert after["state"]["iteration"] == 2  # the last saved iteration, loadable


def test_resume_finishes_the_run_with_every_stage_folder(interrupted_then_resumed):
    out, (_, second), _ = interrupted_then_resumed
    assert second == 0
    for stage in STAGES:
        assert (out / stage / "summary.json").is_file(), stage
    for path in ["data/corpus.txt", "data/world.json", "pretrain/checkpoint", "pretrain/metrics.jsonl",
                 "sft/checkpoint", "reward/checkpoint", "reward/comparisons.jsonl", "ppo/checkpoint", "ppo/value",
                 "ppo/metrics.jsonl", "ppo/ppo.png", "eval/report.json", "report.json", "report.md"]:
        assert (out / path).exists(), path
    # Every iteration logged once: the resumed run re-did the third and went on.
    steps = [r["step"] for r in read_metrics(out / "ppo" / "metrics.jsonl") if "rm_reward" in r]
    assert steps == list(range(1, PRESETS["tiny"].ppo.iterations + 1))


def test_report_has_the_documented_keys(interrupted_then_resumed):
    out, _, _ = interrupted_then_resumed
    report = json.loads((out / "report.json").read_text())
    assert set(report["wall_seconds"]) == {"pretrain", "sft", "reward", "ppo", "eval", "total"}
    assert 0.0 <= report["reward"]["val_accuracy"] <= 1.0
    assert {"kl_final", "reward_start", "reward_end"} <= set(report["ppo"])
    ev = report["eval"]
    assert list(ev["win_rate"]) == ["ppo_vs_sft", "ppo_vs_base", "sft_vs_base"]
    for wr in ev["win_rate"].values():
        lo, hi = wr["ci95"]
        assert 0.0 <= lo <= wr["value"] <= hi <= 1.0
    for key in ("truthfulness", "gold_score"):
        assert set(ev[key]) == {"base", "sft", "ppo"}
    assert set(ev["toxicity"]) == {"respectful", "none", "toxic"}
    assert all(set(v) == {"base", "sft", "ppo"} for v in ev["toxicity"].values())
    assert "win rate ppo over sft" in (out / "report.md").read_text()


def test_ppo_raised_the_reward_models_score(interrupted_then_resumed):
    out, _, _ = interrupted_then_resumed
    rewards = [r["rm_reward"] for r in read_metrics(out / "ppo" / "metrics.jsonl") if "rm_reward" in r]
    report = json.loads((out / "report.json").read_text())
    assert report["ppo"]["reward_start"] == rewards[0] and report["ppo"]["reward_end"] == rewards[-1]
    assert np.mean(rewards[-2:]) > np.mean(rewards[:2]), rewards


def test_resume_with_another_method_evaluates_that_methods_policy(interrupted_then_resumed, tmp_path):
    """The README's way to compare methods: a finished PPO run, resumed with --method grpo,
    trains grpo/ and evaluates it instead of keeping the PPO evaluation."""
    out = tmp_path / "tiny"
    shutil.copytree(interrupted_then_resumed[0], out)
    assert main(["pipeline", "--preset", "tiny", "--seed", "0", "--out", str(out), "--method", "grpo", "--resume"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["ppo"]["method"] == "grpo"
    assert list(report["eval"]["win_rate"]) == ["grpo_vs_sft", "grpo_vs_base", "sft_vs_base"]
    assert (out / "grpo" / "checkpoint").exists() and (out / "ppo" / "checkpoint").exists()


def test_compare_tables_the_runs_report(interrupted_then_resumed, capsys):
    out, _, _ = interrupted_then_resumed
    report = json.loads((out / "report.json").read_text())
    assert main(["compare", str(out), str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 + 2 + 1  # header, rule, two runs, their mean
    ppo_vs_sft = report["eval"]["win_rate"]["ppo_vs_sft"]["value"]
    assert f"| {ppo_vs_sft:.0%} [" in lines[2] and lines[-1].startswith("| mean |")
    assert f"{report['ppo']['kl_final']:.2f}" in lines[2]


def test_compare_says_which_run_has_no_report(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "report.json: no such file" in err and len(err.strip().splitlines()) == 1


def test_the_run_records_its_seed_preset_and_method(interrupted_then_resumed):
    out, _, _ = interrupted_then_resumed
    assert json.loads((out / "run.json").read_text()) == {"seed": 0, "preset": "tiny", "method": "ppo"}


@pytest.mark.parametrize("flags, expected", [(["--seed", "1"], "started with --seed 0, not 1"),
                                             (["--preset", "demo"], "started with --preset tiny, not demo")])
def test_resume_refuses_another_seed_or_preset(tmp_path, capsys, flags, expected):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"seed": 0, "preset": "tiny", "method": "ppo"}))
    assert main(["pipeline", "--preset", "tiny", "--seed", "0", "--out", str(out), "--resume", *flags]) == 1
    err = capsys.readouterr().err
    assert f"{out / 'run.json'}: this run was {expected}" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]  # refused before any stage ran


def test_resume_of_a_run_from_before_run_json_checks_the_worlds_seed(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "data").mkdir(parents=True)
    (out / "data" / "summary.json").write_text(json.dumps({"world_seed": 0, "files": {}}))
    assert main(["pipeline", "--preset", "tiny", "--seed", "1", "--out", str(out), "--resume"]) == 1
    assert "data/summary.json: this run was started with --seed 0, not 1" in capsys.readouterr().err
    assert not (out / "run.json").exists()
