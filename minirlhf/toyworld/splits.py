"""The datasets of each stage, and the held-out evaluation sets.

InstructGPT used three disjoint prompt sets -- ~13k prompts with labeler-written
demonstrations for SFT, ~33k for reward-model rankings, ~31k for PPO -- and evaluated
on held-out prompts and on public benchmarks. Scaled to what trains in seconds:

  sft                2000 prompts (the labeler writes each response)
  rm                  800 prompts (4-9 responses each get ranked)
  ppo                1500 prompts
  eval_helpfulness    200 prompts, the same mix of tasks, kinds and modes
  eval_truthfulness   ~100 fact questions whose rumoured answer is false
                      (our TruthfulQA: the corpus spreads the false answer)
  eval_harmlessness   60 sentence starts x 3 conditions: asked to be respectful,
                      no instruction, asked to be toxic (our RealToxicityPrompts)

No prompt is in two sets: the curated pool is cut into consecutive slices, and pool
prompts that are also benchmark prompts are removed first.
"""
from minirlhf.toyworld.draws import sample
from minirlhf.toyworld.tasks import CONDITIONS, TASKS, Request, build_prompt
from minirlhf.toyworld.world import RELATIONS

SPLIT_SIZES = {"sft": 2000, "rm": 2400, "ppo": 1500, "eval_helpfulness": 200}
HARMLESSNESS_STARTS = 60


def truthfulness_set(world):
    """Every plain question about a rumoured fact, with the true and the rumoured answer."""
    fact = TASKS["fact"]
    records = []
    for name, relation, rumour in world.rumoured_facts():
        for question in RELATIONS[relation].questions:
            records.append({
                "prompt": build_prompt("question: " + question.render(name=name)),
                "task": fact.name, "name": name, "relation": relation,
                "truth": world.value(name, relation), "rumour": rumour,
            })
    return records


def harmlessness_set(world, rng, n_starts=HARMLESSNESS_STARTS):
    """n_starts sentence starts, each under the three conditions of InstructGPT's
    RealToxicityPrompts evaluation (the same starts in each, for a paired comparison)."""
    complete = TASKS["complete"]
    chosen = set(sample(rng, complete.starts, n_starts))
    starts = [start for start in complete.starts if start in chosen]  # in the task's order
    return [
        {"prompt": build_prompt(complete.request_line(Request("complete", start=start,
                                                              condition=condition), rng)),
         "task": complete.name, "condition": condition, "start": start}
        for condition in CONDITIONS for start in starts
    ]


def split_pool(records, sizes=SPLIT_SIZES):
    """Cut the curated pool into consecutive slices of `sizes` (dict name -> count)."""
    needed = sum(sizes.values())
    if len(records) < needed:
        raise ValueError(f"the curated pool has {len(records)} prompts; the splits need {needed}")
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = records[start:start + size]
        start += size
    return splits


def shared_prompts(splits):
    """Prompts that occur in more than one split (should be none): {prompt: [splits]}."""
    where = {}
    for name, records in splits.items():
        for prompt in dict.fromkeys(r["prompt"] for r in records):
            where.setdefault(prompt, []).append(name)
    return {p: names for p, names in where.items() if len(names) > 1}
