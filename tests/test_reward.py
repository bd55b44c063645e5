"""The reward model: the ranking loss pinned to its formula, gradients through the
trunk and head, the demonstration bias, and `minirlhf reward` end to end on a tiny
model, with one-line errors for bad input."""
import json
import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from minirlhf.checkpoint import load_checkpoint, save_gpt
from minirlhf.cli import main
from minirlhf.errors import MinirlhfError
from minirlhf.gradcheck import max_abs_diff, numerical_gradient, rel_error
from minirlhf.metrics import read_metrics
from minirlhf.model import GPT, GPTConfig, ScalarModel
from minirlhf.reward import (
    grouped_ranking_loss, load_reward_model, normalise_bias, pairwise_accuracy, ranking_loss, response_tokens,
    save_reward_model, score, score_texts, scores_backward, scores_forward,
)
from minirlhf.sequences import pack
from minirlhf.tokenizer import train_tokenizer
from minirlhf.train.reward import (
    all_pairs, best_of_k, gold_accuracy, pack_groups, ranking_scores, training_schedule, whole_rankings,
)
from conftest import char_tokenizer, write_jsonl
from test_model import perturbed_model

DATA = Path(__file__).resolve().parent.parent / "data"


def log_sigmoid(x):
    return math.log(1.0 / (1.0 + math.exp(-x)))


# ----------------------------------------------------------------------------
# the ranking loss


def test_ranking_loss_matches_the_formula_by_hand():
    # K = 3, best first: pairs (0,1), (0,2), (1,2) with margins 1.5, 3.0, 1.5
    loss, dscores = ranking_loss(np.array([2.0, 0.5, -1.0]))
    expected = -(log_sigmoid(1.5) + log_sigmoid(3.0) + log_sigmoid(1.5)) / 3
    assert loss == pytest.approx(expected, rel=1e-12)
    s = lambda d: 1.0 / (1.0 + math.exp(d))  # noqa: E731  d/dd of -log sigmoid(d) is -sigmoid(-d)
    expected_grad = np.array([-(s(1.5) + s(3.0)), s(1.5) - s(1.5), s(3.0) + s(1.5)]) / 3
    np.testing.assert_allclose(dscores, expected_grad, rtol=1e-12)


@pytest.mark.parametrize("K", range(2, 10))
def test_normalised_by_the_number_of_pairs_once(K):
    """Equal scores: every pair costs log 2, so the mean over C(K,2) pairs is log 2 for
    any K (dividing by C(K,2) twice would give log 2 / C(K,2)); and a prompt's loss is
    the mean of its pairs' two-response losses."""
    assert ranking_loss(np.zeros(K))[0] == pytest.approx(math.log(2), rel=1e-12)
    r = np.random.default_rng(K).standard_normal(K)
    pair_losses = [ranking_loss(r[[i, j]])[0] for i, j in combinations(range(K), 2)]
    assert len(pair_losses) == math.comb(K, 2)
    assert ranking_loss(r)[0] == pytest.approx(np.mean(pair_losses), rel=1e-12)


@pytest.mark.parametrize("K", range(2, 10))
def test_ranking_loss_gradient(K):
    scores = np.random.default_rng(100 + K).standard_normal(K) * 2
    loss, dscores = ranking_loss(scores)
    numeric = numerical_gradient(lambda: ranking_loss(scores)[0], scores)
    assert rel_error(dscores, numeric) < 1e-6, max_abs_diff(dscores, numeric)
    assert abs(dscores.sum()) < 1e-12  # only differences matter: a shift changes nothing


def test_separated_ranking_costs_little_and_is_stable():
    good = ranking_loss(np.array([300.0, 200.0, 100.0, 0.0]))
    assert 0 <= good[0] < 1e-40 and np.all(np.isfinite(good[1]))
    bad = ranking_loss(np.array([0.0, 100.0, 200.0, 300.0]))  # reversed: the mean margin, no overflow
    assert bad[0] == pytest.approx(np.mean([100, 200, 300, 100, 200, 100]))
    with pytest.raises(MinirlhfError, match="at least 2"):
        ranking_loss(np.array([1.0]))


def test_grouped_loss_is_the_mean_over_prompts_and_shares_sequences(rng):
    scores = rng.standard_normal(7)
    groups = [np.array([0, 1, 2, 3]), np.array([4, 5]), np.array([6, 1, 5])]  # 1 and 5 in two groups
    loss, dscores = grouped_ranking_loss(scores, groups)
    assert loss == pytest.approx(np.mean([ranking_loss(scores[g])[0] for g in groups]), rel=1e-12)
    numeric = numerical_gradient(lambda: grouped_ranking_loss(scores, groups)[0], scores)
    assert rel_error(dscores, numeric) < 1e-6


def test_pairwise_accuracy_counts_pairs_and_half_ties():
    assert pairwise_accuracy(np.array([3.0, 2.0, 1.0]), [np.arange(3)]) == (3.0, 3)
    assert pairwise_accuracy(np.array([1.0, 2.0, 2.0, 0.0]), [np.array([0, 1]), np.array([2, 1, 3])]) == (2.5, 4)


# ----------------------------------------------------------------------------
# the model: scores at the last token, gradients through trunk and head


def perturbed_rm(cfg):
    """A float64 reward model with every parameter non-trivial (see test_model.py)."""
    rm = ScalarModel.from_gpt(perturbed_model(cfg), seed=1)
    rm.params["head.bias"][...] = 0.3
    return rm


def test_rm_loss_gradient_through_trunk_and_head(rng):
    cfg = GPTConfig(vocab_size=7, block_size=7, n_layer=1, n_head=2, n_embd=4)
    rm = perturbed_rm(cfg)
    prompts = [[1, 2, 3], [1, 2, 3], [1, 2, 3], [4, 5], [4, 5]]
    responses = [[6, 0, 2], [3], [5, 6, 1, 2], [3, 6], [2, 2, 2, 2, 2]]  # different lengths: padding
    batch = pack(prompts, responses, pad_id=0, block_size=cfg.block_size)
    groups = [np.array([0, 1, 2]), np.array([4, 3])]

    def loss():
        return grouped_ranking_loss(scores_forward(rm, batch)[0], groups)[0]

    scores, cache = scores_forward(rm, batch)
    _, dscores = grouped_ranking_loss(scores, groups)
    grads = scores_backward(rm, dscores, cache)
    numeric = numerical_gradient(loss, rm.params.flat)
    assert rel_error(grads.flat, numeric) < 1e-6, max_abs_diff(grads.flat, numeric)
    assert np.abs(grads["head.bias"]).max() < 1e-12  # a shared shift cancels in every difference
    np.testing.assert_allclose(scores, rm.scores(batch.idx, batch.last))


def test_a_repeated_response_is_scored_once_with_the_same_loss_and_gradient():
    cfg = GPTConfig(vocab_size=7, block_size=7, n_layer=1, n_head=2, n_embd=4)
    rm = perturbed_rm(cfg)
    # prompt 0's sample [3] came three times (ranked 2nd, 3rd and 5th); prompt 1's [3] is another prompt's
    ranked = [([1, 2], [[6, 0], [3], [3], [5, 6, 1], [3]]), ([4, 5], [[3], [2, 2]])]
    schedule = whole_rankings(ranked) + [[(0, 3), (0, 2)]]  # a pair too, as with shuffled pairs
    batch, groups = pack_groups(ranked, schedule, pad_id=0, block_size=cfg.block_size)
    assert len(batch.idx) == 5  # [6, 0], [3], [5, 6, 1] to prompt 0; [3], [2, 2] to prompt 1
    [first, second, pair] = groups
    assert first.tolist() == [0, 1, 1, 2, 1] and second.tolist() == [3, 4] and pair.tolist() == [2, 1]

    keys = [key for group in schedule for key in group]  # every response packed once per appearance
    full = pack([ranked[c][0] for c, _ in keys], [ranked[c][1][i] for c, i in keys], 0, cfg.block_size)
    full_groups = np.split(np.arange(len(keys)), np.cumsum([len(g) for g in schedule])[:-1])

    def loss_and_grads(b, gs):
        scores, cache = scores_forward(rm, b)
        loss, dscores = grouped_ranking_loss(scores, gs)
        return loss, scores_backward(rm, dscores, cache).flat

    loss, grads = loss_and_grads(batch, groups)
    full_loss, full_grads = loss_and_grads(full, full_groups)
    assert loss == pytest.approx(full_loss, rel=1e-12)
    np.testing.assert_allclose(grads, full_grads, rtol=1e-9, atol=1e-14)


def test_score_is_read_at_the_last_token_whatever_the_padding_and_batching(rng):
    cfg = GPTConfig(vocab_size=11, block_size=10, n_layer=1, n_head=2, n_embd=8)
    rm = perturbed_rm(cfg)
    prompts = [list(rng.integers(0, 11, size=n)) for n in (2, 5, 3, 4, 1)]
    responses = [list(rng.integers(0, 11, size=n)) for n in (1, 4, 2, 6, 3)]
    together = score(rm, prompts, responses)
    alone = np.array([rm.scores(np.array([p + r]), np.array([len(p + r) - 1]))[0] for p, r in zip(prompts, responses)])
    np.testing.assert_allclose(together, alone, rtol=1e-10)
    np.testing.assert_allclose(score(rm, prompts, responses, batch_size=2, pad_id=7), together, rtol=1e-10)


def test_finished_responses_are_scored_at_end_of_text_and_bias_sets_demo_mean_zero():
    tok = char_tokenizer()
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=1, n_head=2, n_embd=8)
    rm = perturbed_rm(cfg)
    assert response_tokens(tok, " yes", True) == tok.encode(" yes") + [tok.eot_id]
    assert response_tokens(tok, " yes", False) == tok.encode(" yes")
    finished, cut = score_texts(rm, tok, ["q:"] * 2, [" yes", " yes"], [True, False])
    assert finished != cut
    prompts = ["copy this: a b\nanswer:", "count: a b c\nanswer:", "question: who?\nanswer:"]
    demos = [" a b", " three", " nobody knows."]
    before = score_texts(rm, tok, prompts, demos)
    mean = normalise_bias(rm, tok, prompts, demos)
    assert mean == pytest.approx(before.mean())
    after = score_texts(rm, tok, prompts, demos)
    assert abs(after.mean()) < 1e-12
    np.testing.assert_allclose(after - before, -before.mean())  # a shift: the ranking is unchanged


def test_gold_accuracy_counts_pairs_with_different_gold_scores():
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    rm = perturbed_rm(cfg)
    ranked = [([1, 2], [[3], [4, 5], [6]]), ([7], [[8], [9, 9]])]
    scores = ranking_scores(rm, ranked)
    np.testing.assert_array_equal(np.concatenate(scores), score(rm, [[1, 2]] * 3 + [[7]] * 2, [[3], [4, 5], [6], [8], [9, 9]]))
    gold = [s.copy() for s in scores]
    assert gold_accuracy(scores, gold) == 1.0
    assert gold_accuracy(scores, [-g for g in gold]) == 0.0
    tied = [np.array([1.0, 1.0, 1.0]), -scores[1]]  # tied gold scores say nothing: one pair left
    assert gold_accuracy(scores, tied) == 0.0


def test_best_of_k_is_the_gold_score_of_the_reward_models_pick():
    scores = [np.array([0.1, 0.9, 0.5]), np.array([2.0, -1.0])]
    gold = [np.array([1.0, 0.0, 0.5]), np.array([-0.5, 0.25])]
    b = best_of_k(scores, gold)
    assert b["rm_pick"] == pytest.approx((0.0 + -0.5) / 2)  # it picks the worst answer of both
    assert b["random"] == pytest.approx((0.5 + -0.125) / 2)
    assert b["best"] == pytest.approx((1.0 + 0.25) / 2)


def test_training_schedule_pairs_versus_grouped(rng):
    ranked = [([1], [[2]] * k) for k in (4, 9, 5, 6, 4, 7, 8)]
    grouped, per_epoch = training_schedule(ranked, False, 3, 2, rng)
    shuffled, _ = training_schedule(ranked, True, 3, 2, rng)
    assert per_epoch == 3 and len(grouped) == len(shuffled) == 6
    for schedule, units in ((grouped, whole_rankings(ranked)), (shuffled, all_pairs(ranked))):
        first_epoch = sorted(g for step in schedule[:3] for g in step)
        assert first_epoch == sorted(units)  # every prompt (or pair) once per epoch
    assert sum(len(step) for step in shuffled[:3]) == sum(math.comb(k, 2) for k in (4, 9, 5, 6, 4, 7, 8))
    assert all(len(g) == 2 for step in shuffled for g in step)


# ----------------------------------------------------------------------------
# `minirlhf reward` end to end on a tiny model


@pytest.fixture
def demos(tmp_path):
    return write_jsonl(tmp_path / "demos.jsonl", [{"prompt": f"copy this exactly: {w}\nanswer:", "response": f" {w}"}
                                                   for w in ("goat chef", "cat", "pilot rome")])


def reward_args(sft, out, demos, *extra):
    return ["reward", "--init", str(sft), "--out", str(out), "--demos", str(demos), "--batch-size", "4",
            "--eval-every", "3", "--eval-train-prompts", "4", *extra]


def test_reward_from_comparisons_learns_and_saves_a_normalised_model(sft_ckpt, demos, comparisons, tmp_path, capsys):
    out = tmp_path / "rm"
    assert main(reward_args(sft_ckpt, out, demos, "--comparisons", str(comparisons), "--epochs", "6",
                            "--lr", "1e-2", "--min-lr", "1e-3", "--warmup", "2")) == 0
    assert "held-out" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["train_prompts"] == 20 and report["val_prompts"] == 4  # 15% held out
    assert report["train_pairs"] + report["val_pairs"] == 12 * 1 + 12 * 3 and report["steps"] == 6 * 5
    assert report["labeler_agreement"] is None and report["val_gold_accuracy"] is None  # no labeler here
    assert report["train_accuracy"] > 0.9, report
    accuracies = [r["train_accuracy"] for r in read_metrics(out / "metrics.jsonl") if "train_accuracy" in r]
    assert len(accuracies) == 10 and accuracies[-1] > accuracies[0]
    for name in ("accuracy.png", "metrics.jsonl", "checkpoint/params.npz"):
        assert (out / name).exists(), name
    ckpt = load_checkpoint(out / "checkpoint", kind="reward")
    assert ckpt.config["normalisation"]["n_demos"] == 3 and ckpt.config["stage"] == "reward"
    rm, tok = load_reward_model(out / "checkpoint")
    records = [json.loads(line) for line in demos.read_text().splitlines()]
    scores = score_texts(rm, tok, [r["prompt"] for r in records], [r["response"] for r in records])
    assert abs(scores.mean()) < 1e-5  # float32


def test_reward_samples_and_ranks_with_the_labelers_deterministically(sft_ckpt, demos, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"copy this exactly: {w}\nanswer:"}
                                                       for w in ("goat chef", "cat rome", "pilot", "nurse paris",
                                                                 "chef", "rome cat", "hiking", "goat")])

    def run(name, *extra):
        out = tmp_path / name
        assert main(reward_args(sft_ckpt, out, demos, "--data", str(DATA), "--prompts", str(prompts), "--k-min", "2",
                                "--k-max", "4", "--max-new-tokens", "6", "--val-fraction", "0.25", *extra)) == 0
        return out

    a, b, c = run("a"), run("b"), run("c", "--seed", "1")
    train = [json.loads(line) for line in (a / "comparisons.jsonl").read_text().splitlines()]
    held_out = [json.loads(line) for line in (a / "comparisons_held_out.jsonl").read_text().splitlines()]
    assert len(train) == 6 and len(held_out) == 2
    assert all(2 <= len(r["responses"]) <= 4 and len(r["finished"]) == len(r["responses"]) for r in train + held_out)
    assert {r["labeler_id"] for r in train} <= {0, 1, 2, 3} and {r["labeler_id"] for r in held_out} == {4}
    report = json.loads((a / "report.json").read_text())
    assert 0 <= report["labeler_agreement"] <= 1 and 0 <= report["val_accuracy"] <= 1
    assert 0 <= report["val_gold_accuracy"] <= 1
    best_of = report["val_best_of_k"]
    assert -1 <= best_of["random"] <= best_of["best"] <= 1 and best_of["rm_pick"] <= best_of["best"]
    assert (a / "comparisons.jsonl").read_bytes() == (b / "comparisons.jsonl").read_bytes()
    assert (a / "comparisons.jsonl").read_bytes() != (c / "comparisons.jsonl").read_bytes()
    pa, pb = load_checkpoint(a / "checkpoint").params, load_checkpoint(b / "checkpoint").params
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    # the written rankings train the same model again
    d = tmp_path / "d"
    assert main(reward_args(sft_ckpt, d, demos, "--comparisons", str(a / "comparisons.jsonl"),
                            "--held-out-comparisons", str(a / "comparisons_held_out.jsonl"))) == 0
    assert json.loads((d / "report.json").read_text())["val_accuracy"] == report["val_accuracy"]


def test_compare_pairing_trains_both_ways_and_plots(sft_ckpt, demos, comparisons, tmp_path):
    out = tmp_path / "cmp"
    assert main(reward_args(sft_ckpt, out, demos, "--comparisons", str(comparisons), "--compare-pairing",
                            "--epochs", "2")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["grouped"]["pairing"] == "grouped" and report["shuffled"]["pairing"] == "shuffled pairs"
    assert report["grouped"]["steps"] == report["shuffled"]["steps"] == 10
    assert (out / "pairing.png").stat().st_size > 0
    assert (out / "grouped" / "checkpoint").is_dir() and (out / "shuffled" / "checkpoint").is_dir()


# ----------------------------------------------------------------------------
# bad input: one line naming the file and line


def test_a_ranking_of_one_response_names_its_line(sft_ckpt, demos, comparisons, tmp_path, capsys):
    lines = comparisons.read_text().splitlines()
    lines[1] = json.dumps({"prompt": "copy this exactly: cat\nanswer:", "responses": [" cat"]})
    comparisons.write_text("\n".join(lines) + "\n")
    assert main(reward_args(sft_ckpt, tmp_path / "rm", demos, "--comparisons", str(comparisons))) == 1
    err = capsys.readouterr().err
    assert f"{comparisons}:2:" in err and "at least 2" in err and "Traceback" not in err


def test_too_long_prompts_name_their_line(sft_ckpt, demos, comparisons, tmp_path, capsys):
    long_prompt = "copy this exactly: " + "goat " * 20 + "\nanswer:"  # > 64 characters
    lines = comparisons.read_text().splitlines()
    lines[2] = json.dumps({"prompt": long_prompt, "responses": [" goat", " cat"]})
    comparisons.write_text("\n".join(lines) + "\n")
    assert main(reward_args(sft_ckpt, tmp_path / "rm", demos, "--comparisons", str(comparisons))) == 1
    err = capsys.readouterr().err
    assert f"{comparisons}:3:" in err and "context of 64" in err
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "copy this exactly: cat\nanswer:"},
                                                       {"prompt": long_prompt}])
    assert main(reward_args(sft_ckpt, tmp_path / "rm", demos, "--data", str(DATA), "--prompts", str(prompts))) == 1
    err = capsys.readouterr().err
    assert f"{prompts}:2:" in err and "context of 64" in err
    unreadable = write_jsonl(tmp_path / "odd.jsonl", [{"prompt": "hello there"}])
    assert main(reward_args(sft_ckpt, tmp_path / "rm", demos, "--data", str(DATA), "--prompts", str(unreadable))) == 1
    assert f"{unreadable}:1:" in capsys.readouterr().err


def test_a_checkpoint_with_another_vocabulary_is_refused(sft_ckpt, demos, comparisons, tmp_path, capsys):
    other = train_tokenizer("char", "abc \n")
    (sft_ckpt / "checkpoint" / "tokenizer.json").write_text(json.dumps(other.to_dict()))
    assert main(reward_args(sft_ckpt, tmp_path / "rm", demos, "--comparisons", str(comparisons))) == 1
    err = capsys.readouterr().err
    assert "tokenizer.json" in err and "vocabulary" in err


def test_the_reward_model_refuses_a_policy_with_another_tokenizer(tmp_path):
    tok = char_tokenizer()
    rm = ScalarModel(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=4))
    save_reward_model(tmp_path / "rm", rm, tok, {"mean_before": 0.0})
    loaded, loaded_tok = load_reward_model(tmp_path / "rm", tokenizer=tok)
    assert loaded_tok == tok and np.array_equal(loaded.params.flat, rm.params.flat)
    with pytest.raises(MinirlhfError, match="different tokenizers"):
        load_reward_model(tmp_path / "rm", tokenizer=train_tokenizer("char", "xyz"))
    save_gpt(tmp_path / "lm", GPT(rm.config), tok)
    with pytest.raises(MinirlhfError, match="expected 'reward'"):
        load_reward_model(tmp_path / "lm")


def test_a_max_new_tokens_too_long_for_the_context_names_the_flag(sft_ckpt, demos, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "copy this exactly: cat\nanswer:"},
                                                       {"prompt": "copy this exactly: goat chef\nanswer:"}] * 2)
    longest = len("copy this exactly: goat chef\nanswer:")  # a char tokenizer: one token per character
    argv = reward_args(sft_ckpt, tmp_path / "rm", demos, "--data", str(DATA), "--prompts", str(prompts),
                       "--k-min", "2", "--k-max", "2", "--max-new-tokens", str(64 - longest + 1))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"minirlhf reward: error: --max-new-tokens {64 - longest + 1}: ") and "Traceback" not in err
    assert f"{prompts}:2, {longest} tokens" in err and f"use --max-new-tokens {64 - longest} or less" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag, value", [("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "0"),
                                         ("--val-fraction", "nan"), ("--val-fraction", "0"), ("--val-fraction", "1")])
def test_float_flags_refuse_values_out_of_range(sft_ckpt, demos, comparisons, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(reward_args(sft_ckpt, tmp_path / "rm", demos, "--comparisons", str(comparisons), flag, value))
    assert e.value.code == 2 and f"argument {flag}: must be" in capsys.readouterr().err
