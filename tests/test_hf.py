"""`minirlhf export --hf` / `import --hf`: the files' structure (read byte by byte, no
Hugging Face code needed), an exact round trip, one-line errors for bad input, and,
when transformers and torch are installed, GPT2LMHeadModel's logits equal ours."""
import json
import struct

import numpy as np
import pytest

from minirlhf import GPT, GPTConfig
from minirlhf.checkpoint import load_gpt, save_gpt
from minirlhf.cli import main
from minirlhf.errors import MinirlhfError
from minirlhf.hf import export_hf, import_hf
from minirlhf.lstm import LSTMConfig, LSTMLanguageModel
from minirlhf.tokenizer import CharTokenizer

pytest.importorskip("safetensors", reason="export/import need the safetensors package: pip install -e '.[hf]'")

TEXT = "jacob loves reading. maria hates running.\n"


@pytest.fixture
def ckpt(tmp_path):
    """A small GPT checkpoint whose parameters are all non-trivial."""
    tok = CharTokenizer.train(TEXT)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=8), seed=1)
    model.params.flat[...] = np.random.default_rng(0).standard_normal(model.params.flat.size) * 0.3
    save_gpt(tmp_path / "ckpt", model, tok)
    return tmp_path / "ckpt", model, tok


def read_safetensors_by_hand(path):
    """The format, spelled out: u64 little-endian header size, JSON header, raw bytes."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return header, raw[8 + n :]


def test_export_structure(ckpt, tmp_path):
    path, model, tok = ckpt
    out = tmp_path / "hf"
    assert main(["export", "--ckpt", str(path), "--hf", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "minirlhf_tokenizer.json", "model.safetensors"]

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"]
    assert (cfg["vocab_size"], cfg["n_positions"], cfg["n_ctx"], cfg["n_embd"], cfg["n_layer"], cfg["n_head"]) == (
        tok.vocab_size, 16, 16, 8, 2, 2)  # fmt: skip
    assert cfg["activation_function"] == "gelu_new" and cfg["layer_norm_epsilon"] == 1e-5
    assert cfg["tie_word_embeddings"] is True and cfg["embd_pdrop"] == cfg["attn_pdrop"] == cfg["resid_pdrop"] == 0.0
    assert cfg["eos_token_id"] == tok.eot_id

    header, data = read_safetensors_by_hand(out / "model.safetensors")
    assert header.pop("__metadata__") == {"format": "pt"}  # transformers refuses a file without it
    assert set(header) == {"transformer." + name for name in model.params}  # lm_head is tied: not stored
    spans = sorted(tuple(h["data_offsets"]) for h in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no gaps or overlaps
    for name, value in model.params.items():
        h = header["transformer." + name]
        assert h["dtype"] == "F32" and tuple(h["shape"]) == value.shape, name
        start, end = h["data_offsets"]
        np.testing.assert_array_equal(np.frombuffer(data[start:end], dtype="<f4").reshape(value.shape), value)

    assert json.loads((out / "minirlhf_tokenizer.json").read_text()) == tok.to_dict()


def test_round_trip_is_exact(ckpt, tmp_path):
    path, model, tok = ckpt
    export_hf(path, tmp_path / "hf")
    assert main(["import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back, tok2 = load_gpt(tmp_path / "back")
    assert back.config == model.config and tok2 == tok
    np.testing.assert_array_equal(back.params.flat, model.params.flat)


def test_import_reads_original_gpt2_names(ckpt, tmp_path):
    """GPT-2's own files have no "transformer." prefix, store the causal-mask buffers,
    and may store lm_head.weight (equal to wte when tied)."""
    from safetensors.numpy import save_file

    path, model, tok = ckpt
    export_hf(path, tmp_path / "hf")
    tensors = {name: np.array(v) for name, v in model.params.items()}
    tensors["h.0.attn.bias"] = np.tril(np.ones((16, 16), np.float32))
    tensors["lm_head.weight"] = tensors["wte.weight"].copy()
    save_file(tensors, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    back = import_hf(tmp_path / "hf", tmp_path / "back")
    np.testing.assert_array_equal(back.params.flat, model.params.flat)
    tensors["lm_head.weight"] += 1.0
    save_file(tensors, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MinirlhfError, match="lm_head.weight differs"):
        import_hf(tmp_path / "hf", tmp_path / "back")


def edit_config(hf, **changes):
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, **changes}))


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda hf: (hf / "config.json").unlink(), r"config\.json: missing"),
        (lambda hf: edit_config(hf, model_type="llama"), "model_type is 'llama'; only 'gpt2'"),
        (lambda hf: edit_config(hf, architectures=["GPT2ForSequenceClassification"]), "only a GPT2LMHeadModel"),
        (lambda hf: edit_config(hf, activation_function="relu"), "activation_function is 'relu'"),
        (lambda hf: edit_config(hf, n_embd=12, n_head=2), r"transformer\.wte\.weight has shape \(\d+, 8\), config\.json says \(\d+, 12\)"),
        (lambda hf: edit_config(hf, n_layer=1), "unexpected tensors"),
        (lambda hf: (hf / "model.safetensors").rename(hf / "pytorch_model.bin"), r"model\.safetensors: missing \(found pytorch_model\.bin"),
        (lambda hf: (hf / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"), "cannot be read as safetensors"),
        (lambda hf: (hf / "minirlhf_tokenizer.json").unlink(), "needs its tokenizer. Pass --tokenizer"),
        (lambda hf: (hf / "minirlhf_tokenizer.json").write_text(json.dumps(CharTokenizer.train("xyz").to_dict())), "vocabulary of 5 tokens"),
    ],
)
def test_import_errors_are_one_line(ckpt, tmp_path, capsys, damage, message):
    path, *_ = ckpt
    hf = tmp_path / "hf"
    export_hf(path, hf)
    damage(hf)
    assert main(["import", "--hf", str(hf), "--out", str(tmp_path / "back")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(MinirlhfError, match=message):
        import_hf(hf, tmp_path / "back")
    assert not (tmp_path / "back").exists()  # nothing half-written


def test_import_with_tokenizer_option(ckpt, tmp_path):
    path, model, tok = ckpt
    export_hf(path, tmp_path / "hf")
    (tmp_path / "hf" / "minirlhf_tokenizer.json").rename(tmp_path / "tok.json")
    back = import_hf(tmp_path / "hf", tmp_path / "back", tokenizer_path=tmp_path / "tok.json")
    np.testing.assert_array_equal(back.params.flat, model.params.flat)


def test_export_errors(ckpt, tmp_path, capsys):
    tok = CharTokenizer.train(TEXT)
    save_gpt(tmp_path / "lstm", LSTMLanguageModel(LSTMConfig(vocab_size=tok.vocab_size, block_size=8, n_embd=4)), tok)
    with pytest.raises(MinirlhfError, match="LSTM checkpoint; only a GPT"):
        export_hf(tmp_path / "lstm", tmp_path / "hf")
    assert main(["export", "--ckpt", str(tmp_path / "nowhere"), "--hf", str(tmp_path / "hf")]) == 1
    assert "no such checkpoint directory" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    with pytest.raises(MinirlhfError, match="not a directory"):
        export_hf(ckpt[0], tmp_path / "file")


def test_transformers_loads_the_export_with_our_logits(ckpt, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path, model, tok = ckpt
    export_hf(path, tmp_path / "hf")
    hf_model, info = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert hf_model.lm_head.weight.data_ptr() == hf_model.transformer.wte.weight.data_ptr()  # tied
    hf_model.eval()
    idx = np.array([tok.encode("jacob loves reading.")[:16], tok.encode("maria hates running.")[:16]])
    with torch.no_grad():
        theirs = hf_model(torch.from_numpy(idx)).logits.numpy()
    ours = model.forward(idx)
    assert theirs.dtype == np.float32
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)


def test_export_never_overwrites_a_checkpoint_or_a_users_directory(ckpt, tmp_path, capsys):
    path, model, tok = ckpt
    config = (path / "config.json").read_bytes()
    assert main(["export", "--ckpt", str(path), "--hf", str(path)]) == 1
    assert "holds a minirlhf checkpoint" in capsys.readouterr().err
    assert (path / "config.json").read_bytes() == config and load_gpt(path)[1] == tok

    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text("mine")
    with pytest.raises(MinirlhfError, match="not empty nor a previous `minirlhf export`"):
        export_hf(path, user)
    assert sorted(p.name for p in user.iterdir()) == ["config.json"] and (user / "config.json").read_text() == "mine"

    export_hf(path, tmp_path / "hf")
    export_hf(path, tmp_path / "hf")  # over a previous export: allowed
    (tmp_path / "empty").mkdir()
    export_hf(path, tmp_path / "empty")
    assert (tmp_path / "empty" / "model.safetensors").exists()


def test_import_never_replaces_a_users_directory(ckpt, tmp_path, capsys):
    path, model, _ = ckpt
    export_hf(path, tmp_path / "hf")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "important.txt").write_text("x")
    assert main(["import", "--hf", str(tmp_path / "hf"), "--out", str(victim)]) == 1
    assert "exists and is not a minirlhf checkpoint" in capsys.readouterr().err
    assert [p.name for p in victim.iterdir()] == ["important.txt"]
    with pytest.raises(MinirlhfError, match="not a minirlhf checkpoint"):
        import_hf(tmp_path / "hf", tmp_path / "hf")  # into the export itself
    import_hf(tmp_path / "hf", path)  # over a checkpoint: allowed
    np.testing.assert_array_equal(load_gpt(path)[0].params.flat, model.params.flat)
