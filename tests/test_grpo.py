"""GRPO: group-normalised advantages by hand, the k3 KL estimate, the loss's per-response
weighting, float64 gradient checks through the policy, and `minirlhf grpo` end to end
on a tiny model, with one-line errors."""
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import write_jsonl
from test_model import perturbed_model

from minirlhf.checkpoint import load_checkpoint
from minirlhf.cli import main
from minirlhf.errors import MinirlhfError
from minirlhf.gradcheck import max_abs_diff, numerical_gradient, rel_error
from minirlhf.grpo import group_advantages, grpo_loss, k3_kl
from minirlhf.metrics import read_metrics
from minirlhf.model import GPTConfig, ScalarModel
from minirlhf.optim import AdamW
from minirlhf.params import FlatParams
from minirlhf.reward import save_reward_model
from minirlhf.tokenizer import train_tokenizer
from minirlhf.train.rollout import checked_step

DATA = Path(__file__).resolve().parent.parent / "data"


# ----------------------------------------------------------------------------
# the math


def test_group_advantages_by_hand():
    rewards = np.array([[1.0, 2.0, 3.0, 6.0], [0.5, 0.5, 0.5, 0.5], [-1.0, 1.0, -1.0, 1.0]])
    adv = group_advantages(rewards, eps=1e-4)
    std = math.sqrt((4 + 1 + 0 + 9) / 4)  # group 0: mean 3
    np.testing.assert_allclose(adv[0], np.array([-2, -1, 0, 3]) / (std + 1e-4), rtol=1e-12)
    np.testing.assert_array_equal(adv[1], 0.0)  # all equal: no signal
    np.testing.assert_allclose(adv[2], np.array([-1, 1, -1, 1]) / (1 + 1e-4), rtol=1e-12)
    # each group is normalised on its own: shifting or scaling one group changes nothing
    varied = rewards[[0, 2]]
    np.testing.assert_allclose(group_advantages(varied * [[10], [1]] + [[5], [0]], eps=0), group_advantages(varied, eps=0))


def test_k3_is_nonnegative_zero_at_the_reference_and_its_mean_is_the_kl(rng):
    logp, ref = rng.normal(-1, 1, 1000), rng.normal(-1, 1, 1000)
    kl, dkl = k3_kl(logp, ref)
    assert np.all(kl >= 0) and np.all(k3_kl(logp, logp)[0] == 0)
    np.testing.assert_allclose(dkl, numerical_gradient(lambda: float(k3_kl(logp, ref)[0].sum()), logp), rtol=1e-6, atol=1e-9)
    p, q = np.array([0.7, 0.2, 0.1]), np.array([0.3, 0.3, 0.4])  # E_p[k3] = KL(p || q) exactly
    assert float((p * k3_kl(np.log(p), np.log(q))[0]).sum()) == pytest.approx(float((p * np.log(p / q)).sum()), rel=1e-12)


def test_grpo_loss_by_hand_each_response_counts_once():
    # ratio 1 (sampled by this very policy): the loss is -A per token, averaged per response,
    # plus beta times the k3 estimate. Row 0 has 3 tokens, row 1 has 1.
    mask = np.array([[0, 1, 1, 1], [0, 0, 1, 0]], dtype=bool)
    logp = np.log(np.array([[0.9, 0.5, 0.25, 0.5], [0.9, 0.9, 0.2, 0.9]]))
    ref = np.log(np.array([[0.1, 0.25, 0.25, 1.0], [0.1, 0.1, 0.4, 0.1]]))
    adv = np.array([1.0, -1.0])
    beta = 0.1
    kl = lambda p, r: r / p - math.log(r / p) - 1  # noqa: E731
    expected = 0.5 * (-1.0 + beta * (kl(0.5, 0.25) + kl(0.25, 0.25) + kl(0.5, 1.0)) / 3) + 0.5 * (1.0 + beta * kl(0.2, 0.4))
    loss, dlogp, stats = grpo_loss(logp, logp.copy(), ref, adv, mask, beta=beta)
    assert loss == pytest.approx(expected, rel=1e-12)
    expected_d = np.array([[0, -1 / 6 + beta * (1 - 0.5) / 6, -1 / 6, -1 / 6 + beta * (1 - 2) / 6],
                           [0, 0, 0.5 + beta * (1 - 2) / 2, 0]])
    np.testing.assert_allclose(dlogp, expected_d, rtol=1e-12, atol=1e-15)
    assert stats.clip_frac == 0.0 and stats.approx_kl == 0.0


def test_grpo_clips_like_ppo():
    mask = np.ones((1, 2), dtype=bool)
    old = np.zeros((1, 2))
    logp = np.log(np.array([[1.5, 1.1]]))  # ratio 1.5 is past 1 + 0.2
    loss, dlogp, stats = grpo_loss(logp, old, logp.copy(), np.array([2.0]), mask, beta=0.0, clip=0.2)
    assert loss == pytest.approx(-(2.0 * 1.2 + 2.0 * 1.1) / 2)
    np.testing.assert_allclose(dlogp, [[0.0, -2.0 * 1.1 / 2]])
    assert stats.clip_frac == 0.5


def test_grpo_gradient_through_the_policy(rng):
    cfg = GPTConfig(vocab_size=7, block_size=6, n_layer=1, n_head=2, n_embd=4)
    model = perturbed_model(cfg, seed=7)
    idx = rng.integers(0, 7, size=(4, 6))
    targets = np.where(np.arange(6) >= rng.integers(1, 3, size=(4, 1)), np.roll(idx, -1, axis=1), -1)
    targets[:, -1] = -1
    targets[1, 3:] = -1  # responses of different lengths
    mask = targets != -1
    logp0 = model.logprobs_forward(idx, targets, temperature=0.7)[0]
    old = logp0 + rng.normal(0, 0.3, logp0.shape)  # some ratios outside the clip range
    ref = logp0 + rng.normal(0, 0.5, logp0.shape)
    adv = group_advantages(rng.standard_normal((2, 2))).reshape(-1)

    def loss_of_params():
        return grpo_loss(model.logprobs_forward(idx, targets, temperature=0.7)[0], old, ref, adv, mask, beta=0.5)[0]

    logp, cache = model.logprobs_forward(idx, targets, temperature=0.7)
    _, dlogp, stats = grpo_loss(logp, old, ref, adv, mask, beta=0.5)
    assert 0 < stats.clip_frac < 1 and stats.kl_k3 > 0  # both branches and the KL term are exercised
    grads = model.logprobs_backward(dlogp, cache)
    numeric = numerical_gradient(loss_of_params, model.params.flat)
    assert rel_error(grads.flat, numeric) < 1e-6, f"max abs diff {max_abs_diff(grads.flat, numeric):.2e}"


# ----------------------------------------------------------------------------
# `minirlhf grpo` end to end on a tiny policy and reward model

def grpo_args(models, out, prompts, *extra):
    sft, rm = models
    return ["grpo", "--policy", str(sft), "--reward", str(rm), "--out", str(out), "--data", str(DATA),
            "--prompts", str(prompts), "--groups", "3", "--group-size", "4", "--minibatch", "6",
            "--max-new-tokens", "8", "--lr", "1e-2", "--save-every", "3", *extra]


def test_grpo_raises_the_reward_deterministically_and_resumes(models, prompts, tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(grpo_args(models, a, prompts, "--iterations", "8")) == 0
    assert "RM reward" in capsys.readouterr().out
    records = read_metrics(a / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    for key in ("rm_reward", "gold_score", "kl", "entropy", "clip_frac", "approx_kl", "kl_k3", "loss"):
        assert all(isinstance(r[key], float) for r in records), key
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the first samples come from the SFT model itself
    assert records[-1]["kl"] > 0.1 and any(r["clip_frac"] > 0 for r in records)
    first, last = (np.mean([r["rm_reward"] for r in part]) for part in (records[:3], records[-3:]))
    assert last > first + 0.2, (first, last)
    # same seed, same run; stopped after 6 iterations and resumed, the same run too
    assert main(grpo_args(models, b, prompts, "--iterations", "8")) == 0
    assert read_metrics(b / "metrics.jsonl") == records
    assert main(grpo_args(models, c, prompts, "--iterations", "6")) == 0
    assert main(grpo_args(models, c, prompts, "--iterations", "8", "--resume")) == 0
    assert read_metrics(c / "metrics.jsonl") == records
    ckpt = load_checkpoint(c / "checkpoint", kind="lm")
    assert ckpt.config["stage"] == "grpo" and ckpt.state["iteration"] == 8
    resumed, straight = ckpt.params, load_checkpoint(a / "checkpoint").params
    assert all(np.array_equal(resumed[k], straight[k]) for k in straight)
    assert (a / "grpo.png").stat().st_size > 0


def test_bad_input_is_one_line_and_exit_1(models, prompts, tmp_path, capsys):
    def fails(*extra, expect, out=tmp_path / "out"):
        assert main(grpo_args(models, out, prompts, "--iterations", "1", *extra)) == 1
        err = capsys.readouterr().err
        assert all(e in err for e in expect) and "Traceback" not in err and err.count("\n") == 1, err

    fails("--prompts", str(tmp_path / "nope.jsonl"), expect=["nope.jsonl", "no such file"])
    broken = tmp_path / "broken.jsonl"
    broken.write_text(prompts.read_text() + "{not json\n")
    fails("--prompts", str(broken), expect=[f"{broken}:7:"])
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "copy this exactly: " + "goat " * 20 + "\nanswer:"}])
    fails("--prompts", str(long), expect=[f"{long}:1:", "context of 64"])
    fails("--group-size", "1", expect=["--group-size"])
    fails("--resume", expect=["checkpoint"], out=tmp_path / "never_ran")
    tok = train_tokenizer("char", "abc \n")
    rm = ScalarModel(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))
    save_reward_model(models[1] / "checkpoint", rm, tok, {"mean_before": 0.0})
    fails(expect=["different tokenizers"])


def test_the_pipeline_step_3_runs_grpo_against_the_reward_model(models, prompts, tmp_path):
    """`minirlhf pipeline --method grpo`'s step 3 (the whole tiny pipeline is tested in
    test_pipeline.py): a run folder with sft/ and reward/ stages -> grpo/."""
    from minirlhf.errors import MinirlhfError
    from minirlhf.pipeline import PRESETS, Pipeline

    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "world.json").write_bytes((DATA / "world.json").read_bytes())
    (run / "data" / "ppo_prompts.jsonl").write_bytes(prompts.read_bytes())
    (run / "sft").symlink_to(models[0])
    (run / "reward").symlink_to(models[1])
    summary = Pipeline(run, PRESETS["tiny"], seed=0, progress=False, method="grpo").ppo(resume=False)
    assert summary["method"] == "grpo" and summary["iterations"] == PRESETS["tiny"].grpo.iterations
    assert all(isinstance(summary[k], float) for k in ("reward_start", "reward_end", "gold_start", "gold_end", "kl_final"))
    assert len(read_metrics(run / "grpo" / "metrics.jsonl")) == PRESETS["tiny"].grpo.iterations
    with pytest.raises(MinirlhfError, match="unknown method"):
        Pipeline(run, PRESETS["tiny"], method="reinforce")


@pytest.mark.parametrize("loss, bad_grad", [(float("nan"), False), (0.5, True)])
def test_checked_step_stops_before_a_non_finite_update(loss, bad_grad):
    """PPO and GRPO share this step: a NaN loss or gradient stops the run, saying where,
    and leaves the weights as they were (so the last saved checkpoint is still good)."""
    params = FlatParams({"w": (2, 3), "b": (3,)}, np.float64, np.arange(9.0))
    grads = params.zeros_like()
    grads.flat[:] = 0.1
    if bad_grad:
        grads["b"][1] = np.inf
    before = params.flat.copy()
    with pytest.raises(MinirlhfError, match="GRPO diverged at iteration 7"):
        checked_step(AdamW(params, lr=0.1), grads, loss, 1.0, "GRPO", 7)
    np.testing.assert_array_equal(params.flat, before)
    grads.flat[:] = 0.1
    checked_step(AdamW(params, lr=0.1), grads, 0.5, 1.0, "GRPO", 7)
    assert not np.array_equal(params.flat, before)  # a finite step does move the weights


def test_resuming_from_a_damaged_state_json_names_the_file_and_field(models, prompts, tmp_path, capsys):
    from test_pretrain import refuses_damaged_states

    out = tmp_path / "out"
    args = grpo_args(models, out, prompts, "--iterations", "1", "--groups", "2", "--group-size", "2")
    assert main(args) == 0
    refuses_damaged_states(args, out, [
        ({"iteration": 7}, "'iteration' is 7, more than 1 (--iterations 1)"),
        ({"iteration": -1}, "'iteration' must be a whole number"),
        ({"rng": {"bit_generator": "MT19937"}}, "'rng' is not a saved random-generator state"),
        ({"rng": None}, "no 'rng' field"),
        ([], "holds a JSON list"),
    ], capsys)


@pytest.mark.parametrize("flag", ["--temperature", "--missing-eos-penalty", "--beta"])
def test_float_flags_refuse_nan_and_inf(models, prompts, tmp_path, capsys, flag):
    for value in ("nan", "inf"):
        with pytest.raises(SystemExit) as e:
            main(grpo_args(models, tmp_path / "out", prompts, flag, value))
        assert e.value.code == 2 and f"argument {flag}: must be" in capsys.readouterr().err
