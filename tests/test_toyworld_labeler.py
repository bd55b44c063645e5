"""The labeler: it must order responses the way the article's labelers were asked to,
prefer thorough answers to terse ones while often writing terse demonstrations, and
disagree with a second labeler about as often as InstructGPT's did (~73%)."""
import itertools

import numpy as np
import pytest

from minirlhf.toyworld.generate import RANK_K, rankings
from minirlhf.toyworld.labeler import (
    HELD_OUT_LABELER, TERSE_RATE, TRAINING_LABELERS, Labeler, agreement, gold_score, judge,
)
from minirlhf.toyworld.perturb import MISTAKES, sample_pairs, sample_response
from minirlhf.toyworld.prompts import draw_prompt
from minirlhf.toyworld.tasks import TASKS, build_prompt, parse_prompt
from minirlhf.toyworld.world import build_world

WORLD = build_world(0)
JACOB_HATES = WORLD.value("jacob", "hates")


def better(prompt, good, bad, finished=(True, True)):
    return gold_score(WORLD, prompt, good, finished[0]) > gold_score(WORLD, prompt, bad, finished[1])


def test_correct_beats_wrong():
    prompt = "question: what does jacob love?\nanswer:"
    assert better(prompt, " jacob loves reading.", " jacob loves swimming.")
    assert judge(WORLD, prompt, " jacob loves reading.").correct == 1.0
    assert judge(WORLD, prompt, " jacob loves swimming.").correct == 0.0


def test_truth_beats_rumour_in_any_framing():
    prompt = "question: what does jacob hate?\nanswer:"
    truth = f" jacob hates {JACOB_HATES}."
    assert judge(WORLD, prompt, truth).truthful is True
    for rumour in (" jacob hates reading.", " everyone says jacob hates reading."):
        assert judge(WORLD, prompt, rumour).truthful is False
        assert better(prompt, truth, rumour)
    assert judge(WORLD, prompt, " no idea.").truthful is None
    assert better(prompt, " no idea.", " jacob hates reading.")  # saying nothing beats a falsehood


def test_polite_beats_toxic():
    prompt = build_prompt(TASKS["complete"].request_line(
        TASKS["complete"].for_start("jacob is", "respectful"), np.random.default_rng(0)))
    polite, toxic = " a kind and honest person.", " a stupid clown."
    assert not judge(WORLD, prompt, polite).toxic and judge(WORLD, prompt, toxic).toxic
    assert better(prompt, polite, toxic)
    assert better(prompt, " kind.", toxic)  # even a terse polite answer
    fact = "question: what does jacob love?\nanswer:"
    assert judge(WORLD, fact, " jacob loves reading. what a loser.").toxic
    assert better(fact, " jacob loves reading.", " jacob loves reading. what a loser.")
    assert judge(WORLD, fact, " you fools.").toxic  # plurals of the lexicon count


def test_full_beats_terse_and_terse_stays_correct():
    job = WORLD.value("jacob", "job")
    complete = build_prompt("complete the sentence: jacob is")
    cases = [  # (prompt, full, terse)
        ("question: what does jacob love?\nanswer:", " jacob loves reading.", " loves reading."),
        ("question: what does jacob love?\nanswer:", " jacob loves reading.", " reading."),
        ("continue the story: jacob loves reading.\nanswer:",
         f" jacob works as a {job}. one day jacob met emma at the market. the end.",
         f" jacob works as a {job}. the end."),
        (complete, f" a kind {job} who loves reading.", " kind."),
        (complete, " a kind and honest person.", f" a {job}."),
        (build_prompt("complete the sentence: the people of rome are"), " kind and honest.", " kind."),
    ]
    for prompt, full, terse in cases:
        assert better(prompt, full, terse), (full, terse)
        assert judge(WORLD, prompt, full).terse == 0.0 and judge(WORLD, prompt, terse).terse == 1.0
        verdict = judge(WORLD, prompt, terse)
        assert (verdict.correct, verdict.follows_format, verdict.truthful) in {(1.0, True, True), (1.0, True, None)}


def test_a_terse_answer_claims_the_fact_asked_about():
    prompt = "question: what does jacob hate?\nanswer:"
    full_rumour = gold_score(WORLD, prompt, " jacob hates reading.")
    for terse in (" hates reading.", " reading.", " really dislikes reading."):
        assert judge(WORLD, prompt, terse.replace("reading", JACOB_HATES)).truthful is True
        rumour = judge(WORLD, prompt, terse)  # a terse rumour is a falsehood too
        assert rumour.truthful is False and rumour.correct == 0.0
        # a wrong answer is charged as wrong, not also as short
        assert rumour.terse == 0.0 and rumour.score == full_rumour
    for other in (" loves reading.", " emma hates reading.", " lives in paris."):
        assert judge(WORLD, prompt, other).correct == 0.0  # not an answer to this question


def test_more_true_facts_beat_fewer():
    prompt = "tell me about jacob.\nanswer:"
    facts = TASKS["about"].ideal(WORLD, parse_prompt(prompt), None).split(". ")
    for n in range(1, 6):
        verdict = judge(WORLD, prompt, " " + ". ".join(facts[:n]).rstrip(".") + ".")
        assert verdict.correct == 1.0 and verdict.terse == pytest.approx((5 - n) / 5)
    lie = f" jacob hates reading. {facts[0]}."  # one true fact and one false one
    verdict = judge(WORLD, prompt, lie)
    assert (verdict.correct, verdict.truthful, verdict.terse) == (0.5, False, pytest.approx(0.8))
    assert better(prompt, f" {facts[0]}.", lie)


def test_the_held_out_labeler_prefers_thorough_answers_about_nine_times_in_ten():
    rng = np.random.default_rng(21)
    labeler = Labeler(WORLD, HELD_OUT_LABELER)
    wins = []
    while len(wins) < 3000:
        record = draw_prompt(WORLD, rng)
        task = TASKS[record["task"]]
        if task.can_be_terse:
            request = parse_prompt(record["prompt"])
            full, terse = (" " + task.ideal(WORLD, request, rng), " " + task.terse(WORLD, request, rng))
            wins.append(labeler.prefer(record["prompt"], full, terse, rng=rng) == 0)
    assert 0.85 <= np.mean(wins) <= 0.93  # standard error ~0.6 points


def test_demonstrations_are_often_terse_the_ideal_never():
    rng = np.random.default_rng(23)
    labeler = Labeler(WORLD, 0)
    prompts = [p for p in _prompts(600, seed=5) if TASKS[parse_prompt(p).task].can_be_terse]
    terse = [judge(WORLD, p, labeler.write_demonstration(p, rng)).terse > 0 for p in prompts]
    assert abs(np.mean(terse) - TERSE_RATE) < 0.07  # ~370 prompts: standard error ~2.5 points
    assert all(gold_score(WORLD, p, labeler.ideal_response(p, rng)) == 1.0 for p in prompts)
    diligent = Labeler(WORLD, 0, terse_rate=0.0)
    assert all(gold_score(WORLD, p, diligent.write_demonstration(p, rng)) == 1.0 for p in prompts)
    words = [p for p in _prompts(100, seed=6) if not TASKS[parse_prompt(p).task].can_be_terse]
    assert all(gold_score(WORLD, p, labeler.write_demonstration(p, rng)) == 1.0 for p in words)


def test_finished_beats_unfinished():
    prompt = "reverse the words: cat rome pilot\nanswer:"
    assert better(prompt, " pilot rome cat", " pilot rome cat", finished=(True, False))
    assert not judge(WORLD, prompt, " pilot rome cat", finished=False).finished


def test_stopping_cleanly_beats_rambling_on():
    prompt = "question: where does jacob live?\nanswer:"
    answer = " " + TASKS["fact"].ideal(WORLD, TASKS["fact"].parse("question: where does jacob live?"), None)
    chatter = answer + "\nuser: thanks! i had pizza for lunch."
    longer = chatter + "\nuser: same here."
    assert judge(WORLD, prompt, chatter).follows_format is False
    assert gold_score(WORLD, prompt, answer) > gold_score(WORLD, prompt, chatter) > gold_score(WORLD, prompt, longer)


def test_partial_credit_is_monotone():
    words = ["cat", "rome", "pilot", "dog", "lima", "chef"]
    prompt = build_prompt("reverse the words: " + " ".join(words))
    target = words[::-1]
    scores = []
    for n_right in range(len(words) + 1):  # the first n_right words in place, the rest wrong
        answer = target[:n_right] + ["goat"] * (len(words) - n_right)
        scores.append(gold_score(WORLD, prompt, " " + " ".join(answer)))
    assert all(a < b for a, b in zip(scores, scores[1:]))
    count = "count the words: cat rome pilot dog\nanswer:"
    assert [judge(WORLD, count, f" {n}").correct for n in ("four", "five", "seven")] == [1.0, 0.5, 0.0]
    about = "tell me about jacob.\nanswer:"
    facts = TASKS["about"].ideal(WORLD, TASKS["about"].parse("tell me about jacob."), None).split(". ")
    about_scores = [gold_score(WORLD, about, " " + ". ".join(facts[:n]).rstrip(".") + ".") for n in range(1, 6)]
    assert all(a < b for a, b in zip(about_scores, about_scores[1:]))


def test_story_sentences_must_be_new_true_and_about_the_protagonist():
    prompt = "continue the story: jacob loves reading.\nanswer:"
    job = WORLD.value("jacob", "job")
    good = f" jacob works as a {job}. one day jacob met emma at the market. the end."
    repeated = f" jacob works as a {job}. jacob loves reading. the end."
    false = f" jacob works as a {job}. jacob was asked to try reading but said no. the end."
    other = f" jacob works as a {job}. one day emma met jacob at the market. the end."
    assert judge(WORLD, prompt, good).correct == 1.0
    for bad in (repeated, false, other):
        assert better(prompt, good, bad)
    assert better(prompt, good, good.replace(" the end.", ""))


def _prompts(n, seed):
    rng = np.random.default_rng(seed)
    return [draw_prompt(WORLD, rng)["prompt"] for _ in range(n)]


def test_every_mistake_of_the_perturbation_generator_costs_something():
    rng = np.random.default_rng(11)
    labeler = Labeler(WORLD, 0)
    for prompt in _prompts(60, seed=1):
        ideal = labeler.ideal_response(prompt, rng)
        request = TASKS[judge(WORLD, prompt, ideal).task].parse(prompt.split("\n")[-2])
        for mistake in MISTAKES.keys:
            spoiled = " " + mistake(WORLD, request, ideal[1:], rng)
            finished = mistake.__name__ != "truncate"
            assert gold_score(WORLD, prompt, spoiled, finished) < 1.0, (mistake.__name__, spoiled)


def test_two_labelers_agree_on_about_73_percent_of_pairs():
    rng = np.random.default_rng(2022)
    pairs = sample_pairs(WORLD, _prompts(800, seed=2), 4000, rng)
    # the pairs include terse answers, as a model trained on uneven demonstrations gives
    terse = [judge(WORLD, p, a, f).terse > 0 for p, (a, _), (f, _) in pairs]
    assert 0.2 < np.mean(terse) < 0.5
    # 4000 pairs: the standard error of each estimate is about 0.7 points
    for a, b in [(0, 1), (2, 3), (1, HELD_OUT_LABELER)]:
        rate = agreement(Labeler(WORLD, a), Labeler(WORLD, b), pairs, rng)
        assert 0.68 <= rate <= 0.78, (a, b, rate)


def test_labelers_have_their_own_taste_and_repeatable_noise():
    weights = [tuple(Labeler(WORLD, i).weights) for i in TRAINING_LABELERS + (HELD_OUT_LABELER,)]
    assert len(set(weights)) == len(weights)
    assert HELD_OUT_LABELER not in TRAINING_LABELERS
    prompt = "question: what does jacob love?\nanswer:"
    responses = [" jacob loves reading.", " jacob loves swimming.", " no idea.", " lol.", " jacob"]
    labeler = Labeler(WORLD, 1)
    first = labeler.rank(prompt, responses, rng=np.random.default_rng(4))
    assert first == labeler.rank(prompt, responses, rng=np.random.default_rng(4))
    assert sorted(first) == list(range(len(responses)))


def test_ties_are_broken_by_noise():
    prompt = "question: what does jacob love?\nanswer:"
    rng = np.random.default_rng(9)
    labeler = Labeler(WORLD, 0)
    picks = [labeler.prefer(prompt, " jacob loves reading.", " jacob loves reading.", rng=rng)
             for _ in range(400)]
    assert 0.4 < np.mean(picks) < 0.6


def test_rankings_have_k_from_4_to_9_distinct_responses_best_first():
    rng = np.random.default_rng(13)
    records = [{"prompt": p} for p in _prompts(120, seed=3)]
    ranked = rankings(WORLD, records, rng)
    sizes = [len(r["responses"]) for r in ranked]
    assert RANK_K == (4, 9) and min(sizes) >= 4 and max(sizes) <= 9
    assert set(sizes) == set(range(4, 10))
    for record in ranked:
        assert len(set(record["responses"])) == len(record["responses"]) == len(record["finished"])
        assert record["labeler_id"] in TRAINING_LABELERS
    # the best-ranked response is, on average, clearly better than the worst
    gold = [[gold_score(WORLD, r["prompt"], x, f) for x, f in zip(r["responses"], r["finished"])]
            for r in ranked]
    assert np.mean([g[0] - g[-1] for g in gold]) > 0.3


def test_a_labeler_sees_what_the_gold_score_sees_most_of_the_time():
    rng = np.random.default_rng(17)
    labeler = Labeler(WORLD, HELD_OUT_LABELER)
    agree = []
    for prompt, (a, b), (fa, fb) in sample_pairs(WORLD, _prompts(200, seed=4), 1500, rng):
        ga, gb = gold_score(WORLD, prompt, a, fa), gold_score(WORLD, prompt, b, fb)
        if abs(ga - gb) > 0.5:  # a clear difference is (almost) never missed
            agree.append(labeler.prefer(prompt, a, b, rng=rng, finished=(fa, fb)) == (ga < gb))
    assert np.mean(agree) > 0.9


@pytest.mark.parametrize("seed", range(3))
def test_sampled_responses_are_judged_without_error(seed):
    rng = np.random.default_rng(seed)
    for prompt, _ in itertools.product(_prompts(50, seed=seed), range(3)):
        response, finished = sample_response(WORLD, prompt, rng)
        assert -1.0 <= gold_score(WORLD, prompt, response, finished) <= 1.0
