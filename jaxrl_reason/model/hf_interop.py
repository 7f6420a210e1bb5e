"""Hugging Face checkpoints (Llama, Qwen2/2.5, Qwen3, Gemma 2, Gemma 3 text; `ARCHITECTURES`)
<-> our `ModelConfig` and params, streamed tensor by tensor: `load_hf` and `save_hf`.

Loading never materialises the checkpoint: every parameter is built with
`jax.make_array_from_callback`, whose callback reads only the slice of the HF tensors that
one device's shard needs (`safe_open(...).get_slice`), layer by layer. Saving writes into a
temporary sibling directory and renames it into place, so a failure never leaves a
half-written destination.

HF linear weights are [out, in]; ours are einsum-shaped and stacked over layers:
  q_proj [N*H, D] -> q [L, D, N, H]    o_proj [D, N*H] -> o [L, N, H, D]
  gate/up [F, D]  -> [L, D, F]         down [D, F]     -> [L, F, D]
  lm_head [V, D]  -> [D, V]            embed_tokens [V, D] as is
  q_proj.bias [N*H] -> q_bias [L, N, H] (Qwen2)   q_norm/k_norm [H] -> [L, H] (Qwen3, Gemma 3)
Norms: input_layernorm -> attn_norm; Llama/Qwen post_attention_layernorm -> mlp_norm; Gemma
post_attention_layernorm -> post_attn_norm, pre/post_feedforward_layernorm -> mlp_norm /
post_mlp_norm. Gemma's norm weights w (scale 1 + w) are stored as they are (`norm_plus_one`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import shutil
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_dtypes  # noqa: F401  (registers "bfloat16" with numpy, so bf16 files read as numpy)
import numpy as np
import safetensors
import safetensors.numpy
from jax.experimental import multihost_utils

from jaxrl_reason.model import lora
from jaxrl_reason.model.config import _DTYPES, ModelConfig, RopeScaling
from jaxrl_reason.model.peft_export import save_peft_adapters
from jaxrl_reason.run_files import RunFileError, read_json

PathLike = str | os.PathLike
_INDEX_FILE = "model.safetensors.index.json"
_SINGLE_FILE = "model.safetensors"

# ----------------------------------------------------------------------------- configs

# HF model_type -> the one architecture of it we read and write.
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}
_GEMMA = ("gemma2", "gemma3_text")
# Defaults of the fields a config.json may leave out (the transformers config classes').
_MAX_POSITIONS = {"llama": 2048, "qwen2": 32768, "qwen3": 32768, "gemma2": 8192}
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
_MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")


def _model_type(hf: dict[str, Any]) -> str:
    """The supported `model_type` of a config.json dict; any other is refused, by name."""
    if "text_config" in hf or hf.get("model_type") == "gemma3":
        raise ValueError(
            f"config.json model_type={hf.get('model_type')!r} is an image-text model (a "
            "nested text_config); only its language model is supported: load a "
            "Gemma3ForCausalLM checkpoint (model_type 'gemma3_text')"
        )
    archs = hf.get("architectures")
    by_arch = {a: t for t, a in ARCHITECTURES.items()}
    default = by_arch.get(archs[0], "llama") if archs else "llama"
    model_type = hf.get("model_type", default)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"config.json model_type={model_type!r} is not supported; supported: "
            f"{sorted(ARCHITECTURES)}"
        )
    if archs is not None and list(archs) != [ARCHITECTURES[model_type]]:
        raise ValueError(
            f"config.json architectures={archs}: for model_type {model_type!r} only "
            f"['{ARCHITECTURES[model_type]}'] is supported"
        )
    return model_type


def _rope(rope: dict[str, Any], where: str) -> RopeScaling | None:
    """The `RopeScaling` of one HF rope dict (`rope_scaling` or `rope_parameters`)."""
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        return None
    if rope_type == "linear":
        return RopeScaling(factor=float(rope["factor"]), rope_type="linear")
    if rope_type == "llama3":
        return RopeScaling(
            factor=float(rope["factor"]),
            low_freq_factor=float(rope["low_freq_factor"]),
            high_freq_factor=float(rope["high_freq_factor"]),
            original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
        )
    raise ValueError(
        f"config.json {where} rope_type={rope_type!r}: only 'default', 'llama3' or 'linear' "
        "is supported"
    )


def _ropes(hf: dict[str, Any], model_type: str) -> tuple[float, RopeScaling | None, float | None]:
    """(rope_theta, rope_scaling, rope_local_theta) from transformers 5's `rope_parameters`
    (flat, or per layer type as Gemma 3's) or 4.x's top-level keys."""
    gemma3 = model_type == "gemma3_text"
    params = dict(hf.get("rope_parameters") or {})
    per_type = "full_attention" in params or "sliding_attention" in params
    if per_type:
        full = dict(params.get("full_attention") or {})
        local = dict(params.get("sliding_attention") or {})
    else:
        full = params or dict(hf.get("rope_scaling") or {})
        local = {}
    if gemma3 and not per_type:  # 4.x: scaling of full layers only, a local base apart
        local = {"rope_theta": hf.get("rope_local_base_freq", 10000.0)}
    theta = float(hf.get("rope_theta", full.get("rope_theta", 1e6 if gemma3 else 10000.0)))
    if per_type and "rope_theta" in full:
        theta = float(full["rope_theta"])
    scaling = _rope(full, "rope_parameters.full_attention" if per_type else "rope_scaling")
    if not gemma3:
        if per_type and local and local != full:
            raise ValueError(
                f"config.json rope_parameters.sliding_attention={local}: a separate RoPE of "
                f"sliding layers is only supported for Gemma 3, not {model_type!r}"
            )
        return theta, scaling, None
    if _rope(local, "rope_parameters.sliding_attention") is not None:
        raise ValueError(
            f"config.json rope_parameters.sliding_attention={local}: scaled RoPE of sliding "
            "layers is not supported (only of full_attention layers)"
        )
    return theta, scaling, float(local.get("rope_theta", 10000.0))


def _layer_types(hf: dict[str, Any], model_type: str, num_layers: int) -> tuple[str, ...]:
    """Per-layer attention kinds, as transformers derives them when `layer_types` is absent."""
    full, sliding = "full_attention", "sliding_attention"
    if model_type == "llama":
        return (full,) * num_layers
    if model_type in ("qwen2", "qwen3") and not hf.get("use_sliding_window", False):
        return (full,) * num_layers  # transformers drops sliding_window then
    types = hf.get("layer_types")
    if types is None:
        if model_type == "gemma2":
            every = 2
        elif model_type == "gemma3_text":
            every = int(hf.get("sliding_window_pattern", 6))
        else:
            first = int(hf.get("max_window_layers", 28))
            return tuple(sliding if i >= first else full for i in range(num_layers))
        return tuple(full if (i + 1) % every == 0 else sliding for i in range(num_layers))
    if not isinstance(types, list) or len(types) != num_layers or not set(types) <= {full, sliding}:
        raise ValueError(
            f"config.json layer_types={types}: expected {num_layers} entries of "
            f"{full!r} or {sliding!r}"
        )
    return tuple(types)


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """A `ModelConfig` from a HF `config.json` dict of a supported family (`ARCHITECTURES`;
    transformers 4.x or 5.x keys). A field we do not implement is refused by name."""
    model_type = _model_type(hf)
    gemma = model_type in _GEMMA
    act_key = "hidden_activation" if gemma and "hidden_activation" in hf else "hidden_act"
    act = hf.get(act_key, "gelu_pytorch_tanh" if gemma else "silu")
    if act not in _ACTIVATIONS:
        raise ValueError(
            f"config.json {act_key}={act!r}: only 'silu' (SwiGLU) or 'gelu_pytorch_tanh' "
            "(GeGLU) is supported"
        )
    if hf.get("attention_bias", False):
        raise ValueError(
            f"config.json attention_bias={hf['attention_bias']}: {model_type!r} with biases "
            "(on the output projection too) is not supported"
        )
    if hf.get("mlp_bias", False):
        raise ValueError(f"config.json mlp_bias={hf['mlp_bias']}: MLP biases are not supported")
    for name in _MOE_FIELDS:
        if hf.get(name):
            raise ValueError(
                f"config.json {name}={hf[name]}: mixture-of-experts models are not supported"
            )
    if hf.get("use_bidirectional_attention"):
        raise ValueError(
            "config.json use_bidirectional_attention=True: only causal attention is supported"
        )
    if float(hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError(
            f"config.json partial_rotary_factor={hf['partial_rotary_factor']}: only RoPE on "
            "the whole head (1.0) is supported"
        )
    theta, scaling, local_theta = _ropes(hf, model_type)
    heads = hf["num_attention_heads"]
    layers = hf["num_hidden_layers"]
    types = _layer_types(hf, model_type, layers)
    sliding = "sliding_attention" in types
    head_dim = hf.get("head_dim") or (
        256 if gemma else 128 if model_type == "qwen3" else hf["hidden_size"] // heads
    )
    softcaps = (50.0, 30.0) if model_type == "gemma2" else (None, None)
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        mlp_dim=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", _MAX_POSITIONS.get(model_type, 131072)),
        rope_theta=theta,
        rope_scaling=scaling,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", gemma)),
        attention_bias=model_type == "qwen2",
        qk_norm=model_type in ("qwen3", "gemma3_text"),
        scale_embeddings=gemma,
        norm_plus_one=gemma,
        activation=_ACTIVATIONS[act],
        sandwich_norms=gemma,
        attn_softcap=_optional_float(hf.get("attn_logit_softcapping", softcaps[0])),
        final_softcap=_optional_float(hf.get("final_logit_softcapping", softcaps[1])),
        query_scale=float(hf.get("query_pre_attn_scalar", 256)) if gemma else None,
        layer_types=types if sliding else (),
        sliding_window=int(hf.get("sliding_window") or 4096) if sliding else None,
        rope_local_theta=local_theta,
    )


def _optional_float(x: Any) -> float | None:
    return None if x is None else float(x)


def _int_if_whole(x: float | None) -> float | int | None:
    """transformers 5 types query_pre_attn_scalar as an int (and refuses 256.0)."""
    return int(x) if x is not None and float(x).is_integer() else x


def hf_model_type(config: ModelConfig) -> str:
    """The HF `model_type` whose architecture has exactly `config`'s switches; a config no
    HF architecture computes (e.g. Gemma norms with Llama attention) is refused by field."""
    c = config

    def refuse(field: str, value: Any, why: str) -> ValueError:
        return ValueError(f"ModelConfig.{field}={value}: {why}; no HF architecture matches")

    gemma = (c.scale_embeddings, c.norm_plus_one, c.sandwich_norms)
    if any(gemma):
        if not all(gemma):
            raise refuse(
                "scale_embeddings/norm_plus_one/sandwich_norms",
                gemma,
                "HF's Gemma 2/3 have all three",
            )
        if c.attention_bias:
            raise refuse("attention_bias", True, "HF's Gemma has no q/k/v-only biases")
        model_type = "gemma3_text" if c.qk_norm else "gemma2"
        if model_type == "gemma2" and c.rope_local_theta is not None:
            raise refuse("rope_local_theta", c.rope_local_theta, "Gemma 2 has one RoPE base")
        if model_type == "gemma3_text" and c.rope_local_theta is None:
            raise refuse("rope_local_theta", None, "Gemma 3 has a RoPE base of sliding layers")
        return model_type
    for field in ("attn_softcap", "final_softcap", "query_scale", "rope_local_theta"):
        if getattr(c, field) is not None:
            raise refuse(field, getattr(c, field), "only HF's Gemma has it")
    if c.qk_norm:
        if c.attention_bias:
            raise refuse("attention_bias", True, "HF's Qwen3 biases the output projection too")
        return "qwen3"
    if c.attention_bias:
        return "qwen2"
    if c.has_sliding_layers:
        raise refuse("layer_types", "(sliding layers)", "HF's Llama has no sliding window")
    return "llama"


def config_to_hf(config: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """The HF `config.json` dict of `config`'s architecture (`hf_model_type`), in the
    4.x keys that transformers 5 still reads."""
    c = config
    s = c.rope_scaling
    model_type = hf_model_type(c)
    scaling = None
    if s is not None:
        scaling = {"rope_type": "linear", "factor": s.factor}
        if s.rope_type == "llama3":
            scaling = {"rope_type": "llama3", **dataclasses.asdict(s)}
    act = {v: k for k, v in _ACTIVATIONS.items()}[c.activation]
    out = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "intermediate_size": c.mlp_dim,
        "max_position_embeddings": c.max_seq_len,
        "rope_theta": c.rope_theta,
        "rope_scaling": scaling,
        "rms_norm_eps": c.norm_eps,
        "tie_word_embeddings": c.tie_embeddings,
        "hidden_act": act,
        "attention_bias": False,
        "torch_dtype": dtype,
    }
    types = list(c.layer_types or ("full_attention",) * c.num_layers)
    if model_type == "llama":
        out["mlp_bias"] = False
    elif model_type in ("qwen2", "qwen3"):
        if model_type == "qwen2":
            del out["attention_bias"]  # Qwen2 always has q/k/v biases
        first = types.index("sliding_attention") if c.has_sliding_layers else c.num_layers
        out |= {
            "use_sliding_window": c.has_sliding_layers,
            "sliding_window": c.sliding_window,
            "max_window_layers": first,
            "layer_types": types,
        }
    else:
        out |= {
            "hidden_activation": act,
            "query_pre_attn_scalar": _int_if_whole(c.query_scale),
            "attn_logit_softcapping": c.attn_softcap,
            "final_logit_softcapping": c.final_softcap,
            "sliding_window": c.sliding_window,
            "layer_types": types,
        }
        if model_type == "gemma3_text":
            out["rope_local_base_freq"] = c.rope_local_theta
    return out


def model_config_to_json(config: ModelConfig) -> str:
    return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)


def model_config_from_json(text: str) -> ModelConfig:
    return ModelConfig.from_dict(json.loads(text))


# ----------------------------------------------------------------------------- tensor map


@dataclasses.dataclass(frozen=True)
class _Mapping:
    """How one HF tensor becomes (one layer of) one of our params.

    The HF tensor, of shape `prod(g) for g in groups`, is viewed with each axis split into
    its group (e.g. [N*H, D] -> [N, H, D]) and transposed by `perm` into our layout.
    """

    hf_name: str  # with "{i}" for the layer when stacked
    groups: tuple[tuple[int, ...], ...]
    perm: tuple[int, ...]
    stacked: bool

    @property
    def hf_shape(self) -> tuple[int, ...]:
        return tuple(math.prod(g) for g in self.groups)

    def shape(self, num_layers: int) -> tuple[int, ...]:
        view = [n for g in self.groups for n in g]
        ours = tuple(view[p] for p in self.perm)
        return (num_layers, *ours) if self.stacked else ours

    def read(self, reader: _Reader, index: tuple[slice, ...], layer: int = 0) -> np.ndarray:
        """Our-layout block `index` (one layer) read from only the HF rows/columns it needs."""
        view_index: list[slice] = [slice(0)] * len(self.perm)
        for ours_axis, view_axis in enumerate(self.perm):
            view_index[view_axis] = index[ours_axis]
        hf_index, local_shape, post, axis = [], [], [], 0
        for g in self.groups:
            # Split axes are read whole except the outermost, then sliced after the reshape.
            first, inner = view_index[axis], math.prod(g[1:])
            hf_index.append(slice(first.start * inner, first.stop * inner))
            local_shape += [first.stop - first.start, *g[1:]]
            post += [slice(None), *view_index[axis + 1 : axis + len(g)]]
            axis += len(g)
        block = reader.read(self.hf_name.format(i=layer), tuple(hf_index))
        return block.reshape(local_shape)[tuple(post)].transpose(self.perm)

    def to_hf(self, ours: np.ndarray) -> np.ndarray:
        """One layer of our param back to the HF tensor (exact inverse of `read`)."""
        return np.ascontiguousarray(ours.transpose(np.argsort(self.perm)).reshape(self.hf_shape))


def _mappings(c: ModelConfig) -> dict[tuple[str, ...], _Mapping]:
    d, n, k, h, f, v = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim, c.vocab_size
    a, m = ("layers", "attn"), ("layers", "mlp")

    def layer(
        name: str,
        groups: tuple[tuple[int, ...], ...],
        perm: tuple[int, ...],
        kind: str = "weight",
    ) -> _Mapping:
        return _Mapping(f"model.layers.{{i}}.{name}.{kind}", groups, perm, stacked=True)

    maps = {
        ("embedding",): _Mapping("model.embed_tokens.weight", ((v,), (d,)), (0, 1), False),
        ("final_norm", "scale"): _Mapping("model.norm.weight", ((d,),), (0,), False),
        (*a, "q"): layer("self_attn.q_proj", ((n, h), (d,)), (2, 0, 1)),  # [N*H, D] -> [D, N, H]
        (*a, "k"): layer("self_attn.k_proj", ((k, h), (d,)), (2, 0, 1)),
        (*a, "v"): layer("self_attn.v_proj", ((k, h), (d,)), (2, 0, 1)),
        (*a, "o"): layer("self_attn.o_proj", ((d,), (n, h)), (1, 2, 0)),  # [D, N*H] -> [N, H, D]
        ("layers", "attn_norm", "scale"): layer("input_layernorm", ((d,),), (0,)),
        (*m, "gate"): layer("mlp.gate_proj", ((f,), (d,)), (1, 0)),  # [F, D] -> [D, F]
        (*m, "up"): layer("mlp.up_proj", ((f,), (d,)), (1, 0)),
        (*m, "down"): layer("mlp.down_proj", ((d,), (f,)), (1, 0)),  # [D, F] -> [F, D]
    }
    norms = {"mlp_norm": "post_attention_layernorm"}  # Llama, Qwen
    if c.sandwich_norms:  # Gemma 2/3: pre- and post-norms around attention and MLP
        norms = {
            "post_attn_norm": "post_attention_layernorm",
            "mlp_norm": "pre_feedforward_layernorm",
            "post_mlp_norm": "post_feedforward_layernorm",
        }
    for ours, hf_name in norms.items():
        maps[("layers", ours, "scale")] = layer(hf_name, ((d,),), (0,))
    if c.attention_bias:  # [N*H] -> [N, H]
        for name, heads in zip("qkv", (n, k, k)):
            proj = f"self_attn.{name}_proj"
            maps[(*a, f"{name}_bias")] = layer(proj, ((heads, h),), (0, 1), "bias")
    if c.qk_norm:
        for name in "qk":
            maps[(*a, f"{name}_norm", "scale")] = layer(f"self_attn.{name}_norm", ((h,),), (0,))
    if not c.tie_embeddings:
        maps[("lm_head",)] = _Mapping("lm_head.weight", ((v,), (d,)), (1, 0), False)
    return maps


# ----------------------------------------------------------------------------- loading


class _Reader:
    """Finds HF tensors in a directory's safetensors file(s) and reads slices of them."""

    def __init__(self, path: pathlib.Path, stack: contextlib.ExitStack):
        index = path / _INDEX_FILE
        if index.exists():
            data = read_json(index, "safetensors index")
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()
            ):
                raise RunFileError(
                    f'{index}: the safetensors index has no "weight_map" of tensor names to '
                    "files; download or export the checkpoint again"
                )
            self.weight_map: dict[str, str] = weight_map
        elif (path / _SINGLE_FILE).exists():
            self.weight_map = {}
        else:
            raise FileNotFoundError(f"{path} has neither {_SINGLE_FILE} nor {_INDEX_FILE}")
        self.files = sorted(set(self.weight_map.values())) or [_SINGLE_FILE]
        self._handles = {name: self._open(path, name, stack) for name in self.files}
        if not self.weight_map:
            self.weight_map = dict.fromkeys(self._handles[_SINGLE_FILE].keys(), _SINGLE_FILE)

    @staticmethod
    def _open(path: pathlib.Path, name: str, stack: contextlib.ExitStack) -> Any:
        file = path / name
        if not file.is_file():
            raise FileNotFoundError(
                f"{file} not found: {path / _INDEX_FILE} lists it; the download is incomplete"
            )
        try:
            return stack.enter_context(safetensors.safe_open(file, framework="numpy"))
        except safetensors.SafetensorError as err:
            raise RunFileError(
                f"{file}: not a readable safetensors file ({err}); it is truncated or "
                "damaged: download or export the checkpoint again"
            ) from None

    def _slice(self, name: str) -> Any:
        if name not in self.weight_map:
            raise ValueError(
                f"tensor {name!r} not found in the checkpoint (searched "
                f"{self.files}); does config.json describe this checkpoint?"
            )
        return self._handles[self.weight_map[name]].get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        return self._slice(name)[index]


def _normalise(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    return tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, shape))


def _load_param(
    reader: _Reader,
    m: _Mapping,
    shape: tuple[int, ...],
    dtype: Any,
    sharding: jax.sharding.Sharding,
) -> jax.Array:
    blocks: dict[tuple, np.ndarray] = {}  # replicated shards are read once, not per device

    def block(index: tuple[slice, ...]) -> np.ndarray:
        index = _normalise(index, shape)
        key = tuple((s.start, s.stop) for s in index)
        if key not in blocks:
            if m.stacked:
                out = np.empty([s.stop - s.start for s in index], dtype)
                for j, layer in enumerate(range(index[0].start, index[0].stop)):
                    out[j] = m.read(reader, index[1:], layer)
            else:
                out = m.read(reader, index).astype(dtype)
            blocks[key] = out
        return blocks[key]

    return jax.make_array_from_callback(shape, sharding, block)


def _lookup(tree: Any, keys: tuple[str, ...], what: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            raise ValueError(
                f"{what} has no entry {'/'.join(keys)}; it must have the tree "
                "of init_params(config)"
            )
        tree = tree[key]
    return tree


def load_hf(
    path: PathLike, dtype: str | None = None, shardings: Any = None
) -> tuple[ModelConfig, dict[str, Any]]:
    """Read a HF model directory (config.json + safetensors) as (ModelConfig, params), for
    every architecture in `ARCHITECTURES` (chosen by config.json's `model_type`).

    `dtype` is the stored dtype of the params ("float32" when None, which is exact for
    bf16/f16 files); it becomes the config's `param_dtype`. `shardings` is a pytree of
    `Sharding`s matching the params (or one `Sharding` for all): each device reads only its
    own shard from the files. Without it, params land on the default device.
    """
    path = pathlib.Path(path)
    config = _read_hf_config(path).replace(param_dtype=dtype or "float32")
    np_dtype = np.dtype(config.weight_dtype)
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        reader = _Reader(path, stack)
        mappings = _mappings(config)
        for m in mappings.values():  # validate everything before reading anything
            for i in range(config.num_layers if m.stacked else 1):
                name = m.hf_name.format(i=i)
                if (found := reader.shape(name)) != m.hf_shape:
                    raise ValueError(
                        f"tensor {name!r} has shape {found}, expected {m.hf_shape} from config.json"
                    )
        for keys, m in mappings.items():
            if shardings is None:
                sharding = default
            elif isinstance(shardings, jax.sharding.Sharding):
                sharding = shardings
            else:
                sharding = _lookup(shardings, keys, "shardings")
            leaf = _load_param(reader, m, m.shape(config.num_layers), np_dtype, sharding)
            node = params
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = leaf
    return config, params


load_hf_llama = load_hf  # the name from when only Llama loaded


def _read_hf_config(path: pathlib.Path) -> ModelConfig:
    """The `ModelConfig` of HF directory `path`'s config.json; errors name the file."""
    file = path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {path} is not a HF model directory")
    hf = read_json(file, "HF config")
    if not isinstance(hf, dict):
        raise RunFileError(f"{file}: the HF config is not a JSON object; restore the file")
    try:
        return config_from_hf(hf)
    except KeyError as err:
        raise RunFileError(
            f"{file}: the HF config has no {err.args[0]!r}; is it a model's config.json?"
        ) from None


def _read_model_config(file: pathlib.Path) -> ModelConfig:
    """The `ModelConfig` in `file` (a model_config.json); errors name the file."""
    data = read_json(file, "model config")
    if not isinstance(data, dict):
        raise RunFileError(f"{file}: the model config is not a JSON object; restore the file")
    try:
        return ModelConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise RunFileError(f"{file}: {err}") from None


# ----------------------------------------------------------------------------- saving


@contextlib.contextmanager
def _atomic_dir(path: PathLike, overwrite: bool = False) -> Iterator[pathlib.Path]:
    """Yield a fresh temporary sibling of `path`; on success it replaces `path`."""
    path = pathlib.Path(path).absolute()
    if path.exists() and not (path.is_dir() and not any(path.iterdir())) and not overwrite:
        raise FileExistsError(
            f"{path} exists and is not empty; choose a new destination or pass overwrite=True"
        )
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()


def _host_layer(leaf: Any, layer: int | None) -> np.ndarray:
    x = leaf if layer is None else leaf[layer]
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def save_hf(
    config: ModelConfig,
    params: dict[str, Any],
    path: PathLike,
    dtype: str = "float32",
    max_shard_bytes: int = 5 * 2**30,
    overwrite: bool = False,
    extra_files: Mapping[str, bytes] | None = None,
) -> None:
    """Write `params` as a HF directory (config.json + safetensors) of `config`'s
    architecture (`hf_model_type`: Llama, Qwen2, Qwen3, Gemma 2 or Gemma 3 text), which
    `transformers.AutoModelForCausalLM.from_pretrained` loads.

    Files larger than `max_shard_bytes` in total are split into shards with an index.
    Scalar heads (value, reward) have no HF counterpart and are not written. A LoRA
    model (`config.lora`) is written with its adapters merged (`lora.merge_adapters`).
    `extra_files` (name -> contents, e.g. a tokenizer) are written beside them.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}; choose one of {sorted(_DTYPES)}")
    if config.lora is not None:  # LoRA / QLoRA: the adapters folded into the (dequantized) base
        config, params = lora.merge_adapters(config, params)
    np_dtype = np.dtype(_DTYPES[dtype])
    hf_config = config_to_hf(config, dtype)  # refuses a config no HF architecture matches
    # (hf name, mapping, leaf, layer) in file order, each written one at a time.
    entries: list[tuple[str, _Mapping, Any, int | None]] = []
    for keys, m in _mappings(config).items():
        leaf = _lookup(params, keys, "params")
        if tuple(leaf.shape) != (want := m.shape(config.num_layers)):
            raise ValueError(
                f"param {'/'.join(keys)} has shape {tuple(leaf.shape)}, expected "
                f"{want} from the ModelConfig"
            )
        layers = range(config.num_layers) if m.stacked else [None]
        entries += [(m.hf_name.format(i=i), m, leaf, i) for i in layers]
    shards: list[list[int]] = [[]]
    size = 0
    for j, (_, m, _, _) in enumerate(entries):
        nbytes = math.prod(m.hf_shape) * np_dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(j)
        size += nbytes
    total = sum(math.prod(m.hf_shape) * np_dtype.itemsize for _, m, _, _ in entries)

    with _atomic_dir(path, overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        weight_map = {}
        for s, members in enumerate(shards):
            file = (
                _SINGLE_FILE
                if len(shards) == 1
                else f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
            )
            tensors = {}
            for j in members:
                name, m, leaf, layer = entries[j]
                tensors[name] = m.to_hf(_host_layer(leaf, layer)).astype(np_dtype)
                weight_map[name] = file
            safetensors.numpy.save_file(tensors, tmp / file, metadata={"format": "pt"})
            del tensors
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / _INDEX_FILE).write_text(json.dumps(index, indent=2))
        for name, contents in (extra_files or {}).items():
            (tmp / name).write_bytes(contents)


save_hf_llama = save_hf  # the name from when only Llama was written


# ----------------------------------------------------------------------------- CLI


# A HF directory's tokenizer, copied by `import-hf` so that DST is a run's init_checkpoint
# and tokenizer at once (as a GGUF import is).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
)


def import_hf_to_checkpoint(src: PathLike, dst: PathLike, dtype: str | None = None) -> None:
    """`jaxrl-reason import-hf SRC DST`: HF model dir -> `DST/params` (the params as
    `training.checkpointing.save_params` writes them) + `DST/model_config.json`, and the
    tokenizer files SRC has (`TOKENIZER_FILES`)."""
    from jaxrl_reason.training.checkpointing import save_params

    dst = pathlib.Path(dst).absolute()
    if dst.exists():
        raise FileExistsError(f"{dst} exists; choose a new destination for the checkpoint")
    config, params = load_hf(src, dtype)
    with _atomic_dir(dst) as tmp:
        save_params(tmp / "params", params, {"imported_from": str(src)})
        (tmp / "model_config.json").write_text(model_config_to_json(config))
        for name in TOKENIZER_FILES:
            if (pathlib.Path(src) / name).is_file():
                shutil.copyfile(pathlib.Path(src) / name, tmp / name)


def load_checkpoint(src: PathLike, mesh: Any = None) -> tuple[ModelConfig, dict[str, Any]]:
    """(config, params) of an `import_hf_to_checkpoint` directory, placed on `mesh` by the
    logical-axis rules (default: one device)."""
    from jaxrl_reason.training.checkpointing import abstract_params, load_params

    src = pathlib.Path(src).absolute()
    if not (src / "model_config.json").is_file():
        raise FileNotFoundError(
            f"{src / 'model_config.json'} not found: {src} is not a "
            "checkpoint written by `jaxrl-reason import-hf`"
        )
    if (src / "params" / "_METADATA").exists():  # one bare orbax tree: before save_params
        raise ValueError(
            f"{src} was imported by an older jaxrl_reason; run `jaxrl-reason import-hf` "
            "again into a new directory"
        )
    config = _read_model_config(src / "model_config.json")
    target = abstract_params(config, mesh=mesh)
    params, _ = load_params(src / "params", target, what="imported params")
    return config, params


def export_checkpoint_to_hf(
    src: PathLike,
    dst: PathLike,
    dtype: str = "float32",
    max_shard_bytes: int = 5 * 2**30,
    overwrite: bool = False,
    step: int | None = None,
) -> None:
    """`jaxrl-reason export-hf SRC DST`: the reverse of `import_hf_to_checkpoint`.

    `src` may also be a trained run's directory (it has run.json): then its newest policy,
    or the one of `step`, is exported by `export_run_to_hf`. `overwrite` replaces a `dst`
    that is not empty.
    """
    src = pathlib.Path(src)
    is_run = (src / "run.json").is_file()
    if not is_run and not (src / "model_config.json").is_file():
        raise FileNotFoundError(
            f"{src} is neither a run directory (no run.json: train one with `jaxrl-reason "
            "train` or `demo`) nor a checkpoint written by `jaxrl-reason import-hf` (no "
            "model_config.json)"
        )
    a, b = src.resolve(), pathlib.Path(dst).resolve()
    if a == b or a in b.parents or b in a.parents:
        raise ValueError(
            f"export-hf {src} {dst}: the destination overlaps the source (the same directory, "
            "or one inside the other), and writing it would destroy what is exported; "
            "choose a destination outside the source"
        )
    if is_run:
        export_run_to_hf(src, dst, step, dtype, max_shard_bytes, overwrite)
        return
    if step is not None:
        raise ValueError(
            f"step={step}: {src} is an import-hf checkpoint, which holds one set of params; "
            "a step chooses among the policies of a run directory"
        )
    config, params = load_checkpoint(src)
    save_hf(config, params, dst, dtype, max_shard_bytes, overwrite)


def export_run_to_hf(
    workdir: PathLike,
    dst: PathLike,
    step: int | None = None,
    dtype: str = "float32",
    max_shard_bytes: int = 5 * 2**30,
    overwrite: bool = False,
) -> dict[str, Any]:
    """`jaxrl-reason export-hf RUN_DIR DST [--step N]`: a trained run's policy as a HF
    directory (`save_hf`); returns the policy's meta (its phase, samples drawn...).

    The policy is the newest in `RUN_DIR/policy` (the last finished phase), or its step
    `step` (the `policy_step` of each phase in run.json). `dst` receives config.json and
    model.safetensors (shards and an index when large), as `save_hf` writes them;
    `tokenizer.model`, a copy of the run's sentencepiece model (a run's tokenizer is not a
    HF tokenizer: no tokenizer.json is written, so load it with `sentencepiece`, not
    `AutoTokenizer`); and `jaxrl_reason_policy.json`: the policy's meta and the prompt
    format it is asked in (`data.prompts.PromptFormat` fields), which its answers need.
    A LoRA run's weights are written merged, and its adapters alone in `dst/peft_adapter`
    (PEFT's layout, for `peft.PeftModel.from_pretrained` onto the HF export of its base).
    """
    from jaxrl_reason.experiment import load_run

    policy, params, meta = load_run(workdir, step, read_only=True)  # changes nothing there
    tokenizer = pathlib.Path(policy.tokenizer.path)
    if tokenizer.suffix != ".model":
        raise ValueError(
            f"{workdir}: its tokenizer {tokenizer} is not a sentencepiece .model file; only "
            "those are exported with the weights"
        )
    about = {
        "exported_from": str(pathlib.Path(workdir).absolute()),
        "policy_step": meta.get("policy_step", step),
        "meta": meta,
        "prompt_format": dataclasses.asdict(policy.prompt_format),
    }
    extra = {
        "tokenizer.model": tokenizer.read_bytes(),
        "jaxrl_reason_policy.json": (json.dumps(about, indent=2, sort_keys=True) + "\n").encode(),
    }
    save_hf(policy.model_config, params, dst, dtype, max_shard_bytes, overwrite, extra)
    if policy.model_config.lora is not None:  # also the adapters alone, for `peft`
        save_peft_adapters(policy.model_config, params, pathlib.Path(dst) / "peft_adapter")
    return meta
