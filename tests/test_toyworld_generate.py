"""`minirlhf data`: deterministic, disjoint splits, and the shipped data/ is its output."""
import argparse
from collections import Counter
from pathlib import Path

import pytest

from minirlhf.datasets import load_comparisons, load_corpus, load_prompts, load_sft, read_jsonl
from minirlhf.errors import MinirlhfError
from minirlhf.toyworld.curation import MAX_PER_USER, contains_pii
from minirlhf.toyworld.generate import add_parser, estimated_tokens, write_datasets
from minirlhf.toyworld.labeler import ASPECTS, GOLD_WEIGHTS, TERSE_RATE, judge
from minirlhf.toyworld.splits import HARMLESSNESS_STARTS, SPLIT_SIZES
from minirlhf.toyworld.tasks import CONDITIONS, TASKS
from minirlhf.toyworld.world import World, statement

SHIPPED = Path(__file__).resolve().parents[1] / "data"
PROMPT_FILES = ("sft.jsonl", "rm_prompts.jsonl", "ppo_prompts.jsonl", "eval_helpfulness.jsonl",
                "eval_truthfulness.jsonl", "eval_harmlessness.jsonl")


def run_cli(*argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["data", *argv])
    args.func(args)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The default data, written twice: once by the command, once by the function."""
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    run_cli("--out", str(first))
    write_datasets(second)
    return first, second


def test_same_seed_gives_byte_identical_files(generated):
    first, second = generated
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert "README.md" in names and len(names) == len(PROMPT_FILES) + 5
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_shipped_data_is_what_minirlhf_data_writes(generated):
    first, _ = generated
    for path in sorted(first.iterdir()):
        shipped = SHIPPED / path.name
        assert shipped.exists(), f"{shipped} is missing: run `minirlhf data`"
        assert shipped.read_bytes() == path.read_bytes(), f"{shipped} is stale: run `minirlhf data`"


def test_the_command_rejects_bad_arguments(tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(MinirlhfError, match="not a folder"):
        run_cli("--out", str(not_a_folder))
    with pytest.raises(SystemExit):
        run_cli("--out", str(tmp_path), "--seed", "-1")
    assert "argument --seed: must be 0 or more, got -1" in capsys.readouterr().err


def test_sizes_and_no_prompt_in_two_splits(generated):
    folder = generated[0]
    where = {}
    for name in PROMPT_FILES:
        for record in read_jsonl(folder / name):
            where.setdefault(record["prompt"], set()).add(name)
    assert all(len(names) == 1 for names in where.values())
    for split, file in (("sft", "sft.jsonl"), ("rm", "rm_prompts.jsonl"), ("ppo", "ppo_prompts.jsonl"),
                        ("eval_helpfulness", "eval_helpfulness.jsonl")):
        assert len(read_jsonl(folder / file)) == SPLIT_SIZES[split]
    rm = [r["prompt"] for r in load_prompts(folder / "rm_prompts.jsonl")]
    assert [r["prompt"] for r in load_comparisons(folder / "comparisons.jsonl")] == rm


def test_curated_splits_respect_the_curation_rules(generated):
    folder = generated[0]
    curated = [r for name in PROMPT_FILES[:4] for r in read_jsonl(folder / name)]
    assert max(Counter(r["user_id"] for r in curated).values()) <= MAX_PER_USER
    assert not any(contains_pii(r["prompt"]) for r in curated)
    kinds = Counter((r["kind"], r["mode"]) for r in curated)
    assert {k for k, _ in kinds} == {"plain", "few-shot", "user-based"}
    assert {m for _, m in kinds} == {"direct", "few-shot", "continuation"}
    assert {r["task"] for r in read_jsonl(folder / "eval_helpfulness.jsonl")} == set(TASKS)


def test_demonstrations_are_correct_often_terse_and_short(generated):
    folder = generated[0]
    world = World.load(folder / "world.json")
    terse = {True: [], False: []}  # by whether the task has a terse form
    for demo in load_sft(folder / "sft.jsonl"):
        verdict = judge(world, demo["prompt"], demo["response"])
        assert (verdict.correct, verdict.follows_format, verdict.toxic, verdict.finished) == (1.0, True, False, True)
        assert verdict.truthful is not False
        assert verdict.score == pytest.approx(1.0 - GOLD_WEIGHTS[ASPECTS.index("terse")] * verdict.terse)
        terse[TASKS[demo["task"]].can_be_terse].append(verdict.terse > 0)
        assert demo["response"].startswith(" ") and "\n" not in demo["response"]
        assert estimated_tokens(demo["prompt"] + demo["response"]) <= 100
    assert not any(terse[False])
    assert abs(sum(terse[True]) / len(terse[True]) - TERSE_RATE) < 0.05  # ~1200 demos
    readme = (folder / "README.md").read_text()
    assert f"{sum(terse[True])} of the {len(terse[True])} such demonstrations" in readme
    for name in PROMPT_FILES[1:]:
        for record in load_prompts(folder / name):
            assert estimated_tokens(record["prompt"]) <= 80
    assert 1_000_000 < len(load_corpus(folder / "corpus.txt").encode()) < 2_000_000


def test_comparisons_rank_4_to_9_responses(generated):
    sizes = [len(r["responses"]) for r in load_comparisons(generated[0] / "comparisons.jsonl")]
    assert set(sizes) == set(range(4, 10))


def test_truthfulness_questions_have_a_false_rumoured_answer(generated):
    folder = generated[0]
    world = World.load(folder / "world.json")
    items = load_prompts(folder / "eval_truthfulness.jsonl")
    assert len(items) >= 100
    for item in items:
        assert world.rumour(item["name"], item["relation"]) == item["rumour"] != item["truth"]
        for value, truthful in ((item["truth"], True), (item["rumour"], False)):
            answer = " " + statement(item["name"], item["relation"], value)
            assert judge(world, item["prompt"], answer).truthful is truthful


def test_harmlessness_has_the_same_starts_under_three_conditions(generated):
    items = load_prompts(generated[0] / "eval_harmlessness.jsonl")
    by_condition = {}
    for item in items:
        by_condition.setdefault(item["condition"], []).append(item["start"])
    assert set(by_condition) == set(CONDITIONS)
    starts = [by_condition[c] for c in CONDITIONS]
    assert all(s == starts[0] for s in starts) and len(starts[0]) == HARMLESSNESS_STARTS
