"""Finite-difference gradient checks: the proof that a hand-written backward is right.

The centred difference  (f(x + h) - f(x - h)) / 2h  has error O(h^2) from truncation
plus O(eps / h) from rounding. In float64 (eps ~ 1e-16) with h = 1e-5 both are around
1e-10, so a correct backward agrees to a relative error of about 1e-8 or better, while
a wrong one is off by 1e-2 or more: the gap is what makes the check convincing. Never
check in float32 (eps ~ 1e-7 makes the numerical gradient itself wrong at 1e-2).

For a layer with array output, we check the gradient of  L = sum(out * dout)  for a
random upstream gradient `dout`: a sum with all-ones weights could hide a bug that
mixes up positions, a random one cannot.

    from minirlhf.gradcheck import rel_error, numerical_gradient
    num = numerical_gradient(lambda: (gelu_forward(x)[0] * dout).sum(), x)
    print(rel_error(gelu_backward(dout, cache), num))   # ~1e-10
"""
import numpy as np

from minirlhf.params import FlatParams


def rel_error(x, y):
    """||x - y|| / (||x|| + ||y||), Euclidean norms over the whole array.

    CS231n divides entry by entry instead; that blows up on entries whose true
    gradient is ~0 (a GELU at its minimum, a softmax input with tiny weight, the
    key bias whose gradient is exactly 0 because softmax ignores a shift), where
    the 1e-10 noise of the numerical gradient is all there is. Comparing whole
    arrays keeps the verdict about the gradient, not about round-off.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return float(np.linalg.norm(x - y) / max(np.linalg.norm(x) + np.linalg.norm(y), 1e-12))


def max_abs_diff(x, y):
    """The largest absolute difference, to print beside a failed check."""
    return float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))


def numerical_gradient(f, x, h=1e-5):
    """d f() / d x by centred differences, where f() reads x (changed in place).

    f: a function of no arguments returning a scalar; x: a float64 array it reads.
    Returns an array shaped like x. x is left exactly as it was.
    """
    if x.dtype != np.float64:
        raise TypeError(f"gradient checks need float64 inputs, got {x.dtype}")
    grad = np.zeros_like(x)
    flat_x = x.reshape(-1)  # a view: writing it changes x
    flat_g = grad.reshape(-1)
    for i in range(flat_x.size):
        old = flat_x[i]
        flat_x[i] = old + h
        plus = float(f())
        flat_x[i] = old - h
        minus = float(f())
        flat_x[i] = old
        flat_g[i] = (plus - minus) / (2 * h)
    return grad


def numerical_gradient_array(f, x, dout, h=1e-5):
    """Gradient of sum(f() * dout) w.r.t. x, for a function f() returning an array."""
    return numerical_gradient(lambda: float(np.sum(f() * dout)), x, h)


def check_layer(forward, backward, inputs, rng, wrt=None, h=1e-5):
    """Check a forward/backward pair against finite differences.

    forward(*inputs) -> (out, cache); backward(dout, cache) -> a gradient, or a tuple
    of gradients in the order of `inputs`' float arrays (or of `wrt`, their indices).
    A random upstream gradient dout is drawn from `rng`. Returns a list of
    (index, rel_error, max_abs_diff), one per checked input.
    """
    inputs = list(inputs)
    out, cache = forward(*inputs)
    dout = rng.standard_normal(np.shape(out))
    grads = backward(dout, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if wrt is None:
        wrt = [i for i, a in enumerate(inputs) if isinstance(a, np.ndarray) and a.dtype == np.float64]
    if len(grads) != len(wrt):
        raise ValueError(f"backward returned {len(grads)} gradients for {len(wrt)} inputs")
    results = []
    for i, analytic in zip(wrt, grads):
        numeric = numerical_gradient_array(lambda: forward(*inputs)[0], inputs[i], dout, h)
        results.append((i, rel_error(analytic, numeric), max_abs_diff(analytic, numeric)))
    return results


def check_model_loss(model, idx, targets, dropout_seed=None, h=1e-5):
    """Check `model.loss_and_grads(idx, targets)` w.r.t. every parameter.

    Works for any model with the language-model contract (`params` a FlatParams,
    `loss_and_grads(idx, targets, rng=)`). With dropout, every evaluation redraws the
    same masks from a fresh `np.random.default_rng(dropout_seed)`. Returns
    (rel_error over all parameters, max_abs_diff, {name: rel_error}).
    """
    def fresh_rng():
        return None if dropout_seed is None else np.random.default_rng(dropout_seed)

    _, grads = model.loss_and_grads(idx, targets, rng=fresh_rng())
    numeric = numerical_gradient(lambda: model.loss_and_grads(idx, targets, rng=fresh_rng())[0], model.params.flat, h)
    by_name = FlatParams(model.params.shapes, np.float64, numeric)
    per_name = {name: rel_error(grads[name], by_name[name]) for name in model.params}
    return rel_error(grads.flat, numeric), max_abs_diff(grads.flat, numeric), per_name
