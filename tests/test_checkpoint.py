"""Checkpoints: exact round trips, atomic saves, and clear errors for every kind of damage."""
import json

import numpy as np
import pytest

from minirlhf import GPT, GPTConfig
from minirlhf.checkpoint import load_checkpoint, load_gpt, save_gpt
from minirlhf.cli import main
from minirlhf.errors import MinirlhfError
from minirlhf.optim import AdamW
from minirlhf.tokenizer import CharTokenizer

TEXT = "jacob loves reading. maria hates running.\n"


@pytest.fixture
def saved(tmp_path):
    tok = CharTokenizer.train(TEXT)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=2, n_head=2, n_embd=8), seed=3)
    opt = AdamW(model.params)
    path = tmp_path / "ckpt"
    save_gpt(path, model, tok, opt.state_dict(), {"step": 7})
    return path, model, tok


def test_round_trip(saved):
    path, model, tok = saved
    loaded, tok2 = load_gpt(path)
    assert tok2 == tok
    assert loaded.config == model.config
    np.testing.assert_array_equal(loaded.params.flat, model.params.flat)
    ckpt = load_checkpoint(path)
    assert ckpt.state == {"step": 7} and set(ckpt.optimizer) == {"m", "v", "t"}


def test_save_replaces_atomically_and_survives_a_crash(saved, monkeypatch):
    path, model, tok = saved
    before = (path / "params.npz").read_bytes()

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    model.params.flat[...] = 0.5
    with pytest.raises(OSError):
        save_gpt(path, model, tok)
    assert (path / "params.npz").read_bytes() == before  # the old checkpoint is intact
    assert [p.name for p in path.parent.iterdir()] == ["ckpt"]  # no temporary left behind


def test_truncated_params_is_a_clear_error(saved):
    path, *_ = saved
    data = (path / "params.npz").read_bytes()
    (path / "params.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(MinirlhfError, match=r"params\.npz.*(corrupt|truncated)"):
        load_checkpoint(path)


def test_pickled_arrays_are_refused(saved):
    path, *_ = saved
    with open(path / "params.npz", "wb") as f:
        np.savez(f, **{"wte.weight": np.array([object()], dtype=object)})
    with pytest.raises(MinirlhfError, match=r"params\.npz"):
        load_checkpoint(path)


def test_bad_config_json(saved):
    path, *_ = saved
    (path / "config.json").write_text("{not json")
    with pytest.raises(MinirlhfError, match=r"config\.json.*not valid JSON"):
        load_checkpoint(path)


def test_tokenizer_from_another_vocabulary(saved):
    path, *_ = saved
    other = CharTokenizer.train("xyz")
    (path / "tokenizer.json").write_text(json.dumps(other.to_dict()))
    with pytest.raises(MinirlhfError, match="vocabulary.*different runs"):
        load_checkpoint(path)


def test_shape_mismatch(saved):
    path, model, tok = saved
    config = json.loads((path / "config.json").read_text())
    config["model"]["n_embd"] = 16
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(MinirlhfError, match="shape"):
        load_checkpoint(path)


def test_missing_directory_mentions_an_interrupted_save(saved):
    path, *_ = saved
    path.rename(path.with_name("ckpt.old"))
    with pytest.raises(MinirlhfError, match="interrupted save"):
        load_checkpoint(path)


def test_wrong_kind(saved):
    path, *_ = saved
    with pytest.raises(MinirlhfError, match="expected 'reward'"):
        load_checkpoint(path, kind="reward")


def test_save_replaces_a_checkpoint_or_an_empty_directory(saved, tmp_path):
    path, model, tok = saved
    model.params.flat[...] = 0.25
    save_gpt(path, model, tok)  # training saves into OUT/checkpoint again and again
    assert load_checkpoint(path).optimizer is None
    np.testing.assert_array_equal(load_gpt(path)[0].params.flat, model.params.flat)
    (tmp_path / "empty").mkdir()
    save_gpt(tmp_path / "empty", model, tok)
    assert load_gpt(tmp_path / "empty")[1] == tok


@pytest.mark.parametrize("make", ["directory", "file", "old_directory", "parent_file"])
def test_save_never_deletes_a_users_files(saved, tmp_path, capsys, make):
    _, model, tok = saved
    out = tmp_path / "out"
    if make == "directory":
        out.mkdir()
        (out / "important.txt").write_text("x")
    elif make == "file":
        out.write_text("x")
    elif make == "old_directory":  # DIR.old is only ever an interrupted save's checkpoint
        (tmp_path / "out.old").mkdir()
        (tmp_path / "out.old" / "important.txt").write_text("x")
    else:
        out.write_text("x")
        out = out / "ckpt"
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(MinirlhfError, match="exists and is not a"):
        save_gpt(out, model, tok)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert all(p.read_text() == "x" for p in tmp_path.rglob("*") if p.is_file() and "ckpt" not in p.parts)


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes.pop("top", {}))
    config["model"] = changes.pop("model", config["model"]) if "model" in changes else {**config["model"], **changes}
    (path / "config.json").write_text(json.dumps(config))


def edit_npz(path, name="params.npz", **arrays):
    with np.load(path / name) as z:
        data = {k: z[k] for k in z.files}
    for key, value in arrays.items():
        key = key.replace("__", ".")
        if value is None:
            del data[key]
        else:
            data[key] = value(data.get(key)) if callable(value) else value
    with open(path / name, "wb") as f:
        np.savez(f, **data)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda p: edit_config(p, top={"arch": ["gpt"]}), r"config\.json: unknown arch \['gpt'\]"),
        (lambda p: edit_config(p, top={"kind": {"lm": 1}}), r"config\.json: unknown kind"),
        (lambda p: edit_config(p, top={"dtype": "bogus"}), r"config\.json: unknown dtype 'bogus'"),
        (lambda p: edit_config(p, top={"dtype": ["float32"]}), r"config\.json: unknown dtype"),
        (lambda p: edit_config(p, model=3), r'config\.json: "model" must be a JSON object'),
        (lambda p: edit_config(p, n_layer=True), r"config\.json: model\.n_layer is true, it must be an integer"),
        (lambda p: edit_config(p, n_embd=8.0), r"config\.json: model\.n_embd is 8\.0, it must be an integer"),
        (lambda p: edit_config(p, causal=1), r"config\.json: model\.causal is 1, it must be true or false"),
        (lambda p: edit_config(p, dropout="0.1"), r"config\.json: model\.dropout is \"0\.1\", it must be a number"),
        (lambda p: edit_config(p, n_layer=1), r"params\.npz: 12 unexpected arrays \(h\.1\..*, \.\.\.\)"),
        (lambda p: edit_npz(p, extra=np.zeros(2, np.float32)), r"params\.npz: 1 unexpected arrays \(extra\)"),
        (lambda p: edit_npz(p, ln_f__bias=None), r"params\.npz: parameter ln_f\.bias is missing"),
        (lambda p: edit_npz(p, ln_f__bias=lambda a: a.astype(bool)), r"params\.npz: ln_f\.bias holds bool data"),
        (lambda p: edit_npz(p, ln_f__bias=lambda a: a.astype(np.int64)), r"params\.npz: ln_f\.bias holds int64 data"),
        (lambda p: edit_npz(p, ln_f__bias=lambda a: a.astype(np.complex128)), r"ln_f\.bias holds complex128 data"),
        (lambda p: edit_npz(p, ln_f__bias=lambda a: a.astype(str)), r"params\.npz: ln_f\.bias holds <U\d+ data"),
        (lambda p: edit_npz(p, ln_f__bias=lambda a: a.astype([("a", "f4")])), r"ln_f\.bias holds \[\('a', '<f4'\)\] data"),
        (lambda p: np.save(p / "params.npy", np.zeros(3)) or (p / "params.npy").rename(p / "params.npz"),
         r"params\.npz: is a single \.npy array"),
        (lambda p: edit_npz(p, "optimizer.npz", m=np.zeros(10, np.float32)), r"optimizer\.npz: m has shape \(10,\), the model has \d+"),
        (lambda p: edit_npz(p, "optimizer.npz", v=None), r"optimizer\.npz: holds arrays \['m', 't'\]"),
        (lambda p: edit_npz(p, "optimizer.npz", t=np.array(np.nan)), r"optimizer\.npz: the step count t is nan"),
    ],
)
def test_damaged_checkpoint_is_a_one_line_error_naming_the_file(saved, capsys, damage, message):
    path, *_ = saved
    damage(path)
    with pytest.raises(MinirlhfError, match=message):
        load_checkpoint(path)
    assert main(["sample", "--ckpt", str(path), "--prompt", "ja", "--max-new-tokens", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(path) in err


def test_float16_parameters_still_load(saved):
    path, model, _ = saved
    edit_npz(path, ln_f__bias=lambda a: a.astype(np.float16))  # widened, as an import widens them
    np.testing.assert_allclose(load_gpt(path)[0].params["ln_f.bias"], model.params["ln_f.bias"], atol=1e-3)


def test_reward_checkpoint_needs_exactly_its_head(saved, tmp_path):
    from minirlhf.model import ScalarModel
    from minirlhf.reward import load_reward_model, save_reward_model

    _, model, tok = saved
    rm = ScalarModel.from_gpt(model, seed=1)
    save_reward_model(tmp_path / "rm", rm, tok, {"mean_before": 0.0})
    np.testing.assert_array_equal(load_reward_model(tmp_path / "rm")[0].params.flat, rm.params.flat)
    edit_npz(tmp_path / "rm", head__bias=None)
    with pytest.raises(MinirlhfError, match=r"rm/params\.npz: parameter head\.bias is missing"):
        load_checkpoint(tmp_path / "rm")


def test_loading_into_a_model_of_another_vocabulary_names_the_checkpoint(saved):
    path, model, _ = saved
    other = GPT(GPTConfig(vocab_size=model.config.vocab_size + 3, block_size=8, n_layer=2, n_head=2, n_embd=8))
    with pytest.raises(MinirlhfError, match=rf"^{path}/params\.npz: parameter wte\.weight has shape"):
        load_checkpoint(path).load_into(other)
    load_checkpoint(path).load_into(GPT(model.config))  # the same shapes load
