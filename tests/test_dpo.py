"""DPO: the loss pinned to its formula by hand (log 2 when the policy is the reference),
whole rankings as the mean of their comparisons, float64 gradient checks through the
policy, and `minirlhf dpo` end to end on a tiny model, with one-line errors."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_model import perturbed_model
from conftest import write_jsonl

from minirlhf.checkpoint import load_checkpoint
from minirlhf.cli import main
from minirlhf.dpo import dpo_loss, implicit_rewards, sequence_logprobs
from minirlhf.gradcheck import max_abs_diff, numerical_gradient, rel_error
from minirlhf.metrics import read_metrics
from minirlhf.model import GPTConfig
from minirlhf.tokenizer import train_tokenizer

DATA = Path(__file__).resolve().parent.parent / "data"


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


# ----------------------------------------------------------------------------
# the loss


def test_dpo_loss_matches_the_formula_by_hand():
    # rows 0, 1: a comparison (0 preferred); rows 2, 3: another (3 preferred). Position 0 is prompt.
    mask = np.array([[0, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1], [0, 1, 0, 0]], dtype=bool)
    logp = np.array([[-9.0, -1.0, -0.5, -9.0], [-9.0, -0.2, -0.3, -0.4], [-9.0, -9.0, -2.0, -1.0], [-9.0, -0.7, -9.0, -9.0]])
    ref = np.array([[-5.0, -1.2, -0.9, -5.0], [-5.0, -0.5, -0.1, -0.2], [-5.0, -5.0, -1.0, -1.5], [-5.0, -1.0, -5.0, -5.0]])
    beta = 0.5
    h1 = ((-1.5) - (-2.1)) - ((-0.9) - (-0.8))  # (log pi_w - log pi_ref_w) - (log pi_l - log pi_ref_l) = 0.7
    h2 = ((-0.7) - (-1.0)) - ((-3.0) - (-2.5))  # 0.8
    loss, dlogp, stats = dpo_loss(logp, ref, mask, [np.array([0, 1]), np.array([3, 2])], beta)
    assert loss == pytest.approx(-(log_sigmoid(beta * h1) + log_sigmoid(beta * h2)) / 2, rel=1e-12)
    g1 = -beta / (1 + math.exp(beta * h1)) / 2  # d loss / d log pi(y_w) of comparison 1
    g2 = -beta / (1 + math.exp(beta * h2)) / 2
    expected = np.array([[0, g1, g1, 0], [0, -g1, -g1, -g1], [0, 0, -g2, -g2], [0, g2, 0, 0]])
    np.testing.assert_allclose(dlogp, expected, rtol=1e-12)
    assert stats.reward_accuracy == 1.0
    assert stats.reward_margin == pytest.approx(beta * (h1 + h2) / 2)
    np.testing.assert_allclose(sequence_logprobs(logp, mask), [-1.5, -0.9, -3.0, -0.7])


def test_loss_is_log_2_when_the_policy_is_the_reference(rng):
    mask = rng.random((6, 5)) < 0.7
    mask[:, 1] = True
    logp = -rng.random((6, 5)) * 3
    groups = [np.array([0, 1]), np.array([2, 3, 4, 5])]
    loss, dlogp, stats = dpo_loss(logp, logp.copy(), mask, groups, beta=0.3)
    assert loss == pytest.approx(math.log(2), rel=1e-12)
    assert stats.reward_accuracy == 0.5 and stats.reward_margin == 0.0  # ties count one half
    # the first step still pushes the preferred answer up and the other down
    assert np.all(dlogp[0][mask[0]] < 0) and np.all(dlogp[1][mask[1]] > 0)


def test_a_ranking_is_the_mean_of_its_comparisons(rng):
    mask = np.ones((4, 3), dtype=bool)
    logp, ref = -rng.random((4, 3)), -rng.random((4, 3))
    ranking = dpo_loss(logp, ref, mask, [np.array([2, 0, 3, 1])], beta=0.7)
    pairs = [np.array(p) for p in ((2, 0), (2, 3), (2, 1), (0, 3), (0, 1), (3, 1))]
    separate = dpo_loss(logp, ref, mask, pairs, beta=0.7)
    assert ranking[0] == pytest.approx(separate[0], rel=1e-12)
    np.testing.assert_allclose(ranking[1], separate[1], rtol=1e-12)
    np.testing.assert_allclose(implicit_rewards(logp, ref, mask, 0.7), 0.7 * (logp - ref).sum(axis=1))


def test_dpo_gradient_through_the_policy(rng):
    """loss -> logprobs_backward -> every parameter, float64, a response shared by
    several comparisons and a whole ranking in the same batch."""
    cfg = GPTConfig(vocab_size=7, block_size=6, n_layer=1, n_head=2, n_embd=4)
    model = perturbed_model(cfg, seed=5)
    idx = rng.integers(0, 7, size=(5, 6))
    targets = np.where(np.arange(6) >= rng.integers(1, 3, size=(5, 1)), np.roll(idx, -1, axis=1), -1)
    targets[:, -1] = -1
    targets[2, 4] = -1  # a shorter response
    mask = targets != -1
    ref = model.logprobs_forward(idx, targets, temperature=0.8)[0] + rng.normal(0, 0.5, (5, 6))
    groups = [np.array([0, 1]), np.array([1, 2]), np.array([4, 3, 0])]

    def loss_of_params():
        return dpo_loss(model.logprobs_forward(idx, targets, temperature=0.8)[0], ref, mask, groups, beta=0.8)[0]

    logp, cache = model.logprobs_forward(idx, targets, temperature=0.8)
    loss, dlogp, _ = dpo_loss(logp, ref, mask, groups, beta=0.8)
    assert abs(loss - math.log(2)) > 0.01  # not the trivial point
    grads = model.logprobs_backward(dlogp, cache)
    numeric = numerical_gradient(loss_of_params, model.params.flat)
    assert rel_error(grads.flat, numeric) < 1e-6, f"max abs diff {max_abs_diff(grads.flat, numeric):.2e}"


# ----------------------------------------------------------------------------
# `minirlhf dpo` end to end on a tiny model

def dpo_args(sft, out, prompts, *extra):
    return ["dpo", "--policy", str(sft), "--out", str(out), "--data", str(DATA), "--prompts", str(prompts),
            "--sample-prompts", "6", "--max-new-tokens", "8", "--batch-size", "4", "--eval-every", "5",
            "--lr", "1e-2", "--min-lr", "1e-3", "--warmup", "2", *extra]


def without_timing(records):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]


def test_dpo_learns_the_rankings_deterministically(sft_ckpt, comparisons, prompts, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main(dpo_args(sft_ckpt, out, prompts, "--comparisons", str(comparisons), "--epochs", "3")) == 0
    assert "implicit-reward accuracy" in capsys.readouterr().out
    records = read_metrics(a / "metrics.jsonl")
    assert without_timing(records) == without_timing(read_metrics(b / "metrics.jsonl"))
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 5, 10, 15]  # 20 training rankings, 4 per step, 3 epochs
    assert evals[0]["val_loss"] == pytest.approx(math.log(2)) and evals[0]["kl"] == 0.0
    assert evals[-1]["val_loss"] < 0.6 and evals[-1]["train_reward_accuracy"] > 0.8, evals[-1]
    assert evals[-1]["kl"] > 0 and "rm_reward" not in evals[-1]  # no reward model given
    assert -1 <= evals[-1]["gold_score"] <= 1
    ckpt = load_checkpoint(a / "checkpoint", kind="lm")
    assert ckpt.config["stage"] == "dpo" and ckpt.state["step"] == 15
    assert np.array_equal(ckpt.params["wte.weight"], load_checkpoint(b / "checkpoint").params["wte.weight"])
    assert not np.array_equal(ckpt.params["wte.weight"], load_checkpoint(sft_ckpt / "checkpoint").params["wte.weight"])
    assert (a / "dpo.png").stat().st_size > 0


def test_an_interrupted_run_resumes_to_the_same_result(sft_ckpt, comparisons, prompts, tmp_path, monkeypatch, capsys):
    """Ctrl-C at step 8 of 15 (the last checkpoint is step 5's), then --resume: the same
    metrics and weights as a run that was never stopped."""
    import minirlhf.train.dpo as dpo_module

    args = ["--comparisons", str(comparisons), "--epochs", "3"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(dpo_args(sft_ckpt, straight, prompts, *args)) == 0
    real_pack, calls = dpo_module.pack_groups, []

    def ctrl_c_at_step_8(*a, **k):
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt
        return real_pack(*a, **k)

    with monkeypatch.context() as mp:
        mp.setattr(dpo_module, "pack_groups", ctrl_c_at_step_8)
        assert main(dpo_args(sft_ckpt, stopped, prompts, *args)) == 130
    assert load_checkpoint(stopped / "checkpoint", kind="lm").state["step"] == 5
    assert main(dpo_args(sft_ckpt, stopped, prompts, *args, "--resume")) == 0
    assert without_timing(read_metrics(stopped / "metrics.jsonl")) == without_timing(read_metrics(straight / "metrics.jsonl"))
    resumed, whole = (load_checkpoint(d / "checkpoint", kind="lm").params for d in (stopped, straight))
    assert all(np.array_equal(resumed[k], whole[k]) for k in whole)
    capsys.readouterr()
    assert main(dpo_args(sft_ckpt, tmp_path / "never", prompts, *args, "--resume")) == 1
    assert "checkpoint" in capsys.readouterr().err


def test_dpo_from_a_reward_run_uses_its_rankings_and_reward_model(sft_ckpt, comparisons, prompts, tmp_path):
    from minirlhf.model import ScalarModel
    from minirlhf.reward import save_reward_model
    from minirlhf.train.dpo import DPOConfig, run_dpo

    reward_dir = tmp_path / "reward"
    reward_dir.mkdir()
    lines = comparisons.read_text().splitlines()
    (reward_dir / "comparisons.jsonl").write_text("\n".join(lines[:20]) + "\n")
    (reward_dir / "comparisons_held_out.jsonl").write_text("\n".join(lines[20:]) + "\n")
    gpt, tok = load_checkpoint(sft_ckpt / "checkpoint").gpt(), load_checkpoint(sft_ckpt / "checkpoint").tokenizer
    save_reward_model(reward_dir / "checkpoint", ScalarModel.from_gpt(gpt, seed=1), tok, {"mean_before": 0.0})
    config = DPOConfig(sample_prompts=4, max_new_tokens=6, shuffle_pairs=True)
    summary = run_dpo(sft_ckpt, tmp_path / "dpo", config, reward_dir=reward_dir, data_dir=DATA, prompts_path=prompts,
                      progress=False)
    assert summary["train_prompts"] == 20 and summary["val_prompts"] == 4  # the reward run's own split
    assert summary["steps"] == 3  # shuffled pairs: as many steps as whole rankings would take (20 / 8)
    assert isinstance(summary["reward_start"], float) and isinstance(summary["reward_end"], float)
    assert summary["kl_final"] != 0 and summary["method"] == "dpo"


# ----------------------------------------------------------------------------
# bad input: one line and exit 1


def test_bad_input_is_one_line_and_exit_1(sft_ckpt, comparisons, prompts, tmp_path, capsys):
    def fails(*extra, expect):
        assert main(dpo_args(sft_ckpt, tmp_path / "out", prompts, *extra)) == 1
        err = capsys.readouterr().err
        assert all(e in err for e in expect) and "Traceback" not in err and err.count("\n") == 1, err

    fails("--comparisons", str(tmp_path / "nope.jsonl"), expect=["nope.jsonl", "no such file"])
    lines = comparisons.read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([lines[0], '{"prompt": "x", "responses": ', *lines[1:]]) + "\n")
    fails("--comparisons", str(broken), expect=[f"{broken}:2:"])
    foreign = write_jsonl(tmp_path / "foreign.jsonl", [json.loads(lines[0]), {"prompt": "copy: ÉTÉ\nanswer:",
                                                                            "responses": [" a", " b"]}])
    fails("--comparisons", str(foreign), "--val-fraction", "0.01", expect=[f"{foreign}:2:", "vocabulary"])
    (tmp_path / "empty").mkdir()
    fails("--reward-dir", str(tmp_path / "empty"), expect=["no comparisons.jsonl"])
    other = train_tokenizer("char", "abc \n")
    (sft_ckpt / "checkpoint" / "tokenizer.json").write_text(json.dumps(other.to_dict()))
    fails("--comparisons", str(comparisons), expect=["tokenizer.json", "vocabulary"])


def test_the_pipeline_step_3_runs_dpo_on_the_reward_stage_rankings(sft_ckpt, comparisons, prompts, tmp_path):
    """`minirlhf pipeline --method dpo`'s step 3 (the whole tiny pipeline is tested in
    test_pipeline.py): a run folder with sft/ and reward/ stages -> dpo/."""
    from minirlhf.model import ScalarModel
    from minirlhf.pipeline import PRESETS, Pipeline
    from minirlhf.reward import save_reward_model

    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "world.json").write_bytes((DATA / "world.json").read_bytes())
    (run / "data" / "ppo_prompts.jsonl").write_bytes(prompts.read_bytes())
    (run / "sft").symlink_to(sft_ckpt)
    (run / "reward").mkdir()
    (run / "reward" / "comparisons.jsonl").write_bytes(comparisons.read_bytes())
    sft = load_checkpoint(sft_ckpt / "checkpoint")
    save_reward_model(run / "reward" / "checkpoint", ScalarModel.from_gpt(sft.gpt(), seed=1), sft.tokenizer,
                      {"mean_before": 0.0})
    pipeline = Pipeline(run, PRESETS["tiny"], seed=0, progress=False, method="dpo")
    assert pipeline.folder("ppo") == run / "dpo" and pipeline.folder("reward") == run / "reward"
    summary = pipeline.ppo(resume=False)
    assert summary["method"] == "dpo" and summary["train_prompts"] == 20
    assert summary["kl_final"] != 0  # the policy moved (a k1 estimate on 6 answers: either sign)
    assert isinstance(summary["reward_end"], float)  # the reward stage's model scored the samples
    assert (run / "dpo" / "checkpoint" / "params.npz").exists() and not (run / "ppo").exists()


def test_resuming_from_a_damaged_state_json_names_the_file_and_field(sft_ckpt, comparisons, prompts, tmp_path,
                                                                     capsys):
    from test_pretrain import refuses_damaged_states

    out = tmp_path / "out"
    args = dpo_args(sft_ckpt, out, prompts, "--comparisons", str(comparisons), "--sample-prompts", "0")
    assert main(args) == 0
    refuses_damaged_states(args, out, [
        ({"step": "5"}, "'step' must be a whole number"),
        ({"step": None}, "no 'step' field"),
        ({"step": 99}, "'step' is 99, more than 5"),
        ([5], "not an object"),
    ], capsys)


def test_a_reward_dir_without_a_checkpoint_to_score_samples_is_an_error(sft_ckpt, comparisons, prompts, tmp_path,
                                                                       capsys):
    reward_dir = tmp_path / "reward"
    reward_dir.mkdir()
    (reward_dir / "comparisons.jsonl").write_bytes(comparisons.read_bytes())
    assert main(dpo_args(sft_ckpt, tmp_path / "out", prompts, "--reward-dir", str(reward_dir))) == 1
    err = capsys.readouterr().err
    assert f"{reward_dir}: no checkpoint/" in err and err.count("\n") == 1, err
    # nothing sampled, nothing to score: its rankings are enough
    assert main(dpo_args(sft_ckpt, tmp_path / "out", prompts, "--reward-dir", str(reward_dir),
                         "--sample-prompts", "0", "--epochs", "1")) == 0


@pytest.mark.parametrize("value", ["nan", "inf", "0", "1", "-0.5"])
def test_val_fraction_is_a_share_strictly_between_0_and_1(sft_ckpt, comparisons, prompts, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as e:
        main(dpo_args(sft_ckpt, tmp_path / "out", prompts, "--comparisons", str(comparisons), "--val-fraction", value))
    assert e.value.code == 2 and "argument --val-fraction: must be" in capsys.readouterr().err
