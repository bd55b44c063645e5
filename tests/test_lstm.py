"""The LSTM: float64 gradient checks of one step, of backpropagation through time and of
the whole language model's loss; generation; checkpoints; `pretrain --arch lstm`."""
import json

import numpy as np
import pytest

from minirlhf.checkpoint import load_checkpoint, load_gpt, load_lm, save_gpt
from minirlhf.cli import main
from minirlhf.errors import MinirlhfError
from minirlhf.gradcheck import check_model_loss, max_abs_diff, numerical_gradient, rel_error
from minirlhf.lstm import (
    LSTMConfig,
    LSTMLanguageModel,
    lstm_backward,
    lstm_forward,
    lstm_step_backward,
    lstm_step_forward,
    matched_lstm_config,
)
from minirlhf.tokenizer import CharTokenizer

B, D, H, T = 3, 4, 5, 6


@pytest.fixture
def weights(rng):
    """Inputs and weights large enough that every gate is away from 0 and 1."""
    return dict(
        Wx=rng.standard_normal((D, 4 * H)) * 0.5,
        Wh=rng.standard_normal((H, 4 * H)) * 0.5,
        b=rng.standard_normal(4 * H) * 0.5,
        h=rng.standard_normal((B, H)),
        c=rng.standard_normal((B, H)),
    )


def assert_gradients(objective, inputs, analytic):
    """Each analytic gradient against finite differences of objective() w.r.t. its input."""
    for (name, value), grad in zip(inputs.items(), analytic, strict=True):
        numeric = numerical_gradient(objective, value)
        assert rel_error(grad, numeric) < 1e-6, f"{name}: max abs diff {max_abs_diff(grad, numeric):.2e}"


def test_step_gradients(weights, rng):
    w = weights
    x = rng.standard_normal((B, D))
    dh, dc = rng.standard_normal((B, H)), rng.standard_normal((B, H))  # random upstream gradients for both outputs
    inputs = dict(x=x, prev_h=w["h"], prev_c=w["c"], Wx=w["Wx"], Wh=w["Wh"], b=w["b"])

    def objective():
        next_h, next_c, _ = lstm_step_forward(*inputs.values())
        return float((next_h * dh).sum() + (next_c * dc).sum())

    assert_gradients(objective, inputs, lstm_step_backward(dh, dc, lstm_step_forward(*inputs.values())[2]))


def test_sequence_gradients_through_time(weights, rng):
    w = weights
    x = rng.standard_normal((B, T, D))
    dh = rng.standard_normal((B, T, H))
    inputs = dict(x=x, h0=w["h"], c0=w["c"], Wx=w["Wx"], Wh=w["Wh"], b=w["b"])

    def forward():
        return lstm_forward(x, w["h"], w["Wx"], w["Wh"], w["b"], c0=w["c"])

    assert_gradients(lambda: float((forward()[0] * dh).sum()), inputs, lstm_backward(dh, forward()[2]))


def test_sequence_is_the_steps_chained(weights, rng):
    """lstm_forward's h and c_T are exactly step after step, so the memory carries over."""
    w = weights
    x = rng.standard_normal((B, T, D))
    h_seq, c_last, _ = lstm_forward(x, w["h"], w["Wx"], w["Wh"], w["b"], c0=w["c"])
    h, c = w["h"], w["c"]
    for t in range(T):
        h, c, _ = lstm_step_forward(x[:, t], h, c, w["Wx"], w["Wh"], w["b"])
        np.testing.assert_allclose(h_seq[:, t], h, rtol=1e-12, atol=1e-14)  # x Wx is hoisted: other rounding
    np.testing.assert_allclose(c_last, c, rtol=1e-12, atol=1e-14)


def perturbed_lstm(cfg, seed=0):
    """Float64 model with every parameter non-trivial (as test_model.perturbed_model)."""
    model = LSTMLanguageModel(cfg, seed=seed, dtype=np.float64)
    model.params.flat[...] = np.random.default_rng(seed + 100).standard_normal(model.params.flat.size) * 0.5
    return model


@pytest.mark.parametrize("backend,tie_weights,dropout", [("numpy", True, 0.0), ("numba", False, 0.0), ("numba", True, 0.2)])
def test_language_model_loss_gradient(monkeypatch, backend, tie_weights, dropout):
    monkeypatch.setenv("MINIRLHF_BACKEND", backend)
    cfg = LSTMConfig(vocab_size=7, block_size=6, n_layer=2, n_embd=4, dropout=dropout, tie_weights=tie_weights)
    model = perturbed_lstm(cfg)
    data = np.random.default_rng(5)
    idx = data.integers(0, 7, size=(2, 4))
    targets = data.integers(0, 7, size=(2, 4))
    targets[1, :2] = -1
    total, diff, per_name = check_model_loss(model, idx, targets, dropout_seed=9 if dropout else None)
    assert total < 1e-6, f"max abs diff {diff:.2e}; per parameter {per_name}"
    assert all(err < 1e-6 for err in per_name.values()), per_name


def test_matches_torch_lstm(rng):
    """Same gates, same order (i, f, g, o) as torch.nn.LSTM with weight_ih = Wx.T."""
    torch = pytest.importorskip("torch")
    cfg = LSTMConfig(vocab_size=9, block_size=8, n_layer=2, n_embd=5)
    model = perturbed_lstm(cfg)
    ref = torch.nn.LSTM(5, 5, num_layers=2, batch_first=True).double()
    with torch.no_grad():
        for layer in range(2):
            getattr(ref, f"weight_ih_l{layer}").copy_(torch.from_numpy(model.params[f"lstm.{layer}.Wx"].T.copy()))
            getattr(ref, f"weight_hh_l{layer}").copy_(torch.from_numpy(model.params[f"lstm.{layer}.Wh"].T.copy()))
            getattr(ref, f"bias_ih_l{layer}").copy_(torch.from_numpy(model.params[f"lstm.{layer}.b"].copy()))
            getattr(ref, f"bias_hh_l{layer}").zero_()
        idx = rng.integers(0, 9, size=(2, 7))
        wte = torch.from_numpy(model.params["wte.weight"].copy())
        expected = (ref(wte[torch.from_numpy(idx)])[0] @ wte.T).numpy()
    np.testing.assert_allclose(model.forward(idx), expected, rtol=1e-10, atol=1e-12)


def test_generation_continues_the_state():
    """Step-by-step generation (one token at a time through the (h, c) state) gives the
    logits a full forward pass over the whole text gives, and is seeded."""
    cfg = LSTMConfig(vocab_size=11, block_size=16, n_layer=2, n_embd=6)
    model = perturbed_lstm(cfg)
    prompts = [[1, 2, 3], [4]]
    out, finished = model.generate(prompts, 6, np.random.default_rng(0))
    again, _ = model.generate(prompts, 6, np.random.default_rng(0))
    assert out == again and [len(r) for r in out] == [6, 6] and finished == [False, False]
    full = prompts[0] + out[0]
    state = model.new_kv_cache(1, len(full))
    stepwise = np.concatenate([model.cached_logits(np.array([[tok]]), pos, state) for pos, tok in enumerate(full)], axis=1)
    np.testing.assert_allclose(stepwise, model.forward(np.array([full])), rtol=1e-12, atol=1e-12)
    greedy, _ = model.generate([prompts[0]], 4, np.random.default_rng(0), temperature=None)
    logits = model.forward(np.array([prompts[0] + greedy[0]]))
    assert logits[0, 2:-1].argmax(-1).tolist() == greedy[0]


def test_forget_gate_starts_open_and_budget_matching():
    model = LSTMLanguageModel(LSTMConfig(vocab_size=20, block_size=8, n_embd=8), seed=0)
    b = model.params["lstm.0.b"].reshape(4, 8)
    assert np.all(b[1] == 1.0) and np.all(np.abs(b[[0, 2, 3]]) <= 1 / np.sqrt(8)) and np.all(b[[0, 2, 3]] != 0)
    cfg = matched_lstm_config(100_000, vocab_size=45, block_size=97)
    below = LSTMConfig(vocab_size=45, block_size=97, n_embd=cfg.n_embd - 1).n_params
    above = LSTMConfig(vocab_size=45, block_size=97, n_embd=cfg.n_embd + 1).n_params
    assert abs(cfg.n_params - 100_000) <= min(abs(below - 100_000), abs(above - 100_000))
    assert cfg.n_params == LSTMLanguageModel(cfg).n_params


def test_bad_config_and_input():
    with pytest.raises(MinirlhfError, match="n_embd"):
        LSTMConfig(vocab_size=5, block_size=4, n_embd=0)
    with pytest.raises(MinirlhfError, match="unknown model config keys: n_head"):
        LSTMConfig.from_dict({"vocab_size": 5, "block_size": 4, "n_head": 2})
    model = LSTMLanguageModel(LSTMConfig(vocab_size=5, block_size=4, n_embd=3))
    with pytest.raises(MinirlhfError, match="outside"):
        model.forward(np.array([[1, 5]]))
    with pytest.raises(MinirlhfError, match="context is 4"):
        model.forward(np.zeros((1, 5), dtype=np.int64))


# ----------------------------------------------------------------------------
# checkpoints and the command line


TEXT = "jacob loves reading. maria hates running.\n" * 30


def test_checkpoint_round_trip_and_strictness(tmp_path):
    tok = CharTokenizer.train(TEXT)
    model = LSTMLanguageModel(LSTMConfig(vocab_size=tok.vocab_size, block_size=8, n_embd=6, tie_weights=False), seed=2)
    save_gpt(tmp_path / "ckpt", model, tok)
    loaded, tok2 = load_lm(tmp_path / "ckpt")
    assert isinstance(loaded, LSTMLanguageModel) and loaded.config == model.config and tok2 == tok
    np.testing.assert_array_equal(loaded.params.flat, model.params.flat)
    with pytest.raises(MinirlhfError, match="LSTM language model; this needs a GPT"):
        load_gpt(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, "arch": "rnn"}))
    with pytest.raises(MinirlhfError, match="unknown arch 'rnn'"):
        load_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, "arch": "gpt"}))
    with pytest.raises(MinirlhfError, match="bad model config"):
        load_checkpoint(tmp_path / "ckpt")


def test_pretrain_arch_lstm_then_sample_and_resume(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    args = ["pretrain", "--arch", "lstm", "--text", str(text), "--out", str(out), "--tokenizer", "char",
            "--n-layer", "1", "--n-embd", "16", "--block-size", "16", "--batch-size", "4", "--lr", "1e-2",
            "--warmup", "2", "--eval-every", "15", "--eval-batches", "2"]  # fmt: skip
    assert main([*args, "--steps", "30"]) == 0
    ckpt = load_checkpoint(out / "checkpoint")
    assert ckpt.arch == "lstm" and ckpt.model_config.n_embd == 16 and ckpt.state["step"] == 30
    vals = [r["val_loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert vals[-1] < vals[0]  # it learns
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(out), "--prompt", "jacob", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("jacob")
    assert main([*args, "--steps", "35", "--resume"]) == 0  # resumes as an LSTM without --arch
    assert load_checkpoint(out / "checkpoint").state["step"] == 35
