"""`minirlhf bench`: the race against PyTorch is fair (same loss and gradients on the
same batch), and the command's output has the structure it promises. No test here
asserts a time: speed is measured by the command, never by the test suite."""
import json
import sys

import numpy as np
import pytest

from minirlhf import GPT, GPTConfig, bench, cli

TINY = GPTConfig(vocab_size=23, block_size=12, n_layer=2, n_head=2, n_embd=16)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, bench.FAIR_TOLERANCE)])
def test_same_loss_and_gradients_as_pytorch(dtype, tol):
    """The PyTorch twin, with our weights, gives our loss and every one of our gradients
    (ignored targets included), so the benchmark compares the same computation."""
    pytest.importorskip("torch")
    fair = bench.fairness(TINY, dtype=dtype, seed=3)
    assert fair["loss_rel_diff"] < tol, fair
    assert fair["grad_rel_error"] < tol, fair


def test_pytorch_twin_kv_cache_matches_its_full_forward():
    """The twin's generation path (the KV cache the benchmark times) computes the same
    logits as its full forward pass, position by position."""
    torch = pytest.importorskip("torch")
    from minirlhf.torch_gpt import TorchGPT

    model = GPT(TINY, seed=1, dtype=np.float64)
    model.params.flat[...] += np.random.default_rng(0).standard_normal(model.n_params) * 0.1
    twin = TorchGPT(model)
    idx = torch.from_numpy(np.random.default_rng(1).integers(0, TINY.vocab_size, size=(3, 7)))
    full = twin(idx)
    D = TINY.n_embd // TINY.n_head
    kv = [(torch.zeros(3, TINY.n_head, 7, D, dtype=torch.float64), torch.zeros(3, TINY.n_head, 7, D, dtype=torch.float64))
          for _ in range(TINY.n_layer)]  # fmt: skip
    with torch.no_grad():
        steps = [twin(idx[:, t : t + 1], kv, t)[:, 0] for t in range(7)]
    np.testing.assert_allclose(torch.stack(steps, 1).numpy(), full.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(full.detach().numpy(), model.forward(idx.numpy()), rtol=1e-10, atol=1e-12)
    tokens = twin.generate(idx[:, 0], 5, torch.Generator().manual_seed(0))
    assert tokens.shape == (3, 5) and int(tokens.max()) < TINY.vocab_size


def test_flops_per_token_counts_every_product():
    """6 FLOPs per weight of every matrix product (forward 2, backward 4) and the causal
    half of the attention's two T x T products per layer."""
    cfg = GPTConfig(vocab_size=10, block_size=8, n_layer=3, n_head=2, n_embd=4)
    linears = cfg.n_layer * (4 * 12 + 4 * 4 + 4 * 16 + 16 * 4) + 10 * 4  # c_attn, c_proj, c_fc, mlp c_proj, head
    attention = cfg.n_layer * 2 * (2 * 8 * 4) // 2  # (q k^T and p v: 2 T C FLOPs each) / 2, per token
    assert bench.flops_per_token(cfg) == 3 * (2 * linears + attention)


def test_bench_json_structure(capsys):
    """`minirlhf bench --json` on the tiny preset, one backend, minimal timing: one
    record per run, in a fresh process, with every documented field."""
    code = cli.main(["bench", "--preset", "tiny", "--backend", "numba", "--min-seconds", "0", "--threads", "1", "--json"])
    assert code == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 1
    r = results[0]
    assert r["preset"] == "tiny" and r["backend"] == "numba"
    assert r["n_params"] == GPT(GPTConfig(**{k: v for k, v in bench.BENCH_PRESETS["tiny"].items() if k != "batch_size"})).n_params
    for key in ("train_tokens_per_s", "train_tokens_per_cpu_s", "gen_tokens_per_s", "train_step_ms", "mem_mb",
                "train_mem_mb", "peak_rss_mb", "flops_per_token"):  # fmt: skip
        assert r[key] > 0, key
    assert r["gen_new_tokens"] == bench.BENCH_PRESETS["tiny"]["block_size"] - 1  # the context limits it
    assert r["peak_rss_mb"] >= r["mem_mb"]


def test_compare_torch_without_pytorch_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    assert cli.main(["bench", "--compare", "torch", "--preset", "tiny"]) == 1
    assert 'pip install -e ".[bench]"' in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["--rounds", "0"], "argument --rounds: must be a positive integer, got 0"),
    (["--threads", "-1"], "argument --threads: must be 0 or more, got -1"),
    (["--ops", "--min-seconds", "inf"], "argument --min-seconds: must be a finite number, got inf"),  # timed forever
    (["--ops", "--min-seconds", "nan"], "argument --min-seconds: must be a finite number, got nan"),
])
def test_bad_bench_arguments_are_refused_before_anything_runs(argv, says, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["bench"] + argv)
    assert stop.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.slow
def test_compare_torch_report():
    """The whole comparison on the tiny preset, one round: both sides measured, ratios
    and MFU derived from them, the fairness check recorded."""
    pytest.importorskip("torch")
    report = bench.compare_torch(["tiny"], rounds=1, min_seconds=0.0, threads=1)
    assert report["peak_gflops"] > 0 and report["threads"] == 1
    (r,) = report["presets"]
    assert len(r["runs"]["ours"]) == len(r["runs"]["torch"]) == 1
    assert r["runs"]["ours"][0]["backend"] == "numba" and r["runs"]["torch"][0]["backend"] == "torch"
    for key, ratio in r["ratio"].items():
        assert ratio == pytest.approx(r["ours"][key] / r["torch"][key])
    assert r["mfu"]["ours"] == pytest.approx(
        r["ours"]["train_tokens_per_s"] * r["runs"]["ours"][0]["flops_per_token"] / (report["peak_gflops"] * 1e9))
    assert r["fairness"]["grad_rel_error"] < bench.FAIR_TOLERANCE
    table = bench.format_comparison(report)
    assert "tiny" in table and "MFU" in table


@pytest.mark.slow
def test_startup_times():
    """A fresh process with an empty Numba cache of its own, then with the cache it left:
    both reach their first training step (the times themselves are the command's to
    report, not the test's to judge)."""
    startup = bench.measure_startup(threads=1)
    assert set(startup) == {"cold_s", "warm_s"}
    assert startup["cold_s"] > 0 and startup["warm_s"] > 0


def test_ops_alternates_both_backends_on_every_hot_op():
    """`bench --ops`: every hot op timed on both backends in each of the rounds, the medians
    over rounds and their ratio reported, with the load average before and after."""
    report = bench.measure_ops(min_seconds=0.0, shape=dict(B=2, T=16, C=16, H=2, V=32), rounds=3)
    assert report["rounds"] == 3
    assert len(report["load_avg_start"]) == len(report["load_avg"]) == 3
    assert list(report["ops"]) == ["attention", "layernorm", "gelu", "softmax", "cross-entropy"]
    for op, r in report["ops"].items():
        assert len(r["runs"]["numpy"]) == len(r["runs"]["numba"]) == 3, op
        assert r["numpy_ms"] == pytest.approx(np.median(r["runs"]["numpy"])), op
        assert r["numba_ms"] == pytest.approx(np.median(r["runs"]["numba"])), op
        assert r["numpy_ms"] > 0 and r["numba_ms"] > 0, op
        assert r["speedup"] == pytest.approx(r["numpy_ms"] / r["numba_ms"])
    lines = bench.format_ops(report).splitlines()
    assert "3 alternating rounds" in lines[0] and "load average" in lines[0]
    assert lines[2].startswith("attention") and lines[2].endswith("x")


def test_ops_command_json(capsys):
    """The command passes --rounds on and prints the report as JSON."""
    assert cli.main(["bench", "--ops", "--rounds", "2", "--min-seconds", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rounds"] == 2 and len(report["ops"]["gelu"]["runs"]["numba"]) == 2
