"""An imperfect model without a model: ideal or terse answers spoiled by typical mistakes.

A fine-tuned model sampled at temperature 1 answers tersely as often as its
demonstrations did, and it is right often, but not always: it names the wrong city,
repeats a rumour, lets an insult slip, rambles on into forum chatter, repeats itself,
swaps two words of a reversal or runs out of length before it stops. `sample_response`
makes responses like that from the labeler's answers, so the labeler's noise can be
tuned on realistic pairs (InstructGPT's 73% agreement was measured on model samples,
not on random text), the reward model can be studied before any policy exists
(`comparisons.jsonl`), and tests can check the labeler against every kind of mistake.
"""
from minirlhf.toyworld.draws import Mix, pick
from minirlhf.toyworld.labeler import TERSE_RATE
from minirlhf.toyworld.tasks import TASKS, as_response, parse_prompt
from minirlhf.toyworld.voices import CHATTER, INSULT_REPLIES
from minirlhf.toyworld.world import ACTIVITIES, ANIMALS, JOBS, NUMBERS, PLACES

# Words a wrong answer may swap for another word of the same kind.
_KINDS = (PLACES, JOBS, ACTIVITIES, ANIMALS, NUMBERS)
_KIND_OF = {word: kind for kind in _KINDS for word in kind}


def wrong_value(world, request, text, rng):
    """Replace one place/job/activity/animal/number by another of the same kind."""
    words = text.split(" ")
    spots = [i for i, w in enumerate(words) if w.rstrip(".") in _KIND_OF]
    if not spots:
        return swap_words(world, request, text, rng)
    i = pick(rng, spots)
    word = words[i].rstrip(".")
    others = [w for w in _KIND_OF[word] if w != word]
    words[i] = words[i].replace(word, pick(rng, others))
    return " ".join(words)


def rumour(world, request, text, rng):
    """Say the rumour instead of the truth about one of the person's rumoured facts."""
    for name, relation, false in world.rumours_about(request.name):
        truth = world.value(name, relation)
        if f" {truth}" in f" {text}":
            return (" " + text).replace(" " + truth, " " + false, 1)[1:]
    return wrong_value(world, request, text, rng)


def insult(world, request, text, rng):
    reply = pick(rng, INSULT_REPLIES)
    return f"{reply} {text}" if rng.random() < 0.3 else f"{text} {reply}"


def chatter(world, request, text, rng):
    """Ramble on: more words on the line, or a forum reply on the next one."""
    line = pick(rng, CHATTER)
    return f"{text}\nuser: {line}" if rng.random() < 0.5 else f"{text} {line}"


def off_topic(world, request, text, rng):
    return " ".join(pick(rng, CHATTER) for _ in range(int(rng.integers(1, 3))))


def repeat(world, request, text, rng):
    """Say the last sentence (or word) twice."""
    if not text:
        return off_topic(world, request, text, rng)
    parts = text.split(". ")
    if len(parts) > 1 or text.endswith("."):
        last = parts[-1] if parts[-1].endswith(".") else parts[-1] + "."
        return f"{text} {last}"
    return f"{text} {text.split()[-1]}"


def swap_words(world, request, text, rng):
    words = text.split(" ")
    if len(words) < 2:
        return drop_word(world, request, text, rng)
    i = int(rng.integers(len(words) - 1))
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def drop_word(world, request, text, rng):
    words = text.split(" ")
    if len(words) < 2:
        return off_topic(world, request, text, rng)
    del words[int(rng.integers(len(words)))]
    return " ".join(words)


def truncate(world, request, text, rng):
    """Stop mid-answer: the model hit the length limit (the response is unfinished).
    A one-word answer cannot be cut, so the model rambled on past it instead."""
    words = text.split(" ")
    if len(words) < 2:
        return chatter(world, request, text, rng)
    return " ".join(words[: int(rng.integers(1, len(words)))])


# Mistakes and how often a sampled response makes each (a plausible SFT model's mix).
MISTAKES = Mix({
    wrong_value: 0.18, rumour: 0.10, insult: 0.08, chatter: 0.16, off_topic: 0.06,
    repeat: 0.10, swap_words: 0.10, drop_word: 0.08, truncate: 0.14,
})
N_MISTAKES = Mix({0: 0.3, 1: 0.45, 2: 0.25})  # how many mistakes a response makes


def sample_response(world, prompt, rng):
    """(response, finished) for `prompt`: an ideal answer -- or, as often as the
    labelers' demonstrations are, a terse one -- with 0-2 random mistakes."""
    request = parse_prompt(prompt)
    task = TASKS[request.task]
    terse = task.can_be_terse and rng.random() < TERSE_RATE
    text = (task.terse if terse else task.ideal)(world, request, rng)
    finished = True
    for _ in range(N_MISTAKES.draw(rng)):
        mistake = MISTAKES.draw(rng)
        text = mistake(world, request, text, rng)
        finished = finished and mistake is not truncate
    return as_response(text), finished


def distinct_responses(world, prompt, k, rng, max_tries=200):
    """k different sampled responses (and their finished flags) for one prompt, as
    a labeler would be shown for ranking."""
    seen = {}  # response -> finished, in the order first sampled
    for _ in range(max_tries):
        response, finished = sample_response(world, prompt, rng)
        seen.setdefault(response, finished)
        if len(seen) == k:
            break
    return list(seen), list(seen.values())


def sample_pairs(world, prompts, n_pairs, rng):
    """n_pairs of (prompt, (a, b), (finished_a, finished_b)): two independent samples
    for a random prompt, identical responses included, as a model produces them."""
    pairs = []
    for _ in range(n_pairs):
        prompt = prompts[rng.integers(len(prompts))]
        a, fa = sample_response(world, prompt, rng)
        b, fb = sample_response(world, prompt, rng)
        pairs.append((prompt, (a, b), (fa, fb)))
    return pairs

