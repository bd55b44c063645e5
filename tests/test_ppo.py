"""`minirlhf ppo --gold-reward`: PPO against the labeler's gold score (a perfect reward
model) in place of the trained reward model's, on a tiny random policy."""
import numpy as np
import pytest
from conftest import DATA, write_jsonl
from test_pretrain import edit_state

from minirlhf.cli import main
from minirlhf.checkpoint import load_checkpoint, load_gpt
from minirlhf.datasets import load_prompts, load_sft
from minirlhf.metrics import read_metrics
from minirlhf.model import ScalarModel
from minirlhf.reward import load_reward_model, scores_forward
from minirlhf.sample import response_text
from minirlhf.toyworld import World, gold_score
from minirlhf.train.ppo import PPOConfig, PPOTrainer, demonstrations_gold


def trainer_for(models, prompts, config, gold_zero):
    sft, rm = models
    policy, tok = load_gpt(sft / "checkpoint")
    reference, _ = load_gpt(sft / "checkpoint")
    reward_model, _ = load_reward_model(rm / "checkpoint", tok)
    value_model = ScalarModel(reward_model.config, params=reward_model.params)
    texts = [r["prompt"] for r in load_prompts(prompts)]
    return PPOTrainer(policy, reference, reward_model, value_model, tok, texts, config, World.load(DATA / "world.json"),
                      rng=np.random.default_rng(7), gold_zero=gold_zero)


def test_gold_reward_replaces_the_reward_models_score_by_the_labelers(models, prompts):
    config = PPOConfig(rollouts=6, max_new_tokens=8, beta=0.1, gold_reward=3.0, missing_eos_penalty=0.5)
    trainer = trainer_for(models, prompts, config, gold_zero=0.25)
    roll = trainer.rollout()
    tok, world = trainer.tokenizer, trainer.world
    gold = np.array([gold_score(world, p, response_text(tok, r, f), f)
                     for p, r, f in zip(roll["texts"], roll["response_ids"], roll["finished"])])
    assert np.array_equal(roll["gold"], gold)
    # The per-token rewards are -beta * KL plus, at each last token, the score that is optimised.
    optimised = roll["rewards"].sum(axis=1) + trainer.kl_ctl.beta * roll["kl"].sum(axis=1)
    expected = 3.0 * (gold - 0.25) - 0.5 * ~roll["finished"]
    assert np.allclose(optimised, expected, atol=1e-6), np.abs(optimised - expected).max()
    # The reward model still scores the answers (logged as rm_reward), but is not optimised.
    rm_scores = scores_forward(trainer.reward_model, roll["batch"])[0]
    assert np.array_equal(roll["scores"], rm_scores) and not np.allclose(rm_scores, 3.0 * (gold - 0.25))


def test_the_gold_reward_is_zero_at_the_demonstrations_mean():
    world = World.load(DATA / "world.json")
    zero = demonstrations_gold(world, DATA / "sft.jsonl", n=40)
    scores = [gold_score(world, d["prompt"], d["response"]) for d in load_sft(DATA / "sft.jsonl")[:40]]
    assert zero == pytest.approx(np.mean(scores)) and 0.0 < zero < 1.0  # terse demonstrations score below 1


def test_gold_reward_without_the_toy_world_is_one_line_and_exit_1(models, prompts, tmp_path, capsys):
    sft, rm = models
    args = ["ppo", "--policy", str(sft), "--reward", str(rm), "--out", str(tmp_path / "out"), "--prompts", str(prompts),
            "--iterations", "1", "--rollouts", "4", "--max-new-tokens", "4", "--gold-reward", "5"]
    assert main(args + ["--data", str(tmp_path)]) == 1  # no world.json there
    err = capsys.readouterr().err
    assert "--gold-reward" in err and "world.json" in err and "Traceback" not in err and err.count("\n") == 1, err


def test_the_command_trains_on_the_gold_reward_and_prints_the_run(models, prompts, tmp_path, capsys):
    sft, rm = models
    out = tmp_path / "out"
    assert main(["ppo", "--policy", str(sft), "--reward", str(rm), "--out", str(out), "--prompts", str(prompts),
                 "--data", str(DATA), "--iterations", "2", "--rollouts", "4", "--minibatch", "2",
                 "--max-new-tokens", "4", "--gold-reward", "5"]) == 0
    printed = capsys.readouterr().out
    records = read_metrics(out / "metrics.jsonl")
    first, last = records[0], records[-1]
    assert (f"RM reward {first['rm_reward']:.3f} -> {last['rm_reward']:.3f}, "
            f"gold {first['gold_score']:.3f} -> {last['gold_score']:.3f}, KL {last['kl']:.3f}, 2 iterations") in printed
    assert load_checkpoint(out / "checkpoint", kind="lm").config["ppo"]["gold_reward"] == 5.0


def ppo_args(models, out, prompts, *extra):
    sft, rm = models
    return ["ppo", "--policy", str(sft), "--reward", str(rm), "--out", str(out), "--prompts", str(prompts),
            "--data", str(DATA), "--iterations", "2", "--rollouts", "4", "--minibatch", "2", "--epochs", "1",
            "--max-new-tokens", "4", *extra]


def fails_in_one_line(argv, capsys, *expected):
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert all(e in err for e in expected) and "Traceback" not in err and err.count("\n") == 1, err


@pytest.mark.parametrize("changes, expected", [
    ({"iteration": 10 ** 6}, "'iteration' is 1000000, more than 2 (--iterations 2)"),
    ({"iteration": -1}, "'iteration' must be a whole number"),
    ({"iteration": 1.5}, "'iteration' must be a whole number"),
    ({"iteration": "x"}, "'iteration' must be a whole number"),
    ({"beta": float("nan")}, "'beta' must be a finite number"),
    ({"round": "x"}, "'round' must be a whole number"),
    ({"round": 1}, "'round' is 1, more than 0 (the last round of --rounds 1)"),
    ({"rng": None}, "no 'rng' field"),
    ({"rng": {"bit_generator": "MT19937"}}, "'rng' is not a saved random-generator state"),
    ([], "holds a JSON list, not an object"),
])
def test_resuming_from_a_damaged_state_json_names_the_file_and_field(models, prompts, tmp_path, capsys, changes,
                                                                       expected):
    out = tmp_path / "out"
    assert main(ppo_args(models, out, prompts)) == 0
    edit_state(out, changes)
    fails_in_one_line(ppo_args(models, out, prompts, "--resume"), capsys,
                      f"{out / 'checkpoint' / 'state.json'}: ", expected)


def test_a_ptx_text_shorter_than_the_context_is_one_line(models, prompts, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("jacob loves reading.\n")
    fails_in_one_line(ppo_args(models, tmp_path / "out", prompts, "--ptx-coef", "0.5", "--ptx-text", str(short)),
                      capsys, f"{short}: ", "fewer than a window of 64 + 2")


def test_every_prompt_is_checked_to_fit_before_training(models, prompts, tmp_path, capsys):
    # one prompt too long among many: found up front, with its line, whether or not it would be sampled
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "copy this exactly: goat\nanswer:"}] * 4
                       + [{"prompt": "copy this exactly: " + "goat " * 20 + "\nanswer:"}])
    fails_in_one_line(ppo_args(models, tmp_path / "out", long), capsys, f"{long}:5: ", "context of 64")
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


@pytest.mark.parametrize("flag", ["--temperature", "--missing-eos-penalty", "--gold-reward", "--beta"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_float_flags_refuse_nan_and_inf(models, prompts, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(ppo_args(models, tmp_path / "out", prompts, flag, value))
    assert e.value.code == 2 and f"argument {flag}: must be" in capsys.readouterr().err
