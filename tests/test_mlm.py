"""Masked-language modelling (mlm.py, `pretrain --objective mlm`, `sample --fill`): BERT's
masking scheme, the bidirectional GPT's gradients and attention, both backends, the CLI,
and the article's blank: "Jacob ___ reading"."""
from pathlib import Path

import numpy as np
import pytest
from test_model import perturbed_model

from minirlhf import GPT, GPTConfig
from minirlhf.checkpoint import load_checkpoint, load_gpt, load_lm, save_gpt
from minirlhf.cli import main
from minirlhf.errors import MinirlhfError
from minirlhf.gradcheck import check_model_loss
from minirlhf.metrics import read_metrics
from minirlhf.mlm import P_MASK, P_RANDOM, fill_blank, mask_tokens, split_blank
from minirlhf.tokenizer import MASK_TOKEN, SPECIAL_TOKENS, CharTokenizer, tokenizer_from_dict, train_tokenizer
from minirlhf.train.loop import TrainSettings
from minirlhf.train.pretrain import PretrainConfig, pretrain

CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus.txt"


@pytest.fixture
def mlm_tokenizer():
    return CharTokenizer.train("abcdefghijklmnopqrstuvwxyz .", mask_token=True)


# ----------------------------------------------------------------------------
# the masking scheme


def test_masking_statistics(mlm_tokenizer, rng):
    tok = mlm_tokenizer
    idx = rng.integers(0, tok.n_regular, size=(400, 250))
    idx[:, 200:] = tok.pad_id  # a padded tail: never chosen
    inputs, targets = mask_tokens(idx, tok, np.random.default_rng(0))
    chosen = targets != -1
    assert not chosen[:, 200:].any() and np.array_equal(inputs[:, 200:], idx[:, 200:])
    np.testing.assert_array_equal(targets[chosen], idx[chosen])  # targets: the original tokens
    n = chosen[:, :200].sum()
    assert abs(n / idx[:, :200].size - 0.15) < 0.005
    masked = chosen & (inputs == tok.mask_id)
    kept = chosen & (inputs == idx)
    randomised = chosen & ~masked & ~kept
    assert abs(masked.sum() / n - P_MASK) < 0.01
    # A random draw equals the original 1 time in n_regular: those count as "kept".
    assert abs((kept.sum() + randomised.sum()) / n - (1 - P_MASK)) < 0.01
    assert abs(randomised.sum() / n - P_RANDOM * (1 - 1 / tok.n_regular)) < 0.01
    assert inputs[randomised].max() < tok.n_regular  # random tokens are regular ones
    assert np.array_equal(inputs[~chosen], idx[~chosen])  # the other 85% are untouched


def test_masking_is_deterministic(mlm_tokenizer):
    idx = np.random.default_rng(3).integers(0, mlm_tokenizer.n_regular, size=(8, 32))
    a = mask_tokens(idx, mlm_tokenizer, np.random.default_rng(5))
    b = mask_tokens(idx, mlm_tokenizer, np.random.default_rng(5))
    c = mask_tokens(idx, mlm_tokenizer, np.random.default_rng(6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_tokenizer_mask_token_and_old_files(mlm_tokenizer):
    plain = CharTokenizer.train("abc")
    with pytest.raises(MinirlhfError, match="no <\\|mask\\|> token"):
        plain.mask_id
    assert plain.to_dict()["special_tokens"] == list(SPECIAL_TOKENS)  # old files unchanged, same ids
    assert tokenizer_from_dict({"type": "char", "chars": ["a", "b", "c"], "special_tokens": list(SPECIAL_TOKENS)}) == plain
    tok = mlm_tokenizer
    assert tok.mask_id == tok.vocab_size - 1 and tok.special_ids == (tok.eot_id, tok.pad_id, tok.mask_id)
    assert tokenizer_from_dict(tok.to_dict()) == tok != CharTokenizer.train("abcdefghijklmnopqrstuvwxyz .")
    assert tok.encode(f"ab{MASK_TOKEN}c") == tok.encode("ab") + [tok.mask_id] + tok.encode("c")
    bpe = train_tokenizer("bpe", "jacob loves reading " * 20, 270, mask_token=True)
    assert bpe.decode(bpe.encode(f"jacob{MASK_TOKEN} reading")) == f"jacob{MASK_TOKEN} reading"


# ----------------------------------------------------------------------------
# the bidirectional model


@pytest.mark.parametrize("backend, dropout", [("numpy", 0.1), ("numba", 0.0)])  # numba with dropout: see test_backends_agree_*
def test_bidirectional_loss_gradient_wrt_every_parameter(monkeypatch, backend, dropout):
    monkeypatch.setenv("MINIRLHF_BACKEND", backend)
    tok = CharTokenizer.train("abcdef", mask_token=True)
    model = perturbed_model(GPTConfig(vocab_size=tok.vocab_size, block_size=6, n_layer=2, n_head=2, n_embd=4, dropout=dropout,
                                causal=False))
    idx = np.random.default_rng(5).integers(0, tok.n_regular, size=(2, 6))
    inputs, targets = mask_tokens(idx, tok, np.random.default_rng(1), rate=0.5)
    assert (targets != -1).sum() >= 3
    total, diff, per_name = check_model_loss(model, inputs, targets, dropout_seed=9 if dropout else None)
    assert total < 1e-6, f"max abs diff {diff:.2e}; per parameter {per_name}"
    for name, err in per_name.items():
        assert err < 1e-6, f"{name}: rel error {err:.2e}"


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_future_tokens_reach_earlier_positions_only_when_bidirectional(monkeypatch, backend):
    monkeypatch.setenv("MINIRLHF_BACKEND", backend)
    idx = np.array([[1, 2, 3, 4, 5, 6]])
    changed = idx.copy()
    changed[0, 4] = 7  # a token after positions 0..3
    for causal in (True, False):
        model = perturbed_model(GPTConfig(vocab_size=9, block_size=6, n_layer=2, n_head=2, n_embd=8, causal=causal))
        moved = np.abs(model.forward(idx) - model.forward(changed)).max(axis=-1)[0]  # (T,)
        assert moved[4:].min() > 1e-3  # the changed position and after: always
        if causal:
            assert moved[:4].max() == 0.0
        else:
            assert moved[:4].min() > 1e-3


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_backends_agree_on_bidirectional_attention(dropout):
    """The Numba kernels with causal=False against the NumPy reference, across several
    causal-block sizes' worth of positions (T=70 > one 64-row block), forward and backward."""
    from minirlhf import kernels, layers

    rng = np.random.default_rng(2)
    for B, T in ((3, 5), (2, 70)):
        qkv = rng.standard_normal((B, T, 3 * 8))
        out_k, cache_k = kernels.attention_forward(qkv, 2, dropout, np.random.default_rng(4), causal=False)
        out_l, cache_l = layers.attention_forward(qkv, 2, dropout, np.random.default_rng(4), causal=False)
        np.testing.assert_allclose(out_k, out_l, rtol=1e-10, atol=1e-12)
        dout = rng.standard_normal(out_k.shape)
        np.testing.assert_allclose(kernels.attention_backward(dout, cache_k), layers.attention_backward(dout, cache_l),
                                   rtol=1e-10, atol=1e-12)
        causal_out, _ = kernels.attention_forward(qkv, 2, dropout, np.random.default_rng(4))
        assert np.abs(causal_out - out_k).max() > 1e-3  # the flag changes the result


def test_config_round_trips_and_generation_is_refused(tmp_path, mlm_tokenizer):
    cfg = GPTConfig(vocab_size=mlm_tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8, causal=False)
    model = GPT(cfg)
    save_gpt(tmp_path / "ckpt", model, mlm_tokenizer)
    loaded, tok = load_lm(tmp_path / "ckpt")
    assert loaded.config == cfg and tok == mlm_tokenizer
    np.testing.assert_array_equal(loaded.params.flat, model.params.flat)
    assert GPTConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "causal"}).causal  # old configs: causal
    with pytest.raises(MinirlhfError, match="causal"):
        GPTConfig(vocab_size=5, block_size=4, causal="no")
    with pytest.raises(MinirlhfError, match="bidirectional"):
        model.generate([[1, 2]], 3, np.random.default_rng(0))
    with pytest.raises(MinirlhfError, match=str(tmp_path / "ckpt") + ".*bidirectional masked-language model"):
        load_gpt(tmp_path / "ckpt")  # what sft, reward, ppo, evaluate and the HF export load


def test_fill_blank_text_handling(mlm_tokenizer):
    bpe = train_tokenizer("bpe", "jacob loves reading " * 20, 270, mask_token=True)
    assert split_blank(bpe, "jacob ___ reading") == ("jacob", " reading")  # the space goes into " loves"
    assert split_blank(mlm_tokenizer, "jacob [mask] reading") == ("jacob ", " reading")
    for text in ("no blank here", "two ___ blanks ___"):
        with pytest.raises(MinirlhfError, match="exactly one blank"):
            split_blank(bpe, text)
    causal = GPT(GPTConfig(vocab_size=mlm_tokenizer.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=4))
    with pytest.raises(MinirlhfError, match="masked-language model"):
        fill_blank(causal, mlm_tokenizer, "ab ___ c")


# ----------------------------------------------------------------------------
# the command line


def tiny_mlm_args(text, out, *extra):
    return ["pretrain", "--text", str(text), "--out", str(out), "--objective", "mlm", "--tokenizer", "char",
            "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "16", "--batch-size", "4",
            "--steps", "6", "--warmup", "2", "--eval-every", "3", "--eval-batches", "2", *extra]


@pytest.fixture
def toy_text(tmp_path):
    """A few hundred characters of the repo's toy-world corpus."""
    path = tmp_path / "toy.txt"
    path.write_text(CORPUS.read_text(encoding="utf-8")[:600], encoding="utf-8")
    return path


def test_pretrain_mlm_cli_is_deterministic(toy_text, tmp_path, capsys):
    runs = [tmp_path / name for name in ("a", "b", "c")]
    assert main(tiny_mlm_args(toy_text, runs[0])) == 0
    assert main(tiny_mlm_args(toy_text, runs[1])) == 0
    assert main(tiny_mlm_args(toy_text, runs[2], "--seed", "1")) == 0
    records = [[(r["step"], r.get("loss"), r.get("val_loss")) for r in read_metrics(run / "metrics.jsonl")] for run in runs]
    assert records[0] == records[1] != records[2]
    assert all(0 < loss < 10 for _, loss, _ in records[0] if loss is not None)
    ckpt = load_checkpoint(runs[0] / "checkpoint")
    assert ckpt.config["objective"] == "mlm" and ckpt.model_config.causal is False
    assert ckpt.tokenizer.mask_id == ckpt.tokenizer.vocab_size - 1
    assert (runs[0] / "loss.png").exists()
    capsys.readouterr()
    # --resume keeps the objective: continuing 6 -> 8 steps works on the bidirectional model
    assert main(tiny_mlm_args(toy_text, runs[0], "--steps", "8", "--resume")) == 0
    assert load_checkpoint(runs[0] / "checkpoint").model_config.causal is False


def test_causal_only_commands_refuse_an_mlm_checkpoint(toy_text, tmp_path, capsys):
    run = tmp_path / "mlm"
    assert main(tiny_mlm_args(toy_text, run)) == 0
    capsys.readouterr()
    commands = {
        "sample": ["sample", "--ckpt", str(run), "--prompt", "emma"],
        "sft": ["sft", "--init", str(run), "--data", str(CORPUS.parent / "sft.jsonl"), "--out", str(tmp_path / "sft")],
        "reward": ["reward", "--init", str(run), "--out", str(tmp_path / "rm")],
    }
    for name, argv in commands.items():
        assert main(argv) == 1, name
        err = capsys.readouterr().err
        assert "masked-language model" in err and "Traceback" not in err, (name, err)
        assert len(err.strip().splitlines()) == 1, (name, err)
    causal = tmp_path / "clm"
    assert main([a for a in tiny_mlm_args(toy_text, causal) if a not in ("--objective", "mlm")]) == 0
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(causal), "--fill", "emma ___ a pilot"]) == 1
    assert "needs a masked-language model" in capsys.readouterr().err
    assert main(tiny_mlm_args(toy_text, tmp_path / "lstm", "--arch", "lstm")) == 1
    assert "LSTM reads left to right" in capsys.readouterr().err


def test_fills_jacob_blank_reading(tmp_path, capsys):
    """The article's example, learnt from a tiny text in a few seconds. The verb is set by
    the word *after* the blank (everyone loves reading and hates running), which a
    left-to-right model could not know."""
    rng = np.random.default_rng(0)
    facts = [f"{who} {verb}" for who in ("jacob", "maria", "ken") for verb in ("loves reading", "hates running")]
    text = tmp_path / "facts.txt"
    text.write_text("\n".join(facts[i] for i in rng.integers(0, len(facts), size=300)) + "\n", encoding="utf-8")
    config = PretrainConfig(objective="mlm", tokenizer="bpe", vocab_size=285,
                            model=dict(n_layer=2, n_head=2, n_embd=64, block_size=8),
                            train=TrainSettings(steps=250, batch_size=64, lr=3e-3, min_lr=3e-3, warmup=20, eval_every=250),
                            eval_batches=2)
    pretrain(text, tmp_path / "run", config, progress=False)
    model, tok = load_lm(tmp_path / "run" / "checkpoint")
    best = fill_blank(model, tok, "jacob ___ reading", top_k=3)
    assert best[0][0] == " loves" and best[0][1] > 0.5, best
    assert fill_blank(model, tok, "jacob ___ running")[0][0] == " hates"
    assert sum(p for _, p in fill_blank(model, tok, "jacob ___ reading", top_k=tok.vocab_size)) == pytest.approx(1.0)
    assert main(["sample", "--ckpt", str(tmp_path / "run"), "--fill", "jacob [MASK] reading", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].endswith("jacob loves reading"), lines
