"""LoRA adapters in PEFT's layout: `adapter_config.json` + `adapter_model.safetensors`,
which `peft.PeftModel.from_pretrained(base, path)` loads onto the HF export of the base.

PEFT stores per layer and projection lora_A.weight [r, in] and lora_B.weight [out, r]
(torch's [out, in] convention) and adds (lora_alpha / r) B A to the [out, in] weight; ours
are A [L, *in, r] and B [L, r, *out], flattened in the order the HF export flattens the
weights (`hf_interop._mappings`: [N*H] is heads-major, no permutation).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np
import safetensors.numpy

from jaxrl_reason.model.config import ModelConfig

HF_MODULES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
_MODULE_OF = {"q": "attn", "k": "attn", "v": "attn", "o": "attn"}


def save_peft_adapters(
    config: ModelConfig, params: dict[str, Any], path: str | pathlib.Path, base_model: str = ""
) -> None:
    """Write the adapters of `params` (a LoRA model of `config`) to directory `path` in
    PEFT's layout; `base_model` is recorded as `base_model_name_or_path`."""
    cfg = config.lora
    if cfg is None:
        raise ValueError("save_peft_adapters: the model config has no LoRA (ModelConfig.lora)")
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name in cfg.targets:
        module = params["layers"][_MODULE_OF.get(name, "mlp")]
        a = np.asarray(jax.device_get(module[f"{name}_lora_a"]), np.float32)
        b = np.asarray(jax.device_get(module[f"{name}_lora_b"]), np.float32)
        for i in range(a.shape[0]):
            prefix = f"base_model.model.model.layers.{i}.{HF_MODULES[name]}"
            tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a[i].reshape(-1, cfg.rank).T)
            tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b[i].reshape(cfg.rank, -1).T)
    safetensors.numpy.save_file(
        tensors, path / "adapter_model.safetensors", metadata={"format": "pt"}
    )
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": sorted(HF_MODULES[t].split(".")[-1] for t in cfg.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    (path / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
