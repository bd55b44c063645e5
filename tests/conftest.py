"""Fixtures and helpers shared by several test files."""
import json
from pathlib import Path

import numpy as np
import pytest

from minirlhf.checkpoint import save_gpt
from minirlhf.model import GPT, GPTConfig, ScalarModel
from minirlhf.reward import save_reward_model
from minirlhf.tokenizer import train_tokenizer

DATA = Path(__file__).resolve().parent.parent / "data"
ALPHABET = "abcdefghijklmnopqrstuvwxyz .,:?!\n"


def char_tokenizer():
    return train_tokenizer("char", ALPHABET)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def rng():
    """A fresh generator per test: every random draw in a test comes from here."""
    return np.random.default_rng(1234)


@pytest.fixture
def sft_ckpt(tmp_path):
    """A tiny random char-level GPT saved as an SFT run folder."""
    tok = char_tokenizer()
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16), seed=3)
    save_gpt(tmp_path / "sft" / "checkpoint", model, tok)
    return tmp_path / "sft"


@pytest.fixture
def comparisons(tmp_path):
    """Rankings a model can learn: the right copy, a cut-off copy, an insult."""
    words = ["goat", "chef", "cat", "rome", "pilot", "nurse", "paris", "hiking"]
    records = []
    for i in range(24):
        text = f"{words[i % 8]} {words[(i * 3 + 1) % 8]}"
        records.append({"prompt": f"copy this exactly: {text}\nanswer:",
                        "responses": [f" {text}", f" {text[:4]}", " you idiot!"][: 2 + i % 2],
                        "finished": [True, False, True][: 2 + i % 2]})
    return write_jsonl(tmp_path / "comparisons.jsonl", records)


@pytest.fixture
def prompts(tmp_path):
    """Short toy-world prompts from the repo's data (the gold score can judge them)."""
    records = [json.loads(line) for line in (DATA / "ppo_prompts.jsonl").read_text().splitlines()]
    return write_jsonl(tmp_path / "prompts.jsonl", [r for r in records if len(r["prompt"]) <= 50][:6])


@pytest.fixture
def models(tmp_path):
    """A tiny random SFT model and a reward model (with a large, non-trivial head) over
    the same character tokenizer."""
    tok = train_tokenizer("char", ALPHABET)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)
    save_gpt(tmp_path / "sft" / "checkpoint", GPT(cfg, seed=3), tok)
    rm = ScalarModel.from_gpt(GPT(cfg, seed=4), seed=5)
    rm.params["head.weight"][...] = np.random.default_rng(6).standard_normal(rm.params["head.weight"].shape)
    save_reward_model(tmp_path / "rm" / "checkpoint", rm, tok, {"mean_before": 0.0})
    return tmp_path / "sft", tmp_path / "rm"
