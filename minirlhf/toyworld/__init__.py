"""The toy world: a small, seeded stand-in for the web, the API users and the labelers.

InstructGPT needed a web to pretrain on, user prompts, 40 labelers who wrote and
ranked answers, and benchmarks. This package makes all of them, small enough for a
tiny GPT to learn in minutes, and built so that each stage of RLHF visibly fixes
something measurable:

  world.py      the facts (people, places, jobs, activities, pets) and rumours
  templates.py  sentence shapes that can be both written and read back
  tasks.py      the instruction tasks and the prompt format ("...\\nanswer:")
  voices.py     the web's other voices: chatter, brush-offs, insults
  corpus.py     the pretraining corpus (true facts, stories, rumours, insults, forums)
  prompts.py    user prompts with user ids, three kinds and three modes
  curation.py   the article's curation: per-user cap, shared prefixes, PII
  splits.py     disjoint SFT / RM / PPO / evaluation sets, and the benchmarks
  labeler.py    the labeler: judgements, gold score, noisy rankings
  perturb.py    an imperfect model's answers without a model (for rankings, tests)
  generate.py   `minirlhf data`: everything, deterministically, into data/

Typical use::

    world = World.load("data/world.json")
    judge(world, prompt, response)                 # correct, truthful, toxic, ...
    gold_score(world, prompt, response)            # noiseless quality in [-1, 1]
    Labeler(world, HELD_OUT_LABELER).prefer(prompt, a, b, rng=rng)
"""
from minirlhf.toyworld.labeler import (
    HELD_OUT_LABELER, TRAINING_LABELERS, Judgement, Labeler, gold_score, judge,
)
from minirlhf.toyworld.tasks import ANSWER_CUE, PromptFormatError, parse_prompt
from minirlhf.toyworld.world import World, build_world

__all__ = [
    "ANSWER_CUE", "HELD_OUT_LABELER", "TRAINING_LABELERS", "Judgement", "Labeler",
    "PromptFormatError", "World", "build_world", "gold_score", "judge", "parse_prompt",
]
