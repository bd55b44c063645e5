"""The hot ops of `layers.py` again, fast: Numba kernels and BLAS split between the cores.
Same signatures, same numbers.

Each public function here has the signature and return structure of its namesake in
`layers.py` (read that first: it is the specification, with the maths written out):

    out, cache = linear_forward(x, w, b)                 dx, dw, db = linear_backward(dout, cache)
    out = matmul(a, b)                                   (the tied LM head's products)
    out, cache = mlp_forward(x, w_fc, b_fc, w_proj, b_proj)
                                                         dx, dw_fc, db_fc, dw_proj, db_proj = mlp_backward(dout, cache)
    out, cache = layernorm_forward(x, w, b, eps=1e-5)    dx, dw, db = layernorm_backward(dout, cache)
    out, cache = gelu_forward(x)                         dx = gelu_backward(dout, cache)
    y, cache = softmax_forward(x)                        dx = softmax_backward(dout, cache)
    out, cache = attention_forward(qkv, n_head, dropout=0.0, rng=None, causal=True)
                                                         dqkv = attention_backward(dout, cache)
    logp, cache = token_logprobs_forward(logits, targets)
                                                         dlogits = token_logprobs_backward(dlogp, cache)
    dwte, dwpe = embedding_backward(dout, cache)         (the cache of layers.embedding_forward)
    adamw_update(p, g, m, v, decay, t, lr, beta1, beta2, eps, weight_decay)   (optim.adamw_update)

`backend.py` picks this module or `layers.py`; `tests/test_kernels.py` holds the two to
the same values (1e-10 relative in float64, 1e-5 in float32). The caches differ: each
kernel keeps only what its own backward needs and recomputes the rest, so a cache must
only ever be given to the backward of this module.

Where a training step's time goes (float32, one core, the `minirlhf bench` presets):
60-70% in the matrix products of the linear layers and the LM head, which BLAS runs
near the core's peak; 15-20% in attention; the rest in the elementwise ops. So:
- Matrix products stay with BLAS, split by fixed blocks of rows (or columns) between
  our threads (`_parallel`); BLAS itself runs single-threaded (minirlhf/__init__.py).
- Attention is BLAS products on causal blocks with Numba softmax kernels in between
  (see its section); the MLP runs block by block with its GELU recomputed in the
  backward, so it keeps one (N, 4C) activation instead of two (see its section).
- glibc is asked to keep freed memory for reuse (`_keep_freed_memory`): a step frees
  and reallocates the same arrays, and faulting their pages in again cost 10-15%.

How the Numba kernels are written, and why:
- A thin Python wrapper flattens the leading axes (any (..., C) becomes (N, C)), makes
  the arrays C-contiguous (a no-op for arrays that already are, a copy for views such
  as a slice of qkv), allocates the outputs and runs one jitted kernel. So each kernel
  is compiled once per dtype (float32, float64), never per layout or rank.
- A kernel is one plain loop nest over a range [lo, hi) of independent items (rows,
  blocks of elements, sequences); `_parallel` hands the ranges to the cores. The
  kernels are compiled `nogil=True`, so Python threads run them truly in parallel.
  (Not `prange`: `parallel=True` doubles the one-off compile time, and NumPy's
  products, which need Python threads anyway, would then compete with a second pool.)
- Every item is computed the same way whatever the split, so results do not depend on
  the number of threads (bit for bit: tests/test_kernels.py checks it).
- Inner loops run along contiguous memory, index from 0 (see `_item_range`), and
  update independent elements (p[j] += q * k[j]), which LLVM vectorises under strict
  IEEE rules. A sum into one scalar cannot be vectorised without reordering its
  additions, so the sums that matter go through `_sum` / `_dot`, compiled with
  'reassoc' (the terms may be added in any order, e.g. 8 lanes at a time, as NumPy's
  pairwise sums reorder them too). `_exp_nonpositive` may fuse a * b + c into one FMA
  ('contract'). Nothing else is relaxed: infinities, NaN and all other rounding follow
  IEEE. `error_model="numpy"`: a division by zero gives inf or NaN as in NumPy, instead
  of Python's ZeroDivisionError, whose check on every division stops vectorisation
  (it made GELU's division 8x slower).
- Every exp goes through `_exp_nonpositive`, a vectorisable exp written out in plain
  arithmetic: Numba's math.exp is a scalar libm call (vectorised only with Intel's
  SVML), and exp bounds softmax, GELU, token_logprobs and part of attention.
- Arithmetic and sums stay in the input dtype (constants are cast with
  `x.dtype.type(...)`, since a bare Python float would promote float32 to float64).
  float32 agrees with the float32 reference to ~2e-7 relative (worst 4e-7, layernorm,
  where the kernel is the closer of the two to the float64 result).
- `cache=True`: compiled code is stored in `__pycache__`, so only the first run on a
  machine pays the compile time (`minirlhf bench --startup` measures both).
"""
import itertools
import math
import os
import queue
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.extending import intrinsic

from minirlhf.errors import MinirlhfError
from minirlhf import layers
from minirlhf.layers import GELU_SCALE, dropout_mask

# ----------------------------------------------------------------------------
# Running a kernel on all cores

THREADS = max(1, int(numba.config.NUMBA_NUM_THREADS))  # set NUMBA_NUM_THREADS=1 to run serially
_MIN_PARALLEL_WORK = 1 << 19  # below ~500k inner-loop steps (~0.2 ms), one thread is faster


class _Job:
    """One call of `_parallel`: its parts are taken in turn (`next(taken)` is atomic under
    the GIL) by whichever thread is free, and the thread that finishes the last part
    releases `done`."""

    def __init__(self, kernel, bounds, args):
        self.kernel, self.bounds, self.args = kernel, bounds, args
        self.parts = len(bounds) - 1
        self.taken, self.finished = itertools.count(), itertools.count(1)
        self.done = threading.Lock()
        self.done.acquire()
        self.error = None

    def run(self):
        while (i := next(self.taken)) < self.parts:
            try:
                self.kernel(self.bounds[i], self.bounds[i + 1], *self.args)
            except BaseException as e:  # handed to the calling thread, which raises it
                self.error = e
            if next(self.finished) == self.parts:
                self.done.release()


class _Helpers:
    """THREADS - 1 threads, each waiting on its own queue for a _Job to help with.
    (A queue.SimpleQueue put/get is the cheapest wake-up Python has: ~10 us per call of
    `_parallel`, a quarter of what a ThreadPoolExecutor future costs; a training step
    of the tiny preset makes about fifty such calls.)"""

    def __init__(self, n):
        self.pid = os.getpid()
        self.queues = [queue.SimpleQueue() for _ in range(n)]
        for q in self.queues:
            threading.Thread(target=self._serve, args=(q,), daemon=True, name="minirlhf-kernel").start()

    @staticmethod
    def _serve(q):
        while True:
            q.get().run()


_helpers = None


def _parallel(kernel, n, work, *args, coarse=False):
    """Run kernel(lo, hi, *args) over items 0..n-1, split between THREADS threads.

    `work` estimates the inner-loop steps of the whole call; small calls run inline.
    The items are cut into up to 4 parts per thread (or, if `coarse`, each item is a
    part of its own: blocks of a product, tasks of unequal sizes), taken in turn by
    whichever thread is free (the calling thread included), so a core slowed by other
    work does not hold everybody up, and a helper that wakes up late finds nothing
    left to do. Every item is computed the same way whatever the split, so results do
    not depend on the number of threads.
    """
    global _helpers
    parts = (n if coarse else min(n, 4 * THREADS)) if THREADS > 1 and work >= _MIN_PARALLEL_WORK else 1
    if parts <= 1:
        if n:
            kernel(0, n, *args)
        return
    if _helpers is None or _helpers.pid != os.getpid() or len(_helpers.queues) < THREADS - 1:
        _helpers = _Helpers(THREADS - 1)  # (a forked child has no helper threads)
    job = _Job(kernel, [n * i // parts for i in range(parts + 1)], args)
    for q in _helpers.queues[: min(THREADS, parts) - 1]:
        q.put(job)
    job.run()
    job.done.acquire()  # the last part finished (at once, if this thread did it)
    if job.error is not None:
        raise job.error


def _keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse rather than hand it back to the
    system. A training step allocates and frees the same few hundred arrays every time;
    by default each large one is a fresh mmap, and its pages are faulted in (and zeroed
    by the kernel) again on every step: 2,000-10,000 page faults a step, 10-15% of a
    small model's step time. With these two settings (arrays up to 32 MB come from the
    heap, and the heap is never trimmed) a step after the first faults no page at all.
    The peak memory is unchanged; the process just keeps its peak. It applies to the
    whole process, from the first use of the numba backend on; glibc only: elsewhere
    (macOS, musl) this does nothing."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


KEEPS_FREED_MEMORY = _keep_freed_memory()

# ----------------------------------------------------------------------------
# Shared helpers


def _as_float(a, dtype=None):
    """`a` as a C-contiguous float array: of `dtype` if given, else of its own dtype when
    that is float32/float64, else float64 (as NumPy would compute with integers)."""
    a = np.asarray(a)
    if dtype is None:
        dtype = a.dtype if a.dtype in (np.float32, np.float64) else np.float64
    return np.asarray(a, dtype=dtype, order="C")


def _check_dout(dout, shape, dtype, op):
    """The upstream gradient as a contiguous array of the forward's dtype, after checking
    it has the forward output's shape (a kernel does not check its indices)."""
    dout = _as_float(dout, dtype)
    if dout.shape != tuple(shape):
        raise MinirlhfError(f"{op} backward: dout has shape {dout.shape}, the forward output had {tuple(shape)}")
    return dout


def _rows(x, op):
    """x (..., C) -> (x as a contiguous float (N, C) array, the original shape)."""
    x = _as_float(x)
    if x.ndim == 0:
        raise MinirlhfError(f"{op}: expected an array with a last axis, got a scalar")
    return x.reshape(-1, x.shape[-1]), x.shape


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _sum(a):
    """sum(a) of a 1-D array. 'reassoc' lets LLVM keep partial sums in vector lanes and
    add them at the end (NumPy reorders its sums too, pairwise); without it each add
    waits for the previous one. Only the order of these additions is relaxed."""
    total = a.dtype.type(0.0)
    for i in range(a.size):
        total += a[i]
    return total


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _dot(a, b):
    """sum(a * b) of two 1-D arrays of equal length; vectorised like `_sum`."""
    total = a.dtype.type(0.0)
    for i in range(a.size):
        total += a[i] * b[i]
    return total


# Every exp in these kernels is of a number <= 0: a score minus its row's maximum or
# logsumexp, or -|z| in GELU's sigmoid. Numba's math.exp is a scalar libm call (it is
# vectorised only with Intel's SVML); `_exp_nonpositive` is the textbook algorithm in
# plain arithmetic instead, which LLVM vectorises (4 float64 or 8 float32 lanes):
#     exp(x) = 2^k * exp(r),  k = round(x / ln 2),  r = x - k ln 2  (so |r| <= ln(2) / 2)
# exp(r) from its Taylor series, to r^12 in float64 (truncation error < 2e-16) and to
# r^7 in float32 (< 6e-9, far below float32's own 6e-8), and 2^k written straight into
# a float's exponent bits (`_pow2`), in two halves so that each is a normal number even
# when the result is subnormal. ln 2 is split in two (Cody & Waite) so that k * LN2_HI is
# exact and r keeps full precision. No branches anywhere: a branch per element (an
# `if`, or a loop over k's binary digits) stops LLVM from vectorising, and made this
# exp twice as slow. Accuracy: within 5e-16 (float64) / 1.5e-7 (float32) relative of
# NumPy's exp, wherever the result is a normal number (tests/test_kernels.py checks it).

LN2_HI = 0.693145751953125  # 15 significant bits: k * LN2_HI is exact for |k| < 512
LN2_LO = 1.42860682030941723212e-6  # ln 2 - LN2_HI
EXP_MIN = -104.0  # exp(-104) ~ 7e-46: below, exp returns 0 (float32 itself ends at 1e-45)


@intrinsic
def _pow2(typingctx, k):
    """2.0 ** k for a float k holding an integer in the normal exponent range (-126..127
    in float32, -1022..1023 in float64): the integer k + bias, shifted into the exponent
    field, read back as a float. (An LLVM bitcast: Numba has no Python spelling for it.)"""
    if k not in (types.float32, types.float64):
        return None
    bits, mantissa, bias = (32, 23, 127) if k == types.float32 else (64, 52, 1023)

    def codegen(context, builder, signature, args):
        int_type = ir.IntType(bits)
        exponent = builder.add(builder.fptosi(args[0], int_type), ir.Constant(int_type, bias))
        return builder.bitcast(builder.shl(exponent, ir.Constant(int_type, mantissa)), args[0].type)

    return k(k), codegen


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _exp_nonpositive(a):
    """a[i] = exp(a[i]) in place, for a[i] <= 0 (above 0 it returns 1); -inf gives 0,
    NaN stays NaN. 'contract' lets mul + add fuse into one FMA (one rounding instead of
    two, only more accurate)."""
    dt = a.dtype.type
    one, zero, lowest = dt(1.0), dt(0.0), dt(EXP_MIN)
    c2, c3, c4, c5, c6, c7 = dt(1 / 2), dt(1 / 6), dt(1 / 24), dt(1 / 120), dt(1 / 720), dt(1 / 5040)
    c8, c9, c10, c11, c12 = dt(1 / 40320), dt(1 / 362880), dt(1 / 3628800), dt(1 / 39916800), dt(1 / 479001600)
    for i in range(a.size):
        x = min(max(a[i], lowest), zero)  # (NaN passes both unchanged)
        k = np.floor(x * dt(1.4426950408889634) + dt(0.5))  # round(x / ln 2), -151 <= k <= 0
        r = (x - k * dt(LN2_HI)) - k * dt(LN2_LO)
        if a.itemsize == 4:  # (a constant for each compiled dtype: no branch is left)
            p = (((((c7 * r + c6) * r + c5) * r + c4) * r + c3) * r + c2) * r
        else:
            p = ((((((((c12 * r + c11) * r + c10) * r + c9) * r + c8) * r + c7) * r + c6) * r + c5) * r + c4) * r
            p = ((p + c3) * r + c2) * r
        p = (p + one) * r + one  # exp(r)
        half = np.floor(k * dt(0.5))
        p = p * _pow2(half) * _pow2(k - half)  # * 2^k
        a[i] = zero if a[i] < lowest else p


# ----------------------------------------------------------------------------
# Linear layers and matrix products, split between the cores
#
# The matrix products are most of a training step, and BLAS already runs each at
# close to the core's peak. What is left to do is to give every core its share: one
# level of threads, ours. BLAS itself runs single-threaded (see minirlhf/__init__.py:
# OPENBLAS_NUM_THREADS=1): when BLAS's own threads and ours both want the cores, each
# waits for the other, and a product that takes 0.5 ms can take 40 ms on a busy machine.
# Each part of a product is an ordinary np.matmul on a block of rows (or columns),
# written into its place in the output, so the result is the same whatever the split.


_ROWS = 256  # rows per block of a product split by rows
_COLUMNS = 256  # columns per block of a product split by columns


def _blocks(n, size):
    """[start, stop) of the fixed-size blocks of range(n). The split is the same for any
    number of threads, so BLAS sees the same sub-products, and rounds the same way."""
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def _matmul_rows(lo, hi, a, b, out):
    for r0, r1 in _blocks(a.shape[0], _ROWS)[lo:hi]:
        np.matmul(a[r0:r1], b, out=out[r0:r1])


def _linear_forward_rows(lo, hi, x, w, b, out):
    for r0, r1 in _blocks(x.shape[0], _ROWS)[lo:hi]:
        np.matmul(x[r0:r1], w, out=out[r0:r1])
        out[r0:r1] += b  # while these rows are still in cache


def _run_tasks(lo, hi, tasks):
    """Run tasks lo..hi-1 of a list of (function, args): several products, of different
    shapes, as the items of one `_parallel` call."""
    for fn, args in tasks[lo:hi]:
        fn(*args)


def _input_grad(r0, r1, dout, w, dx):
    """Rows r0..r1-1 of dx = dout w^T."""
    np.matmul(dout[r0:r1], w.T, out=dx[r0:r1])


@njit(cache=True, nogil=True, error_model="numpy")
def _column_sums(a, c0, c1, out):
    """out[c0:c1] = a[:, c0:c1].sum(axis=0) for a 2-D array a: row after row, the order
    NumPy adds them in too (same numbers, bit for bit). NumPy's own sum over such a
    block of columns (a strided view) took 2-3.5x as long at the bench's shapes: the
    bias gradients of a base step, 23 ms of NumPy sums, take 14 ms this way."""
    total = out[c0:c1]
    total[:] = 0.0
    for i in range(a.shape[0]):
        row = a[i, c0:c1]
        for c in range(c1 - c0):
            total[c] += row[c]


def _weight_grad(c0, c1, x, dout, dw, db):
    """Columns c0..c1-1 of dw = x^T dout and db = sum(dout): sums over all rows, so split
    by columns (each column's sum is computed whole)."""
    np.matmul(x.T, dout[:, c0:c1], out=dw[:, c0:c1])
    _column_sums(dout, c0, c1, db)


def _linear_grad_tasks(x, w, dout, dx, dw, db):
    """The tasks of a linear layer's backward: dw and db by blocks of columns, then dx
    (skipped if None) by blocks of rows. x (N, Cin), w (Cin, Cout), dout (N, Cout).
    The big tasks come first, so that the threads end together on the small ones."""
    N, Cout = dout.shape
    tasks = [(_weight_grad, (c0, c1, x, dout, dw, db)) for c0, c1 in _blocks(Cout, _COLUMNS)]
    return tasks + ([] if dx is None else [(_input_grad, (r0, r1, dout, w, dx)) for r0, r1 in _blocks(N, _ROWS)])


def _parallel_matmul(a, b, out):
    """out = a @ b for 2-D a (N, K), b (K, M): rows of a split between the threads."""
    _parallel(_matmul_rows, -(-a.shape[0] // _ROWS), a.shape[0] * a.shape[1] * b.shape[1], a, b, out, coarse=True)
    return out


def matmul(a, b):
    """See layers.matmul: a (..., K) @ b (K, M) -> (..., M), the rows split between cores."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim < 1 or b.ndim != 2 or a.shape[-1] != b.shape[0]:
        return a @ b  # (NumPy's own broadcasting and its error message)
    a2 = a.reshape(-1, a.shape[-1])
    out = np.empty((a2.shape[0], b.shape[1]), np.result_type(a, b))
    return _parallel_matmul(a2, b, out).reshape(*a.shape[:-1], b.shape[1])


def _check_linear(x, w, b):
    x, w, b = np.asarray(x), np.asarray(w), np.asarray(b)
    if x.ndim < 1 or w.ndim != 2 or x.shape[-1] != w.shape[0] or b.shape != (w.shape[1],):
        raise MinirlhfError(f"linear: x {x.shape}, w {w.shape}, b {b.shape} do not fit x @ w + b")
    return x, w, b


def linear_forward(x, w, b):
    """See layers.linear_forward. x (..., Cin), w (Cin, Cout), b (Cout,) -> out (..., Cout);
    the bias is added to each block of rows right after its product."""
    x, w, b = _check_linear(x, w, b)
    x2 = x.reshape(-1, x.shape[-1])
    N, (Cin, Cout) = x2.shape[0], w.shape
    out = np.empty((N, Cout), np.result_type(x, w, b))
    _parallel(_linear_forward_rows, -(-N // _ROWS), N * Cin * Cout, x2, w, b, out, coarse=True)
    return out.reshape(*x.shape[:-1], Cout), (x2, w, x.shape)


def linear_backward(dout, cache):
    """See layers.linear_backward. dout (..., Cout) -> dx (..., Cin), dw (Cin, Cout), db (Cout,).
    dx splits by rows; dw and db, sums over all rows, split by output columns."""
    x2, w, shape = cache
    N, (Cin, Cout) = x2.shape[0], w.shape
    dtype = np.result_type(x2, w)
    dout2 = _check_dout(dout, (*shape[:-1], Cout), dtype, "linear").reshape(N, Cout)
    dx, dw, db = np.empty((N, Cin), dtype), np.empty((Cin, Cout), dtype), np.empty(Cout, dtype)
    tasks = _linear_grad_tasks(x2, w, dout2, dx, dw, db)
    _parallel(_run_tasks, len(tasks), 2 * N * Cin * Cout, tasks, coarse=True)
    return dx.reshape(shape), dw, db


# ----------------------------------------------------------------------------
# The MLP, fused by blocks of rows
#
# layers.mlp_forward is linear -> GELU -> linear, three passes over (N, 4C) arrays, and
# it keeps both the GELU's input h and its output a for the backward: the two largest
# activations of the model. Every row of the MLP is independent of the others, so here
# the three steps run on one block of _MLP_ROWS rows at a time, while the block's h
# and a are still in the core's cache; a is only a scratch block, never stored. The
# backward recomputes a from h (GELU's exp was needed for its derivative anyway), so
# the model keeps one (N, 4C) array per layer instead of two, as PyTorch keeps two.

_MLP_ROWS = 256  # rows per block: a block's h and a (<= 2 MB at C = 256) stay in cache


def _mlp_forward_rows(lo, hi, x, w_fc, b_fc, w_proj, b_proj, h, out):
    """Row blocks lo..hi-1 of the MLP, one at a time: h = x w_fc + b_fc (kept),
    a = gelu(h) (scratch), out = a w_proj + b_proj."""
    a = np.empty((min(_MLP_ROWS, x.shape[0]), h.shape[1]), h.dtype)
    for r0, r1 in _blocks(x.shape[0], _MLP_ROWS)[lo:hi]:
        np.matmul(x[r0:r1], w_fc, out=h[r0:r1])
        h[r0:r1] += b_fc
        block = a[: r1 - r0]
        _gelu_forward_kernel(0, _items(block.size), h[r0:r1].reshape(-1), block.reshape(-1))
        np.matmul(block, w_proj, out=out[r0:r1])
        out[r0:r1] += b_proj


def _mlp_backward_rows(lo, hi, dout, h, w_proj, a, dh):
    """Row blocks lo..hi-1: recompute a = gelu(h) and gelu'(h) with one exp, then
    dh = (dout w_proj^T) * gelu'(h)."""
    da = np.empty((min(_MLP_ROWS, h.shape[0]), h.shape[1]), h.dtype)
    for r0, r1 in _blocks(h.shape[0], _MLP_ROWS)[lo:hi]:
        _gelu_and_derivative(h[r0:r1].reshape(-1), a[r0:r1].reshape(-1), dh[r0:r1].reshape(-1))
        block = da[: r1 - r0]
        np.matmul(dout[r0:r1], w_proj.T, out=block)
        dh[r0:r1] *= block


def mlp_forward(x, w_fc, b_fc, w_proj, b_proj, ops=None):
    """See layers.mlp_forward. x (..., C) -> out (..., C). `ops` is ignored: this is the
    numba backend's own MLP. The cache keeps x and h (the GELU's input), not a."""
    x, w_fc, b_fc = _check_linear(x, w_fc, b_fc)
    _check_linear(np.empty((0, w_proj.shape[0]), x.dtype), w_proj, b_proj)
    dtype = np.result_type(x, w_fc, b_fc)
    x2 = _as_float(x.reshape(-1, x.shape[-1]), dtype)
    N, (C, C4) = x2.shape[0], w_fc.shape
    h = np.empty((N, C4), dtype)
    out = np.empty((N, w_proj.shape[1]), np.result_type(dtype, w_proj, b_proj))
    _parallel(_mlp_forward_rows, -(-N // _MLP_ROWS), 2 * N * C * C4, x2, w_fc, b_fc, w_proj, b_proj, h, out,
              coarse=True)
    return out.reshape(*x.shape[:-1], out.shape[1]), (x2, h, w_fc, w_proj, x.shape)


def mlp_backward(dout, cache):
    """See layers.mlp_backward. dout (..., C) -> dx, dw_fc, db_fc, dw_proj, db_proj."""
    x2, h, w_fc, w_proj, shape = cache
    N, (C, C4) = x2.shape[0], w_fc.shape
    dtype = h.dtype
    dout2 = _check_dout(dout, (*shape[:-1], w_proj.shape[1]), dtype, "mlp").reshape(N, -1)
    a, dh = np.empty_like(h), np.empty_like(h)
    _parallel(_mlp_backward_rows, -(-N // _MLP_ROWS), N * C * C4, dout2, h, w_proj, a, dh, coarse=True)
    dx, dw_fc, db_fc = np.empty((N, C), dtype), np.empty((C, C4), dtype), np.empty(C4, dtype)
    dw_proj, db_proj = np.empty(w_proj.shape, dtype), np.empty(w_proj.shape[1], dtype)
    tasks = _linear_grad_tasks(a, w_proj, dout2, None, dw_proj, db_proj)
    tasks += _linear_grad_tasks(x2, w_fc, dh, dx, dw_fc, db_fc)
    _parallel(_run_tasks, len(tasks), 3 * N * C * C4, tasks, coarse=True)
    return dx.reshape(shape), dw_fc, db_fc, dw_proj, db_proj


# ----------------------------------------------------------------------------
# Embedding backward (the forward is a lookup; NumPy's fancy indexing is fine)


@njit(cache=True, nogil=True, error_model="numpy")
def _scatter_add_rows(idx, dout, dwte):
    """dwte[idx[i]] += dout[i] for every row i, in order (np.add.at, without its
    per-element dispatch)."""
    for i in range(idx.size):
        row = dwte[idx[i]]
        for c in range(dout.shape[1]):
            row[c] += dout[i, c]


def embedding_backward(dout, cache):
    """See layers.embedding_backward. dout (B, T, C) -> dwte (V, C), dwpe (T_max, C)."""
    idx, wte_shape, wpe_shape, pos0 = cache
    dout = _as_float(dout)
    C = dout.shape[-1]
    dwte = np.zeros(wte_shape, dtype=dout.dtype)
    _scatter_add_rows(np.ascontiguousarray(idx, dtype=np.int64).reshape(-1), dout.reshape(-1, C), dwte)
    dwpe = np.zeros(wpe_shape, dtype=dout.dtype)
    np.sum(dout, axis=0, out=dwpe[pos0 : pos0 + idx.shape[1]])
    return dwte, dwpe


# ----------------------------------------------------------------------------
# LayerNorm

_ROWS_PER_CHUNK = 32  # rows per partial dw, db sum (a fixed size keeps results thread-independent)


@njit(cache=True, nogil=True, error_model="numpy")
def _layernorm_forward_kernel(lo, hi, x, w, b, eps, out, mean, rstd):
    """layers.layernorm_forward for rows lo..hi-1 of x (N, C): mean, variance, normalise,
    scale and shift, with `out` as the scratch row for x - mean. Keeps mean and rstd (N,)
    for the backward, not the (N, C) xhat, which the backward recomputes from x."""
    C = x.shape[1]
    inv_c = x.dtype.type(1.0 / C)
    for i in range(lo, hi):
        m = _sum(x[i]) * inv_c
        for c in range(C):
            out[i, c] = x[i, c] - m
        r = x.dtype.type(1.0) / math.sqrt(_dot(out[i], out[i]) * inv_c + eps)  # biased variance
        for c in range(C):
            out[i, c] = out[i, c] * r * w[c] + b[c]
        mean[i] = m
        rstd[i] = r


@njit(cache=True, nogil=True, error_model="numpy")
def _layernorm_backward_kernel(lo, hi, dout, x, mean, rstd, w, dx, dw_part, db_part):
    """layers.layernorm_backward for row chunks lo..hi-1:
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),   g = dout * w,
    fused with the dw = sum(dout * xhat), db = sum(dout) reductions. xhat is recomputed
    from x, mean, rstd into a scratch row. Each chunk of rows sums its dw, db into its
    own row of dw_part, db_part (no two threads write the same memory); the caller adds
    the chunks up."""
    N, C = x.shape
    inv_c = x.dtype.type(1.0 / C)
    xhat = np.empty(C, x.dtype)
    for chunk in range(lo, hi):
        for i in range(chunk * _ROWS_PER_CHUNK, min(N, (chunk + 1) * _ROWS_PER_CHUNK)):
            m, r = mean[i], rstd[i]
            for c in range(C):
                xhat[c] = (x[i, c] - m) * r
                dx[i, c] = dout[i, c] * w[c]  # g, for now
            g_mean = _sum(dx[i]) * inv_c
            gx_mean = _dot(dx[i], xhat) * inv_c
            for c in range(C):
                dx[i, c] = r * (dx[i, c] - g_mean - xhat[c] * gx_mean)
                dw_part[chunk, c] += dout[i, c] * xhat[c]
                db_part[chunk, c] += dout[i, c]


def layernorm_forward(x, w, b, eps=1e-5):
    """See layers.layernorm_forward. x (..., C), w (C,), b (C,) -> out (..., C).
    The cache holds x itself (no normalised copy): do not change x in place before
    the backward."""
    x2, shape = _rows(x, "layernorm")
    dtype = x2.dtype
    w = _as_float(w, dtype)
    b = _as_float(b, dtype)
    N, C = x2.shape
    if w.shape != (C,) or b.shape != (C,):
        raise MinirlhfError(f"layernorm: x has {C} features but w, b have shapes {w.shape}, {b.shape}")
    out = np.empty_like(x2)
    mean = np.empty(N, dtype)
    rstd = np.empty(N, dtype)
    _parallel(_layernorm_forward_kernel, N, N * C, x2, w, b, dtype.type(eps), out, mean, rstd)
    return out.reshape(shape), (x2, mean, rstd, w, shape)


def layernorm_backward(dout, cache):
    """See layers.layernorm_backward. dout (..., C) -> dx (..., C), dw (C,), db (C,)."""
    x2, mean, rstd, w, shape = cache
    N, C = x2.shape
    dout2 = _check_dout(dout, shape, x2.dtype, "layernorm").reshape(N, C)
    dx = np.empty_like(x2)
    n_chunks = (N + _ROWS_PER_CHUNK - 1) // _ROWS_PER_CHUNK
    dw_part = np.zeros((n_chunks, C), x2.dtype)
    db_part = np.zeros((n_chunks, C), x2.dtype)
    _parallel(_layernorm_backward_kernel, n_chunks, 2 * N * C, dout2, x2, mean, rstd, w, dx, dw_part, db_part)
    return dx.reshape(shape), dw_part.sum(axis=0), db_part.sum(axis=0)


# ----------------------------------------------------------------------------
# GELU (tanh approximation)
#
# With u = s (x + 0.044715 x^3) and the identity 1 + tanh(u) = 2 sigmoid(2u):
#     gelu(x)  = 0.5 x (1 + tanh(u))  = x * sig,          sig = sigmoid(2u) = 1 / (1 + exp(-2u))
#     gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 * 0.044715 x^2)
#              = sig * (1 + 2 x (1 - sig) s (1 + 3 * 0.044715 x^2))
# the same function as layers.gelu_forward, computed with one exp instead of a tanh,
# and without the cancellation in 1 + tanh(u) at negative x. The sigmoid is taken as
#     sig = 1 / (1 + e) if x >= 0 else e / (1 + e),      e = exp(-|2u|) <= 1
# (2u has the sign of x), so the exp never overflows. The cache is x alone, as in
# PyTorch: the backward recomputes sig (one exp) rather than keep a (B, T, 4C) array
# per layer, the largest activation of the model, alive until the backward.

_ELEMENTS_PER_ITEM = 4096  # elementwise kernels split flat arrays into items of this size


@njit(cache=True, nogil=True, error_model="numpy")
def _gelu_sigmoid(x, sig):
    """sig[i] = sigmoid(2u(x[i])) for 1-D x, sig of equal length (sig may be the output
    array: the kernels below overwrite it element by element)."""
    s = x.dtype.type(GELU_SCALE)
    a = x.dtype.type(0.044715)
    one = x.dtype.type(1.0)
    minus_two = x.dtype.type(-2.0)
    for i in range(x.size):
        xi = x[i]
        sig[i] = minus_two * s * abs(xi + a * xi * xi * xi)  # -|2u|
    _exp_nonpositive(sig)  # e = exp(-|2u|)
    for i in range(x.size):
        e = sig[i]
        numerator = one if x[i] >= 0 else e  # (select, then one division: this vectorises)
        sig[i] = numerator / (one + e)


@njit(cache=True, nogil=True, error_model="numpy")
def _gelu_forward_kernel(lo, hi, x, out):
    """layers.gelu_forward on items lo..hi-1 of a flat array."""
    x, out = _item_range(x, lo, hi), _item_range(out, lo, hi)
    _gelu_sigmoid(x, out)
    for i in range(x.size):
        out[i] *= x[i]


@njit(cache=True, nogil=True, error_model="numpy")
def _gelu_backward_kernel(lo, hi, dout, x, dx):
    """layers.gelu_backward on items lo..hi-1 of flat arrays."""
    s = x.dtype.type(GELU_SCALE)
    a3 = x.dtype.type(3.0 * 0.044715)
    one = x.dtype.type(1.0)
    two = x.dtype.type(2.0)
    dout, x, dx = _item_range(dout, lo, hi), _item_range(x, lo, hi), _item_range(dx, lo, hi)
    _gelu_sigmoid(x, dx)
    for i in range(x.size):
        xi, sig = x[i], dx[i]
        dx[i] = dout[i] * sig * (one + two * xi * (one - sig) * s * (one + a3 * xi * xi))


@njit(cache=True, nogil=True)
def _item_range(a, lo, hi):
    """The elements of items lo..hi-1 of a flat array, as a view. Kernels loop over a
    view with range(n) rather than over range(start, stop) of the whole array: an index
    that starts at 0 is known to be >= 0, so Numba drops its negative-index wraparound
    check, and without that check per element LLVM can vectorise the loop (4x here)."""
    return a[lo * _ELEMENTS_PER_ITEM : min(a.size, hi * _ELEMENTS_PER_ITEM)]


@njit(cache=True, nogil=True, error_model="numpy")
def _gelu_and_derivative(x, out, deriv):
    """out = gelu(x) and deriv = gelu'(x) for 1-D arrays, with one exp per element (the
    MLP's backward, which recomputes the GELU instead of keeping its output)."""
    s = x.dtype.type(GELU_SCALE)
    a3 = x.dtype.type(3.0 * 0.044715)
    one = x.dtype.type(1.0)
    two = x.dtype.type(2.0)
    _gelu_sigmoid(x, deriv)
    for i in range(x.size):
        xi, sig = x[i], deriv[i]
        out[i] = xi * sig
        deriv[i] = sig * (one + two * xi * (one - sig) * s * (one + a3 * xi * xi))


def _items(size):
    return (size + _ELEMENTS_PER_ITEM - 1) // _ELEMENTS_PER_ITEM


def gelu_forward(x):
    """See layers.gelu_forward. Any shape. The cache holds x itself."""
    x = _as_float(x)
    flat = x.reshape(-1)
    out = np.empty_like(flat)
    _parallel(_gelu_forward_kernel, _items(flat.size), 8 * flat.size, flat, out)
    return out.reshape(x.shape), (flat, x.shape)


def gelu_backward(dout, cache):
    """See layers.gelu_backward."""
    flat, shape = cache
    dout = _check_dout(dout, shape, flat.dtype, "gelu")
    dx = np.empty_like(flat)
    _parallel(_gelu_backward_kernel, _items(flat.size), 8 * flat.size, dout.reshape(-1), flat, dx)
    return dx.reshape(shape)


# ----------------------------------------------------------------------------
# Softmax over the last axis


@njit(cache=True, nogil=True, error_model="numpy")
def _softmax_forward_kernel(lo, hi, x, y):
    """layers.softmax_forward on rows lo..hi-1 of x (N, K): max, exp, normalise."""
    K = x.shape[1]
    for i in range(lo, hi):
        m = x[i, 0]
        for k in range(1, K):
            m = max(m, x[i, k])
        for k in range(K):
            y[i, k] = x[i, k] - m
        _exp_nonpositive(y[i])  # -inf entries give exactly 0
        inv = x.dtype.type(1.0) / _sum(y[i])
        for k in range(K):
            y[i, k] *= inv


@njit(cache=True, nogil=True, error_model="numpy")
def _softmax_backward_kernel(lo, hi, dout, y, dx):
    """layers.softmax_backward on rows lo..hi-1: dx = y * (dout - sum(dout * y))."""
    K = y.shape[1]
    for i in range(lo, hi):
        dot = _dot(dout[i], y[i])
        for k in range(K):
            dx[i, k] = y[i, k] * (dout[i, k] - dot)


def softmax_forward(x):
    """See layers.softmax_forward. x (..., K) -> y (..., K); the cache holds y."""
    x2, shape = _rows(x, "softmax")
    y = np.empty_like(x2)
    if y.size:
        _parallel(_softmax_forward_kernel, x2.shape[0], 8 * x2.size, x2, y)
    return y.reshape(shape), (y, shape)


def softmax_backward(dout, cache):
    """See layers.softmax_backward."""
    y, shape = cache
    dout2 = _check_dout(dout, shape, y.dtype, "softmax").reshape(y.shape)
    dx = np.empty_like(y)
    if y.size:
        _parallel(_softmax_backward_kernel, y.shape[0], 2 * y.size, dout2, y, dx)
    return dx.reshape(shape)


# ----------------------------------------------------------------------------
# Causal multi-head attention: BLAS for the products, Numba for the softmax
# (`causal=False`, the bidirectional attention of a masked-language model, runs the same
# code with one query block of all T rows and every row's softmax over all T keys)
#
# The products of attention (scores S = Q K^T and output O = P V; in the backward
# dP = dO V^T, dQ = dS K, dK = dS^T Q, dV = P^T dO) are matrix products of head size D,
# which BLAS runs at several times the speed of any plain loop. What BLAS cannot do is
# the causal softmax in between, and the softmax backward: those are the Numba kernels
# below, one pass over a block of weights each, in place.
#
# The work is cut two ways:
# - causally, by query blocks of _CAUSAL_BLOCK rows: block [r0, r1) only needs keys
#   0..r1-1, so the products skip most of the upper triangle (5/8 of the work of the
#   full T x T at T = 4 blocks) instead of computing scores that the mask throws away;
# - by sequences: `_parallel` hands each thread ranges of sequences, and a range goes
#   through the blocks together: each product is one NumPy call for all the range's
#   heads. (Not a call per head: the Python around each call holds the GIL, which the
#   other thread is waiting for; at the bench's shape, calls per head made attention
#   2-3x slower on two cores.)
#
# The forward keeps the weights P of the causal blocks for the backward, one array
# (B, H, r1 - r0, r1) per block: 5/8 of the reference's (B, H, T, T) at T = 4 blocks,
# 10 MB per layer at B = 8, T = 256, H = 8 (float32). Flash attention's trade, keeping
# only each row's logsumexp and recomputing P in the backward, costs one more product
# (Q K^T again) and one more exp per weight: attention was 15-20% slower that way.
#
# The backward goes through the blocks from the last. A block's rows of dQ are its own
# dS K; dK and dV get a share from every block: the last block, which reaches every
# key, writes its share, each earlier block adds its own to keys 0..r1-1. The sums are
# kept in contiguous arrays and copied into dqkv at the end: adding into dqkv's strided
# views made NumPy go through a buffer at every addition (2 ms at the bench shape).

_CAUSAL_BLOCK = 64  # query rows per causal block


@njit(cache=True, nogil=True, error_model="numpy")
def _attention_softmax_kernel(p, r0, mask, dropped, scale, causal):
    """layers.self_attention_forward's mask and softmax, in place, on one query block of
    n sequences: p (n, H, R, W) holds the scores Q K^T of queries r0..r0+R-1 against keys
    0..W-1. Row t becomes the weights P[t, j] = softmax(scale * p[t]) over keys j <= t
    (all W keys with causal=False), and 0 after t (the products read them). With
    dropout, mask is the sequences' (n, H, T, T) dropout mask and `dropped` (like p) gets
    P * M, the weights that reach the output; without, both are empty arrays."""
    n, H, R, W = p.shape
    use_mask = mask.size > 0
    one = p.dtype.type(1.0)
    for b in range(n):
        for h in range(H):
            for i in range(R):
                t = r0 + i
                row = p[b, h, i]
                e = t + 1 if causal else W  # the keys row t may see: 0..e-1
                m = row[0]
                for j in range(1, e):
                    m = max(m, row[j])
                for j in range(e):
                    row[j] = (row[j] - m) * scale
                _exp_nonpositive(row[:e])
                inv = one / _sum(row[:e])
                for j in range(e):
                    row[j] *= inv
                row[e:] = 0.0
                if use_mask:
                    kept = dropped[b, h, i]
                    for j in range(W):
                        kept[j] = row[j] * mask[b, h, t, j]


@njit(cache=True, nogil=True, error_model="numpy")
def _attention_softmax_backward_kernel(p, dp, r0, mask, dropped, scale, causal):
    """The softmax part of layers.self_attention_backward, in place, on one query block:
    p (n, H, R, W) holds the weights P of queries r0.., dp holds dP = dO V^T.
        dP *= M,   dS = P (dP - sum_j P dP) * scale
    (softmax_backward, then the 1/sqrt(D) of the scores); dp gets dS, 0 after each row's
    last key. With dropout, `dropped` gets P * M again (for dV); else mask and dropped
    are empty arrays."""
    n, H, R, W = p.shape
    use_mask = mask.size > 0
    for b in range(n):
        for h in range(H):
            for i in range(R):
                t = r0 + i
                row, g = p[b, h, i], dp[b, h, i]
                e = t + 1 if causal else W
                if use_mask:
                    for j in range(e):
                        g[j] *= mask[b, h, t, j]
                delta = _dot(row[:e], g[:e])
                for j in range(e):
                    g[j] = row[j] * (g[j] - delta) * scale
                g[e:] = 0.0
                if use_mask:
                    kept = dropped[b, h, i]
                    for j in range(W):
                        kept[j] = row[j] * mask[b, h, t, j]


def _heads(qkv, n_head):
    """qkv (B, T, 3C) -> q, k, v, each (B, H, T, D): strided views, no copy (BLAS reads
    them in place: each (T, D) slice has unit stride along D)."""
    B, T, C3 = qkv.shape
    D = C3 // (3 * n_head)
    q, k, v = qkv.reshape(B, T, 3, n_head, D).transpose(2, 0, 3, 1, 4)
    return q, k, v


def _query_blocks(T, causal):
    """The query blocks [r0, r1) of a length-T sequence; one block of all T rows for
    bidirectional attention, so the products below become plain full products."""
    return _blocks(T, _CAUSAL_BLOCK) if causal else [(0, T)]


def _attention_forward_part(lo, hi, qkv, n_head, mask, out, weights, causal):
    """Forward for sequences lo..hi-1 (all at once: one call per product covers their
    heads), block by block: S = Q K^T, softmax, O = P V."""
    B, T, _ = qkv.shape
    q, k, v = (a[lo:hi] for a in _heads(qkv, n_head))
    o = out[lo:hi].reshape(hi - lo, T, n_head, -1).transpose(0, 2, 1, 3)  # (n, H, T, D) view of out
    k_t = k.swapaxes(-1, -2)  # (n, H, D, T)
    mask = mask[lo:hi]
    scale = qkv.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    for (r0, r1), w in zip(_query_blocks(T, causal), weights):
        p = w[lo:hi]  # (n, H, r1 - r0, r1)
        np.matmul(q[..., r0:r1, :], k_t[..., :r1], out=p)
        dropped = np.empty_like(p) if mask.size else mask  # P * M (without dropout: empty, like mask)
        _attention_softmax_kernel(p, r0, mask, dropped, scale, causal)
        np.matmul(dropped if mask.size else p, v[..., :r1, :], out=o[..., r0:r1, :])


def _attention_backward_part(lo, hi, dout, qkv, weights, n_head, mask, dqkv, causal):
    """Backward for sequences lo..hi-1, block by block from the last: dP, dS, then dQ
    of the block's rows and its shares of dK and dV."""
    B, T, _ = qkv.shape
    q, k, v = (a[lo:hi] for a in _heads(qkv, n_head))
    dq, dk, dv = (a[lo:hi] for a in _heads(dqkv, n_head))
    do = dout[lo:hi].reshape(hi - lo, T, n_head, -1).transpose(0, 2, 1, 3)
    v_t = v.swapaxes(-1, -2)  # (n, H, D, T)
    mask = mask[lo:hi]
    scale = qkv.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    dv_sum, dk_sum, share = (np.empty(dq.shape, qkv.dtype) for _ in range(3))  # (n, H, T, D) each
    for (r0, r1), w in reversed(list(zip(_query_blocks(T, causal), weights))):
        p = w[lo:hi]
        ds = np.empty_like(p)
        np.matmul(do[..., r0:r1, :], v_t[..., :r1], out=ds)  # dP
        dropped = np.empty_like(p) if mask.size else mask  # P * M (without dropout: empty, like mask)
        _attention_softmax_backward_kernel(p, ds, r0, mask, dropped, scale, causal)
        np.matmul(ds, k[..., :r1, :], out=dq[..., r0:r1, :])
        for total, left, right in ((dv_sum, dropped if mask.size else p, do), (dk_sum, ds, q)):
            # keys 0..r1-1 get this block's share: dV += (P M)^T dO, dK += dS^T Q
            product = total if r1 == T else share[..., :r1, :]
            np.matmul(left.swapaxes(-1, -2), right[..., r0:r1, :], out=product)
            if r1 < T:
                total[..., :r1, :] += product
    dv[...], dk[...] = dv_sum, dk_sum


def attention_forward(qkv, n_head, dropout=0.0, rng=None, causal=True):
    """See layers.attention_forward. qkv (B, T, 3C) -> out (B, T, C); causal=False is
    bidirectional (the same kernels, over every key and with full products).

    The dropout mask is drawn by layers.dropout_mask with the reference's shape and
    generator, so both backends drop the same weights for the same rng. The cache holds
    qkv, the weights of each query block, (B, H, r1 - r0, r1), the mask (if any) and
    whether it was causal."""
    qkv = _as_float(qkv)
    if qkv.ndim != 3 or n_head < 1 or qkv.shape[-1] % (3 * n_head):
        raise MinirlhfError(f"attention: qkv must be (B, T, 3C) with C divisible by n_head={n_head}, got {qkv.shape}")
    B, T, C3 = qkv.shape
    mask = dropout_mask((B, n_head, T, T), dropout, rng, qkv.dtype)
    mask = np.empty((B, 0, 0, 0), qkv.dtype) if mask is None else mask
    out = np.empty((B, T, C3 // 3), qkv.dtype)
    weights = [np.empty((B, n_head, r1 - r0, r1), qkv.dtype) for r0, r1 in _query_blocks(T, causal)]
    if T:
        _parallel(_attention_forward_part, B, B * T * T * C3 // 3, qkv, n_head, mask, out, weights, bool(causal))
    return out, (qkv, weights, mask, n_head, bool(causal))


def attention_backward(dout, cache):
    """See layers.attention_backward. dout (B, T, C) -> dqkv (B, T, 3C)."""
    qkv, weights, mask, n_head, causal = cache
    B, T, C3 = qkv.shape
    dout = _check_dout(dout, (B, T, C3 // 3), qkv.dtype, "attention")
    dqkv = np.empty_like(qkv)
    if T:
        _parallel(_attention_backward_part, B, 3 * B * T * T * C3 // 3, dout, qkv, weights, n_head, mask, dqkv, causal)
    return dqkv


# ----------------------------------------------------------------------------
# AdamW, fused: one pass over the flat parameter buffer instead of eight


@njit(cache=True, nogil=True, error_model="numpy")
def _adamw_kernel(lo, hi, p, g, m, v, decay, shrink, beta1, beta2, step_size, v_hat_scale, eps):
    """optim.adamw_update on items lo..hi-1 (of _ELEMENTS_PER_ITEM entries each): each
    entry is read once and written once, where the NumPy version makes a pass per line."""
    one = p.dtype.type(1.0)
    p, g, m, v = _item_range(p, lo, hi), _item_range(g, lo, hi), _item_range(m, lo, hi), _item_range(v, lo, hi)
    decay = _item_range(decay, lo, hi)
    for i in range(p.size):
        pi = p[i] * shrink if decay[i] else p[i]
        mi = beta1 * m[i] + (one - beta1) * g[i]
        vi = beta2 * v[i] + (one - beta2) * (g[i] * g[i])
        m[i] = mi
        v[i] = vi
        p[i] = pi - step_size * mi / (np.sqrt(vi * v_hat_scale) + eps)


def adamw_update(p, g, m, v, decay, t, lr, beta1, beta2, eps, weight_decay):
    """See optim.adamw_update (same arguments, same result to rounding)."""
    dt = p.dtype.type
    g = _as_float(g, p.dtype)
    args = (dt(1.0 - lr * weight_decay), dt(beta1), dt(beta2), dt(lr / (1.0 - beta1**t)),
            dt(1.0 / (1.0 - beta2**t)), dt(eps))  # fmt: skip
    _parallel(_adamw_kernel, _items(p.size), 4 * p.size, p, g, m, v, decay, *args)


# ----------------------------------------------------------------------------
# Attention with a KV cache (generation: one new token per step)
#
# Generating a token is a matrix-vector product per head: one query against the cached
# keys and values. At those sizes the NumPy reference spends its time on overhead
# (masks, splits, reshapes, half a dozen calls per layer); one fused loop per head is
# ten times quicker.


@njit(cache=True, nogil=True, error_model="numpy")
def _kv_cache_attention_kernel(lo, hi, qkv, n_head, K, V, pos0, out):
    """layers.kv_cache_attention_forward for (batch, head) items lo..hi-1: write the t
    new keys and values at positions pos0.., then each new query i attends to keys
    0..pos0+i (causal), softmax, weighted sum of values into out (B, t, C)."""
    B, t, C3 = qkv.shape
    C = C3 // 3
    D = C // n_head
    scale = qkv.dtype.type(1.0 / math.sqrt(D))
    p = np.empty(pos0 + t, qkv.dtype)
    for bh in range(lo, hi):
        b, h = bh // n_head, bh % n_head
        for i in range(t):
            K[b, h, pos0 + i] = qkv[b, i, C + h * D : C + (h + 1) * D]
            V[b, h, pos0 + i] = qkv[b, i, 2 * C + h * D : 2 * C + (h + 1) * D]
        for i in range(t):
            q = qkv[b, i, h * D : (h + 1) * D]
            n = pos0 + i + 1
            for j in range(n):
                p[j] = _dot(q, K[b, h, j])
            m = p[0]
            for j in range(n):
                m = max(m, p[j])
            for j in range(n):
                p[j] = (p[j] - m) * scale
            _exp_nonpositive(p[:n])
            inv = qkv.dtype.type(1.0) / _sum(p[:n])
            o = out[b, i, h * D : (h + 1) * D]
            o[:] = 0.0
            for j in range(n):
                w = p[j] * inv
                v = V[b, h, j]
                for d in range(D):
                    o[d] += w * v[d]


def kv_cache_attention_forward(qkv, n_head, kv, pos0):
    """See layers.kv_cache_attention_forward. qkv (B, t, 3C) -> out (B, t, C); the new keys
    and values are written into kv = (K, V), each (B, H, T_max, D), at positions pos0.."""
    qkv = _as_float(qkv)
    K, V = kv
    B, t, C3 = qkv.shape
    if K.dtype != qkv.dtype or not (K.flags.c_contiguous and V.flags.c_contiguous) or pos0 + t > K.shape[2]:
        return layers.kv_cache_attention_forward(qkv, n_head, kv, pos0)  # (unusual buffers: the reference)
    out = np.empty((B, t, C3 // 3), qkv.dtype)
    _parallel(_kv_cache_attention_kernel, B * n_head, B * t * (pos0 + t) * C3 // 3, qkv, n_head, K, V, pos0, out)
    return out


# ----------------------------------------------------------------------------
# Log-probabilities of target tokens


@njit(cache=True, nogil=True, error_model="numpy")
def _token_logprobs_forward_kernel(lo, hi, logits, targets, logp, lse):
    """layers.token_logprobs_forward on rows lo..hi-1 of logits (N, V): the logsumexp and
    the target's logit, fused. Ignored rows (target -1) are skipped: logp 0."""
    V = logits.shape[1]
    row = np.empty(V, logits.dtype)  # exp(logits - max) of one row
    for i in range(lo, hi):
        target = targets[i]
        if target == -1:
            logp[i] = 0.0
            lse[i] = 0.0
            continue
        m = logits[i, 0]
        for v in range(1, V):
            m = max(m, logits[i, v])
        for v in range(V):
            row[v] = logits[i, v] - m
        _exp_nonpositive(row)
        lse[i] = m + math.log(_sum(row))
        logp[i] = logits[i, target] - lse[i]


@njit(cache=True, nogil=True, error_model="numpy")
def _token_logprobs_backward_kernel(lo, hi, dlogp, logits, targets, lse, dlogits):
    """layers.token_logprobs_backward on rows lo..hi-1: dlogits = dlogp (onehot - softmax),
    the softmax recomputed from the stored logsumexp (no (N, V) probabilities kept)."""
    V = logits.shape[1]
    for i in range(lo, hi):
        target = targets[i]
        if target == -1:
            for v in range(V):
                dlogits[i, v] = 0.0
            continue
        g = dlogp[i]
        for v in range(V):
            dlogits[i, v] = logits[i, v] - lse[i]
        _exp_nonpositive(dlogits[i])  # the softmax
        for v in range(V):
            dlogits[i, v] *= -g
        dlogits[i, target] += g


def token_logprobs_forward(logits, targets):
    """See layers.token_logprobs_forward. logits (..., V), targets (...) int -> logp (...).
    Targets must be -1 (ignored) or in [0, V). The cache holds logits itself."""
    logits2, shape = _rows(logits, "token_logprobs")
    N, V = logits2.shape
    targets = np.asarray(targets)
    if targets.shape != shape[:-1]:
        raise MinirlhfError(f"token_logprobs: targets have shape {targets.shape}, logits {shape} need {shape[:-1]}")
    targets = np.ascontiguousarray(targets, dtype=np.int64).reshape(-1)
    if targets.size and (targets.min() < -1 or targets.max() >= V):
        raise MinirlhfError(f"token_logprobs: targets must be -1 or in [0, {V}), got {targets.min()}..{targets.max()}")
    logp = np.empty(N, logits2.dtype)
    lse = np.empty(N, logits2.dtype)
    _parallel(_token_logprobs_forward_kernel, N, 8 * N * V, logits2, targets, logp, lse)
    return logp.reshape(shape[:-1]), (logits2, targets, lse, shape)


def token_logprobs_backward(dlogp, cache):
    """See layers.token_logprobs_backward. dlogp (...) -> dlogits (..., V)."""
    logits2, targets, lse, shape = cache
    N, V = logits2.shape
    dlogp = _check_dout(dlogp, shape[:-1], logits2.dtype, "token_logprobs").reshape(N)
    dlogits = np.empty_like(logits2)
    _parallel(_token_logprobs_backward_kernel, N, 8 * N * V, dlogp, logits2, targets, lse, dlogits)
    return dlogits.reshape(shape)
