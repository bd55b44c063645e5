"""`minirlhf pretrain` and `minirlhf sample` end to end on a small text: outputs,
determinism, exact resume, a NaN stop, and one-line errors for bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest

from minirlhf.checkpoint import load_checkpoint
from minirlhf.cli import main
from minirlhf.errors import MinirlhfError
from minirlhf.metrics import read_metrics
from minirlhf.model import GPT
from minirlhf.train.pretrain import PretrainConfig, pretrain
from minirlhf.train.loop import TrainSettings

SENTENCES = ["jacob loves reading.", "maria hates running.", "ken lives in osaka.", "the cat sleeps on the mat."]


@pytest.fixture
def text_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SENTENCES[i] for i in rng.integers(0, 4, size=400)) + "\n", encoding="utf-8")
    return path


def tiny_args(text, out, *extra):
    return ["pretrain", "--text", str(text), "--out", str(out), "--tokenizer", "char", "--preset", "tiny",
            "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "16", "--batch-size", "4",
            "--steps", "6", "--warmup", "2", "--eval-every", "3", "--eval-batches", "2", *extra]


def losses(run_dir):
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in read_metrics(run_dir / "metrics.jsonl")]


def test_pretrain_writes_a_run_and_learns(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(text_file, out, "--steps", "40", "--lr", "3e-3", "--eval-every", "20")) == 0
    assert "val loss" in capsys.readouterr().out
    for name in ("metrics.jsonl", "loss.png", "checkpoint/params.npz", "checkpoint/config.json",
                 "checkpoint/tokenizer.json", "checkpoint/optimizer.npz", "checkpoint/state.json"):
        assert (out / name).exists(), name
    records = read_metrics(out / "metrics.jsonl")
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(vals) == 2 and vals[-1] < vals[0]  # it learns something
    assert records[0]["loss"] > vals[-1]
    assert load_checkpoint(out / "checkpoint").state["step"] == 40


def test_same_seed_same_numbers(text_file, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(tiny_args(text_file, a)) == 0
    assert main(tiny_args(text_file, b)) == 0
    assert main(tiny_args(text_file, c, "--seed", "1")) == 0
    assert losses(a) == losses(b)
    assert losses(a) != losses(c)


def test_resume_continues_exactly(text_file, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(tiny_args(text_file, straight, "--dropout", "0.1")) == 0
    # stop after 3 of 6 steps (the same schedule: --steps stays 6), then resume
    config = PretrainConfig(tokenizer="char", model=dict(n_layer=1, n_embd=16, n_head=2, block_size=16), dropout=0.1,
                            train=TrainSettings(steps=6, batch_size=4, warmup=2, eval_every=3), eval_batches=2)

    class Stop(Exception):
        pass

    original = GPT.loss_and_grads
    calls = []

    def stop_at_fourth(self, *a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise Stop
        return original(self, *a, **k)

    GPT.loss_and_grads = stop_at_fourth
    try:
        with pytest.raises(Stop):
            pretrain(text_file, resumed, config, progress=False)
    finally:
        GPT.loss_and_grads = original
    assert main(tiny_args(text_file, resumed, "--dropout", "0.1", "--resume")) == 0
    assert losses(straight) == losses(resumed)
    np.testing.assert_array_equal(np.load(straight / "checkpoint/params.npz")["wte.weight"],
                                  np.load(resumed / "checkpoint/params.npz")["wte.weight"])


def test_nan_stops_and_keeps_the_last_good_checkpoint(text_file, tmp_path, monkeypatch):
    original = GPT.loss_and_grads
    calls = []

    def nan_at_fifth(self, *a, **k):
        loss, grads = original(self, *a, **k)
        calls.append(1)
        return (float("nan") if len(calls) == 5 else loss), grads

    monkeypatch.setattr(GPT, "loss_and_grads", nan_at_fifth)
    config = PretrainConfig(tokenizer="char", model=dict(n_layer=1, n_embd=16, n_head=2, block_size=16),
                            train=TrainSettings(steps=6, batch_size=4, warmup=2, eval_every=3), eval_batches=2)
    with pytest.raises(MinirlhfError, match=r"step 5.*last good checkpoint is from step 3"):
        pretrain(text_file, tmp_path / "run", config, progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoint").state["step"] == 3


def test_sample_cli(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(text_file, out)) == 0
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(out), "--prompt", "jacob", "--num-samples", "2", "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("jacob") >= 2 and "--- sample 2" in printed


@pytest.mark.parametrize("case", ["missing", "empty", "unknown_char", "corrupt_ckpt"])
def test_bad_input_is_one_line_and_nonzero(text_file, tmp_path, capsys, case):
    out = tmp_path / "run"
    if case == "missing":
        argv = tiny_args(tmp_path / "nope.txt", out)
        expected = "nope.txt: no such file"
    elif case == "empty":
        (tmp_path / "empty.txt").write_text("  \n")
        argv = tiny_args(tmp_path / "empty.txt", out)
        expected = "empty"
    else:
        assert main(tiny_args(text_file, out)) == 0
        capsys.readouterr()
        if case == "unknown_char":
            argv = ["sample", "--ckpt", str(out), "--prompt", "jacob ♥"]
            expected = "U+2665"
        else:
            (out / "checkpoint" / "params.npz").write_bytes(b"PK\x03\x04 broken")
            argv = ["sample", "--ckpt", str(out)]
            expected = "params.npz"
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_module_entry_point_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "minirlhf", "pretrain", "--text", str(tmp_path / "x"), "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "no such file" in proc.stderr and "Traceback" not in proc.stderr
    help_text = subprocess.run([sys.executable, "-m", "minirlhf", "--help"], capture_output=True, text=True).stdout
    assert "pretrain" in help_text and "sample" in help_text


def test_metrics_are_valid_json(text_file, tmp_path):
    out = tmp_path / "run"
    assert main(tiny_args(text_file, out)) == 0
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def edit_state(run_dir, changes):
    """Rewrite run_dir/checkpoint/state.json with `changes` (a value None deletes the key;
    a list instead of a dict replaces the whole file)."""
    path = run_dir / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    if isinstance(changes, list):
        state = changes
    else:
        state.update(changes)
        state = {k: v for k, v in state.items() if v is not None}
    path.write_text(json.dumps(state))


def refuses_damaged_states(argv, out, cases, capsys):
    """For each (changes, expected): the run's own state.json with `changes`, then
    `argv --resume` fails in one line naming the file and saying `expected`."""
    state = out / "checkpoint" / "state.json"
    original = state.read_text()
    for changes, expected in cases:
        state.write_text(original)
        edit_state(out, changes)
        capsys.readouterr()
        assert main(argv + ["--resume"]) == 1
        err = capsys.readouterr().err
        assert f"{state}: " in err and expected in err and err.count("\n") == 1, err


def test_a_finished_run_resumed_reports_its_losses(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(text_file, out)) == 0
    capsys.readouterr()
    assert main(tiny_args(text_file, out, "--resume")) == 0
    printed = capsys.readouterr().out
    assert "already done all 6 steps" in printed and "val loss" in printed and "after 6 steps" in printed
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == list(range(1, 7))


@pytest.mark.parametrize("changes, expected", [
    ({"rng": None}, "no 'rng' field"),
    ({"step": None}, "no 'step' field"),
    ({"step": "3"}, "'step' must be a whole number"),
    ({"step": 3.0}, "'step' must be a whole number"),
    ({"step": -1}, "'step' must be a whole number"),
    ({"step": 10 ** 9}, "'step' is 1000000000, more than 6 (--steps 6)"),
    ({"rng": {"bit_generator": "MT19937"}}, "'rng' is not a saved random-generator state"),
    ({"rng": [1, 2]}, "'rng' is not a saved random-generator state"),
    ([1, 2], "holds a JSON list, not an object"),
])
def test_a_damaged_state_json_names_the_file_and_field(text_file, tmp_path, capsys, changes, expected):
    out = tmp_path / "run"
    assert main(tiny_args(text_file, out)) == 0
    edit_state(out, changes)
    capsys.readouterr()
    assert main(tiny_args(text_file, out, "--resume")) == 1
    err = capsys.readouterr().err
    assert f"{out / 'checkpoint' / 'state.json'}: " in err and expected in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_run_resumed_with_fewer_steps_than_done_is_an_error(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(text_file, out)) == 0
    capsys.readouterr()
    assert main(tiny_args(text_file, out, "--resume", "--steps", "4")) == 1
    assert "'step' is 6, more than 4 (--steps 4)" in capsys.readouterr().err


def test_zero_steps_is_an_error_not_a_traceback(text_file, tmp_path, capsys):
    assert main(tiny_args(text_file, tmp_path / "run", "--steps", "0")) == 1
    assert "--steps 0: pretraining needs at least one step" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "-0.5", "0", "1"])
def test_val_fraction_must_be_a_share_strictly_between_0_and_1(text_file, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as e:
        main(tiny_args(text_file, tmp_path / "run", "--val-fraction", value))
    assert e.value.code == 2
    assert "--val-fraction: must be" in capsys.readouterr().err
