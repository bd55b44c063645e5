"""Checkpoints: exact round trips, atomic saves, and clear errors for every kind of damage."""
import json

import numpy as np
import pytest

from minirlhf import GPT, GPTConfig
from minirlhf.checkpoint import load_checkpoint, load_gpt, save_gpt
from minirlhf.errors import MinirlhfError
from minirlhf.optim import AdamW
from minirlhf.tokenizer import CharTokenizer

TEXT = "jacob loves reading. maria hates running.\n"


@pytest.fixture
def saved(tmp_path):
    tok = CharTokenizer.train(TEXT)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8), seed=3)
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
