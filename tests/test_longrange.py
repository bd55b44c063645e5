"""The long-range task ("Jacob ___ reading"): the sequences say what they claim, the
metric counts what it claims, and a tiny `minirlhf longrange` run writes its table,
plot and results, deterministically. (The real comparison is the command in the README.)"""
import json

import numpy as np
import pytest

from minirlhf.cli import main
from minirlhf.errors import MinirlhfError
from minirlhf.longrange import (
    ID,
    MIN_DISTANCE,
    NAMES,
    USUAL_VERB,
    VERBS,
    VOCAB,
    LongRangeConfig,
    build_models,
    command_line,
    decisive_scores,
    decisive_targets,
    evaluation_batch,
    make_sequence,
    run_longrange,
    training_batch,
)
from minirlhf.train.loop import TrainSettings


@pytest.mark.parametrize("distance,n_facts", [(6, 1), (8, 3), (20, 3), (30, 4), (40, 2)])
@pytest.mark.parametrize("counter", [True, False])
def test_sequence_layout(rng, distance, n_facts, counter):
    length = 42
    ids, usual = make_sequence(rng, length, distance, counter, n_facts)
    words = [VOCAB[i] for i in ids]
    assert len(words) == length
    activity, comma, name, answer = words[-4:]
    assert comma == "," and name in NAMES and USUAL_VERB[activity] == VOCAB[usual]
    fact_verb = length - 1 - distance
    assert words[fact_verb - 1 : fact_verb + 3] == [name, answer, activity, "."]  # the fact, D tokens back
    assert (answer != VOCAB[usual]) == counter
    verbs = [k for k, w in enumerate(words[:-1]) if w in VERBS]
    assert len(verbs) == n_facts  # one verb per statement
    people = [words[k - 1] for k in verbs]
    assert len(set(people)) == n_facts and people.count(name) == 1  # only the fact is about the person asked about
    assert all(words[k + 1] == activity and words[k + 2] == "." for k in verbs)


def test_impossible_sequences_are_refused(rng):
    with pytest.raises(MinirlhfError, match="no room"):
        make_sequence(rng, 20, 19, True)  # the fact would start before the sequence
    with pytest.raises(MinirlhfError, match="no room"):
        make_sequence(rng, 20, MIN_DISTANCE - 1, True)
    with pytest.raises(MinirlhfError, match="no room"):
        make_sequence(rng, 20, 8, True, n_facts=5)  # 5 statements of 4 tokens do not fit
    with pytest.raises(MinirlhfError, match="distances must be between"):
        LongRangeConfig(distances=(8, 200)).check()
    with pytest.raises(MinirlhfError, match="do not fit"):
        LongRangeConfig(n_facts=len(NAMES) + 1).check()


def test_batches_are_seeded_balanced_and_follow_the_prior():
    a = evaluation_batch(32, 64, seed=3, max_distance=48, n_facts=3, prior=0.75)
    b = evaluation_batch(32, 64, seed=3, max_distance=48, n_facts=3, prior=0.75)
    c = evaluation_batch(32, 64, seed=4, max_distance=48, n_facts=3, prior=0.75)
    np.testing.assert_array_equal(a.idx, b.idx)
    assert not np.array_equal(a.idx, c.idx)
    assert (a.answer != a.nearby).sum() == 32  # half counter-prior
    assert a.idx.shape == (64, 49) and np.all(a.query == 48)  # the last input position: the query's name
    np.testing.assert_array_equal(a.targets[:, :-1], a.idx[:, 1:])  # targets are the next tokens
    np.testing.assert_array_equal(a.targets[np.arange(64), a.query], a.answer)
    targets = decisive_targets(a)  # what training is scored on: the decisive word alone
    assert (targets != -1).sum() == 64
    np.testing.assert_array_equal(targets[np.arange(64), a.query], a.answer)
    batch = training_batch(np.random.default_rng(0), 2000, 48, 3, prior=0.75)
    counter_share = (batch.answer != batch.nearby).mean()
    assert abs(counter_share - 0.25) < 0.04  # 4 standard deviations


class ReadsTheFact:
    """A perfect model: finds the statement about the person asked about."""

    def forward(self, idx):
        logits = np.zeros((*idx.shape, len(VOCAB)))
        for b, row in enumerate(idx):
            name = row[-1]
            k = int(np.flatnonzero(row[:-1] == name)[0])
            logits[b, -1, row[k + 1]] = 1.0
        return logits


class FollowsTheNearbyWord:
    """The memoryless model: the activity's usual verb."""

    def forward(self, idx):
        logits = np.zeros((*idx.shape, len(VOCAB)))
        for b, row in enumerate(idx):
            logits[b, -1, ID[USUAL_VERB[VOCAB[row[-3]]]]] = 1.0
        return logits


def test_metric_tells_memory_from_the_nearby_word():
    batch = evaluation_batch(16, 40, seed=0, max_distance=32, n_facts=3, prior=0.75)
    assert decisive_scores(ReadsTheFact(), batch) == (1.0, 1.0, 0.0)
    assert decisive_scores(FollowsTheNearbyWord(), batch) == (0.0, 1.0, 1.0)


def tiny_config(**changes):
    train = TrainSettings(steps=4, batch_size=4, lr=1e-2, warmup=1, eval_every=2)
    return LongRangeConfig(distances=(8, 16), max_distance=16, n_facts=2, gpt=dict(n_layer=1, n_head=2, n_embd=8),
                           train=train, eval_size=8, **changes)


def test_models_have_the_same_budget():
    models = build_models(LongRangeConfig())
    gpt, lstm = models["gpt"].n_params, models["lstm"].n_params
    assert abs(gpt - lstm) / gpt < 0.01, (gpt, lstm)


def test_tiny_run_writes_table_plot_results_and_is_deterministic(tmp_path, capsys):
    config = tiny_config(lstm_lr=3e-2)
    results = run_longrange(tmp_path / "a", config, progress=False, command=command_line(tmp_path / "a", config))
    for name in ("table.md", "results.json", "accuracy_vs_distance.png", "gpt/metrics.jsonl", "lstm/training.png"):
        assert (tmp_path / "a" / name).exists(), name
    table = (tmp_path / "a" / "table.md").read_text()
    assert "| 8 |" in table and "| 16 |" in table and "minirlhf longrange --out" in table and "--n-facts 2" in table
    assert "--lm-loss" not in table and "--lstm-lr" in table and "(LSTM)" in table and "Wall time of a training step" in table
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert set(saved["models"]) == {"gpt", "lstm"}
    assert saved["models"]["gpt"]["lr"] == 1e-2 and saved["models"]["lstm"]["lr"] == 3e-2
    for arch in ("gpt", "lstm"):
        assert saved["models"][arch]["step_seconds"] > 0
        for scores in saved["models"][arch]["by_distance"].values():
            assert all(0.0 <= v <= 1.0 for v in scores.values())
    again = run_longrange(tmp_path / "b", config, progress=False)
    for arch in ("gpt", "lstm"):
        assert again["models"][arch]["by_distance"] == results["models"][arch]["by_distance"]
        assert (tmp_path / "a" / arch / "metrics.jsonl").read_text().count("loss") > 0
    losses = [[json.loads(line).get("loss") for line in (tmp_path / d / "gpt" / "metrics.jsonl").read_text().splitlines()]
              for d in ("a", "b")]
    assert losses[0] == losses[1]


def test_command_line_reruns_the_config(tmp_path):
    config = tiny_config(lm_loss=True, lstm_lr=2e-3)
    words = command_line(tmp_path, config).split()
    assert words[words.index("--lm-loss") + 1].startswith("--") and words[words.index("--lstm-lr") + 1] == "0.002"
    assert "--lm-loss" not in command_line(tmp_path, tiny_config())


def test_cli_errors(tmp_path, capsys):
    assert main(["longrange", "--out", str(tmp_path / "x"), "--distances", "8,200"]) == 1
    assert "distances must be between" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["longrange", "--out", str(tmp_path / "x"), "--distances", "eight"])
    assert "comma-separated integers" in capsys.readouterr().err
