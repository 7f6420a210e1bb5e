"""llama.cpp GGUF files -> our `ModelConfig`, params and a Hugging Face tokenizer directory.

A GGUF holds a model's metadata (llama.cpp's `{arch}.*` and `tokenizer.ggml.*` keys) and its
tensors, usually quantised (Q4_1, Q8_0 ...). Every tensor is de-quantised with the `gguf`
package into our einsum layout, in the `param_dtype` asked for. Only the Llama architecture
is read; any metadata key or tensor we do not implement is refused by name, so a model is
never silently loaded wrong.

Two things differ from a HF checkpoint:
- shapes are listed innermost first (ggml's `ne`); `gguf` gives numpy arrays in HF's
  [out, in] order, so the layout maps below are the same as `hf_interop`'s;
- llama.cpp's converter permutes the rows of attn_q / attn_k inside each head from HF's
  rotary layout (first half, second half) to interleaved pairs; `_unpermute` undoes it.

The tokenizer (`tokenizer.ggml.*`, the byte-level BPE "gpt2" model) becomes a
`tokenizer.json` built with `tokenizers`, with `tokenizer_config.json` (special tokens, the
chat template, add_bos_token) and `generation_config.json`, as `transformers` reads the same
GGUF (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import uuid
from collections.abc import Callable
from typing import Any

import jax
import ml_dtypes  # noqa: F401  (registers "bfloat16" with numpy)
import numpy as np

from jaxrl_reason.model.config import ModelConfig
from jaxrl_reason.run_files import RunFileError

PathLike = str | os.PathLike
ARCHITECTURE = "llama"

# `{arch}.` metadata keys we read (any other is refused): llama.cpp's names.
_CONFIG_KEYS = {
    "block_count",
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.layer_norm_rms_epsilon",
    "rope.freq_base",
    "rope.dimension_count",
    "rope.scaling.type",  # "none" only
    "vocab_size",
    "expert_count",  # 0 only (a MoE is refused)
    "expert_used_count",
}
_LAYER_TENSORS = (
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
)
_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


# ----------------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class GGUFFile:
    """An open GGUF file: its path (for messages) and what `gguf.GGUFReader` read of it."""

    path: pathlib.Path
    fields: dict[str, Any]  # metadata key -> `ReaderField`
    tensors: list[Any]  # `ReaderTensor`s: name, tensor_type, shape (ne order), data


def open_gguf(path: PathLike) -> GGUFFile:
    """`path` read by `gguf.GGUFReader` (the tensors memory-mapped); errors name the file."""
    import gguf

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give the path of a .gguf file")
    try:
        reader = gguf.GGUFReader(path)
        return GGUFFile(path, dict(reader.fields), list(reader.tensors))
    except (ValueError, OSError) as err:  # "GGUF magic invalid", an empty or short file
        raise RunFileError(
            f"{path}: not a readable GGUF file ({err}); download it again, or give a .gguf "
            "written by llama.cpp's converter"
        ) from None


_MISSING = object()


def _value(reader: GGUFFile, key: str, default: Any = _MISSING) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise ValueError(f"{reader.path}: the GGUF has no {key!r} metadata, which is required")
        return default
    return field.contents()


def _check_architecture(reader: GGUFFile) -> None:
    arch = _value(reader, "general.architecture")
    if arch != ARCHITECTURE:
        raise ValueError(
            f"{reader.path}: general.architecture={arch!r}: only {ARCHITECTURE!r} GGUF files "
            "are supported"
        )


def config_from_gguf(reader: GGUFFile, dtype: str | None = None) -> ModelConfig:
    """The `ModelConfig` of a Llama GGUF's `llama.*` metadata and tensors."""
    _check_architecture(reader)
    prefix = f"{ARCHITECTURE}."
    keys = [k for k in reader.fields if k.startswith(prefix)]
    if unknown := sorted(k for k in keys if k[len(prefix) :] not in _CONFIG_KEYS):
        raise ValueError(
            f"{reader.path}: GGUF metadata {', '.join(unknown)} is not supported (a setting "
            "this model does not implement); only a plain Llama model is read"
        )
    get = lambda key, default=_MISSING: _value(reader, prefix + key, default)
    for key in ("expert_count", "expert_used_count"):
        if get(key, 0):
            raise ValueError(
                f"{reader.path}: {prefix}{key}={get(key)}: a mixture of experts is not supported"
            )
    if (scaling := get("rope.scaling.type", "none")) != "none":
        raise ValueError(
            f"{reader.path}: {prefix}rope.scaling.type={scaling!r}: only 'none' is supported"
        )
    tensors = {t.name: t for t in reader.tensors}
    if "rope_freqs.weight" in tensors:  # how the converter stores Llama-3.1's rope scaling
        raise ValueError(
            f"{reader.path}: the tensor rope_freqs.weight (Llama-3.1 rope scaling as per-"
            "frequency factors) is not supported; import the HF checkpoint with import-hf"
        )
    d, heads = int(get("embedding_length")), int(get("attention.head_count"))
    kv_heads = get("attention.head_count_kv", heads)
    if not isinstance(kv_heads, int):
        raise ValueError(
            f"{reader.path}: {prefix}attention.head_count_kv={kv_heads}: one number for every "
            "layer is supported, not a list per layer"
        )
    head_dim = int(get("attention.key_length", d // heads))
    for key in ("attention.value_length", "rope.dimension_count"):
        if int(get(key, head_dim)) != head_dim:
            raise ValueError(
                f"{reader.path}: {prefix}{key}={get(key)} differs from the head size "
                f"{head_dim}; only full rotary embeddings with equal key/value sizes are supported"
            )
    if "token_embd.weight" not in tensors:
        raise ValueError(f"{reader.path}: the GGUF has no token_embd.weight tensor")
    vocab = int(tensors["token_embd.weight"].shape[1])  # ne order: [D, V]
    if int(get("vocab_size", vocab)) != vocab:
        raise ValueError(
            f"{reader.path}: {prefix}vocab_size={get('vocab_size')} but token_embd.weight "
            f"has {vocab} rows; the file is inconsistent"
        )
    return ModelConfig(
        vocab_size=vocab,
        d_model=d,
        num_layers=int(get("block_count")),
        num_heads=heads,
        num_kv_heads=int(kv_heads),
        head_dim=head_dim,
        mlp_dim=int(get("feed_forward_length")),
        max_seq_len=int(get("context_length", 2048)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in tensors,
        param_dtype=dtype or "float32",
    )


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's attn_q/attn_k row order -> HF's: within each head, rows stored as
    interleaved (pair, 2) go back to (2, pair), the rotary halves."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _layouts(c: ModelConfig) -> dict[tuple[str, ...], tuple[str, Callable, tuple[int, ...]]]:
    """Our param -> (GGUF tensor name, HF-shaped [out, in] array -> ours, HF shape)."""
    d, n, k, h, f, v = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim, c.vocab_size
    same = lambda w: w
    cols = lambda w: w.T  # [out, in] -> [in, out]
    maps = {
        ("embedding",): ("token_embd.weight", same, (v, d)),
        ("final_norm", "scale"): ("output_norm.weight", same, (d,)),
        # [N*H, D] -> [D, N, H]
        ("layers", "attn", "q"): (
            "blk.{i}.attn_q.weight",
            lambda w: _unpermute(w, n).reshape(n, h, d).transpose(2, 0, 1),
            (n * h, d),
        ),
        ("layers", "attn", "k"): (
            "blk.{i}.attn_k.weight",
            lambda w: _unpermute(w, k).reshape(k, h, d).transpose(2, 0, 1),
            (k * h, d),
        ),
        ("layers", "attn", "v"): (
            "blk.{i}.attn_v.weight",
            lambda w: w.reshape(k, h, d).transpose(2, 0, 1),
            (k * h, d),
        ),
        # [D, N*H] -> [N, H, D]
        ("layers", "attn", "o"): (
            "blk.{i}.attn_output.weight",
            lambda w: w.reshape(d, n, h).transpose(1, 2, 0),
            (d, n * h),
        ),
        ("layers", "attn_norm", "scale"): ("blk.{i}.attn_norm.weight", same, (d,)),
        ("layers", "mlp_norm", "scale"): ("blk.{i}.ffn_norm.weight", same, (d,)),
        ("layers", "mlp", "gate"): ("blk.{i}.ffn_gate.weight", cols, (f, d)),
        ("layers", "mlp", "up"): ("blk.{i}.ffn_up.weight", cols, (f, d)),
        ("layers", "mlp", "down"): ("blk.{i}.ffn_down.weight", cols, (d, f)),
    }
    if not c.tie_embeddings:
        maps[("lm_head",)] = ("output.weight", cols, (v, d))  # [V, D] -> [D, V]
    return maps


def _tensor_names(c: ModelConfig) -> set[str]:
    names = set()
    for name, _, _ in _layouts(c).values():
        layers = range(c.num_layers) if "{i}" in name else [0]
        names |= {name.format(i=i) for i in layers}
    return names


def _dequantized(reader: GGUFFile, tensor: Any) -> np.ndarray:
    """The tensor as float32 in numpy (HF) order, from whatever type the file stores."""
    import gguf

    try:
        out = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise ValueError(
            f"{reader.path}: tensor {tensor.name} is stored as {tensor.tensor_type.name}, "
            "which the gguf package cannot de-quantise; convert the file to another type"
        ) from None
    return out.reshape(tuple(int(n) for n in reversed(tensor.shape)))


def load_gguf(path: PathLike, dtype: str | None = None) -> tuple[ModelConfig, dict[str, Any]]:
    """Read a Llama GGUF file as (ModelConfig, params) on the default device.

    `dtype` is the stored dtype of the params ("float32" when None); every tensor,
    quantised or not, is de-quantised to it. Each param is built on the host one at a
    time, so the peak is the params plus one (layer-stacked) param.
    """
    reader = open_gguf(path)
    config = config_from_gguf(reader, dtype)
    tensors = {t.name: t for t in reader.tensors}
    expected = _tensor_names(config)
    if missing := sorted(expected - set(tensors)):
        raise ValueError(
            f"{reader.path}: the GGUF lacks tensor(s) {', '.join(missing[:5])}, which a "
            "Llama model with its metadata has; the file is incomplete"
        )
    if extra := sorted(set(tensors) - expected):
        raise ValueError(
            f"{reader.path}: GGUF tensor(s) {', '.join(extra[:5])} are not supported (biases "
            "or other weights a plain Llama model does not have)"
        )
    np_dtype = np.dtype(config.weight_dtype)
    device = jax.devices()[0]
    params: dict[str, Any] = {}
    for keys, (name, to_ours, hf_shape) in _layouts(config).items():
        layers = range(config.num_layers) if "{i}" in name else [None]
        out = None
        for j, i in enumerate(layers):
            tensor = tensors[name.format(i=i)]
            w = _dequantized(reader, tensor)
            if w.shape != hf_shape:
                raise ValueError(
                    f"{reader.path}: tensor {tensor.name} has shape {w.shape[::-1]} (ne order), "
                    f"expected {hf_shape[::-1]} from the GGUF metadata"
                )
            ours = to_ours(w).astype(np_dtype)
            if i is None:
                out = ours
            else:
                if out is None:
                    out = np.empty((config.num_layers, *ours.shape), np_dtype)
                out[j] = ours
        node = params
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = jax.device_put(out, device)
        del out
    return config, params


# ----------------------------------------------------------------------------- tokenizer


def _byte_spelling() -> dict[int, str]:
    """GPT-2's byte -> printable character map, in which byte-level BPE vocabularies are
    written: printable Latin-1 bytes stand for themselves, the rest move to U+0100 on."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    spelling, extra = {}, 0
    for b in range(256):
        if b in kept:
            spelling[b] = chr(b)
        else:
            spelling[b] = chr(256 + extra)
            extra += 1
    return spelling


# llama.cpp pre-tokenizer names (tokenizer.ggml.pre) -> the split before byte-level BPE;
# None: GPT-2's own regex (ByteLevel's use_regex).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_SPLITS: dict[str, str | None] = {
    "default": None,
    "gpt2": None,
    "gpt-2": None,
    "smollm": None,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
}


def _token_text(tokens: list[str], reader: GGUFFile, key: str) -> str | None:
    index = _value(reader, key, None)
    if index is None:
        return None
    if not 0 <= index < len(tokens):
        raise ValueError(f"{reader.path}: {key}={index} is outside the {len(tokens)} tokens")
    return tokens[index]


def tokenizer_files(reader: GGUFFile) -> dict[str, bytes]:
    """`tokenizer.json`, `tokenizer_config.json` and `generation_config.json` of a GGUF's
    byte-level BPE tokenizer (tokenizer.ggml.model "gpt2"), name -> contents."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )

    model = _value(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(
            f"{reader.path}: tokenizer.ggml.model={model!r}: only the byte-level BPE 'gpt2' "
            "tokenizer is converted; import the weights' HF checkpoint with its tokenizer.json"
        )
    pre = _value(reader, "tokenizer.ggml.pre", "default")
    if pre not in _PRE_SPLITS:
        raise ValueError(
            f"{reader.path}: tokenizer.ggml.pre={pre!r} is not supported; known: "
            f"{', '.join(sorted(_PRE_SPLITS))}"
        )
    if _value(reader, "tokenizer.ggml.add_space_prefix", False):
        raise ValueError(
            f"{reader.path}: tokenizer.ggml.add_space_prefix=True is not supported for a "
            "byte-level BPE tokenizer"
        )
    tokens = list(_value(reader, "tokenizer.ggml.tokens"))
    types = list(_value(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in _value(reader, "tokenizer.ggml.merges")]
    spelling = _byte_spelling()
    alphabet = set(spelling.values())
    # A token written outside the byte alphabet (llama.cpp keeps a few as plain text) is
    # respelled byte by byte, as the BPE model sees text.
    respell = lambda t: "".join(spelling[b] for b in t.encode("utf-8"))
    vocab = {t if set(t) <= alphabet else respell(t): i for i, t in enumerate(tokens)}
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    split = _PRE_SPLITS[pre]
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|> ...) are matched whole and are special; user-defined
    # ones (e.g. <think>) are matched whole but are text.
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, kind in zip(tokens, types)
            if kind == _TOKEN_CONTROL and set(t) <= alphabet
        ]
    )
    tok.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, kind in zip(tokens, types)
            if kind == _TOKEN_USER_DEFINED and t in vocab
        ]
    )
    special = {
        name: _token_text(tokens, reader, f"tokenizer.ggml.{key}_token_id")
        for name, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"))
    }
    add_bos = bool(_value(reader, "tokenizer.ggml.add_bos_token", False))
    add_eos = bool(_value(reader, "tokenizer.ggml.add_eos_token", False))
    for flag, name in ((add_bos, "bos"), (add_eos, "eos")):
        if flag and special[name] is None:
            raise ValueError(
                f"{reader.path}: tokenizer.ggml.add_{name}_token is set but the GGUF has no "
                f"tokenizer.ggml.{name}_token_id"
            )
    single = [f"{special['bos']}:0"] * add_bos + ["$A:0"] + [f"{special['eos']}:0"] * add_eos
    pair = single + ["$B:1"] + [f"{special['eos']}:1"] * add_eos
    around = [special[n] for n, flag in (("bos", add_bos), ("eos", add_eos)) if flag]
    tok.post_processor = processors.TemplateProcessing(
        single=" ".join(single),
        pair=" ".join(pair),
        special_tokens=[(t, tokens.index(t)) for t in dict.fromkeys(around)],
    )
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{f"{name}_token": text for name, text in special.items() if text is not None},
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "model_max_length": int(_value(reader, f"{ARCHITECTURE}.context_length", 2048)),
        "clean_up_tokenization_spaces": False,
    }
    if (template := _value(reader, "tokenizer.chat_template", None)) is not None:
        config["chat_template"] = template
    ids = {
        name: _value(reader, f"tokenizer.ggml.{key}_token_id", None)
        for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"))
    }
    # The end of a turn (Llama-3's <|eot_id|>) also ends a generation.
    eos = [ids["eos"], _value(reader, "tokenizer.ggml.eot_token_id", None)]
    eos = [int(e) for e in dict.fromkeys(eos) if e is not None]
    generation = {f"{n}_token_id": int(i) for n, i in ids.items() if i is not None and n != "eos"}
    if eos:
        generation["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    as_bytes = lambda d: (json.dumps(d, indent=2, ensure_ascii=False) + "\n").encode()
    return {
        "tokenizer.json": tok.to_str(pretty=True).encode(),
        "tokenizer_config.json": as_bytes(config),
        "generation_config.json": as_bytes(generation),
    }


# ----------------------------------------------------------------------------- CLI


def is_gguf(path: PathLike) -> bool:
    """Whether `path` names a GGUF file (by its suffix; the contents are checked on read)."""
    return pathlib.Path(path).suffix.lower() == ".gguf"


def import_gguf_to_checkpoint(src: PathLike, dst: PathLike, dtype: str | None = None) -> None:
    """`jaxrl-reason import-hf MODEL.gguf DST`: `DST/params` + `DST/model_config.json`, the
    layout `hf_interop.import_hf_to_checkpoint` writes (`load_checkpoint` reads it), and the
    tokenizer files of `tokenizer_files`, so DST is a run's `init_checkpoint` and tokenizer.

    Everything is read and checked before anything is written; DST appears whole or not at
    all (written as a temporary sibling, then renamed).
    """
    from jaxrl_reason.model.hf_interop import model_config_to_json
    from jaxrl_reason.training.checkpointing import save_params

    dst = pathlib.Path(dst).absolute()
    if dst.exists():
        raise FileExistsError(f"{dst} exists; choose a new destination for the checkpoint")
    reader = open_gguf(src)
    _check_architecture(reader)
    files = tokenizer_files(reader)
    config, params = load_gguf(src, dtype)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        save_params(tmp / "params", params, {"imported_from": str(pathlib.Path(src).absolute())})
        (tmp / "model_config.json").write_text(model_config_to_json(config))
        for name, contents in files.items():
            (tmp / name).write_bytes(contents)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
