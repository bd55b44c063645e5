"""Each curation rule removes exactly what it claims to, and keeps the rest in order."""
import numpy as np
import pytest

from minirlhf.toyworld.curation import (
    article_steps, cap_per_user, contains_pii, curate, drop_duplicates, drop_listed, drop_long, drop_pii,
    drop_shared_prefixes,
)
from minirlhf.toyworld.generate import estimated_tokens
from minirlhf.toyworld.prompts import draw_prompt, pii_line, prompt_pool
from minirlhf.toyworld.world import build_world

WORLD = build_world(0)


def records(*prompts, user="u1"):
    return [{"prompt": p, "user_id": user} for p in prompts]


def test_cap_per_user_keeps_each_users_first_n():
    heavy = records(*(f"heavy {i}" for i in range(25)), user="heavy")
    light = records("light 0", "light 1", user="light")
    exact = records(*(f"exact {i}" for i in range(20)), user="exact")
    pool = [heavy[0], light[0], *heavy[1:12], *exact, light[1], *heavy[12:]]
    kept, removed = cap_per_user(pool, max_per_user=20)
    assert removed == heavy[20:]
    assert kept == [r for r in pool if r not in heavy[20:]]


def test_duplicates_go_first_occurrences_stay():
    pool = records("a\nanswer:", "b\nanswer:", "a\nanswer:", "c\nanswer:", "b\nanswer:")
    kept, removed = drop_duplicates(pool)
    assert kept == [pool[0], pool[1], pool[3]]
    assert removed == [pool[2], pool[4]]


def test_shared_long_prefixes_go_shorter_overlaps_stay():
    preamble = "x" * 40
    long_a, long_b = preamble + "a" * 10 + "tail one", preamble + "a" * 10 + "tail two"
    near = preamble + "a" * 9 + "b tail"   # agrees on only 49 of the first 50 characters
    short_twin = "short"                   # shorter than the prefix: not this rule's business
    pool = records(long_a, near, long_b, short_twin, short_twin)
    kept, removed = drop_shared_prefixes(pool, prefix_chars=50)
    assert removed == [pool[2]]
    assert kept == [pool[0], pool[1], pool[3], pool[4]]


@pytest.mark.parametrize("text", [
    "my email is anna.k@mailbox.com, please help.", "write to Bob_99@Example.co.uk now",
    "call me at 555-1234.", "my number is 555 123 4567", "phone: +44 555-123-4567",
])
def test_pii_is_found(text):
    assert contains_pii(text)
    kept, removed = drop_pii(records(text, "question: where does jacob live?\nanswer:"))
    assert [r["prompt"] for r in removed] == [text] and len(kept) == 1


@pytest.mark.parametrize("text", [
    "question: where does jacob live?\nanswer:", "meet me @ the market", "in 2022 we had 12 cats",
    "count the words: cat dog\nanswer:", "the code is 12-34",
])
def test_no_pii_is_not_flagged(text):
    assert not contains_pii(text)


def test_pii_detector_on_generated_prompts():
    rng = np.random.default_rng(0)
    assert all(contains_pii(pii_line(rng)) for _ in range(300))
    assert not any(contains_pii(draw_prompt(WORLD, rng)["prompt"]) for _ in range(1000))


def test_drop_listed():
    pool = records("a", "b", "c")
    assert drop_listed(pool, {"b", "z"}) == ([pool[0], pool[2]], [pool[1]])


def test_drop_long_keeps_exactly_the_prompts_within_the_limit():
    pool = records("a b", "a b c d", "a b c")
    assert drop_long(pool, lambda p: len(p.split()), 3) == ([pool[0], pool[2]], [pool[1]])


def test_words_the_corpus_never_uses_count_a_token_per_letter():
    vocabulary = {"jacob", "loves", "reading"}
    assert estimated_tokens("jacob loves reading.", vocabulary) == 4
    assert estimated_tokens("jacob loves webapps.", vocabulary) == 2 + len("webapps") + 1


def test_curate_logs_every_step_on_a_real_pool():
    pool = prompt_pool(WORLD, 1500, np.random.default_rng(1))
    kept, log = curate(pool, article_steps(max_per_user=10))
    assert [step["before"] for step in log[1:]] == [step["after"] for step in log[:-1]]
    assert all(s["before"] - s["removed"] == s["after"] for s in log)
    assert log[-1]["after"] == len(kept)
    assert all(s["removed"] > 0 for s in log)  # the pool has something for every rule
    assert max(np.unique([r["user_id"] for r in kept], return_counts=True)[1]) <= 10
    assert not any(contains_pii(r["prompt"]) for r in kept)
    assert len({r["prompt"] for r in kept}) == len(kept)
    kept_ids = {id(r) for r in kept}
    assert kept == [r for r in pool if id(r) in kept_ids]  # order kept
