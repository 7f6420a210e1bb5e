"""The decoder (Llama, Qwen2/3 and Gemma 2/3 families), heads, presets and HF interop."""

from jaxrl_reason.model.config import (
    PRESETS,
    LoraConfig,
    ModelConfig,
    RopeScaling,
    model_config,
)
from jaxrl_reason.model.hf_interop import load_hf, save_hf
from jaxrl_reason.model.transformer import (
    ModelOutput,
    Transformer,
    decode_step,
    default_positions,
    init_cache,
    init_params,
    param_logical_axes,
    rope_table,
    unstack_layers,
)

__all__ = [
    "PRESETS",
    "LoraConfig",
    "ModelConfig",
    "ModelOutput",
    "RopeScaling",
    "Transformer",
    "decode_step",
    "default_positions",
    "init_cache",
    "init_params",
    "load_hf",
    "model_config",
    "param_logical_axes",
    "rope_table",
    "save_hf",
    "unstack_layers",
]
