"""Choose where the hot ops run: readable NumPy (`layers.py`) or Numba (`kernels.py`).

    MINIRLHF_BACKEND=numpy minirlhf pretrain ...     # the reference, line by line
    MINIRLHF_BACKEND=numba minirlhf pretrain ...     # the default: same maths, faster

Both modules define the ops in HOT_OPS with the same signatures, and the tests hold
them to the same numbers. The environment variable is read at each call, so a test or
notebook can switch backends (or pass `ops=backend.ops("numpy")` explicitly).
"""
import os
from types import SimpleNamespace

from minirlhf.errors import MinirlhfError

BACKENDS = ("numpy", "numba")
DEFAULT = "numba"

HOT_OPS = (
    "linear_forward", "linear_backward", "matmul", "embedding_backward",
    "mlp_forward", "mlp_backward",
    "layernorm_forward", "layernorm_backward",
    "gelu_forward", "gelu_backward",
    "softmax_forward", "softmax_backward",
    "attention_forward", "attention_backward", "kv_cache_attention_forward",
    "token_logprobs_forward", "token_logprobs_backward",
)  # fmt: skip

_loaded = {}


def name():
    """The backend the environment asks for (MINIRLHF_BACKEND, default numba)."""
    chosen = os.environ.get("MINIRLHF_BACKEND", DEFAULT).strip().lower() or DEFAULT
    if chosen not in BACKENDS:
        raise MinirlhfError(f"MINIRLHF_BACKEND={chosen!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    return chosen


def ops(backend=None):
    """The hot ops of `backend` (default: the environment's) as a namespace."""
    backend = backend or name()
    if backend not in BACKENDS:
        raise MinirlhfError(f"{backend!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    if backend not in _loaded:
        if backend == "numba":
            from minirlhf import kernels as module
        else:
            from minirlhf import layers as module
        _loaded[backend] = SimpleNamespace(name=backend, **{op: getattr(module, op) for op in HOT_OPS})
    return _loaded[backend]
