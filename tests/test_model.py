"""The whole GPT: gradients of the loss w.r.t. every parameter, KV-cache generation,
initialisation, and the public contract in DESIGN.md."""
import numpy as np
import pytest

from minirlhf import GPT, GPTConfig
from minirlhf.model import ScalarModel
from minirlhf.errors import MinirlhfError
from minirlhf.gradcheck import check_model_loss, max_abs_diff, numerical_gradient, rel_error


def perturbed_model(cfg, seed=0, dtype=np.float64):
    """A model whose parameters are all non-trivial: biases and LayerNorm shifts
    non-zero, gains away from 1, weights larger than GPT-2's 0.02 (tiny weights would
    make every block nearly the identity and hide bugs in it)."""
    model = GPT(cfg, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    model.params.flat[...] = rng.standard_normal(model.params.flat.size) * 0.3
    for name, p in model.params.items():
        if "ln_" in name and name.endswith("weight"):
            p += 1.0
    return model


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_loss_gradient_wrt_every_parameter(monkeypatch, backend, dropout):
    monkeypatch.setenv("MINIRLHF_BACKEND", backend)
    cfg = GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8, dropout=dropout)
    model = perturbed_model(cfg)
    data = np.random.default_rng(5)
    idx = data.integers(0, 11, size=(2, 5))
    targets = data.integers(0, 11, size=(2, 5))
    targets[1, :2] = -1
    total, diff, per_name = check_model_loss(model, idx, targets, dropout_seed=9 if dropout else None)
    assert total < 1e-6, f"max abs diff {diff:.2e}; per parameter {per_name}"
    for name, err in per_name.items():
        assert err < 1e-6, f"{name}: rel error {err:.2e}"


def test_tied_head_gets_both_gradients():
    """wte's gradient must include the LM head's share: zeroing the embedding path
    (all inputs token 0) still leaves non-zero gradient on every row of wte."""
    cfg = GPTConfig(vocab_size=7, block_size=4, n_layer=1, n_head=1, n_embd=4)
    model = perturbed_model(cfg)
    idx = np.zeros((1, 4), dtype=np.int64)
    _, grads = model.loss_and_grads(idx, np.array([[1, 2, 3, 4]]))
    assert np.all(np.abs(grads["wte.weight"][1:]).sum(axis=1) > 0)  # rows never looked up: head only
    head_only = model.lm_forward(idx)[1][0]  # h
    probs = np.exp(model.forward(idx))
    probs /= probs.sum(-1, keepdims=True)
    dlogits = probs.copy()
    dlogits[0, np.arange(4), [1, 2, 3, 4]] -= 1
    dlogits /= 4
    expected_head = dlogits[0].T @ head_only[0]
    np.testing.assert_allclose(grads["wte.weight"][5:], expected_head[5:], rtol=1e-10, atol=1e-12)


def test_param_names_and_shapes_follow_gpt2():
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=8)
    model = GPT(cfg, seed=0)
    shapes = model.params.shapes
    assert shapes["wte.weight"] == (50, 8) and shapes["wpe.weight"] == (16, 8)
    assert shapes["h.1.attn.c_attn.weight"] == (8, 24) and shapes["h.1.attn.c_attn.bias"] == (24,)
    assert shapes["h.0.mlp.c_fc.weight"] == (8, 32) and shapes["h.0.mlp.c_proj.weight"] == (32, 8)
    assert shapes["ln_f.weight"] == (8,)
    assert len(shapes) == 2 + 12 * 2 + 2
    assert model.params["wte.weight"].dtype == np.float32


def test_gpt2_initialisation():
    cfg = GPTConfig(vocab_size=256, block_size=64, n_layer=4, n_head=4, n_embd=128)
    p = GPT(cfg, seed=0).params
    assert abs(p["wte.weight"].std() - 0.02) < 1e-3
    assert abs(p["h.0.mlp.c_fc.weight"].std() - 0.02) < 1e-3
    assert abs(p["h.0.attn.c_proj.weight"].std() - 0.02 / np.sqrt(8)) < 5e-4
    assert abs(p["h.3.mlp.c_proj.weight"].std() - 0.02 / np.sqrt(8)) < 5e-4
    assert np.all(p["h.2.ln_1.weight"] == 1) and np.all(p["h.2.attn.c_attn.bias"] == 0)
    assert np.array_equal(GPT(cfg, seed=0).params.flat, GPT(cfg, seed=0).params.flat)
    assert not np.array_equal(GPT(cfg, seed=0).params.flat, GPT(cfg, seed=1).params.flat)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_kv_cache_logits_equal_full_forward(dtype, tol):
    cfg = GPTConfig(vocab_size=13, block_size=12, n_layer=2, n_head=2, n_embd=16)
    model = perturbed_model(cfg, dtype=dtype)
    idx = np.random.default_rng(0).integers(0, 13, size=(3, 10))
    full = model.forward(idx)
    kv = model.new_kv_cache(3, 10)
    steps = [model.cached_logits(idx[:, :4], 0, kv)]  # a prefill of 4 tokens, then one at a time
    steps += [model.cached_logits(idx[:, t : t + 1], t, kv) for t in range(4, 10)]
    cached = np.concatenate(steps, axis=1)
    assert rel_error(cached, full) < tol, f"max abs diff {max_abs_diff(cached, full):.2e}"


def test_generate_matches_step_by_step_sampling():
    """Batched generation with prompts of different lengths gives, for each row, the
    same tokens as re-running the full forward on that row alone (greedy)."""
    cfg = GPTConfig(vocab_size=9, block_size=16, n_layer=2, n_head=2, n_embd=8)
    model = perturbed_model(cfg)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [2]]
    out, finished = model.generate(prompts, 6, np.random.default_rng(0), temperature=None)
    for p, got in zip(prompts, out):
        seq = list(p)
        for _ in range(6):
            seq.append(int(model.forward(np.array([seq]))[0, -1].argmax()))
        assert got == seq[len(p):]
    assert finished == [False, False, False]


def test_generate_stops_at_stop_token_and_is_deterministic():
    cfg = GPTConfig(vocab_size=5, block_size=40, n_layer=1, n_head=1, n_embd=8)
    model = perturbed_model(cfg, seed=3)
    prompts = [[1], [2, 3], [4, 4, 4]] * 4
    a = model.generate(prompts, 30, np.random.default_rng(1), stop_id=0)
    b = model.generate(prompts, 30, np.random.default_rng(1), stop_id=0)
    assert a == b
    responses, finished = a
    assert any(finished) and not all(finished)
    for r, f in zip(responses, finished):
        assert (r[-1] == 0 and 0 not in r[:-1]) if f else (0 not in r and len(r) == 30)


def test_generate_respects_context_limit():
    cfg = GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=4)
    model = GPT(cfg, seed=0)
    responses, finished = model.generate([[1, 2, 3]], 100, np.random.default_rng(0))
    assert len(responses[0]) == 5
    with pytest.raises(MinirlhfError, match="context"):
        model.generate([[1] * 8], 1, np.random.default_rng(0))


def test_bad_inputs_are_clear_errors():
    cfg = GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=4)
    model = GPT(cfg, seed=0)
    with pytest.raises(MinirlhfError, match="outside"):
        model.forward(np.array([[1, 5]]))
    with pytest.raises(MinirlhfError, match="context"):
        model.forward(np.zeros((1, 9), dtype=int))
    with pytest.raises(MinirlhfError, match="2-D"):
        model.forward(np.zeros(4, dtype=int))
    with pytest.raises(MinirlhfError, match="divisible"):
        GPTConfig(vocab_size=5, block_size=8, n_head=3, n_embd=8)
    with pytest.raises(MinirlhfError, match="shape"):
        GPT(cfg, params={**GPT(cfg).params, "wte.weight": np.zeros((6, 4))})


def test_logprobs_gradient(rng):
    """d/dtheta of sum(logp * w) for random weights w: the shape of every policy-gradient loss."""
    cfg = GPTConfig(vocab_size=7, block_size=5, n_layer=1, n_head=2, n_embd=4)
    model = perturbed_model(cfg)
    idx = rng.integers(0, 7, size=(2, 5))
    targets = rng.integers(0, 7, size=(2, 5))
    targets[0, :2] = -1
    w = rng.standard_normal((2, 5))
    logp, cache = model.logprobs_forward(idx, targets)
    grads = model.logprobs_backward(w, cache)
    numeric = numerical_gradient(lambda: float((model.logprobs_forward(idx, targets)[0] * w).sum()), model.params.flat)
    assert rel_error(grads.flat, numeric) < 1e-6, f"max abs diff {max_abs_diff(grads.flat, numeric):.2e}"
    assert np.all(logp[0, :2] == 0) and np.all(logp[targets != -1] < 0)


def test_scalar_head_gradient_through_the_trunk(rng):
    cfg = GPTConfig(vocab_size=7, block_size=5, n_layer=1, n_head=2, n_embd=4)
    model = ScalarModel.from_gpt(perturbed_model(cfg), seed=1)
    model.params["head.bias"][...] = 0.3
    idx = rng.integers(0, 7, size=(3, 5))
    dv = rng.standard_normal((3, 5))
    values, cache = model.values_forward(idx)
    grads = model.values_backward(dv, cache)
    numeric = numerical_gradient(lambda: float((model.values_forward(idx)[0] * dv).sum()), model.params.flat)
    assert rel_error(grads.flat, numeric) < 1e-6, f"max abs diff {max_abs_diff(grads.flat, numeric):.2e}"
    last = np.array([4, 2, 0])
    np.testing.assert_allclose(model.scores(idx, last), values[[0, 1, 2], last])
    assert set(model.params) == set(cfg.param_shapes()) | {"head.weight", "head.bias"}
