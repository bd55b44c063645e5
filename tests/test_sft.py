"""Supervised fine-tuning: the masked loss (by hand and by finite differences), the
end-of-text target, `minirlhf sft` end to end, determinism, and one-line errors."""
import json

import numpy as np
import pytest
from test_model import perturbed_model

from minirlhf.checkpoint import load_checkpoint, save_gpt
from minirlhf.cli import main
from minirlhf.errors import MinirlhfError
from minirlhf.gradcheck import numerical_gradient, rel_error
from minirlhf.layers import cross_entropy_backward, cross_entropy_forward
from minirlhf.metrics import read_metrics
from minirlhf.model import GPT, GPTConfig
from minirlhf.tokenizer import CharTokenizer
from minirlhf.train.loop import TrainSettings
from minirlhf.train.sft import (
    SFTConfig, add_pretraining_rows, encode_demonstrations, epoch_batches, make_batch, rows_per_batch, sft,
)

NAMES = ["jacob", "maria", "ken", "ana", "lee", "tom", "eva", "max", "ida", "bo"]
THINGS = ["reading", "running", "cooking", "tea"]


def demonstrations():
    """Every name loves one thing (a fixed rule the model can learn from the demos)."""
    return [{"prompt": f"question: what does {n} {verb}?\nanswer:", "response": f" {n} {verb}s {THINGS[(i + k) % 4]}."}
            for i, n in enumerate(NAMES) for k, verb in enumerate(["love", "hate", "like", "need"])]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "sft.jsonl", demonstrations())


@pytest.fixture
def init_ckpt(tmp_path):
    """A fresh tiny model with a char tokenizer, saved as a pretraining checkpoint
    that records its text (the default ptx text)."""
    text = "\n".join(d["prompt"] + d["response"] for d in demonstrations()) + "\n"
    text_path = tmp_path / "corpus.txt"
    text_path.write_text(text * 3, encoding="utf-8")
    tokenizer = CharTokenizer.train(text)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32), seed=0)
    save_gpt(tmp_path / "pretrain" / "checkpoint", model, tokenizer, stage="pretrain", text=str(text_path))
    return tmp_path / "pretrain"


def tiny_config(**changes):
    base = dict(epochs=3, train=TrainSettings(batch_size=8, lr=3e-3, min_lr=3e-4, warmup=2), val_fraction=0.2)
    return SFTConfig(**{**base, **changes})


def sft_args(init, data, out, *extra):
    return ["sft", "--init", str(init), "--data", str(data), "--out", str(out), "--epochs", "3",
            "--batch-size", "8", "--lr", "3e-3", "--warmup", "2", "--val-fraction", "0.2", *extra]


def small_setup(dtype=np.float64, dropout=0.0):
    tokenizer = CharTokenizer("abcd ")
    model = perturbed_model(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=12, n_layer=1, n_head=2, n_embd=4,
                                      dropout=dropout), dtype=dtype)
    records = [(1, {"prompt": "ab c", "response": " dd"}), (2, {"prompt": "a", "response": "bcab"}),
               (3, {"prompt": "dcba da", "response": ""})]
    return tokenizer, model, encode_demonstrations(records, tokenizer, 12, "demo.jsonl")


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_masked_loss_is_the_mean_over_response_tokens_by_hand():
    tokenizer, model, examples = small_setup()
    batch = make_batch(examples, tokenizer, model.config.block_size)
    assert (batch.idx != tokenizer.pad_id).sum() == sum(len(p) + len(r) for p, r in examples)  # padded with pad
    # Each pair on its own (no padding): -log p(response token | prompt, earlier response tokens).
    terms = []
    for prompt, response in examples:
        logp = log_softmax(model.forward(np.array([prompt + response]))[0])  # (L, V)
        terms += [-logp[len(prompt) - 1 + j, token] for j, token in enumerate(response)]
    assert len(terms) == sum(len(r) for _, r in examples) == 4 + 5 + 1  # every response ends with eot
    np.testing.assert_allclose(model.loss(batch.idx, batch.targets), np.mean(terms), rtol=1e-12)


def test_prompt_targets_carry_no_gradient_response_targets_do():
    """d loss / d logits is zero at every prompt and padding position: what follows a
    prompt token can never matter. At every position that predicts a response token
    (the end-of-text included) it is not."""
    tokenizer, model, examples = small_setup()
    batch = make_batch(examples, tokenizer, model.config.block_size)
    _, cache = cross_entropy_forward(model.forward(batch.idx), batch.targets)
    dlogits = np.abs(cross_entropy_backward(1.0, cache)).sum(axis=-1)  # (B, T)
    for b, (prompt, response) in enumerate(examples):
        predicts_response = np.zeros(batch.idx.shape[1], dtype=bool)
        predicts_response[len(prompt) - 1 : len(prompt) + len(response) - 1] = True
        assert np.all(dlogits[b, ~predicts_response] == 0)
        assert np.all(dlogits[b, predicts_response] > 0)
    changed = batch.targets.copy()
    changed[0, len(examples[0][0])] = (changed[0, len(examples[0][0])] + 1) % tokenizer.vocab_size  # a response token
    assert model.loss(batch.idx, changed) != model.loss(batch.idx, batch.targets)


def test_sft_loss_gradient_float64():
    """The batch SFT trains on, demonstrations plus one pretraining row, with dropout:
    the analytic gradient w.r.t. every parameter matches finite differences."""
    tokenizer, model, examples = small_setup(dropout=0.1)
    batch = make_batch(examples, tokenizer, model.config.block_size)
    text_tokens = np.random.default_rng(3).integers(0, tokenizer.vocab_size, size=40)
    idx, targets = add_pretraining_rows(batch.idx, batch.targets, text_tokens, 1, np.random.default_rng(4))
    loss_of = lambda: model.loss_and_grads(idx, targets, rng=np.random.default_rng(9))  # noqa: E731
    loss, grads = loss_of()
    numeric = numerical_gradient(lambda: loss_of()[0], model.params.flat)
    assert rel_error(grads.flat, numeric) < 1e-6


def test_responses_end_with_eot_the_last_target_of_each_row():
    tokenizer, _, examples = small_setup()
    assert all(r[-1] == tokenizer.eot_id for _, r in examples)
    assert examples[2][1] == [tokenizer.eot_id]  # an empty response is "stop at once"
    empty_prompt = encode_demonstrations([(1, {"prompt": "", "response": "a"})], tokenizer, 12, "x.jsonl")
    assert empty_prompt == [([tokenizer.eot_id], [0, tokenizer.eot_id])]  # like sample.generate_ids
    batch = make_batch(examples, tokenizer, 12)
    for b, (prompt, response) in enumerate(examples):
        trained = np.flatnonzero(batch.targets[b] != -1)
        assert batch.targets[b, trained[-1]] == tokenizer.eot_id and trained[-1] == len(prompt) + len(response) - 2


def test_pretraining_rows_are_full_windows_as_long_as_the_batch():
    tokens = np.arange(100)
    idx = np.zeros((3, 7), dtype=np.int64)
    targets = np.full((3, 7), -1)
    new_idx, new_targets = add_pretraining_rows(idx, targets, tokens, 2, np.random.default_rng(0))
    assert new_idx.shape == new_targets.shape == (5, 7)
    np.testing.assert_array_equal(new_targets[3:], new_idx[3:] + 1)  # next token at every position
    assert rows_per_batch(32, 0.25) == (24, 8) and rows_per_batch(8, 0.0) == (8, 0)
    with pytest.raises(MinirlhfError, match="no row"):
        rows_per_batch(8, 0.01)


def test_epoch_batches_cover_every_example_once_with_little_padding():
    lengths = np.random.default_rng(0).integers(5, 80, size=203)
    batches = epoch_batches(lengths, 16, np.random.default_rng(1))
    assert [len(b) for b in batches].count(16) == 12 and sorted(map(len, batches))[0] == 203 - 12 * 16
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(203))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    shuffled = np.random.default_rng(1).permutation(203)
    plain = sum(len(b) * lengths[b].max() for b in np.split(shuffled, range(16, 203, 16)))
    assert padded < 0.75 * plain
    again = epoch_batches(lengths, 16, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))  # drawn from the rng only


def test_sft_cli_writes_a_run_and_lowers_val_loss(init_ckpt, data, tmp_path, capsys):
    out = tmp_path / "sft"
    assert main(sft_args(init_ckpt, data, out, "--epochs", "4")) == 0
    assert "val loss" in capsys.readouterr().out
    assert {"metrics.jsonl", "loss.png", "checkpoint"} <= {p.name for p in out.iterdir()}
    vals = [r["val_loss"] for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r]
    assert len(vals) == 5  # before training, then once per epoch
    assert vals[-1] < vals[0] - 0.5
    ckpt = load_checkpoint(out / "checkpoint")  # reads and checks config, params, tokenizer
    steps_per_epoch = 4  # 32 training demonstrations in batches of 8
    assert ckpt.config["stage"] == "sft" and ckpt.state["step"] == 4 * steps_per_epoch and ckpt.state["epoch"] == 4
    assert ckpt.optimizer is not None and ckpt.tokenizer == load_checkpoint(init_ckpt / "checkpoint").tokenizer
    assert ckpt.config["text"] == str(tmp_path / "corpus.txt")  # passed on, for PPO-ptx


def losses(summary_dir):
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in read_metrics(summary_dir / "metrics.jsonl")]


def test_same_seed_same_numbers(init_ckpt, data, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        sft(init_ckpt, data, tmp_path / name, tiny_config(epochs=1, seed=seed, dropout=0.1), progress=False)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert losses(tmp_path / "a") != losses(tmp_path / "c")


def test_ptx_mix_uses_the_checkpoints_text(init_ckpt, data, tmp_path):
    plain = sft(init_ckpt, data, tmp_path / "plain", tiny_config(epochs=1), progress=False)
    mixed = sft(init_ckpt, data, tmp_path / "ptx", tiny_config(epochs=1, ptx_fraction=0.25), progress=False)
    assert plain["steps"] == 32 // 8 and mixed["steps"] == -(-32 // 6)  # 6 demonstrations + 2 text windows a batch
    assert losses(tmp_path / "plain")[1] != losses(tmp_path / "ptx")[1]
    (tmp_path / "corpus.txt").unlink()  # the text the init checkpoint records is what the mix reads
    with pytest.raises(MinirlhfError, match="corpus.txt: no such file"):
        sft(init_ckpt, data, tmp_path / "ptx2", tiny_config(epochs=1, ptx_fraction=0.25), progress=False)


@pytest.mark.parametrize("case", ["malformed", "too_long", "unknown_char", "missing_ckpt", "no_ptx_text"])
def test_bad_input_is_one_line_and_nonzero(init_ckpt, data, tmp_path, capsys, case):
    demos = demonstrations()
    extra = []
    if case == "malformed":
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(demos[0]) + "\n" + '{"prompt": "a", "response": \n', encoding="utf-8")
        expected = "bad.jsonl:2: invalid JSON"
    elif case == "too_long":
        demos[6]["prompt"] = "question: " + "what does jacob love? " * 3 + "\nanswer:"
        path = write_jsonl(tmp_path / "long.jsonl", demos)
        expected = f"long.jsonl:7: the prompt is {len(demos[6]['prompt'])} tokens, but the model's context is 64"
    elif case == "unknown_char":
        demos[2]["response"] = " ken loves 寿司."
        path = write_jsonl(tmp_path / "jp.jsonl", demos)
        expected = "jp.jsonl:3: the response: character '寿' (U+5BFF)"
    elif case == "missing_ckpt":
        path, init_ckpt = data, tmp_path / "nowhere"
        expected = "nowhere: no such checkpoint directory"
    else:
        ckpt = load_checkpoint(init_ckpt / "checkpoint")
        save_gpt(tmp_path / "bare", ckpt.gpt(), ckpt.tokenizer)  # records no pretraining text
        path, init_ckpt, extra = data, tmp_path / "bare", ["--ptx-fraction", "0.25"]
        expected = "pass --ptx-text FILE"
    assert main(sft_args(init_ckpt, path, tmp_path / "out", *extra)) == 1
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_refuses_to_overwrite_the_init_checkpoint(init_ckpt, data, capsys):
    assert main(sft_args(init_ckpt, data, init_ckpt)) == 1
    assert "would overwrite the checkpoint it starts from" in capsys.readouterr().err
    assert load_checkpoint(init_ckpt / "checkpoint").config["stage"] == "pretrain"


@pytest.mark.parametrize("flag, value", [("--val-fraction", "nan"), ("--val-fraction", "0"), ("--val-fraction", "1"),
                                         ("--dropout", "nan"), ("--dropout", "inf"), ("--ptx-fraction", "nan")])
def test_float_flags_refuse_values_out_of_range(init_ckpt, data, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(sft_args(init_ckpt, data, tmp_path / "out", flag, value))
    assert e.value.code == 2 and f"argument {flag}: must be" in capsys.readouterr().err
