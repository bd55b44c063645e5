"""Prompts as a toy API's users send them: with user ids, of three kinds and three modes.

InstructGPT's prompts came from users of the OpenAI API, plus prompts labelers wrote
to fill thin categories. The article names the three kinds,

  plain       -- any arbitrary ask ("question: where does jacob live?"),
  few-shot    -- an instruction with several query/response pairs before it,
  user-based  -- a specific use case ("i am building a word game for kids."),

and the three request modes: direct ("tell me about ..."), few-shot ("given these two
examples of a story, write another") and continuation ("given the start of a story,
finish it"). Every prompt here has a `kind`, a `mode` and a `user_id`.

Real traffic is uneven, and the pool reproduces the three things InstructGPT's
curation had to clean up (see curation.py): a few users send a great many prompts
(user activity is heavy-tailed), some apps put the same long preamble in front of
every prompt, and some prompts contain personal information (fake e-mail addresses
and phone numbers).
"""
import numpy as np

from minirlhf.toyworld.draws import Mix, pick
from minirlhf.toyworld.tasks import TASKS, build_prompt
from minirlhf.toyworld.world import NAMES

KIND_MIX = Mix({"plain": 0.55, "few-shot": 0.2, "user-based": 0.25})
# Mostly open-ended requests, as on InstructGPT's API (generation 46%, open QA 12%,
# brainstorming 11%, ...); the word games stand in for its rewrite/extract/classify share.
TASK_MIX = Mix({"fact": 0.26, "about": 0.12, "reverse": 0.05, "sort": 0.05, "count": 0.05,
            "copy": 0.05, "story": 0.24, "complete": 0.18})
N_USERS = 1500
USER_ACTIVITY_EXPONENT = 0.6  # prompts of the k-th most active user ~ 1 / k**exponent
PII_RATE = 0.03               # share of prompts with an e-mail address or phone number

# Apps that wrap every request in the same long preamble; curation keeps one prompt
# per preamble (prompts sharing a long common prefix).
APP_PREAMBLES = (
    "you are the helper inside the town library app. read the request below from one of "
    "our readers and reply kindly, truthfully and in one short line, then stop.",
    "this message comes from the word game bot of the school club. solve the task that "
    "follows exactly as asked, check your answer twice, and add nothing else to it.",
    "welcome to the story corner of the kids website. please answer the next request "
    "for a young reader in one short and friendly line, and never use rude words.",
)
APP_PROMPTS = 12  # prompts each app sends
PII_LINES = ("my email is {email}, please help.", "you can call me at {phone}.",
             "write to {email} if you need more.", "my phone number is {phone}.")



def draw_prompt(world, rng, task=None, kind=None, context=()):
    """A random prompt record {"prompt", "task", "kind", "mode"}.

    Few-shot needs a task that has a few-shot form; otherwise the prompt is plain.
    """
    task = TASKS[task or TASK_MIX.draw(rng)]
    kind = kind or KIND_MIX.draw(rng)
    if kind == "few-shot" and "few-shot" not in task.modes:
        kind = "plain"
    mode = "few-shot" if kind == "few-shot" else task.modes[0]
    request = task.sample(world, rng, mode)
    lines = list(context)
    if kind == "few-shot":
        lines += task.examples(world, request, rng)
    elif kind == "user-based" and not context:
        lines.append(pick(rng, task.use_cases))
    prompt = build_prompt(task.request_line(request, rng), lines)
    return {"prompt": prompt, "task": task.name, "kind": kind, "mode": mode}


def pii_line(rng):
    """A line with a fake e-mail address or phone number."""
    name = pick(rng, NAMES)
    return pick(rng, PII_LINES).format(email=f"{name}{rng.integers(10, 100)}@mailbox.com",
                                        phone=f"555-{rng.integers(1000, 10000)}")


def user_ids(n_prompts, rng):
    """A heavy-tailed user id for each of n_prompts (Zipf-like activity)."""
    weights = 1.0 / np.arange(1, N_USERS + 1) ** USER_ACTIVITY_EXPONENT
    users = rng.choice(N_USERS, size=n_prompts, p=weights / weights.sum())
    return [f"u{u + 1:04d}" for u in users]


def prompt_pool(world, n_prompts, rng):
    """The raw prompts, as received: n_prompts from ordinary users plus the apps'
    prompts, in arrival order. Each record has "prompt", "user_id", "task", "kind",
    "mode"."""
    records = []
    for user in user_ids(n_prompts, rng):
        context = [pii_line(rng)] if rng.random() < PII_RATE else []
        records.append({**draw_prompt(world, rng, context=context), "user_id": user})
    for app, preamble in enumerate(APP_PREAMBLES):
        for _ in range(APP_PROMPTS):
            record = draw_prompt(world, rng, kind="user-based", context=[preamble])
            records.append({**record, "user_id": f"u{N_USERS + app + 1:04d}"})
    return [records[i] for i in rng.permutation(len(records))]
