"""PPO's formulas pinned: GAE by hand, KL shaping, whitening, the adaptive controller,
and float64 gradient checks of the clipped losses through the policy and value models."""
import numpy as np
import pytest

from minirlhf import GPT, GPTConfig
from minirlhf.gradcheck import max_abs_diff, numerical_gradient, rel_error
from minirlhf.model import ScalarModel
from minirlhf.ppo import (
    AdaptiveKLController, entropy_from_logits, gae, kl_shaped_rewards, policy_loss, value_loss, whiten,
)


def test_gae_by_hand():
    # One row, response at positions 1..3 (position 0 is prompt, 4 is padding).
    mask = np.array([[0, 1, 1, 1, 0]], dtype=bool)
    rewards = np.array([[9.0, 0.1, -0.2, 1.0, 9.0]])  # entries outside the mask must be ignored
    values = np.array([[9.0, 0.5, 0.4, 0.3, 9.0]])
    gamma, lam = 0.9, 0.8
    d3 = 1.0 + gamma * 0.0 - 0.3  # V after the last response token is 0
    d2 = -0.2 + gamma * 0.3 - 0.4
    d1 = 0.1 + gamma * 0.4 - 0.5
    a3 = d3
    a2 = d2 + gamma * lam * a3
    a1 = d1 + gamma * lam * a2
    adv, ret = gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, [[0, a1, a2, a3, 0]], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(ret, [[0, a1 + 0.5, a2 + 0.4, a3 + 0.3, 0]], rtol=1e-14, atol=1e-15)


def test_gae_with_gamma_one_lambda_one_is_return_minus_value():
    rng = np.random.default_rng(0)
    mask = np.zeros((3, 7), dtype=bool)
    mask[0, 2:6] = mask[1, 1:3] = mask[2, 0:7] = True
    rewards, values = rng.standard_normal((3, 7)), rng.standard_normal((3, 7))
    adv, ret = gae(rewards, values, mask, 1.0, 1.0)
    for b in range(3):
        idx = np.flatnonzero(mask[b])
        to_go = np.cumsum(rewards[b, idx][::-1])[::-1]
        np.testing.assert_allclose(adv[b, idx], to_go - values[b, idx], rtol=1e-12)
        np.testing.assert_allclose(ret[b, idx], to_go, rtol=1e-12)


def test_kl_shaped_rewards_formula():
    mask = np.array([[0, 1, 1, 0], [1, 1, 1, 1]], dtype=bool)
    logp = np.array([[-1.0, -2.0, -0.5, -9.0], [-0.1, -0.2, -0.3, -0.4]])
    ref = np.array([[-1.5, -1.0, -0.7, -1.0], [-0.2, -0.2, -0.1, -0.9]])
    scores = np.array([2.0, -1.0])
    rewards, kl = kl_shaped_rewards(logp, ref, scores, mask, beta=0.1)
    expected_kl = np.where(mask, logp - ref, 0.0)
    np.testing.assert_allclose(kl, expected_kl)
    expected = -0.1 * expected_kl
    expected[0, 2] += 2.0  # last response position of row 0
    expected[1, 3] += -1.0
    np.testing.assert_allclose(rewards, expected)


def test_whiten_and_controller():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6)) * 5 + 3
    mask = rng.random((4, 6)) < 0.6
    w = whiten(x, mask)
    assert abs(w[mask].mean()) < 1e-12 and abs(w[mask].std() - 1) < 1e-6 and np.all(w[~mask] == 0)
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(12.0, 100) == pytest.approx(0.1 * (1 + 0.2 * 100 / 10000))  # error clipped at 0.2
    assert ctl.update(5.4, 100) == pytest.approx(0.1 * 1.002 * (1 - 0.1 * 100 / 10000))


def test_policy_loss_values_and_stats():
    mask = np.array([[True, True, True]])
    old = np.zeros((1, 3))
    logp = np.log(np.array([[1.5, 1.0, 0.5]]))  # ratios 1.5, 1.0, 0.5
    adv = np.array([[1.0, -2.0, -1.0]])
    loss, dlogp, stats = policy_loss(logp, old, adv, mask, clip=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped, no gradient); token 1: 2.0; token 2: max(0.5, 0.8) = 0.8 (clipped)
    assert loss == pytest.approx((-1.2 + 2.0 + 0.8) / 3)
    np.testing.assert_allclose(dlogp, [[0.0, 2.0 / 3, 0.0]])
    assert stats.clip_frac == pytest.approx(2 / 3)


def perturbed(cls, cfg, seed):
    model = cls(cfg, seed=seed, dtype=np.float64) if cls is GPT else ScalarModel.from_gpt(GPT(cfg, seed=seed, dtype=np.float64))
    model.params.flat[...] = np.random.default_rng(seed).standard_normal(model.params.flat.size) * 0.3
    for name, p in model.params.items():
        if "ln_" in name and name.endswith("weight"):
            p += 1.0
    return model


def test_clipped_surrogate_gradient_through_the_policy(rng):
    cfg = GPTConfig(vocab_size=7, block_size=6, n_layer=1, n_head=2, n_embd=4)
    model = perturbed(GPT, cfg, 0)
    idx = rng.integers(0, 7, size=(3, 6))
    targets = np.where(np.arange(6) >= 2, np.roll(idx, -1, axis=1), -1)
    targets[:, -1] = -1
    mask = targets != -1
    logp0, _ = model.logprobs_forward(idx, targets, temperature=0.7)
    old = logp0 + rng.normal(0, 0.3, logp0.shape)  # some ratios fall outside the clip range
    adv = rng.standard_normal(logp0.shape)

    def loss_of_params():
        logp, _ = model.logprobs_forward(idx, targets, temperature=0.7)
        return policy_loss(logp, old, adv, mask)[0]

    logp, cache = model.logprobs_forward(idx, targets, temperature=0.7)
    _, dlogp, stats = policy_loss(logp, old, adv, mask)
    assert 0 < stats.clip_frac < 1  # both branches are exercised
    grads = model.logprobs_backward(dlogp, cache)
    numeric = numerical_gradient(loss_of_params, model.params.flat)
    assert rel_error(grads.flat, numeric) < 1e-6, f"max abs diff {max_abs_diff(grads.flat, numeric):.2e}"


def test_clipped_value_loss_gradient_through_the_value_model(rng):
    cfg = GPTConfig(vocab_size=7, block_size=6, n_layer=1, n_head=2, n_embd=4)
    model = perturbed(ScalarModel, cfg, 1)
    idx = rng.integers(0, 7, size=(3, 6))
    mask = np.zeros((3, 6), dtype=bool)
    mask[:, 2:5] = True
    v0, _ = model.values_forward(idx)
    old = v0 + rng.normal(0, 0.4, v0.shape)  # some values are beyond the clip range
    returns = rng.standard_normal(v0.shape)
    values, cache = model.values_forward(idx)
    _, dvalues = value_loss(values, old, returns, mask)
    grads = model.values_backward(dvalues, cache)
    numeric = numerical_gradient(lambda: value_loss(model.values_forward(idx)[0], old, returns, mask)[0], model.params.flat)
    assert rel_error(grads.flat, numeric) < 1e-6, f"max abs diff {max_abs_diff(grads.flat, numeric):.2e}"


def test_entropy_from_logits():
    logits = np.zeros((1, 2, 4))
    assert entropy_from_logits(logits, np.ones((1, 2), bool)) == pytest.approx(np.log(4))
