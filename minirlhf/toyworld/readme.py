"""The data card: `data/README.md`, written by `minirlhf data` next to the files it
describes, so its counts, sizes and examples always match them."""
import json

from minirlhf.toyworld.curation import MAX_PER_USER
from minirlhf.toyworld.labeler import (
    ASPECTS, GOLD_WEIGHTS, HELD_OUT_LABELER, NOISE_SD, TASTE_SD, TERSE_RATE, TRAINING_LABELERS,
)
from minirlhf.toyworld.tasks import TASKS
from minirlhf.toyworld.world import NAMES, RELATIONS

FILES = {
    "corpus.txt": "pretraining text; documents separated by an empty line",
    "sft.jsonl": "SFT demonstrations: prompt + the response a labeler wrote (often terse)",
    "rm_prompts.jsonl": "prompts for reward-model rankings (sample K = 4..9 responses, rank them)",
    "comparisons.jsonl": "rankings of stand-in model responses for the RM prompts, best first",
    "ppo_prompts.jsonl": "prompts for PPO",
    "eval_helpfulness.jsonl": "held-out prompts for win rates (all tasks, kinds and modes)",
    "eval_truthfulness.jsonl": "questions whose rumoured answer is false",
    "eval_harmlessness.jsonl": "sentence starts under three conditions (respectful / none / toxic)",
    "world.json": "the fact table and the rumours (the labeler needs it)",
    "curation_log.json": "counts of every curation step and split",
    "README.md": "this file",
}

TEMPLATE = """\
# The toy world's data

Written by `minirlhf data --out DIR --seed {seed}`; do not edit by hand. The same seed
always gives byte-identical files, so `minirlhf data` restores this folder exactly.

## Files

| file | size | records | what |
| --- | ---: | ---: | --- |
{file_rows}

## The prompt and response format

A prompt is lines joined by `\\n`. Its **last line is the cue `answer:`**; the line
before it is the request; anything earlier is context (a user's use case, or few-shot
examples, each a request line followed by `answer: <its answer>`). A response is what
follows the cue: **one line that starts with a space** and ends where the model emits
end-of-text. A training sequence is `encode(prompt) + encode(response) + [end-of-text]`,
the same text the corpus's forum threads and quiz pages contain. Everything is lowercase.

Examples, one per task (as JSON strings, so the newlines and the response's leading
space show):

{examples}

The labeler reads prompts it has never seen as long as they use the world's request
forms (`minirlhf.toyworld.tasks`); others get an error saying which part it cannot read.

## Record formats (JSONL: one JSON object per line, UTF-8)

- `sft.jsonl`: `{{"prompt": str, "response": str, ...}}`
- `comparisons.jsonl`: `{{"prompt": str, "responses": [best, ..., worst], ...}}`, optionally
  with `"finished": [bool, ...]` (`false` marks a response cut off without end-of-text)
- prompt files: `{{"prompt": str, ...}}`
- extra keys are allowed and kept. Here: `task`, `kind` (plain / few-shot / user-based),
  `mode` (direct / few-shot / continuation), `user_id`, `labeler_id`; truthfulness items
  add `name`, `relation`, `truth`, `rumour`; harmlessness items add `condition`, `start`.
- `corpus.txt`: any UTF-8 text; documents separated by an empty line.

Your own files in these formats load with `minirlhf.datasets` (`load_corpus`, `load_sft`,
`load_comparisons`, `load_prompts`); a malformed line stops with its file and line number.

## The world

{n_people} people; each lives in a place, works as something, loves one activity, hates
another and has a pet ({n_facts} facts in `world.json`). "jacob loves reading" holds in
every world. {n_rumours} facts have a rumour -- a false value the corpus repeats at a
lower rate ("everyone says jacob hates reading"). The corpus: {corpus_bytes} bytes,
{documents} documents, {distinct_words} distinct words: a byte-level BPE of 1024 tokens
trained on the corpus makes almost every word one token. An SFT prompt + response is
{mean_tokens} words and punctuation marks long on average, at most {max_tokens}.

## Curation ({raw} raw prompts from heavy-tailed users)

| step | before | removed | after |
| --- | ---: | ---: | ---: |
{curation_rows}

At most {max_per_user} prompts per user id stands for the article's 200. Then the curated
prompts are cut into disjoint splits: {splits}.

## The labeler

`minirlhf.toyworld.labeler` judges a (prompt, response) pair on each aspect
({aspects}); the gold score is `1 - sum(weight * penalty)` in [-1, 1], with
weights {weights}.

Demonstrations are uneven, rankings are not: for the tasks where a correct answer can
be more or less complete ({terse_tasks}), a labeler writing a demonstration gives the
terse form with probability {terse_rate} ("lives in paris." instead of "jacob lives in
paris.", one or two facts of five, a one-sentence story, "kind." instead of "a kind
baker who loves reading."): {terse} of the {can_be_terse} such demonstrations in `sft.jsonl` are
terse. A terse answer is correct, just less helpful (the `terse` penalty), and when
labelers compare answers they prefer the complete one -- so rankings teach what the
demonstrations do not, the room RLHF has to improve on SFT. The evaluation's reference
answers (`Labeler.ideal_response`) are always complete.

A `Labeler(world, id)` ranks with its own taste (weights `weight * exp({taste_sd} z)`,
z drawn from its id) plus fresh noise (sd {noise_sd}) on every judgement, so two labelers
agree on about 73% of pairs of typical model samples. Training labelers: {training};
the held-out labeler for evaluation: {held_out}.
"""


def render_readme(summary):
    counts, sizes, curation = summary["counts"], summary["bytes"], summary["curation"]
    file_rows = "\n".join(
        f"| `{name}` | {f'{sizes[name] / 1024:.0f} KB' if name in sizes else ''} | "
        f"{counts.get(name, '')} | {what} |"
        for name, what in FILES.items()
    )
    examples = "\n".join(
        f"- {label}\n\n      prompt:   {json.dumps(example['prompt'])}\n"
        f"      response: {json.dumps(example['response'])}\n"
        for label, example in summary["examples"].items()
    )
    curation_rows = "\n".join(f"| {s['step']} | {s['before']} | {s['removed']} | {s['after']} |"
                              for s in curation["steps"])
    splits = ", ".join(f"{name} {size}" for name, size in curation["split_sizes"].items())
    return TEMPLATE.format(
        seed=summary["seed"], file_rows=file_rows, examples=examples,
        n_people=len(NAMES), n_facts=len(NAMES) * len(RELATIONS), n_rumours=summary["rumours"],
        corpus_bytes=summary["corpus"]["bytes"], documents=summary["corpus"]["documents"],
        distinct_words=summary["corpus"]["distinct_words"],
        mean_tokens=summary["sft_rough_tokens"]["mean"],
        max_tokens=summary["sft_rough_tokens"]["max"],
        raw=curation["raw_prompts"], curation_rows=curation_rows, max_per_user=MAX_PER_USER,
        splits=splits, aspects=", ".join(ASPECTS),
        weights=", ".join(f"{a} {w}" for a, w in zip(ASPECTS, GOLD_WEIGHTS)),
        terse_tasks=", ".join(name for name, task in TASKS.items() if task.can_be_terse),
        terse_rate=TERSE_RATE, terse=summary["terse_demos"]["terse"],
        can_be_terse=summary["terse_demos"]["of"],
        taste_sd=TASTE_SD, noise_sd=NOISE_SD,
        training=", ".join(map(str, TRAINING_LABELERS)), held_out=HELD_OUT_LABELER,
    )
