"""`minirlhf bench`: how fast is a training step and generation, per preset and backend,
and how does it compare with the same model in PyTorch.

Every measurement runs in a fresh subprocess, so its peak memory is its own and one
measurement cannot warm or pollute another. Times are medians over repeated steps
after warm-up (which includes any Numba compilation).

    minirlhf bench                              # all presets, both backends, a table
    minirlhf bench --preset small --json        # one preset, machine-readable
    minirlhf bench --compare torch              # ours (numba) against PyTorch eager
    minirlhf bench --startup                    # time to the first step, cold/warm cache
    minirlhf bench --ops                        # each hot op: NumPy reference vs Numba kernel

`--compare torch` builds the same GPT-2 in PyTorch (minirlhf/torch_gpt.py) with the
same weights, first checks that both give the same loss and gradients on one batch
(so the race is fair), then alternates fresh processes of ours and PyTorch's, `--rounds`
times each, with the same number of threads, and reports medians: training tokens/s
(forward, loss, backward, clipping, AdamW, float32), generation tokens/s with a KV
cache, peak memory, the ratios ours / PyTorch, and the model-FLOP utilisation (MFU)
against a large float32 matrix product measured on the same cores. Alternating
matters on a shared machine: a burst of load hits both sides, not one. `--ops` alternates
too (NumPy, then Numba, `--rounds` times per op), and both print the load average, so a
busy machine shows in the output.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from minirlhf import backend
from minirlhf.errors import MinirlhfError
from minirlhf.flags import non_negative_float, non_negative_int, positive_int

# The benchmark presets: model size plus vocabulary and batch.
BENCH_PRESETS = {
    "tiny": dict(vocab_size=128, block_size=64, n_layer=2, n_embd=64, n_head=4, batch_size=32),
    "small": dict(vocab_size=512, block_size=128, n_layer=4, n_embd=128, n_head=4, batch_size=16),
    "base": dict(vocab_size=1024, block_size=256, n_layer=6, n_embd=256, n_head=8, batch_size=8),
}
GEN_BATCH = 16
GEN_TOKENS = 128
PEAK_SIZE = 2048  # the square float32 product that measures the cores' peak
FAIR_TOLERANCE = 1e-4  # ours vs PyTorch: relative difference of loss and of gradients


def _median_times(fn, min_repeats, min_seconds):
    """Median wall-clock and CPU seconds of fn() (the CPU time of all threads: on a busy
    machine, a single-threaded run's CPU time is the steadier measure)."""
    times, cpu_times = [], []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return statistics.median(times), statistics.median(cpu_times)


def _status_mb(field):
    """A memory figure of this process from Linux's /proc/self/status (VmRSS: resident
    now, VmHWM: the peak), in MB; None where there is no such file."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mb():
    """Resident memory of this process now (the peak where /proc is unavailable)."""
    return _status_mb("VmRSS") or _peak_rss_mb()


def _peak_rss_mb():
    """Peak resident memory of this process. VmHWM, not getrusage's ru_maxrss: Linux
    carries ru_maxrss over an exec from the forked parent, so a worker started by a
    parent that has imported PyTorch would "peak" at the parent's size."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss():
    """Restart the peak (VmHWM) from the current resident size (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def flops_per_token(cfg):
    """Training FLOPs per token, matrix products only (the usual MFU convention, PaLM's
    appendix B): forward 2 per weight of the blocks' linears and the LM head, plus the
    attention scores and weighted sum, 2 T C per layer each, halved by the causal mask;
    backward twice the forward."""
    C, L, V, T = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.block_size
    weights = L * 12 * C * C + V * C
    attention = L * 2 * T * C  # (2 products x 2 FLOPs x T C) / 2 for the causal half
    return 3 * (2 * weights + attention)


def _setup(preset, seed=0):
    """The preset's config, batch size, model (float32) and one batch of data."""
    from minirlhf import GPT, GPTConfig

    spec = dict(BENCH_PRESETS[preset])
    B = spec.pop("batch_size")
    cfg = GPTConfig(**spec)
    model = GPT(cfg, seed=seed, dtype=np.float32)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, cfg.vocab_size, size=(B, cfg.block_size))
    y = rng.integers(0, cfg.vocab_size, size=(B, cfg.block_size))
    return cfg, B, model, x, y, rng


def _warm_up(steps):
    """One step and a short generation of a micro model, so that the code either side
    loads on first use (Numba's compiled kernels, PyTorch's lazily set-up kernels) is
    resident before memory is counted: what is left is the model's own memory."""
    from minirlhf import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8)
    x = np.zeros((2, 8), dtype=np.int64)
    train_step, generate = steps(GPT(cfg, dtype=np.float32), x, x, np.random.default_rng(0), cfg)
    train_step()
    generate(2)


def _ours_steps(model, x, y, rng, cfg):
    from minirlhf.optim import AdamW, clip_grad_norm

    opt = AdamW(model.params, lr=1e-4)

    def train_step():
        _, grads = model.loss_and_grads(x, y)
        clip_grad_norm(grads, 1.0)
        opt.step(grads)

    prompts = [[int(t)] for t in rng.integers(0, cfg.vocab_size, size=GEN_BATCH)]
    return train_step, lambda n: model.generate(prompts, n, np.random.default_rng(0))


def _torch_steps(model, x, y, rng, cfg):
    import torch

    from minirlhf.torch_gpt import TorchGPT

    twin = TorchGPT(model)
    opt = twin.adamw(lr=1e-4)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def train_step():
        opt.zero_grad(set_to_none=True)
        twin.loss(tx, ty).backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
        opt.step()

    prompts = torch.from_numpy(rng.integers(0, cfg.vocab_size, size=GEN_BATCH))
    return train_step, lambda n: twin.generate(prompts, n, torch.Generator().manual_seed(0))


def measure(preset, min_seconds=2.0, side="ours"):
    """Measure one preset in this process: side "ours" (the backend MINIRLHF_BACKEND
    selects) or "torch" (PyTorch eager, with torch's thread count set by the caller)."""
    from minirlhf import backend

    steps = _torch_steps if side == "torch" else _ours_steps
    _warm_up(steps)
    rss_start = _rss_mb()
    cfg, B, model, x, y, rng = _setup(preset)
    n_new = min(GEN_TOKENS, cfg.block_size - 1)  # the context limits tiny's generation
    n_params = model.n_params
    train_step, generate = steps(model, x, y, rng, cfg)
    del model  # (PyTorch's twin has its own copy of the weights; ours is kept by the steps)
    _reset_peak_rss()  # (the moment both copies existed is not a training step's memory)

    t_first = time.perf_counter()
    train_step()  # warm-up: compiles (or loads cached) kernels
    first_step = time.perf_counter() - t_first
    train_step()
    step_time, step_cpu = _median_times(train_step, 5, min_seconds)
    train_peak = _peak_rss_mb()
    generate(4)  # warm-up
    gen_time, gen_cpu = _median_times(lambda: generate(n_new), 3, min_seconds)
    return {
        "preset": preset,
        "backend": "torch" if side == "torch" else backend.name(),
        "n_params": n_params,
        "train_tokens_per_s": B * cfg.block_size / step_time,
        "train_step_ms": step_time * 1e3,
        "train_tokens_per_cpu_s": B * cfg.block_size / step_cpu,
        "first_step_s": first_step,
        "gen_tokens_per_s": GEN_BATCH * n_new / gen_time,
        "gen_tokens_per_cpu_s": GEN_BATCH * n_new / gen_cpu,
        "gen_new_tokens": n_new,
        "peak_rss_mb": _peak_rss_mb(),
        # the model, optimiser state, gradients, activations and workspace: what the
        # measurement added to the process (the libraries and their kernels excluded)
        "train_mem_mb": train_peak - rss_start,
        "mem_mb": _peak_rss_mb() - rss_start,
        "flops_per_token": flops_per_token(cfg),
    }


def fairness(preset_or_config, dtype=np.float32, seed=0, batch=None):
    """Ours and PyTorch on the same batch with the same weights: the loss, and the
    largest relative difference (norm-wise, gradcheck.rel_error) over all gradients.
    `preset_or_config` is a BENCH_PRESETS name or a GPTConfig (tests use a tiny one)."""
    import torch

    from minirlhf import GPT
    from minirlhf.gradcheck import rel_error
    from minirlhf.torch_gpt import TorchGPT

    if isinstance(preset_or_config, str):
        _, B, model, x, y, _ = _setup(preset_or_config, seed)
        if dtype != np.float32:
            model = GPT(model.config, dtype=dtype, params=model.params)
    else:
        model = GPT(preset_or_config, seed=seed, dtype=dtype)
        rng = np.random.default_rng(seed)
        shape = (batch or 4, preset_or_config.block_size)
        x = rng.integers(0, preset_or_config.vocab_size, size=shape)
        y = rng.integers(-1, preset_or_config.vocab_size, size=shape)  # some ignored (-1)
    loss, grads = model.loss_and_grads(x, y)
    twin = TorchGPT(model)
    loss_tensor = twin.loss(torch.from_numpy(x), torch.from_numpy(y))
    loss_tensor.backward()
    torch_loss = loss_tensor.item()
    theirs = twin.grads_as_ours()
    worst = max(grads, key=lambda k: rel_error(grads[k], theirs[k]))
    return {
        "loss": float(loss),
        "torch_loss": float(torch_loss),
        "loss_rel_diff": abs(float(loss) - float(torch_loss)) / abs(float(torch_loss)),
        "grad_rel_error": rel_error(grads[worst], theirs[worst]),
        "worst_grad": worst,
    }


OPS_SHAPE = dict(B=8, T=256, C=256, H=8, V=1024)  # the base preset's batch at full context


def measure_ops(min_seconds=1.0, shape=None, seed=0, rounds=3):
    """Forward + backward of each hot op in float32 at `shape` (default OPS_SHAPE: T = 256),
    NumPy reference against the Numba kernel, alternating: `rounds` rounds of NumPy then
    Numba per op, each timed for min_seconds / rounds (at least 3 steps), so a burst of
    load from elsewhere hits both sides, not one (as --compare does). Returns the rounds,
    the load average at the start and the end, and per op the medians over rounds, their
    ratio ("speedup") and every round's times: {"rounds", "load_avg_start", "load_avg",
    "ops": {op: {"numpy_ms", "numba_ms", "speedup", "runs": {"numpy": [...], "numba": [...]}}}}."""
    shape = {**OPS_SHAPE, **(shape or {})}
    B, T, C, H, V = (shape[k] for k in "BTCHV")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, C)).astype(np.float32)
    w, b = (1 + 0.1 * rng.standard_normal(C)).astype(np.float32), (0.1 * rng.standard_normal(C)).astype(np.float32)
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    logits = rng.standard_normal((B, T, V)).astype(np.float32)
    targets = rng.integers(0, V, size=(B, T))
    cases = {  # op -> (forward name, its arguments, backward name)
        "attention": ("attention_forward", (qkv, H), "attention_backward"),
        "layernorm": ("layernorm_forward", (x, w, b), "layernorm_backward"),
        "gelu": ("gelu_forward", (x,), "gelu_backward"),
        "softmax": ("softmax_forward", (rng.standard_normal((B, H, T, T)).astype(np.float32),), "softmax_backward"),
        "cross-entropy": ("token_logprobs_forward", (logits, targets), "token_logprobs_backward"),
    }
    load_at_start = list(os.getloadavg())
    results = {}
    for op, (fwd, args, bwd) in cases.items():
        steps = {}
        for backend_name in ("numpy", "numba"):
            impl = backend.ops(backend_name)
            dout = np.ones_like(getattr(impl, fwd)(*args)[0])

            def step(impl=impl, dout=dout):
                _, cache = getattr(impl, fwd)(*args)
                getattr(impl, bwd)(dout, cache)
            step()  # compile (numba) and warm the caches
            steps[backend_name] = step
        runs = {name: [] for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                runs[name].append(_median_times(step, 3, min_seconds / rounds)[0] * 1e3)
        numpy_ms, numba_ms = (statistics.median(runs[name]) for name in ("numpy", "numba"))
        results[op] = {"numpy_ms": numpy_ms, "numba_ms": numba_ms, "speedup": numpy_ms / numba_ms, "runs": runs}
    return {"rounds": rounds, "load_avg_start": load_at_start, "load_avg": list(os.getloadavg()), "ops": results}


def _format_load(report):
    """"load average 1.52 1.31 1.20 at the start, ... at the end" (1, 5 and 15 minutes): on a
    shared machine, how busy it was while we measured."""
    start, end = (" ".join(f"{x:.2f}" for x in report[k]) for k in ("load_avg_start", "load_avg"))
    return f"load average {start} at the start, {end} at the end"


def format_ops(report):
    """The per-op table: medians over rounds, their ratio, and the lowest and highest ratio
    of a single round (how much the load moved it)."""
    shape = ", ".join(f"{k}={v}" for k, v in OPS_SHAPE.items())
    lines = [f"hot ops, forward + backward, float32 ({shape}), {report['rounds']} alternating rounds, medians; "
             + _format_load(report),
             f"{'op':<14}{'numpy ms':>10}{'numba ms':>10}{'speedup':>9}{'per round':>14}"]  # fmt: skip
    for op, r in report["ops"].items():
        ratios = [a / b for a, b in zip(r["runs"]["numpy"], r["runs"]["numba"])]
        spread = f"{min(ratios):.1f}-{max(ratios):.1f}x"
        lines.append(f"{op:<14}{r['numpy_ms']:>10.2f}{r['numba_ms']:>10.2f}{r['speedup']:>8.1f}x{spread:>14}")
    return "\n".join(lines)


def measure_peak_gflops(repeats=5):
    """The cores' float32 peak as this library reaches it: the best of a few large square
    products (PEAK_SIZE), split between the threads as the model's products are."""
    from minirlhf.kernels import _parallel_matmul

    rng = np.random.default_rng(0)
    a = rng.standard_normal((PEAK_SIZE, PEAK_SIZE)).astype(np.float32)
    out = np.empty_like(a)
    _parallel_matmul(a, a, out)
    best = min(_median_times(lambda: _parallel_matmul(a, a, out), 1, 0.0)[0] for _ in range(repeats))
    return 2 * PEAK_SIZE**3 / best / 1e9


def first_step_time():
    """Seconds from this process's start to the end of its first training step (tiny
    preset): imports, loading or compiling the kernels, one full step."""
    from minirlhf.optim import AdamW, clip_grad_norm

    _, _, model, x, y, _ = _setup("tiny")
    opt = AdamW(model.params, lr=1e-4)
    _, grads = model.loss_and_grads(x, y)
    clip_grad_norm(grads, 1.0)
    opt.step(grads)
    return time.time() - float(os.environ["MINIRLHF_BENCH_T0"])


# ----------------------------------------------------------------------------
# Running workers in fresh processes


def _worker_env(threads, backend_name="numba", **extra):
    """The worker's environment: the backend, and the thread count for our kernels and
    PyTorch's (OPENBLAS_NUM_THREADS is inherited: minirlhf sets it to 1 unless you did)."""
    env = dict(os.environ, MINIRLHF_BACKEND=backend_name, **extra)
    if threads:
        env.update(NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    return env


def run_isolated(job, preset=None, backend_name="numba", min_seconds=2.0, threads=None, env_extra=None):
    """One worker job ("ours", "torch", "fair", "peak" or "startup") in a fresh
    interpreter; returns its result (parsed JSON)."""
    env = _worker_env(threads, backend_name, **(env_extra or {}))
    cmd = [sys.executable, "-m", "minirlhf.bench", "--worker", job, "--preset", preset or "tiny",
           "--min-seconds", str(min_seconds), "--threads", str(threads or 0)]  # fmt: skip
    env["MINIRLHF_BENCH_T0"] = repr(time.time())
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MinirlhfError(f"benchmark job {job} {preset or ''} ({backend_name}) failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_startup(threads=None):
    """Time to the first training step in a fresh process, with an empty Numba cache
    (everything compiles) and then with the cache it left (everything loads). Uses a
    cache folder of its own, so the package's cache is neither used nor touched."""
    with tempfile.TemporaryDirectory(prefix="minirlhf-numba-cache-") as cache:
        env = {"NUMBA_CACHE_DIR": cache}
        cold = run_isolated("startup", threads=threads, env_extra=env)
        warm = min(run_isolated("startup", threads=threads, env_extra=env) for _ in range(3))
    return {"cold_s": cold, "warm_s": warm}


def _torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def compare_torch(presets, rounds, min_seconds, threads):
    """Ours (numba) against PyTorch per preset: a fairness check, then `rounds` rounds of
    alternating fresh processes; medians over rounds and their ratios."""
    if not _torch_available():
        raise MinirlhfError('--compare torch needs PyTorch: pip install -e ".[bench]" (or pip install torch)')
    load_at_start = list(os.getloadavg())
    peak = run_isolated("peak", threads=threads)
    results = []
    for preset in presets:
        fair = run_isolated("fair", preset, threads=threads)
        if max(fair["loss_rel_diff"], fair["grad_rel_error"]) > FAIR_TOLERANCE:
            raise MinirlhfError(f"{preset}: ours and PyTorch disagree (not a fair race): {fair}")
        runs = {"ours": [], "torch": []}
        for _ in range(rounds):
            for side in ("ours", "torch"):
                runs[side].append(run_isolated(side, preset, min_seconds=min_seconds, threads=threads))
        results.append(summarise(preset, runs, fair, peak))
    return {"threads": threads, "rounds": rounds, "peak_gflops": peak, "load_avg_start": load_at_start,
            "load_avg": list(os.getloadavg()),
            "presets": results}  # fmt: skip


MEASURES = ("train_tokens_per_s", "train_tokens_per_cpu_s", "gen_tokens_per_s", "gen_tokens_per_cpu_s",
            "train_mem_mb", "mem_mb", "peak_rss_mb", "train_step_ms")  # fmt: skip


def summarise(preset, runs, fair, peak):
    med = {side: {k: statistics.median(r[k] for r in rs) for k in MEASURES} for side, rs in runs.items()}
    fpt = runs["ours"][0]["flops_per_token"]
    return {
        "preset": preset,
        "n_params": runs["ours"][0]["n_params"],
        "ours": med["ours"],
        "torch": med["torch"],
        "ratio": {k: med["ours"][k] / med["torch"][k] for k in MEASURES[:4] + ("mem_mb",)},
        "mfu": {side: med[side]["train_tokens_per_s"] * fpt / (peak * 1e9) for side in med},
        "fairness": fair,
        "runs": runs,
    }


# ----------------------------------------------------------------------------
# Output


def format_table(results):
    header = f"{'preset':<6} {'backend':<7} {'params':>9} {'train tok/s':>12} {'step ms':>8} {'gen tok/s':>10} {'peak RSS MB':>12}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r['preset']:<6} {r['backend']:<7} {r['n_params']:>9,} {r['train_tokens_per_s']:>12,.0f} "
            f"{r['train_step_ms']:>8.1f} {r['gen_tokens_per_s']:>10,.0f} {r['peak_rss_mb']:>12.0f}"
        )
    return "\n".join(lines)


def format_comparison(report):
    """The comparison as a table: per preset, ours, PyTorch's and the ratio ours / PyTorch
    of training and generation tokens/s (wall clock; in brackets the ratio of tokens per
    CPU-second, the steadier one on a busy machine) and of memory, then the MFU."""
    head = (f"{'preset':<6} {'train tok/s ours':>16} {'torch':>7} {'ratio (cpu)':>13}  {'gen tok/s ours':>14} "
            f"{'torch':>7} {'ratio':>6}  {'mem MB ours':>11} {'torch':>6} {'ratio':>6}  {'MFU ours':>8} {'torch':>6}")
    lines = [
        f"threads {report['threads'] or 'default'}, {report['rounds']} alternating rounds, medians; float32 peak "
        f"{report['peak_gflops']:.0f} GFLOP/s ({PEAK_SIZE}^3 product); " + _format_load(report),
        head,
        "-" * len(head),
    ]
    for r in report["presets"]:
        o, t, q, m = r["ours"], r["torch"], r["ratio"], r["mfu"]
        lines.append(
            f"{r['preset']:<6} {o['train_tokens_per_s']:>16,.0f} {t['train_tokens_per_s']:>7,.0f} "
            f"{q['train_tokens_per_s']:>5.2f}x ({q['train_tokens_per_cpu_s']:.2f}x)  "
            f"{o['gen_tokens_per_s']:>14,.0f} {t['gen_tokens_per_s']:>7,.0f} {q['gen_tokens_per_s']:>5.2f}x  "
            f"{o['mem_mb']:>11.0f} {t['mem_mb']:>6.0f} {q['mem_mb']:>5.2f}x  {m['ours']:>8.1%} {m['torch']:>6.1%}"
        )
    for r in report["presets"]:
        f = r["fairness"]
        lines.append(f"{r['preset']}: same batch, same weights: loss {f['loss']:.6f} vs {f['torch_loss']:.6f}, "
                     f"gradients within {f['grad_rel_error']:.1e} relative (worst: {f['worst_grad']})")  # fmt: skip
    if "startup" in report:
        s = report["startup"]
        lines.append(f"first training step of a fresh process: {s['cold_s']:.1f} s with a cold Numba cache, "
                     f"{s['warm_s']:.1f} s warm")  # fmt: skip
    return "\n".join(lines)


def add_parser(subparsers):
    p = subparsers.add_parser(
        "bench",
        help="measure training and generation speed (optionally against PyTorch)",
        description="Training tokens/s for a full step (forward, loss, backward, AdamW, float32), generation "
        f"tokens/s with the KV cache (batch {GEN_BATCH}, {GEN_TOKENS} new tokens, fewer where the context is "
        "shorter) and peak memory, per preset and backend, each in a fresh process. With --compare torch: the "
        "same model in PyTorch eager, side by side (install it with pip install -e \".[bench]\"). Presets: "
        + "; ".join(f"{k}: {v}" for k, v in BENCH_PRESETS.items()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", choices=list(BENCH_PRESETS), action="append", help="preset(s) to run (default: all)")
    p.add_argument("--backend", choices=["numpy", "numba"], action="append", help="backend(s) to run (default: both)")
    p.add_argument("--compare", choices=["torch"], help="race our numba backend against the same model in PyTorch")
    p.add_argument("--rounds", type=positive_int, default=3, help="with --compare: alternating rounds per preset; with "
                   "--ops: alternating rounds (NumPy, then Numba) per op")  # fmt: skip
    p.add_argument("--threads", type=non_negative_int, default=2, help="threads for both sides (0: each library's default)")
    p.add_argument("--startup", action="store_true", help="also time a fresh process's first training step, "
                   "with a cold and a warm Numba cache")  # fmt: skip
    p.add_argument("--ops", action="store_true", help="instead: each hot op's forward + backward, the NumPy "
                   f"reference against the Numba kernel, at T = {OPS_SHAPE['T']}")  # fmt: skip
    p.add_argument("--min-seconds", type=non_negative_float, default=2.0, help="time each measurement for at least this long "
                   "(with --ops: each side of each op, over all its rounds)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args):
    presets = args.preset or list(BENCH_PRESETS)
    if args.ops:
        results = measure_ops(args.min_seconds, rounds=args.rounds)
        print(json.dumps(results, indent=2) if args.json else format_ops(results))
        return
    if args.compare:
        report = compare_torch(presets, args.rounds, args.min_seconds, args.threads)
        if args.startup:
            report["startup"] = measure_startup(args.threads)
        print(json.dumps(report, indent=2) if args.json else format_comparison(report))
        return
    results = []
    for preset in presets:
        for backend_name in args.backend or ["numpy", "numba"]:
            results.append(run_isolated("ours", preset, backend_name, args.min_seconds, args.threads))
            if not args.json:
                print(format_table(results[-1:]).splitlines()[-1] if len(results) > 1 else format_table(results), flush=True)
    if args.startup:
        startup = measure_startup(args.threads)
        if not args.json:
            print(f"first training step of a fresh process: {startup['cold_s']:.1f} s with a cold Numba cache, "
                  f"{startup['warm_s']:.1f} s warm")  # fmt: skip
        results.append({"startup": startup})
    if args.json:
        print(json.dumps(results, indent=2))


def _worker():
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=["ours", "torch", "fair", "peak", "startup"], required=True)
    parser.add_argument("--preset", choices=sorted(BENCH_PRESETS), default="tiny")
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.worker in ("torch", "fair") and args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker in ("ours", "torch"):
        result = measure(args.preset, args.min_seconds, side=args.worker)
    elif args.worker == "fair":
        result = fairness(args.preset)
        _warm_up(_ours_steps)  # fills the Numba cache, so no timed process compiles
    elif args.worker == "peak":
        result = measure_peak_gflops()
    else:
        result = first_step_time()
    print(json.dumps(result))


if __name__ == "__main__":
    _worker()
