"""Every forward/backward pair in layers.py against centred finite differences (float64).

Inputs are non-trivial (non-zero mean, non-unit scale, random upstream gradients), so a
backward that mixes up positions, drops a term or forgets a transpose cannot pass.
A correct backward agrees to ~1e-9; the threshold 1e-6 is what the project promises.
"""
import numpy as np
import pytest

from minirlhf import layers
from minirlhf.backend import ops as backend_ops
from minirlhf.gradcheck import check_layer

TOL = 1e-6


def assert_grads_ok(results, what):
    for i, rel, diff in results:
        assert rel < TOL, f"{what}: input {i} rel error {rel:.2e} (max abs diff {diff:.2e})"


def test_linear(rng):
    x = rng.standard_normal((2, 3, 5)) * 1.5 + 0.3
    w = rng.standard_normal((5, 7))
    b = rng.standard_normal(7)
    assert_grads_ok(check_layer(layers.linear_forward, layers.linear_backward, [x, w, b], rng), "linear")


def test_embedding(rng):
    V, T, C = 7, 6, 4
    idx = rng.integers(0, V, size=(3, 5))
    idx[0, :3] = 2  # a repeated token must receive the sum of its gradients
    wte = rng.standard_normal((V, C))
    wpe = rng.standard_normal((T, C))
    res = check_layer(layers.embedding_forward, layers.embedding_backward, [idx, wte, wpe], rng, wrt=[1, 2])
    assert_grads_ok(res, "embedding")


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_layernorm(rng, backend):
    ops = backend_ops(backend)
    x = rng.standard_normal((2, 3, 8)) * 2.0 + 0.7
    w = rng.standard_normal(8) + 1.0
    b = rng.standard_normal(8)
    assert_grads_ok(check_layer(ops.layernorm_forward, ops.layernorm_backward, [x, w, b], rng), f"layernorm[{backend}]")


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_gelu(rng, backend):
    ops = backend_ops(backend)
    x = rng.standard_normal((3, 4, 6)) * 2.0
    assert_grads_ok(check_layer(ops.gelu_forward, ops.gelu_backward, [x], rng), f"gelu[{backend}]")


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_softmax(rng, backend):
    ops = backend_ops(backend)
    x = rng.standard_normal((2, 3, 7)) * 3.0
    assert_grads_ok(check_layer(ops.softmax_forward, ops.softmax_backward, [x], rng), f"softmax[{backend}]")


def test_self_attention_one_head(rng):
    q, k, v = (rng.standard_normal((2, 5, 4)) for _ in range(3))
    res = check_layer(layers.self_attention_forward, layers.self_attention_backward, [q, k, v], rng)
    assert_grads_ok(res, "self_attention")


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_multihead_attention(rng, backend):
    ops = backend_ops(backend)
    qkv = rng.standard_normal((2, 6, 3 * 8)) * 1.3
    res = check_layer(lambda a: ops.attention_forward(a, 2), ops.attention_backward, [qkv], rng)
    assert_grads_ok(res, f"attention[{backend}]")


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_attention_with_dropout(rng, backend):
    """The dropout mask is drawn once, from a fixed seed, so forward is a fixed function."""
    ops = backend_ops(backend)
    qkv = rng.standard_normal((2, 5, 3 * 4))
    fwd = lambda a: ops.attention_forward(a, 2, 0.3, np.random.default_rng(7))  # noqa: E731
    assert_grads_ok(check_layer(fwd, ops.attention_backward, [qkv], rng), f"attention+dropout[{backend}]")


def test_attention_is_causal(rng):
    """Changing a later token must not change any earlier output."""
    qkv = rng.standard_normal((1, 6, 3 * 8))
    out, _ = layers.attention_forward(qkv, 2)
    qkv2 = qkv.copy()
    qkv2[0, 4:] += 1.0
    out2, _ = layers.attention_forward(qkv2, 2)
    np.testing.assert_array_equal(out[0, :4], out2[0, :4])
    assert not np.allclose(out[0, 4:], out2[0, 4:])


def test_dropout(rng):
    x = rng.standard_normal((4, 5))
    fwd = lambda a: layers.dropout_forward(a, 0.4, np.random.default_rng(3))  # noqa: E731
    assert_grads_ok(check_layer(fwd, layers.dropout_backward, [x], rng), "dropout")
    out, mask = fwd(x)
    assert (out == 0).any() and mask is not None
    same, none = layers.dropout_forward(x, 0.0, np.random.default_rng(3))
    assert same is x and none is None  # off by default: exactly the identity


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_token_logprobs(rng, backend):
    ops = backend_ops(backend)
    logits = rng.standard_normal((2, 4, 9)) * 2.0
    targets = rng.integers(0, 9, size=(2, 4))
    targets[1, 2] = -1
    fwd = lambda z: ops.token_logprobs_forward(z, targets)  # noqa: E731
    assert_grads_ok(check_layer(fwd, ops.token_logprobs_backward, [logits], rng), f"token_logprobs[{backend}]")
    logp, _ = fwd(logits)
    assert logp[1, 2] == 0.0
    ref = logits[0, 0, targets[0, 0]] - np.log(np.exp(logits[0, 0]).sum())
    assert abs(logp[0, 0] - ref) < 1e-12


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_cross_entropy(rng, backend):
    ops = backend_ops(backend)
    logits = rng.standard_normal((3, 5, 6))
    targets = rng.integers(0, 6, size=(3, 5))
    targets[0, :2] = -1
    loss, cache = layers.cross_entropy_forward(logits, targets, ops)
    num_loss = -np.mean([logits[b, t, targets[b, t]] - np.log(np.exp(logits[b, t]).sum())
                         for b in range(3) for t in range(5) if targets[b, t] != -1])
    assert abs(loss - num_loss) < 1e-12
    res = check_layer(lambda z: layers.cross_entropy_forward(z, targets, ops),
                      lambda d, c: layers.cross_entropy_backward(float(d), c), [logits], rng)
    assert_grads_ok(res, f"cross_entropy[{backend}]")


def test_cross_entropy_all_ignored_is_zero(rng):
    logits = rng.standard_normal((2, 3, 4))
    loss, cache = layers.cross_entropy_forward(logits, -np.ones((2, 3), dtype=np.int64))
    assert loss == 0.0
    assert not layers.cross_entropy_backward(1.0, cache).any()


def test_mlp(rng):
    x = rng.standard_normal((2, 3, 4))
    w_fc, b_fc = rng.standard_normal((4, 16)) * 0.5, rng.standard_normal(16) * 0.1
    w_proj, b_proj = rng.standard_normal((16, 4)) * 0.5, rng.standard_normal(4) * 0.1
    fwd = lambda *a: layers.mlp_forward(*a, ops=backend_ops("numpy"))  # noqa: E731
    assert_grads_ok(check_layer(fwd, layers.mlp_backward, [x, w_fc, b_fc, w_proj, b_proj], rng), "mlp")


def random_block_params(rng, C):
    shapes = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
              "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
              "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,), "mlp.c_proj.weight": (4 * C, C),
              "mlp.c_proj.bias": (C,)}
    p = {k: rng.standard_normal(s) * 0.4 for k, s in shapes.items()}
    p["ln_1.weight"] += 1.0
    p["ln_2.weight"] += 1.0
    return p


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_block(rng, backend, dropout):
    ops = backend_ops(backend)
    C = 8
    x = rng.standard_normal((2, 4, C))
    p = random_block_params(rng, C)
    names = list(layers.BLOCK_PARAMS)

    def fwd(x, *arrays):
        return layers.block_forward(x, dict(zip(names, arrays)), 2, dropout, np.random.default_rng(5), ops)

    def bwd(dout, cache):
        dx, g = layers.block_backward(dout, cache)
        return (dx, *[g[n] for n in names])

    assert_grads_ok(check_layer(fwd, bwd, [x, *[p[n] for n in names]], rng), f"block[{backend}, p={dropout}]")
