"""The tasks: prompts read back to what was asked, ideal answers get full marks, terse
answers are correct but cost their thoroughness penalty."""
import numpy as np
import pytest

from minirlhf.toyworld.labeler import ASPECTS, GOLD_WEIGHTS, judge
from minirlhf.toyworld.prompts import draw_prompt
from minirlhf.toyworld.tasks import TASKS, PromptFormatError, build_prompt, parse_prompt
from minirlhf.toyworld.world import build_world

WORLD = build_world(0)
KINDS = ("plain", "few-shot", "user-based")


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("kind", KINDS)
def test_prompts_read_back_and_ideal_answers_are_perfect(task, kind):
    rng = np.random.default_rng(7)
    for _ in range(30):
        record = draw_prompt(WORLD, rng, task=task, kind=kind)
        request = parse_prompt(record["prompt"])
        assert request.task == task
        response = TASKS[task].ideal(WORLD, request, rng)
        verdict = judge(WORLD, record["prompt"], " " + response)
        assert (verdict.correct, verdict.follows_format, verdict.toxic) == (1.0, True, False), response
        assert verdict.truthful in (True, None)
        assert verdict.score == 1.0


TERSE_WEIGHT = GOLD_WEIGHTS[ASPECTS.index("terse")]


@pytest.mark.parametrize("task", sorted(t for t in TASKS if TASKS[t].can_be_terse))
@pytest.mark.parametrize("kind", KINDS)
def test_terse_answers_are_correct_but_not_thorough(task, kind):
    rng = np.random.default_rng(8)
    for _ in range(30):
        prompt = draw_prompt(WORLD, rng, task=task, kind=kind)["prompt"]
        response = TASKS[task].terse(WORLD, parse_prompt(prompt), rng)
        verdict = judge(WORLD, prompt, " " + response)
        assert (verdict.correct, verdict.follows_format, verdict.toxic) == (1.0, True, False), response
        assert verdict.truthful in (True, None)
        assert 0.5 <= verdict.terse <= 1.0
        assert verdict.score == pytest.approx(1.0 - TERSE_WEIGHT * verdict.terse)


def test_only_the_open_ended_tasks_have_a_terse_form():
    """Counting, reversing, sorting and copying: the answer is the result itself."""
    assert {t for t in TASKS if TASKS[t].can_be_terse} == {"fact", "about", "story", "complete"}


def test_request_fields_survive_the_round_trip():
    rng = np.random.default_rng(3)
    for task in TASKS.values():
        for mode in task.modes:
            request = task.sample(WORLD, rng, mode)
            read = parse_prompt(build_prompt(task.request_line(request, rng)))
            assert read == request


def test_few_shot_examples_never_give_the_answer_away():
    rng = np.random.default_rng(5)
    for _ in range(50):
        prompt = draw_prompt(WORLD, rng, task="fact", kind="few-shot")["prompt"]
        lines = prompt.split("\n")
        assert lines[-2] not in lines[:-2]


def test_user_written_prompts_in_the_toy_format_are_read():
    request = parse_prompt("Question: Where does Jacob live?\r\nanswer: ")
    assert (request.task, request.name, request.relation) == ("fact", "jacob", "lives")
    story = parse_prompt("i like stories.\ncontinue the story: emma lives in rome.\nanswer:")
    assert (story.task, story.name, story.story) == ("story", "emma", ("emma lives in rome",))


@pytest.mark.parametrize("prompt, message", [
    ("where does jacob live?", "answer:"),
    ("question: where does jacob live?\nresponse:", "answer:"),
    ("make me a sandwich\nanswer:", "cannot read the request 'make me a sandwich'"),
    ("question: where does bob live?\nanswer:", "unknown person 'bob'"),
    ("complete the sentence: the weather is\nanswer:", "unknown sentence start"),
    ("continue the story: it was a dark night.\nanswer:", "cannot tell who the story"),
])
def test_unreadable_prompts_get_a_clear_error(prompt, message):
    with pytest.raises(PromptFormatError, match=message):
        parse_prompt(prompt)
