"""Prompt curation, as InstructGPT did it before any labeler saw a prompt.

The article: "In order to maximize diversity in the prompts dataset, only 200 prompts
could come from any given user ID and any prompts that shared long common prefixes
were removed. Finally, all prompts containing personally identifiable information
(PII) were removed." Each step here is one small filter that returns what it kept and
what it removed, so a test can check that it removes exactly what it claims; `curate`
runs them in the article's order and logs the counts of each step.

Filters keep the first occurrence (the order the prompts arrived in) and never
reorder what they keep.
"""
import functools
import re
from collections import Counter

MAX_PER_USER = 20    # the article's 200 per user id, scaled to our ~6k prompts
PREFIX_CHARS = 140   # prompts whose first 140 characters agree share a long prefix

EMAIL = re.compile(r"[\w.%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}", re.IGNORECASE)
PHONE = re.compile(r"(?<!\d)(?:\+?\d{1,3}[ -])?(?:\d{3}[ -])?\d{3}[ -]\d{4}(?!\d)")


def contains_pii(text):
    """True if `text` has something that looks like an e-mail address or phone number."""
    return bool(EMAIL.search(text) or PHONE.search(text))


def cap_per_user(records, max_per_user=MAX_PER_USER):
    """Keep at most `max_per_user` prompts of each user id (their first ones)."""
    seen = Counter()
    kept, removed = [], []
    for record in records:
        seen[record["user_id"]] += 1
        (kept if seen[record["user_id"]] <= max_per_user else removed).append(record)
    return kept, removed


def drop_duplicates(records):
    """Drop a prompt identical to an earlier one."""
    return _drop_repeated_keys(records, lambda prompt: prompt)


def drop_shared_prefixes(records, prefix_chars=PREFIX_CHARS):
    """Drop a prompt if an earlier kept prompt starts with the same `prefix_chars`
    characters. Prompts shorter than that are never compared (see drop_duplicates)."""
    return _drop_repeated_keys(
        records, lambda prompt: prompt[:prefix_chars] if len(prompt) >= prefix_chars else None)


def _drop_repeated_keys(records, key_of):
    """Keep the first record of each key; a key of None is always kept."""
    seen = set()
    kept, removed = [], []
    for record in records:
        key = key_of(record["prompt"])
        (removed if key is not None and key in seen else kept).append(record)
        seen.add(key)
    return kept, removed


def _drop_where(records, drop):
    """(kept, removed): the records whose prompt `drop` rejects, and the rest, in order."""
    kept, removed = [], []
    for record in records:
        (removed if drop(record["prompt"]) else kept).append(record)
    return kept, removed


def drop_pii(records):
    """Drop every prompt that contains an e-mail address or a phone number."""
    return _drop_where(records, contains_pii)


def drop_long(records, count, max_tokens):
    """Drop prompts longer than `max_tokens` by `count(prompt)`: they leave no room in
    the model's context for an answer."""
    return _drop_where(records, lambda prompt: count(prompt) > max_tokens)


def drop_listed(records, prompts):
    """Drop prompts that are in `prompts` (e.g. held-out evaluation sets)."""
    return _drop_where(records, lambda prompt: prompt in prompts)


def curate(records, steps):
    """Run `steps` [(name, filter)] in order; return (kept, log).

    The log has, per step, the counts before/removed/after and the first removed
    prompts as examples, so the effect of each rule can be read at a glance.
    """
    log = []
    for name, step in steps:
        kept, removed = step(records)
        log.append({
            "step": name, "before": len(records), "removed": len(removed),
            "after": len(kept), "removed_examples": [r["prompt"] for r in removed[:3]],
        })
        records = kept
    return records, log


def article_steps(max_per_user=MAX_PER_USER, prefix_chars=PREFIX_CHARS):
    """The article's three rules in its order, ready for `curate` (with exact
    duplicates removed before the prefix rule, so its count shows near-duplicates)."""
    return [
        (f"at most {max_per_user} prompts per user id",
         functools.partial(cap_per_user, max_per_user=max_per_user)),
        ("no duplicate prompts", drop_duplicates),
        (f"no long shared prefixes (first {prefix_chars} characters)",
         functools.partial(drop_shared_prefixes, prefix_chars=prefix_chars)),
        ("no personal information (e-mail addresses, phone numbers)", drop_pii),
    ]
