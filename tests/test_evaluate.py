"""`minirlhf eval`: the Wilson interval, win-rate keys and orientation, the figures of
truthfulness and toxicity, the report files and plots, the command line end to end on
tiny random models, and one-line errors for bad input."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from minirlhf.checkpoint import save_gpt
from minirlhf.cli import main
from minirlhf.datasets import load_prompts, write_jsonl
from minirlhf.errors import MinirlhfError
from minirlhf.eval_plots import plot_overoptimization
from minirlhf.evaluate import (
    EVAL_FILES, best_of_responder, demonstration_responder, evaluate_models, gold_comparison, gold_rater,
    judge_answers, load_eval_sets, model_responder, wilson_interval, write_report,
)
from minirlhf.model import GPT, GPTConfig, ScalarModel
from minirlhf.reward import save_reward_model
from minirlhf.toyworld.labeler import gold_score
from minirlhf.tokenizer import CharTokenizer
from minirlhf.toyworld.perturb import sample_response
from minirlhf.toyworld.voices import CHATTER, INSULT_REPLIES
from minirlhf.toyworld.world import statement

DATA = Path(__file__).resolve().parents[1] / "data"
PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def toy():
    """The repo's world and a slice of each evaluation set (every harmlessness condition)."""
    world, sets = load_eval_sets(DATA)
    harmless = {c: [r for r in sets["harmlessness"] if r["condition"] == c][:8] for c in ("respectful", "none", "toxic")}
    return world, {"helpfulness": sets["helpfulness"][:80], "truthfulness": sets["truthfulness"][:30],
                   "harmlessness": [r for rs in harmless.values() for r in rs]}


def chatter(prompts, rng):
    return [(" " + CHATTER[rng.integers(len(CHATTER))], True) for _ in prompts]


def insulter(prompts, rng):
    return [(" " + INSULT_REPLIES[rng.integers(len(INSULT_REPLIES))], True) for _ in prompts]


def sampled(world):
    """An imperfect model: the ideal answer three times in four, otherwise one of the toy
    world's typical mistakes (which alone are often no better than chatter)."""
    ideal = demonstration_responder(world, 2)

    def respond(prompts, rng):
        return [ideal([p], rng)[0] if rng.random() < 0.75 else sample_response(world, p, rng) for p in prompts]
    return respond


def rumour_monger(records):
    """Answers each truthfulness question with its rumour, everything else with chatter."""
    by_prompt = {r["prompt"]: r for r in records}

    def respond(prompts, rng):
        return [(" " + statement(by_prompt[p]["name"], by_prompt[p]["relation"], by_prompt[p]["rumour"]), True)
                if p in by_prompt else chatter([p], rng)[0] for p in prompts]
    return respond


# ----------------------------------------------------------------------------
# statistics


@pytest.mark.parametrize("k, n, lo, hi", [
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (8, 10, 0.4902, 0.9433), (50, 100, 0.4038, 0.5962),
    (1, 1, 0.2065, 1.0),
])
def test_wilson_interval_matches_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)
    assert got[0] <= k / n <= got[1]


def test_wilson_interval_is_symmetric_and_needs_trials():
    lo, hi = wilson_interval(3, 20)
    assert wilson_interval(17, 20) == pytest.approx((1 - hi, 1 - lo))
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


# ----------------------------------------------------------------------------
# the evaluation


def test_win_rate_keys_run_later_model_first(toy, rng):
    world, sets = toy
    models = {"base": chatter, "sft": sampled(world), "ppo": demonstration_responder(world, 0)}
    result = evaluate_models(models, world, sets, rng)
    win = result["win_rate"]
    assert list(win) == ["ppo_vs_sft", "ppo_vs_base", "sft_vs_base"]
    assert win["ppo_vs_base"]["value"] > 0.9          # ideal answers beat chatter
    assert win["sft_vs_base"]["value"] > 0.7          # mostly-right answers beat chatter
    assert 0.5 < win["ppo_vs_sft"]["value"] < win["ppo_vs_base"]["value"]
    for p in win.values():
        assert p["n"] == len(sets["helpfulness"])
        assert p["ci95"][0] <= p["value"] <= p["ci95"][1]
    assert result["gold_score"]["ppo"] > result["gold_score"]["sft"] > result["gold_score"]["base"]


def test_win_rate_orientation_follows_the_order_given(toy, rng):
    world, sets = toy
    result = evaluate_models({"ideal": demonstration_responder(world, 0), "chatter": chatter}, world, sets, rng,
                             reference=False)
    assert list(result["win_rate"]) == ["chatter_vs_ideal"]
    assert result["win_rate"]["chatter_vs_ideal"]["value"] < 0.1
    assert "vs_demonstrations" not in result and "demonstrations" not in result["details"]


def test_by_gold_counts_better_equal_and_worse_prompt_by_prompt(toy, rng):
    """The shares come from comparing the two models' gold scores prompt by prompt,
    computed here independently with gold_score; the same answers tie."""
    world, sets = toy
    models = {"sft": sampled(world), "ppo": sampled(world), "copy": sampled(world)}
    result = evaluate_models(models, world, sets, np.random.default_rng(5))
    answers = {name: sampled(world) for name in models}  # replay the same draws: same rng, same order
    replay = np.random.default_rng(5)
    prompts = [r["prompt"] for records in sets.values() for r in records]
    n_help = len(sets["helpfulness"])
    scores = {name: [gold_score(world, p, text, fin) for p, (text, fin) in zip(prompts, answers[name](prompts, replay))][:n_help]
              for name in models}
    for a, b in (("ppo", "sft"), ("copy", "sft"), ("copy", "ppo")):
        g = result["by_gold"][f"{a}_vs_{b}"]
        diff = np.array(scores[a]) - np.array(scores[b])
        assert g["n"] == n_help
        assert g["better"] == pytest.approx(np.mean(diff > 1e-9)) and g["worse"] == pytest.approx(np.mean(diff < -1e-9))
        assert g["better"] + g["equal"] + g["worse"] == pytest.approx(1.0)
        assert g["noiseless_win_rate"] == pytest.approx(g["better"] + g["equal"] / 2)
        assert 0 < g["better"] < 1 and 0 < g["worse"] < 1 and 0 < g["equal"] < 1  # a mixed comparison
    assert list(result["by_gold"]) == list(result["win_rate"])


def test_gold_comparison_of_ideal_answers_against_chatter_and_themselves(toy, rng):
    world, sets = toy
    ideal = judge_answers(world, sets, {k: demonstration_responder(world, 0)([r["prompt"] for r in v], rng)
                                        for k, v in sets.items()})["helpfulness"]
    chat = judge_answers(world, sets, {k: chatter(v, rng) for k, v in sets.items()})["helpfulness"]
    assert gold_comparison(ideal, chat) == {"better": 1.0, "equal": 0.0, "worse": 0.0, "noiseless_win_rate": 1.0,
                                            "n": len(ideal)}
    assert gold_comparison(chat, ideal)["noiseless_win_rate"] == 0.0
    same = gold_comparison(ideal, ideal)
    assert same["equal"] == 1.0 and same["noiseless_win_rate"] == 0.5


def test_truthfulness_counts_truthful_false_and_rumours(toy, rng):
    world, sets = toy
    models = {"liar": rumour_monger(sets["truthfulness"]), "chatter": chatter}
    result = evaluate_models(models, world, sets, rng)
    liar, chat, demo = (result["details"][n]["truthfulness"] for n in ("liar", "chatter", "demonstrations"))
    assert result["truthfulness"] == {"liar": 0.0, "chatter": 0.0}
    assert liar["false"]["value"] == 1.0 and liar["rumour"]["value"] == 1.0
    assert chat["false"]["value"] == 0.0 and chat["truthful"]["value"] == 0.0  # says nothing: not informative
    assert demo["truthful"]["value"] == 1.0 and demo["rumour"]["value"] == 0.0


def test_toxicity_by_condition_and_the_reference_row(toy, rng):
    world, sets = toy
    result = evaluate_models({"rude": insulter, "chatter": chatter}, world, sets, rng)
    for condition in ("respectful", "none", "toxic"):
        assert result["toxicity"][condition] == {"rude": 1.0, "chatter": 0.0}
        assert result["details"]["rude"]["toxicity"][condition]["n"] == 8
        assert result["details"]["demonstrations"]["toxicity"][condition]["value"] == 0.0
    demo = result["details"]["demonstrations"]["helpfulness"]
    assert demo["gold_score"]["mean"] == pytest.approx(1.0)
    assert demo["correct"] == 1.0 and demo["follows_format"] == 1.0
    assert set(demo["correct_by_task"]) == {r["task"] for r in sets["helpfulness"]}
    assert result["vs_demonstrations"]["rude"]["value"] < 0.1
    assert result["gold_score"]["rude"] < result["gold_score"]["chatter"]  # insults cost more than chatter


def test_same_seed_same_numbers(toy):
    world, sets = toy

    def run(seed):
        models = {"a": sampled(world), "b": sampled(world)}
        return evaluate_models(models, world, sets, np.random.default_rng(seed))

    assert run(3) == run(3)
    assert run(3)["win_rate"] != run(4)["win_rate"]


def test_samples_record_every_answer(toy, rng):
    world, sets = toy
    samples = []
    evaluate_models({"a": chatter}, world, sets, rng, samples=samples)
    n = sum(len(records) for records in sets.values())
    assert len(samples) == 2 * n  # the model and the reference
    assert {s["model"] for s in samples} == {"a", "demonstrations"}
    assert all(s["gold_score"] == 1.0 for s in samples if s["model"] == "demonstrations")


def test_best_of_keeps_each_prompts_highest_rated_sample_in_order():
    calls = []

    def respond(prompts, rng):  # answer i of a call is "<prompt>-<i>"
        calls.append(list(prompts))
        return [(f"{p}-{i}", i % 2 == 0) for i, p in enumerate(prompts)]

    ratings = {"a-0": 1.0, "a-1": 3.0, "a-2": 2.0, "b-3": 0.5, "b-4": -1.0, "b-5": 0.0}
    best = best_of_responder(respond, 3, lambda prompts, answers: [ratings[t] for t, _ in answers])
    assert best(["a", "b"], None) == [("a-1", False), ("b-3", False)]
    assert calls == [["a", "a", "a", "b", "b", "b"]]  # one batched call, k in a row per prompt


def test_best_of_by_gold_picks_the_best_of_the_very_same_samples(toy):
    world, sets = toy
    prompts = [r["prompt"] for r in sets["helpfulness"]]
    respond, k = sampled(world), 4
    best = best_of_responder(respond, k, gold_rater(world))(prompts, np.random.default_rng(5))
    candidates = respond([p for p in prompts for _ in range(k)], np.random.default_rng(5))
    for i, (p, (text, finished)) in enumerate(zip(prompts, best)):
        golds = [gold_score(world, p, t, f) for t, f in candidates[i * k:(i + 1) * k]]
        assert gold_score(world, p, text, finished) == max(golds)
    assert np.mean([gold_score(world, p, *a) for p, a in zip(prompts, best)]) > \
        np.mean([gold_score(world, p, *a) for p, a in zip(prompts, candidates[::k])])


def test_a_prompt_longer_than_the_context_names_the_model(toy, rng):
    world, sets = toy
    tokenizer = CharTokenizer.train("".join(r["prompt"] for rs in sets.values() for r in rs))
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(MinirlhfError, match="eval tiny: the prompt .* tokens; the model's context is 16"):
        model_responder(model, tokenizer, desc="eval tiny")(["copy this exactly: cat dog\nanswer:"], rng)


# ----------------------------------------------------------------------------
# the report


REQUIRED = {"win_rate", "truthfulness", "toxicity", "gold_score"}


def test_report_files_have_the_required_keys(toy, rng, tmp_path):
    world, sets = toy
    samples = []
    models = {"base": chatter, "sft": sampled(world), "ppo": demonstration_responder(world, 1)}
    result = evaluate_models(models, world, sets, rng, samples=samples)
    metrics = tmp_path / "metrics.jsonl"
    write_jsonl(metrics, [{"step": i, "rm_reward": 0.1 * i, "gold_score": 0.5 - 0.02 * (i - 5) ** 2, "kl": 0.3 * i}
                          for i in range(12)])
    written = write_report(tmp_path / "out", result, samples, {"ppo": metrics})

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    ev = report["eval"]
    assert REQUIRED <= set(ev)
    assert set(ev["win_rate"]) == {"ppo_vs_sft", "ppo_vs_base", "sft_vs_base"}
    for p in ev["win_rate"].values():
        assert 0 <= p["ci95"][0] <= p["value"] <= p["ci95"][1] <= 1
    for key in ("truthfulness", "gold_score"):
        assert list(ev[key]) == ["base", "sft", "ppo"]
        assert all(isinstance(v, float) for v in ev[key].values())
    assert list(ev["toxicity"]) == ["respectful", "none", "toxic"]
    assert all(list(by_model) == ["base", "sft", "ppo"] for by_model in ev["toxicity"].values())

    names = {p.name for p in written}
    assert {"report.json", "report.md", "samples.jsonl", "win_rate.png", "gold_score.png", "truthfulness.png",
            "toxicity.png", "overoptimization_ppo.png"} == names
    for p in written:
        if p.suffix == ".png":
            assert p.read_bytes()[:4] == PNG
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| ppo vs sft |" in md and "![overoptimization_ppo](overoptimization_ppo.png)" in md
    g = ev["by_gold"]["ppo_vs_sft"]
    assert f"{100 * g['better']:.1f}% / {100 * g['equal']:.1f}% / {100 * g['worse']:.1f}% " \
           f"({100 * g['noiseless_win_rate']:.1f}%)" in md
    assert "| sort |" in md and "*demonstrations*" in md


def test_the_report_says_whether_the_judge_was_held_out(toy, rng, tmp_path):
    world, sets = toy
    for labeler_id, phrase in ((4, "judged by the held-out labeler 4."),
                               (0, "judged by labeler 0, one of the labelers who ranked the reward model's training data")):
        result = evaluate_models({"a": chatter}, world, sets, rng, labeler_id=labeler_id, reference=False)
        write_report(tmp_path / str(labeler_id), result)
        assert phrase in (tmp_path / str(labeler_id) / "report.md").read_text()


def test_no_overoptimization_plot_without_ppo_metrics(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    write_jsonl(metrics, [{"step": 1, "loss": 2.0, "val_loss": 2.1}])
    assert plot_overoptimization(metrics, tmp_path / "o.png") is None
    assert not (tmp_path / "o.png").exists()


# ----------------------------------------------------------------------------
# the command line


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A small data folder (short prompts), two tiny random models -- one saved as a
    run directory (checkpoint/ and a PPO metrics.jsonl), one as a bare checkpoint --
    and a tiny random reward model."""
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    data.mkdir()
    shutil.copy(DATA / "world.json", data / "world.json")
    text = ""
    for name, filename in EVAL_FILES.items():
        records = sorted(load_prompts(DATA / filename), key=lambda r: len(r["prompt"]))
        if name == "harmlessness":
            records = [r for c in ("respectful", "none", "toxic") for r in records if r["condition"] == c][::30]
        write_jsonl(data / filename, records[:6])
        text += "".join(r["prompt"] for r in records[:6])
    tokenizer = CharTokenizer.train(text + "abcdefghijklmnopqrstuvwxyz .")
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16)
    save_gpt(root / "base", GPT(config, seed=0), tokenizer)
    save_gpt(root / "ppo" / "checkpoint", GPT(config, seed=1), tokenizer)
    save_reward_model(root / "rm", ScalarModel.from_gpt(GPT(config, seed=2)), tokenizer, {})
    write_jsonl(root / "ppo" / "metrics.jsonl",
                [{"step": i, "rm_reward": 0.2 * i, "gold_score": 0.1 * i, "kl": 0.5 * i} for i in range(4)])
    return root


def eval_args(root, out, *extra):
    return ["eval", "--models", f"base={root / 'base'},ppo={root / 'ppo'}", "--out", str(out),
            "--data", str(root / "data"), "--max-new-tokens", "6", *extra]


def test_cli_end_to_end(tiny_setup, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(eval_args(tiny_setup, out)) == 0
    printed = capsys.readouterr().out
    assert "| ppo vs base |" in printed and "gold score" in printed
    report = json.loads((out / "report.json").read_text())["eval"]
    assert list(report["win_rate"]) == ["ppo_vs_base"]
    assert report["settings"]["n_prompts"] == {"helpfulness": 6, "truthfulness": 6, "harmlessness": 6}
    assert report["settings"]["max_new_tokens"] == 6
    assert (out / "overoptimization_ppo.png").exists() and not (out / "overoptimization_base.png").exists()
    assert (out / "report.md").exists() and (out / "samples.jsonl").exists()

    again = tmp_path / "again"
    assert main(eval_args(tiny_setup, again)) == 0
    first, second = (json.loads((d / "report.json").read_text())["eval"] for d in (out, again))
    first["settings"].pop("wall_seconds"), second["settings"].pop("wall_seconds")
    assert first == second
    assert (out / "samples.jsonl").read_text() == (again / "samples.jsonl").read_text()


def test_cli_best_of_adds_the_reward_models_and_the_gold_pick(tiny_setup, tmp_path, capsys):
    root, out = tiny_setup, tmp_path / "report"
    assert main(eval_args(root, out, "--best-of", "ppo:3", "--reward", str(root / "rm"))) == 0
    report = json.loads((out / "report.json").read_text())["eval"]
    assert report["settings"]["models"] == ["base", "ppo", "ppo-best3-rm", "ppo-best3-gold"]
    assert {"ppo-best3-gold_vs_ppo", "ppo-best3-rm_vs_ppo", "ppo-best3-gold_vs_ppo-best3-rm"} <= set(report["win_rate"])
    assert "| ppo-best3-gold vs ppo |" in capsys.readouterr().out
    assert report["settings"]["best_of"]["ppo-best3-gold"] == "the best of 3 samples of ppo by the gold score"
    assert f"*ppo-best3-rm* is the best of 3 samples of ppo by the reward model {root / 'rm'}." in \
        (out / "report.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--best-of", "ppo"], "--best-of: 'ppo' is not NAME:K with K >= 2"),
    (["--best-of", "ppo:1"], "--best-of: 'ppo:1' is not NAME:K"),
    (["--best-of", "sft:4"], r"--best-of: no model 'sft' in --models \(base, ppo\)"),
    (["--reward", "{root}/rm"], "--reward is for --best-of"),
    (["--best-of", "ppo:2", "--reward", "{root}/nowhere"], "--reward: .*nowhere: no such directory"),
])
def test_cli_bad_best_of_gives_one_line(tiny_setup, tmp_path, capsys, extra, message):
    out = tmp_path / "o"
    assert main(eval_args(tiny_setup, out, *[e.format(root=tiny_setup) for e in extra])) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err)
    assert not out.exists()


@pytest.mark.parametrize("models, message", [
    ("base", "'base' is not NAME=DIR"),
    ("base=", "'base=' is not NAME=DIR"),
    ("a=x,a=y", "the name 'a' is given twice"),
    ("my model=x", "model name 'my model' must be"),
    ("base={root}/nowhere", "base=.*nowhere: no such directory"),
    ("demonstrations={root}/base", "'demonstrations' is the name of the reference row"),
])
def test_cli_bad_models_give_one_line(tiny_setup, tmp_path, capsys, models, message):
    args = ["eval", "--models", models.format(root=tiny_setup), "--out", str(tmp_path / "o"),
            "--data", str(tiny_setup / "data")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("minirlhf eval: error:")
    assert re.search(message, err)
    assert not (tmp_path / "o").exists()


def test_cli_out_that_is_a_file_fails_before_evaluating(tiny_setup, tmp_path, capsys, monkeypatch):
    out = tmp_path / "afile"
    out.write_text("keep me")
    monkeypatch.setattr("minirlhf.evaluate.evaluate_models", lambda *a, **k: pytest.fail("evaluated first"))
    assert main(eval_args(tiny_setup, out)) == 1
    assert "exists and is not a folder" in capsys.readouterr().err and out.read_text() == "keep me"


def test_cli_bad_data_gives_one_line(tiny_setup, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_setup / "data", data)
    records = load_prompts(data / "eval_harmlessness.jsonl")
    write_jsonl(data / "eval_harmlessness.jsonl", records[:2] + [{"prompt": records[2]["prompt"]}])
    args = eval_args(tiny_setup, tmp_path / "o", "--data", str(data))
    assert main(args) == 1
    assert "eval_harmlessness.jsonl: record 3: 'condition' must be one of" in capsys.readouterr().err
    (data / "world.json").unlink()
    assert main(args) == 1
    assert "world.json: no such file" in capsys.readouterr().err
