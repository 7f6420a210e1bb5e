"""Llama-family decoder, heads, presets and Hugging Face interop."""

from jaxrl_reason.model.config import PRESETS, ModelConfig, RopeScaling, model_config
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
    "ModelConfig",
    "ModelOutput",
    "RopeScaling",
    "Transformer",
    "decode_step",
    "default_positions",
    "init_cache",
    "init_params",
    "model_config",
    "param_logical_axes",
    "rope_table",
    "unstack_layers",
]
