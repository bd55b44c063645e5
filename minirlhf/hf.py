"""A bridge to Hugging Face: our GPT as a `transformers` GPT2LMHeadModel, and back.

Our parameters already have GPT-2's names and layouts (DESIGN.md): Hugging Face's
"Conv1D" stores its weights (in, out), as ours are, and the LM head is tied to the
token embedding in both. So exporting is renaming by a prefix, no arithmetic:

    ours                      Hugging Face (GPT2LMHeadModel)
    wte.weight (V, C)         transformer.wte.weight      (lm_head.weight: the same tensor, not stored)
    h.0.attn.c_attn.weight    transformer.h.0.attn.c_attn.weight
    ...                       ...
    ln_f.bias                 transformer.ln_f.bias

    minirlhf export --ckpt runs/pretrain --hf hf_model/
    python -c "from transformers import GPT2LMHeadModel; GPT2LMHeadModel.from_pretrained('hf_model')"
    minirlhf import --hf hf_model/ --out runs/imported

writes DIR/config.json (a GPT2Config), DIR/model.safetensors (written with the
`safetensors` NumPy API: no PyTorch needed) and DIR/minirlhf_tokenizer.json (our
tokenizer.json as it is: converting it to Hugging Face's `tokenizers` format is out
of scope, so `transformers` gets the model and our tokenizer encodes its input).

A .safetensors file is an 8-byte little-endian header length, a JSON header
({name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}), then the raw
little-endian bytes of every tensor: unlike a pickled PyTorch .bin, reading one
cannot run code. Import reads only that format.
"""
import json
import os
from pathlib import Path

import numpy as np

from minirlhf.checkpoint import holds_checkpoint, load_checkpoint, save_gpt
from minirlhf.errors import MinirlhfError
from minirlhf.model import GPT, GPTConfig
from minirlhf.sample import resolve_checkpoint
from minirlhf.tokenizer import load_tokenizer

PREFIX = "transformer."
WEIGHTS = "model.safetensors"
TOKENIZER = "minirlhf_tokenizer.json"
# Settings of GPT2Config that must hold for its model to compute what ours does.
FIXED = {
    "activation_function": ("gelu_new", "gelu_pytorch_tanh"),  # GELU, tanh approximation
    "layer_norm_epsilon": (1e-5,),
    "scale_attn_weights": (True,),  # scores / sqrt(head_dim)
    "scale_attn_by_inverse_layer_idx": (False,),
    "reorder_and_upcast_attn": (False,),
    "add_cross_attention": (False,),
    "tie_word_embeddings": (True,),
}
# Buffers some GPT-2 files store next to the weights (the causal mask): not parameters.
BUFFERS = (".attn.bias", ".attn.masked_bias")


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError:
        raise MinirlhfError("reading and writing .safetensors needs the safetensors package: pip install 'minirlhf[hf]'") from None
    return safetensors.numpy


def gpt2_config(config, tokenizer, dtype):
    """Our GPTConfig as the config.json of a Hugging Face GPT2LMHeadModel."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,  # older transformers versions read this name
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,  # 4 * n_embd
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "resid_pdrop": config.dropout,
        "initializer_range": 0.02,
        **{name: values[0] for name, values in FIXED.items()},
        "bos_token_id": tokenizer.eot_id,
        "eos_token_id": tokenizer.eot_id,
        "pad_token_id": tokenizer.pad_id,
        "torch_dtype": dtype,
        "use_cache": True,
    }


def export_hf(ckpt_path, hf_dir):
    """Write a GPT language-model checkpoint as a Hugging Face GPT-2 directory.
    Returns the paths written."""
    st = _safetensors()
    ckpt = load_checkpoint(ckpt_path, kind="lm")
    if ckpt.arch != "gpt":
        raise MinirlhfError(f"{ckpt.path}: is an {ckpt.arch.upper()} checkpoint; only a GPT has a GPT-2 equivalent to export to")
    model = ckpt.gpt()
    hf_dir = Path(hf_dir)
    _check_export_target(hf_dir)
    hf_dir.mkdir(parents=True, exist_ok=True)
    tensors = {PREFIX + name: np.ascontiguousarray(value) for name, value in model.params.items()}
    files = {
        WEIGHTS: lambda tmp: st.save_file(tensors, str(tmp), metadata={"format": "pt"}),  # transformers insists on "format"
        "config.json": lambda tmp: _write_json(tmp, gpt2_config(model.config, ckpt.tokenizer, model.dtype.name)),
        TOKENIZER: lambda tmp: _write_json(tmp, ckpt.tokenizer.to_dict()),
    }
    for name, write in files.items():
        tmp = hf_dir / f".{name}.tmp"
        write(tmp)
        os.replace(tmp, hf_dir / name)  # a file is either the old one or the new one, never half
    return [hf_dir / name for name in files]


def _check_export_target(hf_dir):
    """Export overwrites config.json and friends in `hf_dir`: allowed into a new or empty
    directory, or over a previous export (it holds our minirlhf_tokenizer.json). Never
    into a checkpoint, whose config.json it would replace, nor into someone else's files."""
    if hf_dir.exists() and not hf_dir.is_dir():
        raise MinirlhfError(f"{hf_dir}: exists and is not a directory")
    if not hf_dir.exists():
        return
    if holds_checkpoint(hf_dir):
        raise MinirlhfError(f"{hf_dir}: holds a minirlhf checkpoint, which the export would overwrite; choose another --hf")
    if any(hf_dir.iterdir()) and not (hf_dir / TOKENIZER).is_file():
        raise MinirlhfError(f"{hf_dir}: exists and is not empty nor a previous `minirlhf export` (no {TOKENIZER}); "
                            "choose another --hf or remove it")


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def read_hf_config(hf_dir):
    """config.json of a Hugging Face GPT-2 directory -> our GPTConfig, or a clear error
    saying which setting this package cannot reproduce."""
    path = Path(hf_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MinirlhfError(f"{path}: missing; a Hugging Face model directory has a config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MinirlhfError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise MinirlhfError(f"{path}: must hold a JSON object")
    if cfg.get("model_type") != "gpt2":
        raise MinirlhfError(f"{path}: model_type is {cfg.get('model_type')!r}; only 'gpt2' models can be imported")
    archs = cfg.get("architectures") or ["GPT2LMHeadModel"]
    if not set(archs) <= {"GPT2LMHeadModel", "GPT2Model"}:
        raise MinirlhfError(f"{path}: architectures {archs}; only a GPT2LMHeadModel (or GPT2Model) can be imported")
    for name, allowed in FIXED.items():
        value = cfg.get(name, allowed[0])
        if value not in allowed:
            raise MinirlhfError(f"{path}: {name} is {value!r}; minirlhf's GPT needs {allowed[0]!r}")
    if cfg.get("n_inner") not in (None, 4 * cfg.get("n_embd", 0)):
        raise MinirlhfError(f"{path}: n_inner is {cfg['n_inner']}; minirlhf's MLP is 4 * n_embd wide")
    drops = {cfg.get(k, 0.1) for k in ("embd_pdrop", "attn_pdrop", "resid_pdrop")}
    if len(drops) != 1:
        raise MinirlhfError(f"{path}: embd/attn/resid dropout differ ({sorted(drops)}); minirlhf uses one rate")
    missing = [k for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head") if k not in cfg]
    if missing:
        raise MinirlhfError(f"{path}: missing {', '.join(missing)}")
    try:
        return GPTConfig(vocab_size=cfg["vocab_size"], block_size=cfg["n_positions"], n_layer=cfg["n_layer"],
                         n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=drops.pop())
    except MinirlhfError as e:
        raise MinirlhfError(f"{path}: {e}") from None


def read_hf_weights(hf_dir, config):
    """model.safetensors -> {our name: array}, checked against `config`."""
    hf_dir = Path(hf_dir)
    path = hf_dir / WEIGHTS
    if not path.exists():
        others = sorted(p.name for p in hf_dir.glob("*.bin")) + sorted(p.name for p in hf_dir.glob("*.safetensors.index.json"))
        hint = f" (found {', '.join(others)}: pickled or sharded weights are not read)" if others else ""
        raise MinirlhfError(f"{path}: missing{hint}")
    try:
        tensors = _safetensors().load_file(str(path))
    except MinirlhfError:
        raise
    except Exception as e:  # the library's errors for a damaged file are of several types
        raise MinirlhfError(f"{path}: cannot be read as safetensors ({e})") from None
    params = {}
    for name, value in tensors.items():
        if name.endswith(BUFFERS) or name == "lm_head.weight":
            continue
        params[name.removeprefix(PREFIX)] = value  # GPT-2's original files have no prefix
    expected = config.param_shapes()
    unknown = sorted(set(params) - set(expected))
    if unknown:
        raise MinirlhfError(f"{path}: unexpected tensors {unknown[:3]} for a {config.n_layer}-layer GPT-2 in config.json")
    for name, shape in expected.items():
        if name not in params:
            raise MinirlhfError(f"{path}: tensor {PREFIX}{name} is missing")
        if params[name].shape != shape:
            raise MinirlhfError(f"{path}: {PREFIX}{name} has shape {params[name].shape}, config.json says {shape}")
        if not np.issubdtype(params[name].dtype, np.floating) or not np.all(np.isfinite(params[name])):
            raise MinirlhfError(f"{path}: {PREFIX}{name} is not finite floating-point data")
    head = tensors.get("lm_head.weight")
    if head is not None and not np.array_equal(head, params["wte.weight"]):
        raise MinirlhfError(f"{path}: lm_head.weight differs from wte.weight; minirlhf's head is tied to the embedding")
    return params


def import_hf(hf_dir, out, tokenizer_path=None):
    """Read a Hugging Face GPT-2 directory and save it as our checkpoint at `out`.
    Returns the GPT."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise MinirlhfError(f"{hf_dir}: no such directory")
    config = read_hf_config(hf_dir)
    tokenizer_path = Path(tokenizer_path) if tokenizer_path else hf_dir / TOKENIZER
    if not tokenizer_path.exists():
        raise MinirlhfError(
            f"{tokenizer_path}: missing; a checkpoint needs its tokenizer. Pass --tokenizer FILE with a minirlhf "
            "tokenizer.json (Hugging Face tokenizer files are not read)"
        )
    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer.vocab_size != config.vocab_size:
        raise MinirlhfError(f"{tokenizer_path}: vocabulary of {tokenizer.vocab_size} tokens, the model's is {config.vocab_size}")
    params = read_hf_weights(hf_dir, config)
    wide = np.result_type(*params.values())
    dtype = np.float64 if wide == np.float64 else np.float32  # float16/bfloat16 weights are widened to float32
    model = GPT(config, dtype=dtype, params=params)
    save_gpt(out, model, tokenizer, stage="import", source=str(hf_dir))
    return model


# ----------------------------------------------------------------------------
# command line


def add_parser(subparsers):
    p = subparsers.add_parser(
        "export",
        help="write a GPT checkpoint as a Hugging Face GPT-2 model (config.json + model.safetensors)",
        description="Write a GPT language-model checkpoint as a directory that transformers' "
        "GPT2LMHeadModel.from_pretrained loads: config.json, model.safetensors, and our tokenizer as "
        "minirlhf_tokenizer.json (Hugging Face's tokenizer format is not written). Needs the safetensors "
        "package (pip install 'minirlhf[hf]'), not PyTorch.",
    )
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint directory (or a run directory holding checkpoint/)")
    p.add_argument("--hf", type=Path, required=True, help="directory to write")
    p.set_defaults(func=run_export)

    p = subparsers.add_parser(
        "import",
        help="read a Hugging Face GPT-2 model (config.json + model.safetensors) into a checkpoint",
        description="Read a GPT-2 directory (config.json, model.safetensors) into a minirlhf checkpoint. "
        "The tokenizer comes from DIR/minirlhf_tokenizer.json, as `minirlhf export` writes it, or --tokenizer.",
    )
    p.add_argument("--hf", type=Path, required=True, help="Hugging Face model directory")
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    p.add_argument("--tokenizer", type=Path, default=None, help="a minirlhf tokenizer.json (default: DIR/minirlhf_tokenizer.json)")
    p.set_defaults(func=run_import)


def run_export(args):
    written = export_hf(resolve_checkpoint(args.ckpt), args.hf)
    print("written: " + ", ".join(str(p) for p in written))
    print(f"load it with: GPT2LMHeadModel.from_pretrained({str(args.hf)!r})")


def run_import(args):
    model = import_hf(args.hf, args.out, args.tokenizer)
    cfg = model.config
    print(f"checkpoint: {args.out} (GPT-2, {cfg.n_layer} layers, {cfg.n_embd} channels, {model.n_params:,} parameters)")


__all__ = ["export_hf", "import_hf", "gpt2_config", "read_hf_config", "read_hf_weights"]
