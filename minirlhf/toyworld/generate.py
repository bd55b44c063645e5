"""`minirlhf data`: build the whole toy world's data, deterministically.

    minirlhf data                  # writes data/ with seed 0 (what the repo ships)
    minirlhf data --out my_data --seed 7

One seed fixes everything: the fact table, the corpus, the users and their prompts,
the demonstrations and the rankings. Each part draws from its own random stream
(`np.random.default_rng([seed, part])`), so changing how one part is made does not
reshuffle the others, and the same seed gives byte-identical files.
"""
import functools
import json
import os
import re
import time

import numpy as np

from minirlhf.datasets import atomic_write_text, write_jsonl
from minirlhf.errors import MinirlhfError
from minirlhf.flags import non_negative_int
from minirlhf.toyworld.corpus import build_corpus
from minirlhf.toyworld.curation import article_steps, curate, drop_listed, drop_long
from minirlhf.toyworld.draws import pick
from minirlhf.toyworld.labeler import TRAINING_LABELERS, Labeler, judge
from minirlhf.toyworld.perturb import distinct_responses
from minirlhf.toyworld.prompts import prompt_pool
from minirlhf.toyworld.readme import render_readme
from minirlhf.toyworld.splits import (
    harmlessness_set, shared_prompts, split_pool, truthfulness_set,
)
from minirlhf.toyworld.tasks import TASKS
from minirlhf.toyworld.world import build_world

DEFAULT_SEED = 0
RAW_PROMPTS = 11000  # ordinary users' prompts before curation
RANK_K = (4, 9)     # responses per ranking, as InstructGPT's labelers saw them
MAX_PROMPT_TOKENS = 80  # of the models' 128-token context, leaving 48 for the answer
# One random stream per part (stream 0 is the world's, 1 the corpus's).
_POOL, _HARMLESSNESS, _DEMOS, _RANKINGS = 2, 3, 4, 5
_TOKEN = re.compile(r"[a-z]+|[^a-z ]")


def estimated_tokens(text, vocabulary=None):
    """About the token count of a BPE trained on the corpus: one per word of the
    corpus's `vocabulary` or mark, one per letter of a word the corpus never uses (a
    user's app description: the BPE learned no merges for it). Without a vocabulary,
    every word counts as one token."""
    return sum(len(w) if vocabulary is not None and w.isalpha() and w not in vocabulary else 1
               for w in _TOKEN.findall(text))


def demonstrations(world, records, rng):
    """SFT data: each prompt with the response a training labeler writes for it
    (correct and polite, but often terse: see `Labeler.write_demonstration`)."""
    labelers = [Labeler(world, i) for i in TRAINING_LABELERS]
    demos = []
    for record in records:
        labeler = pick(rng, labelers)
        response = labeler.write_demonstration(record["prompt"], rng)
        demos.append({**record, "response": response, "labeler_id": labeler.labeler_id})
    return demos


def rankings(world, records, rng):
    """RM data: K = 4..9 distinct responses of the imperfect-model stand-in per prompt,
    ranked best to worst by a training labeler."""
    labelers = [Labeler(world, i) for i in TRAINING_LABELERS]
    ranked = []
    for record in records:
        labeler = pick(rng, labelers)
        k = int(rng.integers(RANK_K[0], RANK_K[1] + 1))
        responses, finished = distinct_responses(world, record["prompt"], k, rng)
        if len(responses) < RANK_K[0]:
            raise RuntimeError(f"only {len(responses)} distinct responses for {record['prompt']!r}")
        order = labeler.rank(record["prompt"], responses, finished, rng=rng)
        ranked.append({**record, "responses": [responses[i] for i in order],
                       "finished": [finished[i] for i in order], "labeler_id": labeler.labeler_id})
    return ranked


def build_datasets(seed=DEFAULT_SEED):
    """Everything `minirlhf data` writes, in memory: (files, summary).

    files maps a file name to its records (JSONL), text (corpus) or JSON object.
    """
    world = build_world(seed)
    truthfulness = truthfulness_set(world)
    harmlessness = harmlessness_set(world, np.random.default_rng([seed, _HARMLESSNESS]))
    benchmark_prompts = {r["prompt"] for r in truthfulness + harmlessness}

    corpus = build_corpus(world, seed)
    vocabulary = set(re.findall(r"[a-z]+", corpus))
    pool = prompt_pool(world, RAW_PROMPTS, np.random.default_rng([seed, _POOL]))
    steps = article_steps() + [
        (f"fits the context (at most {MAX_PROMPT_TOKENS} tokens)",
         functools.partial(drop_long, count=functools.partial(estimated_tokens, vocabulary=vocabulary),
                           max_tokens=MAX_PROMPT_TOKENS)),
        ("not in an evaluation benchmark", functools.partial(drop_listed, prompts=benchmark_prompts)),
    ]
    curated, log = curate(pool, steps)
    pool_splits = split_pool(curated)
    splits = {**pool_splits, "eval_truthfulness": truthfulness, "eval_harmlessness": harmlessness}
    shared = shared_prompts(splits)
    if shared:
        raise RuntimeError(f"prompts in two splits: {list(shared.items())[:3]}")

    files = {
        "world.json": world.to_json(),
        "corpus.txt": corpus,
        "sft.jsonl": demonstrations(world, splits["sft"], np.random.default_rng([seed, _DEMOS])),
        "rm_prompts.jsonl": splits["rm"],
        "comparisons.jsonl": rankings(world, splits["rm"],
                                      np.random.default_rng([seed, _RANKINGS])),
        "ppo_prompts.jsonl": splits["ppo"],
        "eval_helpfulness.jsonl": splits["eval_helpfulness"],
        "eval_truthfulness.jsonl": truthfulness,
        "eval_harmlessness.jsonl": harmlessness,
    }
    curation_log = {
        "seed": seed, "raw_prompts": len(pool), "steps": log,
        "curated_prompts": len(curated),
        "split_sizes": {name: len(records) for name, records in splits.items()},
        "unused_after_splitting": len(curated) - sum(map(len, pool_splits.values())),
    }
    files["curation_log.json"] = curation_log
    return files, _summary(world, files, curation_log)


def _summary(world, files, curation_log):
    lengths = [estimated_tokens(d["prompt"] + d["response"]) for d in files["sft.jsonl"]]
    corpus = files["corpus.txt"]
    return {
        "seed": world.seed,
        "counts": {name: len(content) for name, content in files.items()
                   if name.endswith(".jsonl")},
        "corpus": {"bytes": len(corpus.encode("utf-8")), "documents": corpus.count("\n\n") + 1,
                   "distinct_words": len(set(re.findall(r"[a-z]+", corpus)))},
        "sft_rough_tokens": {"mean": round(float(np.mean(lengths)), 1), "max": int(max(lengths))},
        "rumours": len(world.rumours),
        "terse_demos": _terse_demos(world, files["sft.jsonl"]),
        "examples": _examples(files["sft.jsonl"]),
        "curation": curation_log,
    }


def _terse_demos(world, demos):
    """How many demonstrations are terse, of those whose task has a terse form."""
    can_be_terse = [d for d in demos if TASKS[d["task"]].can_be_terse]
    terse = sum(judge(world, d["prompt"], d["response"]).terse > 0 for d in can_be_terse)
    return {"terse": int(terse), "of": len(can_be_terse)}


def _examples(demos):
    """One demonstration per task, then one few-shot and one user-based prompt."""
    chosen = {}
    for demo in demos:
        if demo["kind"] == "plain":
            chosen.setdefault(demo["task"], demo)
    for kind in ("few-shot", "user-based"):
        chosen[f"{kind} prompt"] = next(d for d in demos if d["kind"] == kind)
    return {label: {"prompt": d["prompt"], "response": d["response"]}
            for label, d in chosen.items()}


def _serialise(name, content):
    if name.endswith(".txt"):
        return content
    return json.dumps(content, ensure_ascii=False, indent=2) + "\n"


def write_datasets(out_dir, seed=DEFAULT_SEED):
    """Build and write every file into `out_dir`; return the summary with file sizes."""
    files, summary = build_datasets(seed)
    sizes = {}
    for name, content in files.items():
        path = os.path.join(out_dir, name)
        if name.endswith(".jsonl"):
            write_jsonl(path, content)
        else:
            atomic_write_text(path, _serialise(name, content))
        sizes[name] = os.path.getsize(path)
    summary["bytes"] = sizes
    readme = render_readme(summary)
    atomic_write_text(os.path.join(out_dir, "README.md"), readme)
    summary["bytes"]["README.md"] = len(readme.encode("utf-8"))
    return summary


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "data",
        help="regenerate the toy world's datasets (corpus, SFT, rankings, prompts, eval sets)",
        description="Build the toy world -- a seeded fact table, a pretraining corpus with "
        "rumours, insults and unhelpful forum threads, curated user prompts, labeler-written "
        "demonstrations, rankings and held-out evaluation sets -- and write it to --out. "
        "The same seed always gives byte-identical files; the repository's data/ is seed 0.",
    )
    parser.add_argument("--out", default="data", help="folder to write into (default: data)")
    parser.add_argument("--seed", type=non_negative_int, default=DEFAULT_SEED,
                        help=f"world seed (default: {DEFAULT_SEED})")
    parser.set_defaults(func=run)


def run(args):
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise MinirlhfError(f"--out {args.out}: exists and is not a folder")
    started = time.perf_counter()
    summary = write_datasets(args.out, args.seed)
    print(format_summary(args.out, summary, time.perf_counter() - started))


def format_summary(out_dir, summary, seconds):
    lines = [f"wrote {out_dir}/ (seed {summary['seed']}) in {seconds:.1f} s"]
    for name, size in summary["bytes"].items():
        count = summary["counts"].get(name)
        records = f"  {count:5d} records" if count else ""
        lines.append(f"  {name:<24} {size / 1024:8.1f} KB{records}")
    curation = summary["curation"]
    lines.append(f"curation: {curation['raw_prompts']} raw prompts")
    for step in curation["steps"]:
        lines.append(f"  - {step['step']}: removed {step['removed']}, {step['after']} left")
    return "\n".join(lines)
