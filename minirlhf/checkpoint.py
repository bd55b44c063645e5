"""Checkpoints: a directory anyone can read without this package.

    DIR/config.json      what the model is: {"format", "version", "kind", "arch", "model": its config, "dtype", ...}
    DIR/params.npz       the parameters by GPT-2 name (plain arrays; loaded with allow_pickle=False)
    DIR/tokenizer.json   the tokenizer that made the token ids
    DIR/optimizer.npz    optional: AdamW moments and step, to resume training exactly
    DIR/state.json       optional: where training stopped (step, rng state, ...)

Saving is atomic: everything is written to a sibling temporary directory, which then
replaces DIR with two renames. A crash leaves either the old checkpoint or the new one,
never a mixture; if it strikes between the renames, the old one waits at DIR.old and
the loader says so. Only a checkpoint (or an empty directory) is ever replaced: a DIR
holding anything else is the user's, and saving refuses to delete it. Never pickle: a
pickle can run code when loaded.

Loading trusts nothing: every config field has its type, params.npz holds exactly the
real floating-point arrays the config implies, optimizer.npz matches their total size.

"kind" says what the model is for ("lm", "reward"); "arch" what it is built from:
"gpt" (the default, and the only one every stage takes) or "lstm" (the article's
comparison, see lstm.py: `pretrain --arch lstm` and `sample` take it). A GPT whose
model config says "causal": false is a masked-language model (mlm.py): only
`pretrain --resume` and `sample --fill` take it; `Checkpoint.gpt` refuses it.
"""
import json
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from minirlhf.errors import MinirlhfError
from minirlhf.lstm import LSTMConfig, LSTMLanguageModel
from minirlhf.model import GPT, GPTConfig
from minirlhf.optim import check_state
from minirlhf.tokenizer import load_tokenizer, tokenizer_from_dict

FORMAT = "minirlhf-checkpoint"
VERSION = 1

# "arch" in config.json -> (model class, config class). A checkpoint without "arch" is a GPT.
ARCHS = {"gpt": (GPT, GPTConfig), "lstm": (LSTMLanguageModel, LSTMConfig)}
KINDS = ("lm", "reward")
DTYPES = ("float32", "float64")  # what a model computes in (GPT refuses others)
# The parameters a "reward" checkpoint holds beyond its GPT trunk: ScalarModel's head.
HEAD_SHAPES = {"head.weight": lambda c: (c.n_embd,), "head.bias": lambda c: (1,)}


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

    def load_into(self, model):
        """Copy the parameters into an existing `model` (a resumed run builds its model
        from its flags first); a model of another size or vocabulary names this checkpoint."""
        try:
            model.load_params(self.params)
        except MinirlhfError as e:
            raise MinirlhfError(f"{self.path / 'params.npz'}: {e}; the checkpoint holds a different model "
                                "(another size or tokenizer)") from None

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


def holds_checkpoint(path):
    """Whether directory `path` holds a minirlhf checkpoint (its config.json says so)."""
    try:
        with open(Path(path) / "config.json", encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):  # missing, a directory, unreadable, not JSON
        return False
    return isinstance(config, dict) and config.get("format") == FORMAT


def _check_replaceable(path):
    """A save may replace `path` (or the DIR.old an interrupted save left) only if it is
    absent, an empty directory or a checkpoint: anything else is the user's data."""
    if path.exists() and not (path.is_dir() and (holds_checkpoint(path) or not any(path.iterdir()))):
        raise MinirlhfError(f"{path}: exists and is not a minirlhf checkpoint; choose another --out or remove it")


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
    old = path.with_name(path.name + ".old")
    _check_replaceable(path)
    _check_replaceable(old)
    for parent in (path.parent, *path.parent.parents):
        if parent.exists() and not parent.is_dir():
            raise MinirlhfError(f"{parent}: exists and is not a directory; choose another --out")
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
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a lone .npy array loads without complaint
            raise MinirlhfError(f"{path}: is a single .npy array, not an .npz archive of named arrays")
        with z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise MinirlhfError(f"{path}: missing from the checkpoint") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise MinirlhfError(f"{path}: cannot be read ({e}); the file is corrupt or truncated") from None


def _check_model_fields(cls, model, where):
    """Each field of config.json's "model" must have its dataclass type: JSON's true is
    not an int here (Python would take it as 1) and 64.0 is not a layer count."""
    if not isinstance(model, dict):
        raise MinirlhfError(f"{where}: \"model\" must be a JSON object, got {type(model).__name__}")
    for f in fields(cls):
        value = model.get(f.name)
        if f.name not in model or f.type not in (int, float, bool):
            continue
        is_bool = isinstance(value, bool)
        ok = {int: isinstance(value, int) and not is_bool, bool: is_bool,
              float: isinstance(value, (int, float)) and not is_bool}[f.type]
        if not ok:
            wanted = {int: "an integer", float: "a number", bool: "true or false"}[f.type]
            raise MinirlhfError(f"{where}: model.{f.name} is {json.dumps(value)}, it must be {wanted}")


def _read_config(path):
    """config.json, checked field by field -> (config dict, arch, model config)."""
    where = path / "config.json"
    config = _read_json(where)
    if not isinstance(config, dict) or config.get("format") != FORMAT or "model" not in config:
        raise MinirlhfError(f"{where}: not a minirlhf checkpoint config")
    if config.get("version") != VERSION:
        raise MinirlhfError(f"{where}: checkpoint version {config.get('version')}, this minirlhf reads {VERSION}")
    for key, known, default in (("kind", KINDS, "lm"), ("arch", ARCHS, "gpt"), ("dtype", DTYPES, "float32")):
        value = config.get(key, default)
        if not isinstance(value, str) or value not in known:
            raise MinirlhfError(f"{where}: unknown {key} {value!r}; this minirlhf knows {', '.join(known)}")
    arch = config.get("arch", "gpt")
    if arch != "gpt" and config.get("kind", "lm") != "lm":
        raise MinirlhfError(f"{where}: a {config.get('kind')!r} checkpoint must be a GPT, not {arch!r}")
    _check_model_fields(ARCHS[arch][1], config["model"], where)
    try:
        model_config = ARCHS[arch][1].from_dict(config["model"])
    except (TypeError, MinirlhfError) as e:
        raise MinirlhfError(f"{where}: bad model config ({e})") from None
    return config, arch, model_config


def _check_params(where, params, shapes):
    """params.npz must hold exactly the arrays `shapes` names, each of that shape, real
    floating point and finite: an extra layer would be silently ignored, an integer or
    complex array silently cast."""
    missing = [name for name in shapes if name not in params]
    if missing:
        raise MinirlhfError(f"{where}: parameter {missing[0]} is missing" + (f" (and {len(missing) - 1} more)" if missing[1:] else ""))
    unexpected = sorted(set(params) - set(shapes))
    if unexpected:
        raise MinirlhfError(f"{where}: {len(unexpected)} unexpected arrays ({', '.join(unexpected[:3])}"
                            f"{', ...' if unexpected[3:] else ''}) that config.json does not describe; "
                            "the files come from different runs or were edited")
    for name, shape in shapes.items():
        if params[name].shape != shape:
            raise MinirlhfError(f"{where}: {name} has shape {params[name].shape}, config.json says {shape}")
        if not np.issubdtype(params[name].dtype, np.floating):
            raise MinirlhfError(f"{where}: {name} holds {params[name].dtype} data, parameters are real floating-point numbers")
        if not np.all(np.isfinite(params[name])):
            raise MinirlhfError(f"{where}: {name} holds NaN or infinite values")


def load_checkpoint(path, kind=None):
    """Read and validate a checkpoint directory. `kind` ("lm", "reward"), if given,
    must match. Every problem is a MinirlhfError naming the file at fault."""
    path = Path(path)
    if not path.is_dir():
        old = path.with_name(path.name + ".old")
        hint = f"; an interrupted save left the previous checkpoint at {old}" if old.is_dir() else ""
        raise MinirlhfError(f"{path}: no such checkpoint directory{hint}")
    config, arch, model_config = _read_config(path)
    if kind is not None and config.get("kind", "lm") != kind:
        raise MinirlhfError(f"{path}: is a {config.get('kind', 'lm')!r} checkpoint, expected {kind!r}")
    try:
        tokenizer = tokenizer_from_dict(_read_json(path / "tokenizer.json"))
    except MinirlhfError as e:
        raise MinirlhfError(f"{path / 'tokenizer.json'}: {e}") from None
    if tokenizer.vocab_size != model_config.vocab_size:
        raise MinirlhfError(
            f"{path / 'tokenizer.json'}: vocabulary of {tokenizer.vocab_size} tokens, but the model in "
            f"{path / 'config.json'} has {model_config.vocab_size}; the files come from different runs"
        )
    shapes = model_config.param_shapes()
    if config.get("kind", "lm") == "reward":
        shapes.update({name: shape(model_config) for name, shape in HEAD_SHAPES.items()})
    params = _read_npz(path / "params.npz")
    _check_params(path / "params.npz", params, shapes)
    optimizer = None
    if (path / "optimizer.npz").exists():
        optimizer = _read_npz(path / "optimizer.npz")
        check_state(optimizer, sum(math.prod(shape) for shape in shapes.values()), path / "optimizer.npz")
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
