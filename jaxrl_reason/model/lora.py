"""LoRA and QLoRA on the params tree: adding adapters, what is trained, the base with the
adapters off, merging, and what identifies a base.

The adapters live in the model's params tree beside the matrices they adapt
(`layers/attn/q_lora_a` [L, D, r], `layers/attn/q_lora_b` [L, r, N, H] ...), declared by
the model when `ModelConfig.lora` is set (`transformer._add_lora`), so they carry logical
axes like every weight, the scanned layers stack them, and the sampler, the losses and
the checkpoints see one tree. What is trained is decided by the tree: when it holds
adapters, only the adapters and the scalar heads (`split_trainable`); the train step
differentiates and the optimizer keeps state for those leaves only.

Why not `qwix`: see README.md, "LoRA and QLoRA".
"""

from __future__ import annotations

import hashlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reason.model import quantization
from jaxrl_reason.model.config import LORA_TARGETS, LoraConfig, ModelConfig
from jaxrl_reason.model.transformer import HEAD_NAMES, Transformer

ADAPTER_SUFFIXES = ("_lora_a", "_lora_b")
_MODULE_OF = {"q": "attn", "k": "attn", "v": "attn", "o": "attn"} | {
    "gate": "mlp",
    "up": "mlp",
    "down": "mlp",
}
_HEAD_PREFIXES = tuple(f"{h}_head" for h in HEAD_NAMES)

Params = dict[str, Any]


def _is_trainable(keys: tuple[str, ...]) -> bool:
    # Heads sit at an LM tree's top level, which PPO nests under "policy" / "critic".
    return keys[-1].endswith(ADAPTER_SUFFIXES) or keys[-1].startswith(_HEAD_PREFIXES)


def _leaves(tree: Any, prefix: tuple[str, ...] = ()) -> Any:
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def has_adapters(params: Any) -> bool:
    """Whether a params tree holds LoRA adapters."""
    return isinstance(params, dict) and any(
        keys[-1].endswith(ADAPTER_SUFFIXES) for keys, _ in _leaves(params)
    )


def _partition(tree: Params, keep: Any, prefix: tuple[str, ...] = ()) -> tuple[Params, Params]:
    yes, no = {}, {}
    for k, v in tree.items():
        if isinstance(v, dict):
            a, b = _partition(v, keep, (*prefix, k))
            if a:
                yes[k] = a
            if b:
                no[k] = b
        elif keep((*prefix, k)):
            yes[k] = v
        else:
            no[k] = v
    return yes, no


def split_trainable(params: Any) -> tuple[Any, Params]:
    """(trained, frozen) parts of a params tree: with adapters, the adapters and the heads
    vs the rest (the base); without, everything vs {} (full fine-tuning)."""
    if not has_adapters(params):
        return params, {}
    return _partition(params, _is_trainable)


def join(a: Any, b: Params) -> Any:
    """The union of two disjoint parts of one params tree (inverse of `split_trainable`)."""
    if not b:
        return a
    out = dict(a)
    for k, v in b.items():
        out[k] = join(out[k], v) if k in out and isinstance(v, dict) else v
    return out


def adapter_params(params: Params) -> Params:
    """Only the adapters and heads of `params` (what an adapter checkpoint holds)."""
    return _partition(params, _is_trainable)[0]


def _require_lora(config: ModelConfig, what: str) -> LoraConfig:
    if config.lora is None:
        raise ValueError(f"{what}: the model config has no LoRA (set ModelConfig.lora)")
    return config.lora


def adapters_off(config: ModelConfig, params: Params) -> tuple[ModelConfig, Params]:
    """The base model: (its config, its params), the same arrays without the adapters
    (a QLoRA base stays quantized). PPO's and GRPO's reference policy."""
    cfg = _require_lora(config, "adapters_off")
    base = _partition(params, lambda keys: not keys[-1].endswith(ADAPTER_SUFFIXES))[0]
    if cfg.quantize == "none":
        return config.replace(lora=None), base
    return config.replace(lora=cfg.replace(targets=())), base


def _matrix(params: Params, name: str) -> jax.Array:
    """Layer matrix `name` [L, *in, *out] in float32 (dequantized when int8)."""
    module = params["layers"][_MODULE_OF[name]]
    w = module[name]
    if w.dtype == jnp.int8:
        return quantization.dequantize(w, module[f"{name}{quantization.SCALE_SUFFIX}"])
    return w.astype(jnp.float32)


def lora_delta(config: ModelConfig, params: Params, name: str) -> jax.Array:
    """(alpha / r) A B of target `name`, shaped as its matrix [L, *in, *out], float32."""
    cfg = _require_lora(config, "lora_delta")
    module = params["layers"][_MODULE_OF[name]]
    a, b = module[f"{name}_lora_a"], module[f"{name}_lora_b"]
    layers, r = a.shape[0], cfg.rank
    delta = jnp.einsum(
        "LIR,LRO->LIO",
        a.reshape(layers, -1, r).astype(jnp.float32),
        b.reshape(layers, r, -1).astype(jnp.float32),
    )
    return cfg.scale * delta.reshape(a.shape[:-1] + b.shape[2:])


def merge_adapters(config: ModelConfig, params: Params) -> tuple[ModelConfig, Params]:
    """A plain model with the adapters folded in: W + (alpha / r) A B for every target
    (a QLoRA base dequantized first), as `config.param_dtype`; (its config, its params)."""
    cfg = _require_lora(config, "merge_adapters")
    dtype = config.weight_dtype
    layers = {m: dict(v) for m, v in params["layers"].items()}
    for name in LORA_TARGETS:
        module = layers[_MODULE_OF[name]]
        w = _matrix(params, name)
        if name in cfg.targets:
            w = w + lora_delta(config, params, name)
        module[name] = w.astype(dtype)
        for suffix in (*ADAPTER_SUFFIXES, quantization.SCALE_SUFFIX):
            module.pop(f"{name}{suffix}", None)
    return config.replace(lora=None), {**params, "layers": layers}


def quantize_base(config: ModelConfig, params: Params) -> Params:
    """A float base's layer matrices as int8 codes + block scales (QLoRA's frozen base);
    `config.lora.quantize` must be "int8"."""
    cfg = _require_lora(config, "quantize_base")
    if cfg.quantize != "int8":
        raise ValueError(f"quantize_base: LoraConfig.quantize is {cfg.quantize!r}, not 'int8'")
    layers = {m: dict(v) for m, v in params["layers"].items()}
    for name in LORA_TARGETS:
        module = layers[_MODULE_OF[name]]
        if module[name].dtype == jnp.int8:
            continue
        codes, scale = quantization.quantize(module[name], cfg.quant_block)
        module[name] = codes
        module[f"{name}{quantization.SCALE_SUFFIX}"] = scale
    return {**params, "layers": layers}


def add_adapters(config: ModelConfig, params: Params, rng: jax.Array) -> Params:
    """`params` of the plain model (`config` without its `lora`, heads allowed) with fresh
    adapters: A at the fan-in init, B zero, so the model's outputs are unchanged; with
    `quantize="int8"` the base is quantized first."""
    cfg = _require_lora(config, "add_adapters")
    if has_adapters(params):
        raise ValueError("add_adapters: the params already hold LoRA adapters")
    if cfg.quantize != "none":
        params = quantize_base(config, params)
    heads = tuple(h for h in HEAD_NAMES if f"{h}_head" in params)
    fresh = _fresh_adapters(config, heads)(rng)
    return join(params, fresh)


def _fresh_adapters(config: ModelConfig, heads: tuple[str, ...]) -> Any:
    tokens = jnp.zeros((1, 1), jnp.int32)
    model = Transformer(config, heads)

    def init(rng: jax.Array) -> Params:
        # jitted, only the adapters are outputs: XLA drops the other initialisers.
        full = nn.meta.unbox(model.init(rng, tokens, tokens)["params"])
        return _partition(full, lambda keys: keys[-1].endswith(ADAPTER_SUFFIXES))[0]

    return jax.jit(init)


def fold_adapters(config: ModelConfig, params: Params, rng: jax.Array) -> Params:
    """`params` whose adapters are folded into the base (re-quantized for QLoRA) and
    replaced by fresh ones: the same policy (to rounding), now with the base = it. An RL
    phase starts so, making its reference (the base, adapters off) its start policy.
    Adapters whose B are all zero (never trained) are kept as they are."""
    if all(not np.any(np.asarray(v)) for k, v in _leaves(params) if k[-1].endswith("_lora_b")):
        return params
    return add_adapters(config, merge_adapters(config, params)[1], rng)


def base_fingerprint(params: Params) -> dict[str, Any]:
    """What identifies a base: its matrices' paths, shapes and dtypes, and a SHA-256 of
    their bytes (adapters and heads excluded)."""
    base = split_trainable(params)[1] if has_adapters(params) else params
    digest = hashlib.sha256()
    shapes = {}
    for keys, leaf in sorted(_leaves(base)):
        name = "/".join(keys)
        a = np.asarray(jax.device_get(leaf))
        shapes[name] = [list(a.shape), str(a.dtype)]
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    return {"sha256": digest.hexdigest(), "shapes": shapes}
