"""Evaluation: is the fine-tuned model better, by the measures the article reports?

The article ("Evaluation of the Model") judges InstructGPT on held-out prompts, by
labelers who wrote none of the training data, on three things:

  helpfulness   the labeler sees two models' answers to the same prompt and prefers
                one; the *win rate* of A over B is the share of prompts where A's
                answer wins (InstructGPT 175B over GPT-3: 85 ± 3%).
  truthfulness  TruthfulQA-style questions whose popular answer is false: the share of
                answers that are truthful and informative, and the share that repeat a
                falsehood (here: a rumour the pretraining corpus spreads).
  harmlessness  RealToxicityPrompts-style sentence starts under three conditions --
                asked to be respectful, no instruction, asked to be toxic -- and the
                share of toxic completions under each.

The toy world makes all of it measurable by program: the held-out labeler
(`HELD_OUT_LABELER`) judges, and its noiseless gold score gives one more number, the
mean quality of the answers -- the "true" reward that a reward model only
approximates. A reference row, the labeler's own ideal answers ("demonstrations",
gold score 1), shows how far each model still has to go.

    minirlhf eval --models base=runs/pretrain,sft=runs/sft,ppo=runs/ppo --out runs/eval

writes report.json (the numbers), report.md (the tables a teacher projects), one PNG
per measure, samples.jsonl (every answer with its judgement) and, for a PPO run
directory, the reward over-optimisation picture.

`--best-of sft:8 --reward runs/reward` adds two rows: the best of 8 SFT samples by the
reward model (RLHF without the RL) and by the gold score (what a perfect reward model
would pick) -- how much room the SFT model's own samples leave for RLHF.
"""
import argparse
import json
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from minirlhf import eval_plots
from minirlhf.checkpoint import load_gpt
from minirlhf.datasets import atomic_write_text, load_prompts, write_jsonl
from minirlhf.errors import MinirlhfError
from minirlhf.flags import non_negative_int, positive_float, positive_int
from minirlhf.sample import complete, resolve_checkpoint
from minirlhf.reward import load_reward_model, score_texts
from minirlhf.toyworld.labeler import HELD_OUT_LABELER, TRAINING_LABELERS, Labeler, gold_score, judge
from minirlhf.toyworld.tasks import CONDITIONS, TASKS, parse_prompt, sentences
from minirlhf.toyworld.world import World, parse_claim

EVAL_FILES = {
    "helpfulness": "eval_helpfulness.jsonl",
    "truthfulness": "eval_truthfulness.jsonl",
    "harmlessness": "eval_harmlessness.jsonl",
}
REFERENCE = "demonstrations"  # the reference row: the labeler's ideal answers
CONDITION_LABELS = {"respectful": "asked to be respectful", "none": "no instruction", "toxic": "asked to be toxic"}
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
# Twice the longest ideal answer (an "about" answer: ~25 BPE tokens), so a model that
# rambles is cut off (and judged unfinished) while every good answer fits.
MAX_NEW_TOKENS = 48


# ----------------------------------------------------------------------------
# statistics


def wilson_interval(successes, n, z=Z95):
    """The Wilson score interval for a binomial proportion (95% for the default z).

    With p = successes / n, the interval is
        (p + z^2/2n  ±  z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n).
    Unlike p ± z sqrt(p(1-p)/n) it never leaves [0, 1] and stays honest near 0% and
    100% and for small n -- where win rates and toxicity rates often are.
    """
    if n <= 0:
        raise ValueError("a proportion of zero trials has no interval")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def proportion(flags):
    """{"value", "ci95", "n"} for a list of true/false outcomes (Wilson interval);
    value and ci95 are None when there are no outcomes."""
    n = len(flags)
    if n == 0:
        return {"value": None, "ci95": None, "n": 0}
    k = int(sum(bool(f) for f in flags))
    return {"value": k / n, "ci95": list(wilson_interval(k, n)), "n": n}


def mean_stderr(values):
    """{"mean", "stderr", "n"}: the mean and its standard error std / sqrt(n)."""
    values = np.asarray(values, dtype=np.float64)
    stderr = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "stderr": stderr, "n": int(len(values))}


# ----------------------------------------------------------------------------
# the evaluation sets


def load_eval_sets(data_dir):
    """(world, {"helpfulness": [...], "truthfulness": [...], "harmlessness": [...]})
    from a folder like data/: world.json and the three eval_*.jsonl files.

    Every prompt must be one the labeler can read, and every harmlessness record needs a
    "condition" (respectful / none / toxic); problems are reported before any model
    runs, naming the file and record."""
    data_dir = Path(data_dir)
    world = World.load(data_dir / "world.json")
    sets = {name: load_prompts(data_dir / filename) for name, filename in EVAL_FILES.items()}
    for name, records in sets.items():
        path = data_dir / EVAL_FILES[name]
        for number, record in enumerate(records, start=1):
            try:
                parse_prompt(record["prompt"])
            except MinirlhfError as e:
                raise MinirlhfError(f"{path}: record {number}: {e}") from None
            if name == "harmlessness" and record.get("condition") not in CONDITIONS:
                raise MinirlhfError(f"{path}: record {number}: 'condition' must be one of "
                                    f"{', '.join(CONDITIONS)}, got {record.get('condition')!r}")
    return world, sets


# ----------------------------------------------------------------------------
# responders: anything that answers prompts


def model_responder(model, tokenizer, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, batch_size=256, desc=None):
    """A responder `respond(prompts, rng) -> [(text, finished)]` that samples from a GPT.

    Prompts are sorted by length and generated in batches of `batch_size` with the KV
    cache, so a batch's rows start and stop close together; the answers come back in
    the prompts' order. `desc` shows a progress bar with that label."""
    context = model.config.block_size

    def respond(prompts, rng):
        lengths = [len(tokenizer.encode(p)) for p in prompts]
        for prompt, length in zip(prompts, lengths):
            if length >= context:
                raise MinirlhfError(f"{desc or 'the model'}: the prompt {prompt[-50:]!r} has {length} "
                                    f"tokens; the model's context is {context}")
        order = np.argsort(lengths, kind="stable")
        answers = [None] * len(prompts)
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", disable=desc is None, leave=False):
            chunk = order[start:start + batch_size]
            outputs = complete(model, tokenizer, [prompts[i] for i in chunk], rng, max_new_tokens, temperature)
            for i, output in zip(chunk, outputs):
                answers[i] = output
        return answers

    return respond


def best_of_responder(respond, k, rate):
    """Best-of-k (rejection sampling): a responder that samples k answers per prompt
    with `respond` and keeps the one `rate(prompts, answers) -> scores` rates highest.

    Rated by the reward model it is RLHF without the RL (WebGPT's best-of-n, the
    x-axis of Gao et al.'s over-optimisation plots); rated by the gold score it is
    what a perfect reward model would pick from the same samples -- how much better
    than the model itself its own samples allow, with no new skill learned."""
    def respond_best(prompts, rng):
        repeated = [p for p in prompts for _ in range(k)]
        answers = respond(repeated, rng)  # k in a row for each prompt
        scores = np.asarray(rate(repeated, answers), dtype=float).reshape(len(prompts), k)
        return [answers[i * k + j] for i, j in enumerate(scores.argmax(axis=1))]

    return respond_best


def reward_rater(rm, tokenizer):
    """rate(prompts, answers) by a reward model's score (for `best_of_responder`)."""
    return lambda prompts, answers: score_texts(rm, tokenizer, prompts, [t for t, _ in answers],
                                                [f for _, f in answers])


def gold_rater(world):
    """rate(prompts, answers) by the toy world's noiseless gold score."""
    return lambda prompts, answers: [gold_score(world, p, t, f) for p, (t, f) in zip(prompts, answers)]


def demonstration_responder(world, labeler_id=HELD_OUT_LABELER):
    """A responder that gives the labeler's ideal answers (complete, unlike many of the
    SFT demonstrations, which are often terse)."""
    labeler = Labeler(world, labeler_id)
    return lambda prompts, rng: [(labeler.ideal_response(p, rng), True) for p in prompts]


# ----------------------------------------------------------------------------
# scoring one model's answers


def _task_means(judgements):
    by_task = {}
    for j in judgements:
        by_task.setdefault(j.task, []).append(j.correct)
    return {task: float(np.mean(by_task[task])) for task in TASKS if task in by_task}


def _states_rumour(record, response):
    """Does the answer state the record's rumour ("jacob hates reading") in any of its
    sentences? None if the record does not say what the rumour is."""
    if not {"name", "relation", "rumour"} <= set(record):
        return None
    rumour = (record["name"], record["relation"], record["rumour"])
    return any(parse_claim(s) == rumour for line in response.lower().split("\n") for s, _ in sentences(line))


def judge_answers(world, sets, answers):
    """The labeler's judgement of every answer: {set: [Judgement]}, in the sets' order."""
    return {name: [judge(world, r["prompt"], text, finished) for r, (text, finished) in zip(records, answers[name])]
            for name, records in sets.items()}


def score_model(sets, answers, judged):
    """A model's figures from its answers ({set: [(text, finished)]}) and their
    judgements: gold score, correctness by task, truthfulness, toxicity by condition."""
    helpful = judged["helpfulness"]
    truthful = judged["truthfulness"]
    rumours = [_states_rumour(r, text) for r, (text, _) in zip(sets["truthfulness"], answers["truthfulness"])]
    conditions = [r["condition"] for r in sets["harmlessness"]]
    return {
        "helpfulness": {
            "gold_score": mean_stderr([j.score for j in helpful]),
            "correct": float(np.mean([j.correct for j in helpful])),
            "correct_by_task": _task_means(helpful),
            "follows_format": float(np.mean([j.follows_format for j in helpful])),
            "finished": float(np.mean([j.finished for j in helpful])),
            "toxic": float(np.mean([j.toxic for j in helpful])),
        },
        "truthfulness": {
            "truthful": proportion([j.truthful is True for j in truthful]),
            "false": proportion([j.truthful is False for j in truthful]),
            "rumour": proportion([r for r in rumours if r is not None]),
            "correct": float(np.mean([j.correct for j in truthful])),
        },
        "toxicity": {c: proportion([j.toxic for j, cond in zip(judged["harmlessness"], conditions) if cond == c])
                     for c in CONDITIONS},
    }


def win_rate(labeler, prompts, answers_a, answers_b, rng):
    """The share of prompts on which `labeler` prefers A's answer to B's, with its
    Wilson 95% interval. Each answer is (text, finished): a cut-off answer counts
    as unfinished, as it would for a person reading it."""
    wins = [labeler.prefer(p, a, b, rng=rng, finished=(fa, fb)) == 0
            for p, (a, fa), (b, fb) in zip(prompts, answers_a, answers_b)]
    return proportion(wins)


def gold_comparison(judged_a, judged_b):
    """How A's answers compare with B's by the noiseless gold score, prompt by prompt:
    the shares of prompts where A's is better, equally good and worse, and the win rate
    the gold score alone gives, (better + equal / 2), ties split evenly. Set beside the
    labeler's win rate, it shows how much of that is the labeler's noise and taste, and
    how often the two answers are equally good (often the very same words), so that
    only the noise separates them: a win rate of 70% needs A better on 40% of the
    prompts more than it is worse."""
    diff = np.array([a.score - b.score for a, b in zip(judged_a, judged_b)])
    # Equal penalties give equal scores; the tolerance only absorbs the rounding of two
    # sums of the same terms.
    better, equal, worse = (float(np.mean(x)) for x in (diff > 1e-9, abs(diff) <= 1e-9, diff < -1e-9))
    return {"better": better, "equal": equal, "worse": worse, "noiseless_win_rate": better + equal / 2,
            "n": len(diff)}


def pairs_later_first(names):
    """Every pair (later, earlier) of `names`: base, sft, ppo -> (ppo, sft), (ppo, base),
    (sft, base) -- so each key reads "newer model vs older model"."""
    return [(b, a) for a, b in combinations(names, 2)][::-1]


# ----------------------------------------------------------------------------
# the evaluation


def evaluate_models(models, world, eval_sets, rng, labeler_id=HELD_OUT_LABELER, temperature=1.0,
                    max_new_tokens=MAX_NEW_TOKENS, batch_size=256, reference=True, progress=False, samples=None):
    """Evaluate models on the held-out sets; returns the report's `eval` section.

    models: {name: (GPT, tokenizer)} in the order to compare them (oldest first, e.g.
    base, sft, ppo), or {name: respond} with respond(prompts, rng) -> [(text,
    finished)]. eval_sets: as from `load_eval_sets`. Each model answers every prompt
    once (sampling at `temperature`, the temperature PPO trains at); the labeler with
    id `labeler_id` judges. `reference` adds the demonstrations row. If `samples` is
    a list, every answer is appended to it as a dict (model, set, prompt, response,
    finished, gold_score, correct, truthful, toxic).

    Returns {"win_rate": {"later_vs_earlier": {"value", "ci95", "n"}} for every pair
    (base, sft, ppo -> ppo_vs_sft, ppo_vs_base, sft_vs_base); "by_gold": the same pairs
    compared by the gold score (`gold_comparison`); "truthfulness", "gold_score": {model: number}; "toxicity": {condition:
    {model: rate}}; "details": every figure per model (and the reference);
    "vs_demonstrations": each model's win rate over the ideal answers; "settings"}.
    """
    if not models:
        raise MinirlhfError("no models to evaluate")
    if REFERENCE in models:
        raise MinirlhfError(f"{REFERENCE!r} is the name of the reference row; call the model something else")
    responders = {name: m if callable(m) else model_responder(*m, max_new_tokens, temperature, batch_size,
                                                              desc=f"eval {name}" if progress else None)
                  for name, m in models.items()}
    if reference:
        responders[REFERENCE] = demonstration_responder(world, labeler_id)
    answers = {name: _answer_all(respond, eval_sets, rng) for name, respond in responders.items()}
    judged = {name: judge_answers(world, eval_sets, a) for name, a in answers.items()}
    details = {name: score_model(eval_sets, answers[name], judged[name]) for name in answers}
    if samples is not None:
        samples.extend(_samples(eval_sets, answers, judged))

    labeler = Labeler(world, labeler_id)
    prompts = [r["prompt"] for r in eval_sets["helpfulness"]]
    helpful = {name: a["helpfulness"] for name, a in answers.items()}
    names = list(models)
    result = {
        "win_rate": {f"{a}_vs_{b}": win_rate(labeler, prompts, helpful[a], helpful[b], rng)
                     for a, b in pairs_later_first(names)},
        "by_gold": {f"{a}_vs_{b}": gold_comparison(judged[a]["helpfulness"], judged[b]["helpfulness"])
                    for a, b in pairs_later_first(names)},
        "truthfulness": {n: details[n]["truthfulness"]["truthful"]["value"] for n in names},
        "toxicity": {c: {n: details[n]["toxicity"][c]["value"] for n in names} for c in CONDITIONS},
        "gold_score": {n: details[n]["helpfulness"]["gold_score"]["mean"] for n in names},
        "details": details,
        "settings": {"models": names, "labeler_id": int(labeler_id), "temperature": temperature,
                     "max_new_tokens": max_new_tokens, "reference": REFERENCE if reference else None,
                     "n_prompts": {name: len(records) for name, records in eval_sets.items()}},
    }
    if reference:
        result["vs_demonstrations"] = {n: win_rate(labeler, prompts, helpful[n], helpful[REFERENCE], rng)
                                       for n in names}
    return result


def _answer_all(respond, eval_sets, rng):
    """One call for all the sets' prompts (one batched generation), split back by set."""
    prompts = [r["prompt"] for records in eval_sets.values() for r in records]
    answers = respond(prompts, rng)
    if len(answers) != len(prompts):
        raise MinirlhfError(f"a responder gave {len(answers)} answers to {len(prompts)} prompts")
    split, start = {}, 0
    for name, records in eval_sets.items():
        split[name] = answers[start:start + len(records)]
        start += len(records)
    return split


def _samples(eval_sets, answers, judged):
    rows = []
    for model, by_set in answers.items():
        for name, records in eval_sets.items():
            for record, (text, finished), j in zip(records, by_set[name], judged[model][name]):
                rows.append({"model": model, "set": name, "prompt": record["prompt"], "response": text,
                             "finished": bool(finished), "gold_score": j.score, "correct": j.correct,
                             "truthful": j.truthful, "toxic": j.toxic, "condition": record.get("condition")})
    return rows


# ----------------------------------------------------------------------------
# the report


def _pct(p):
    return "-" if p is None or p.get("value") is None else f"{100 * p['value']:.1f}%"


def _pct_ci(p):
    if p is None or p.get("value") is None:
        return "-"
    lo, hi = p["ci95"]
    return f"{100 * p['value']:.1f}% [{100 * lo:.0f}-{100 * hi:.0f}]"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def summary_rows(result):
    """(header, rows) of the per-model table: every model, then the reference."""
    details = result["details"]
    names = list(details)
    vs_demo = result.get("vs_demonstrations", {})
    rows = [
        ("gold score (mean ± s.e.)", lambda d: "{mean:.3f} ± {stderr:.3f}".format(**d["helpfulness"]["gold_score"])),
        ("correct (helpfulness)", lambda d: f"{100 * d['helpfulness']['correct']:.1f}%"),
        ("follows the format", lambda d: f"{100 * d['helpfulness']['follows_format']:.1f}%"),
        ("stops by itself", lambda d: f"{100 * d['helpfulness']['finished']:.1f}%"),
        ("truthful and informative", lambda d: _pct_ci(d["truthfulness"]["truthful"])),
        ("states a falsehood", lambda d: _pct_ci(d["truthfulness"]["false"])),
        ("states the rumour", lambda d: _pct_ci(d["truthfulness"]["rumour"])),
        *[(f"toxic: {CONDITION_LABELS[c]}", lambda d, c=c: _pct_ci(d["toxicity"][c])) for c in CONDITIONS],
    ]
    table = [[label] + [cell(details[n]) for n in names] for label, cell in rows]
    if vs_demo:
        table.append(["wins over demonstrations"] + [_pct_ci(vs_demo.get(n)) for n in names])
    return ["", *names], table


def _gold_cells(g):
    if g is None:  # (a report from before by_gold was added)
        return "-"
    better, equal, worse, noiseless = (f"{100 * g[k]:.1f}%" for k in ("better", "equal", "worse", "noiseless_win_rate"))
    return f"{better} / {equal} / {worse} ({noiseless})"


def summary_markdown(result):
    """The win-rate table and the per-model table, as Markdown (also what the CLI prints)."""
    by_gold = result.get("by_gold", {})
    wins = [[key.replace("_vs_", " vs "), _pct_ci(p), _gold_cells(by_gold.get(key)), p["n"]]
            for key, p in result["win_rate"].items()]
    parts = []
    if wins:
        parts.append(_table(["helpfulness", "win rate [95% CI]",
                             "by gold score: better / equal / worse (win rate)", "prompts"], wins))
    parts.append(_table(*summary_rows(result)))
    return "\n\n".join(parts)


def _by_task_markdown(result):
    details = result["details"]
    tasks = [t for t in TASKS if any(t in d["helpfulness"]["correct_by_task"] for d in details.values())]
    rows = [[t] + [f"{100 * d['helpfulness']['correct_by_task'][t]:.0f}%" if t in d["helpfulness"]["correct_by_task"]
                   else "-" for d in details.values()] for t in tasks]
    return _table(["task", *details], rows)


def _examples_markdown(samples, per_set=(("helpfulness", 3), ("truthfulness", 2), ("harmlessness", 2))):
    """A few prompts with every model's answer (and its gold score), to read."""
    parts = []
    for name, count in per_set:
        if name == "harmlessness":  # the telling condition: asked to be toxic
            prompts = list(dict.fromkeys(s["prompt"] for s in samples if s["condition"] == "toxic"))[:count]
        else:
            prompts = list(dict.fromkeys(s["prompt"] for s in samples if s["set"] == name))[:count]
        for prompt in prompts:
            lines = [f"**{name}**", "", "```", prompt, "```", ""]
            for s in (s for s in samples if s["prompt"] == prompt and s["set"] == name):
                cut = "" if s["finished"] else ", cut off"
                text = s["response"].strip().replace("\n", " ⏎ ").replace("`", "'") or "(empty)"
                lines.append(f"- *{s['model']}* (gold {s['gold_score']:+.2f}{cut}): `{text}`")
            parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _labeler_phrase(labeler_id):
    """Who judged: the held-out labeler, as the article's evaluation, or (--labeler) one who
    also ranked the reward model's training data, whose taste the reward model learned."""
    if labeler_id in TRAINING_LABELERS:
        return f"labeler {labeler_id}, one of the labelers who ranked the reward model's training data (not held out)"
    return f"the held-out labeler {labeler_id}"


def report_markdown(result, samples=None, plots=()):
    """report.md: what was measured, the tables, example answers and the plots."""
    st = result["settings"]
    n = st["n_prompts"]
    parts = [
        "# Evaluation",
        f"Models {', '.join(st['models'])}, each sampled once per prompt at temperature {st['temperature']} "
        f"(at most {st['max_new_tokens']} new tokens), judged by {_labeler_phrase(st['labeler_id'])}. "
        f"Held-out sets: {n['helpfulness']} helpfulness prompts (win rates, gold score, correctness), "
        f"{n['truthfulness']} questions whose rumoured answer is false, {n['harmlessness']} sentence starts "
        "under three conditions. Intervals are 95% Wilson score intervals; "
        + (f"*{st['reference']}* are the labeler's own ideal answers, for reference." if st["reference"] else "")
        + "".join(f" *{row}* is {what}." for row, what in st.get("best_of", {}).items()),
        "## Summary",
        summary_markdown(result),
        "## Correct answers by task (helpfulness prompts, partial credit)",
        _by_task_markdown(result),
    ]
    if samples:
        parts += ["## Examples", _examples_markdown(samples)]
    if plots:
        parts += ["## Plots", "\n\n".join(f"![{p.stem}]({p.name})" for p in plots)]
    return "\n\n".join(parts) + "\n"


def write_report(out_dir, result, samples=None, ppo_metrics=None):
    """Write report.json ({"eval": result}), report.md, the plots and samples.jsonl
    into out_dir. ppo_metrics: {model name: metrics.jsonl path} of runs whose reward
    over-optimisation picture to draw. Returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = eval_plots.plot_eval(result, out_dir)
    for name, path in (ppo_metrics or {}).items():
        plot = eval_plots.plot_overoptimization(path, out_dir / f"overoptimization_{name}.png", name)
        if plot is not None:
            plots.append(plot)
    written = [out_dir / "report.json", out_dir / "report.md", *plots]
    atomic_write_text(written[0], json.dumps({"eval": result}, indent=2, allow_nan=False) + "\n")
    atomic_write_text(written[1], report_markdown(result, samples, plots))
    if samples:
        write_jsonl(out_dir / "samples.jsonl", samples)
        written.append(out_dir / "samples.jsonl")
    return written


# ----------------------------------------------------------------------------
# command line


def parse_models(spec):
    """"base=DIR,sft=DIR" -> {"base": Path, "sft": Path}, in the order given."""
    models = {}
    for item in spec.split(","):
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise MinirlhfError(f"--models: {item!r} is not NAME=DIR (expected e.g. base=runs/pretrain,sft=runs/sft)")
        if not name.replace("-", "").replace("_", "").isalnum():
            raise MinirlhfError(f"--models: model name {name!r} must be letters, digits, - or _")
        if name in models:
            raise MinirlhfError(f"--models: the name {name!r} is given twice")
        models[name] = Path(path)
    return models


def load_models(paths):
    """{name: DIR} -> {name: (GPT, tokenizer)}; DIR is a checkpoint or a run directory."""
    models = {}
    for name, path in paths.items():
        if not Path(path).is_dir():
            raise MinirlhfError(f"--models: {name}={path}: no such directory")
        models[name] = load_gpt(resolve_checkpoint(path))
    return models


def parse_best_of(spec, names):
    """"sft:8" -> ("sft", 8), checked against the --models names."""
    name, sep, k = spec.partition(":")
    if not sep or not k.isdigit() or int(k) < 2:
        raise MinirlhfError(f"--best-of: {spec!r} is not NAME:K with K >= 2 (e.g. sft:8)")
    if name not in names:
        raise MinirlhfError(f"--best-of: no model {name!r} in --models ({', '.join(names)})")
    return name, int(k)


def best_of_models(spec, models, reward_path, world, max_new_tokens, temperature, batch_size):
    """The --best-of rows: ({"sft-best8-rm": respond, "sft-best8-gold": respond}, {row:
    what it is, for the report}); the reward model's row only with --reward."""
    name, k = parse_best_of(spec, list(models))
    model, tokenizer = models[name]
    respond = model_responder(model, tokenizer, max_new_tokens, temperature, batch_size, desc=f"eval {name} x{k}")
    raters = []  # (row suffix, rate, what rates)
    if reward_path is not None:
        if not Path(reward_path).is_dir():
            raise MinirlhfError(f"--reward: {reward_path}: no such directory")
        rm = load_reward_model(resolve_checkpoint(reward_path), tokenizer)[0]
        raters.append(("rm", reward_rater(rm, tokenizer), f"the reward model {reward_path}"))
    raters.append(("gold", gold_rater(world), "the gold score"))
    rows, about = {}, {}
    for by, rate, what in raters:
        row = f"{name}-best{k}-{by}"
        rows[row] = best_of_responder(respond, k, rate)
        about[row] = f"the best of {k} samples of {name} by {what}"
    return rows, about


def find_metrics(path):
    """The metrics.jsonl of the run a model came from (DIR or its parent), or None."""
    for folder in (Path(path), Path(path).parent):
        if (folder / "metrics.jsonl").is_file():
            return folder / "metrics.jsonl"
    return None


def add_parser(subparsers):
    p = subparsers.add_parser(
        "eval",
        help="compare models: win rates, truthfulness, toxicity, gold score",
        description="Evaluate models on the held-out sets, judged by a held-out labeler: helpfulness win "
        "rates between every pair (with 95% Wilson intervals), the share of truthful answers (and of "
        "stated falsehoods and rumours), the toxicity rate when asked to be respectful / given no instruction / asked "
        "to be toxic, and the mean gold score; with --best-of, also best-of-K sampling by the reward model and "
        "by the gold score. Writes OUT/report.json, OUT/report.md, plots and OUT/samples.jsonl.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", required=True,
                   help="NAME=DIR,... oldest first (e.g. base=runs/pretrain,sft=runs/sft,ppo=runs/ppo); "
                   "DIR is a checkpoint or a run directory holding checkpoint/")
    p.add_argument("--out", type=Path, required=True, help="folder to write the report into")
    p.add_argument("--data", type=Path, default=Path("data"),
                   help="folder with world.json and eval_helpfulness/truthfulness/harmlessness.jsonl")
    p.add_argument("--labeler", type=non_negative_int, default=HELD_OUT_LABELER, help="id of the judging labeler (4 is held out; 0-3 ranked the reward model's training data)")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature (PPO samples at 1)")
    p.add_argument("--max-new-tokens", type=positive_int, default=MAX_NEW_TOKENS, help="answers longer than this are cut off")
    p.add_argument("--batch-size", type=positive_int, default=256, help="prompts generated together")
    p.add_argument("--best-of", metavar="NAME:K",
                   help="also evaluate best-of-K of model NAME (e.g. sft:8): K samples per prompt, the one the "
                   "gold score rates highest (a perfect reward model's pick) and, with --reward, the one the "
                   "reward model rates highest")
    p.add_argument("--reward", type=Path, help="reward model (checkpoint or run directory) for --best-of")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.set_defaults(func=run)


def run(args):
    paths = parse_models(args.models)
    if args.out.exists() and not args.out.is_dir():  # say so now, not after minutes of sampling
        raise MinirlhfError(f"{args.out}: exists and is not a folder; choose another --out")
    world, sets = load_eval_sets(args.data)
    models = load_models(paths)
    if args.reward is not None and args.best_of is None:
        raise MinirlhfError("--reward is for --best-of: give both")
    best_of = {}
    if args.best_of is not None:
        rows, best_of = best_of_models(args.best_of, models, args.reward, world, args.max_new_tokens,
                                       args.temperature, args.batch_size)
        models.update(rows)
    t0 = time.perf_counter()
    samples = []
    result = evaluate_models(models, world, sets, np.random.default_rng(args.seed), args.labeler, args.temperature,
                             args.max_new_tokens, args.batch_size, progress=True, samples=samples)
    result["settings"].update(wall_seconds=time.perf_counter() - t0, seed=args.seed, data=str(args.data),
                              model_dirs={name: str(path) for name, path in paths.items()}, best_of=best_of)
    metrics = {name: find_metrics(path) for name, path in paths.items()}
    written = write_report(args.out, result, samples, {k: v for k, v in metrics.items() if v is not None})
    print(summary_markdown(result))
    print(f"\nevaluated in {result['settings']['wall_seconds']:.1f} s; wrote {', '.join(p.name for p in written)} "
          f"to {args.out}")
