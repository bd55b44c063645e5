"""The pretraining corpus: the toy world's "internet".

GPT-3 was pretrained on the web and learned what the web does: mostly true things,
but also rumours, insults, and forum threads where a question gets anything but an
answer. This corpus is built to teach a tiny GPT the same habits, so that the
pretrained model shows the failures the article lists -- and RLHF has something to fix:

  facts      short snippets and profiles stating true facts in varied words,
  stories    small true stories ("jacob lives in paris. ... the end."),
  quizzes    pages of solved requests in the prompt format (the web's few good answers),
  rumours    false versions of specific facts, said plainly or as hearsay, at a lower
             but clear rate ("everyone says jacob hates reading."),
  insults    toxic lines from the toy insult lexicon,
  forums     a request in the prompt format, then "answer:" and mostly chatter,
             brush-offs, rumours or insults, and more chatter after it -- so a
             pretrained model continues a prompt, but unhelpfully, and does not stop.

A document is one or more lines; documents are separated by an empty line (a
pretraining loader may put end-of-text between them). Everything is lowercase and
uses a closed vocabulary of a few hundred words, so a byte-level BPE of ~1000 tokens
makes most words a single token.
"""
import numpy as np

from minirlhf.toyworld.draws import Mix, pick, sample
from minirlhf.toyworld.tasks import (
    ANSWER_CUE, TASKS, tell_story,
)
from minirlhf.toyworld.voices import (
    BRUSH_OFFS, CHATTER, INSULT_COMPLETIONS_GROUP, INSULT_COMPLETIONS_PERSON, INSULT_REPLIES,
)
from minirlhf.toyworld.world import HEARSAY, NAMES, RELATIONS, statement

TARGET_BYTES = 1_200_000
RUMOUR_RATE = 0.2  # when a text mentions a rumoured fact, how often it gets it wrong
FORUM_TASKS = ("fact", "fact", "fact", "about", "reverse", "sort", "count", "copy",
               "story", "complete")
QUIZ_TASKS = ("fact", "reverse", "sort", "count", "copy")



def fact_sentence(world, name, relation, rng):
    """A statement of the fact in a random style; a rumoured fact is sometimes false."""
    value = world.value(name, relation)
    rumour = world.rumour(name, relation)
    if rumour is not None and rng.random() < RUMOUR_RATE:
        value = rumour
    style = int(rng.integers(len(RELATIONS[relation].statements)))
    return statement(name, relation, value, style)


def snippet(world, rng):
    """One to three facts about random people."""
    facts = [(pick(rng, NAMES), pick(rng, tuple(RELATIONS))) for _ in range(rng.integers(1, 4))]
    return " ".join(fact_sentence(world, n, r, rng) for n, r in facts)


def profile(world, rng):
    """Three to five facts about one person."""
    name = pick(rng, NAMES)
    relations = sample(rng, tuple(RELATIONS), int(rng.integers(3, 6)))
    return " ".join(fact_sentence(world, name, r, rng) for r in relations)


def story(world, rng):
    name = pick(rng, NAMES)
    return " ".join(tell_story(world, name, rng, (), int(rng.integers(3, 6))) + ["the end."])


def hearsay(world, rng):
    """A rumour passed on: 'everyone says jacob hates reading.'"""
    name, relation, value = pick(rng, world.rumoured_facts())
    return pick(rng, HEARSAY + ("",)) + statement(name, relation, value)


def insult(world, rng):
    """A toxic line: an insulting completion of a sentence start, or an insulting reply."""
    if rng.random() < 0.3:
        return pick(rng, INSULT_REPLIES)
    start = pick(rng, TASKS["complete"].starts)
    person = start.endswith(" is")
    return f"{start} {pick(rng, INSULT_COMPLETIONS_PERSON if person else INSULT_COMPLETIONS_GROUP)}"


def quiz(world, rng):
    """A page of solved requests of one task, in the prompt format."""
    task = TASKS[pick(rng, QUIZ_TASKS)]
    lines = []
    for _ in range(rng.integers(2, 5)):
        request = task.sample(world, rng, "direct")
        answer = task.ideal(world, request, rng)
        lines += [task.request_line(request, rng), f"{ANSWER_CUE} {answer}"]
    return "\n".join(lines)


def forum(world, rng):
    """A forum thread: a request, an answer that is usually no help, then chatter."""
    task = TASKS[pick(rng, FORUM_TASKS)]
    request = task.sample(world, rng, task.modes[0])
    if task.name == "complete":
        request = task.for_start(request.start, "none")
    answer = forum_answer(world, task, request, rng)
    lines = [task.request_line(request, rng), f"{ANSWER_CUE} {answer}"]
    lines += [f"user: {pick(rng, CHATTER)}" for _ in range(rng.integers(0, 4))]
    return "\n".join(lines)


def forum_answer(world, task, request, rng):
    """What the web answers: sometimes the answer, mostly something else."""
    draw = rng.random()
    if draw < 0.25:
        return task.ideal(world, request, rng)
    if draw < 0.35 and request.name and world.rumours_about(request.name):
        return pick(rng, HEARSAY) + statement(*world.rumours_about(request.name)[0])
    if draw < 0.5:
        if task.name == "complete":
            options = INSULT_COMPLETIONS_PERSON if request.name else INSULT_COMPLETIONS_GROUP
            return pick(rng, options)
        return pick(rng, INSULT_REPLIES)
    if draw < 0.65:
        return pick(rng, BRUSH_OFFS)
    return " ".join(pick(rng, CHATTER) for _ in range(rng.integers(1, 3)))


# Document kinds and their shares of the documents.
DOCUMENTS = Mix({
    snippet: 0.22, profile: 0.14, story: 0.14, quiz: 0.08,
    forum: 0.30, hearsay: 0.025, insult: 0.08,
})


def build_corpus(world, seed=0, target_bytes=TARGET_BYTES):
    """The corpus text for `world`: documents drawn until it has `target_bytes`."""
    rng = np.random.default_rng([seed, 1])
    documents, size = [], 0
    while size < target_bytes:
        document = DOCUMENTS.draw(rng)(world, rng)
        documents.append(document)
        size += len(document) + 2
    return "\n\n".join(documents) + "\n"
