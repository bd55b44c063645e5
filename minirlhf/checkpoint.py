"""Checkpoints: a directory anyone can read without this package.

    DIR/config.json      what the model is: {"format", "version", "kind", "arch", "model": its config, "dtype", ...}
    DIR/params.npz       the parameters by GPT-2 name (plain arrays; loaded with allow_pickle=False)
    DIR/tokenizer.json   the tokenizer that made the token ids
    DIR/optimizer.npz    optional: AdamW moments and step, to resume training exactly
    DIR/state.json       optional: where training stopped (step, rng state, ...)

Saving is atomic: everything is written to a sibling temporary directory, which then
replaces DIR with two renames. A crash leaves either the old checkpoint or the new one,
never a mixture; if it strikes between the renames, the old one waits at DIR.old and
the loader says so. Never pickle: a pickle can run code when loaded.

"kind" says what the model is for ("lm", "reward"); "arch" what it is built from:
"gpt" (the default, and the only one every stage takes) or "lstm" (the article's
comparison, see lstm.py: `pretrain --arch lstm` and `sample` take it). A GPT whose
model config says "causal": false is a masked-language model (mlm.py): only
`pretrain --resume` and `sample --fill` take it; `Checkpoint.gpt` refuses it.
"""
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minirlhf.errors import MinirlhfError
from minirlhf.lstm import LSTMConfig, LSTMLanguageModel
from minirlhf.model import GPT, GPTConfig
from minirlhf.tokenizer import load_tokenizer, tokenizer_from_dict

FORMAT = "minirlhf-checkpoint"
VERSION = 1

# "arch" in config.json -> (model class, config class). A checkpoint without "arch" is a GPT.
ARCHS = {"gpt": (GPT, GPTConfig), "lstm": (LSTMLanguageModel, LSTMConfig)}


def arch_of(model):
    """The "arch" name of a model object."""
    for name, (cls, _) in ARCHS.items():
        if type(model) is cls:
            return name
    raise TypeError(f"no checkpoint arch for {type(model).__name__}")


@dataclass
class Checkpoint:
    """What a checkpoint directory holds, loaded."""

    path: Path
    config: dict  # the whole config.json
    params: dict  # name -> array
    tokenizer: object
    optimizer: dict | None = None
    state: dict = field(default_factory=dict)

    @property
    def kind(self):
        return self.config.get("kind", "lm")

    @property
    def arch(self):
        return self.config.get("arch", "gpt")

    @property
    def model_config(self):
        return ARCHS[self.arch][1].from_dict(self.config["model"])

    def lm(self, dtype=None):
        """The language model this checkpoint holds, a GPT or an LSTM."""
        shapes = self.model_config.param_shapes()
        dtype = dtype or self.config.get("dtype", "float32")
        return ARCHS[self.arch][0](self.model_config, dtype=dtype, params={k: self.params[k] for k in shapes})

    def gpt(self, dtype=None):
        """The causal GPT this checkpoint holds (an LM checkpoint, or a reward model's trunk)."""
        if self.arch != "gpt":
            raise MinirlhfError(
                f"{self.path}: holds an {self.arch.upper()} language model; this needs a GPT "
                "(an LSTM checkpoint is for `pretrain --resume` and `sample` only)"
            )
        if not self.model_config.causal:
            raise MinirlhfError(
                f"{self.path}: holds a bidirectional masked-language model (`pretrain --objective mlm`); this needs "
                "a causal GPT (an MLM checkpoint is for `pretrain --resume` and `sample --fill` only)"
            )
        return self.lm(dtype)


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def save_checkpoint(path, params, config, tokenizer, optimizer=None, state=None):
    """Write a checkpoint directory atomically.

    params: dict name -> array; config: dict with at least "model" (a GPTConfig dict)
    and "kind"; tokenizer: an object with to_dict(); optimizer: dict of arrays or None;
    state: a JSON-able dict or None.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with open(tmp / "params.npz", "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in params.items()})
        _write_json(tmp / "config.json", {"format": FORMAT, "version": VERSION, **config})
        _write_json(tmp / "tokenizer.json", tokenizer.to_dict())
        if optimizer is not None:
            with open(tmp / "optimizer.npz", "wb") as f:
                np.savez(f, **optimizer)
        if state is not None:
            _write_json(tmp / "state.json", state)
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise MinirlhfError(f"{path}: missing from the checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MinirlhfError(f"{path}: not valid JSON ({e}); the checkpoint is corrupt") from None


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise MinirlhfError(f"{path}: missing from the checkpoint") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise MinirlhfError(f"{path}: cannot be read ({e}); the file is corrupt or truncated") from None


def load_checkpoint(path, kind=None):
    """Read and validate a checkpoint directory. `kind` ("lm", "reward"), if given,
    must match. Every problem is a MinirlhfError naming the file at fault."""
    path = Path(path)
    if not path.is_dir():
        old = path.with_name(path.name + ".old")
        hint = f"; an interrupted save left the previous checkpoint at {old}" if old.is_dir() else ""
        raise MinirlhfError(f"{path}: no such checkpoint directory{hint}")
    config = _read_json(path / "config.json")
    if not isinstance(config, dict) or config.get("format") != FORMAT or "model" not in config:
        raise MinirlhfError(f"{path / 'config.json'}: not a minirlhf checkpoint config")
    if config.get("version") != VERSION:
        raise MinirlhfError(f"{path / 'config.json'}: checkpoint version {config.get('version')}, this minirlhf reads {VERSION}")
    if kind is not None and config.get("kind", "lm") != kind:
        raise MinirlhfError(f"{path}: is a {config.get('kind', 'lm')!r} checkpoint, expected {kind!r}")
    arch = config.get("arch", "gpt")
    if arch not in ARCHS:
        raise MinirlhfError(f"{path / 'config.json'}: unknown arch {arch!r}; this minirlhf knows {', '.join(ARCHS)}")
    if arch != "gpt" and config.get("kind", "lm") != "lm":
        raise MinirlhfError(f"{path / 'config.json'}: a {config.get('kind')!r} checkpoint must be a GPT, not {arch!r}")
    try:
        model_config = ARCHS[arch][1].from_dict(config["model"])
    except (TypeError, MinirlhfError) as e:
        raise MinirlhfError(f"{path / 'config.json'}: bad model config ({e})") from None
    try:
        tokenizer = tokenizer_from_dict(_read_json(path / "tokenizer.json"))
    except MinirlhfError as e:
        raise MinirlhfError(f"{path / 'tokenizer.json'}: {e}") from None
    if tokenizer.vocab_size != model_config.vocab_size:
        raise MinirlhfError(
            f"{path / 'tokenizer.json'}: vocabulary of {tokenizer.vocab_size} tokens, but the model in "
            f"{path / 'config.json'} has {model_config.vocab_size}; the files come from different runs"
        )
    params = _read_npz(path / "params.npz")
    for name, shape in model_config.param_shapes().items():
        if name not in params:
            raise MinirlhfError(f"{path / 'params.npz'}: parameter {name} is missing")
        if params[name].shape != shape:
            raise MinirlhfError(f"{path / 'params.npz'}: {name} has shape {params[name].shape}, config.json says {shape}")
        if not np.all(np.isfinite(params[name])):
            raise MinirlhfError(f"{path / 'params.npz'}: {name} holds NaN or infinite values")
    optimizer = _read_npz(path / "optimizer.npz") if (path / "optimizer.npz").exists() else None
    state = _read_json(path / "state.json") if (path / "state.json").exists() else {}
    return Checkpoint(path, config, params, tokenizer, optimizer, state)


def load_gpt(path, dtype=None):
    """A GPT language-model checkpoint -> (GPT, tokenizer)."""
    ckpt = load_checkpoint(path, kind="lm")
    return ckpt.gpt(dtype), ckpt.tokenizer


def load_lm(path, dtype=None):
    """A language-model checkpoint of any arch -> (GPT or LSTMLanguageModel, tokenizer)."""
    ckpt = load_checkpoint(path, kind="lm")
    return ckpt.lm(dtype), ckpt.tokenizer


def save_gpt(path, model, tokenizer, optimizer=None, state=None, **meta):
    """Save a language model, GPT or LSTM (plus optional optimizer/state), as a checkpoint."""
    config = {"kind": "lm", "arch": arch_of(model), "model": model.config.to_dict(), "dtype": model.dtype.name, **meta}
    save_checkpoint(path, model.params, config, tokenizer, optimizer, state)


def check_same_tokenizer(a, b, what_a, what_b):
    """Two stages that share token ids must share a tokenizer."""
    if a != b:
        raise MinirlhfError(f"{what_a} and {what_b} use different tokenizers (vocabularies {a.vocab_size} and {b.vocab_size})")


__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "load_gpt", "load_lm", "save_gpt", "load_tokenizer",
           "check_same_tokenizer"]
