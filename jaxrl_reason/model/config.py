"""`ModelConfig`: every size of a Llama-family decoder, its presets, and its FLOP count."""

from __future__ import annotations

import dataclasses
from typing import Any

import gin
import jax.numpy as jnp

from jaxrl_reason.validation import POSITIVE, setting, validate

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3.1 style frequency scaling ("rope_type": "llama3" in HF configs)."""

    factor: float = setting(8.0, POSITIVE)
    low_freq_factor: float = setting(1.0, POSITIVE)
    high_freq_factor: float = setting(4.0, POSITIVE)
    original_max_position_embeddings: int = setting(8192, POSITIVE)

    def __post_init__(self) -> None:
        validate(self)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a Llama-family decoder.

    `dtype` is the compute dtype of activations and matmuls; `param_dtype` is how weights
    are stored. Logits, norms, softmax and the heads are computed in float32.
    """

    vocab_size: int = setting(1024, POSITIVE)
    d_model: int = setting(256, POSITIVE)
    num_layers: int = setting(4, POSITIVE)
    num_heads: int = setting(4, POSITIVE)
    num_kv_heads: int = setting(4, POSITIVE)
    head_dim: int = setting(64, POSITIVE)
    mlp_dim: int = setting(1024, POSITIVE)
    max_seq_len: int = setting(2048, POSITIVE)
    rope_theta: float = setting(10000.0, POSITIVE)
    rope_scaling: RopeScaling | None = None
    norm_eps: float = setting(1e-5, POSITIVE)
    tie_embeddings: bool = False
    dtype: str = setting("float32", choices=tuple(_DTYPES))
    param_dtype: str = setting("float32", choices=tuple(_DTYPES))
    remat: bool = False

    def __post_init__(self) -> None:
        validate(self)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads}) for grouped-query attention"
            )
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")

    @property
    def compute_dtype(self) -> Any:
        return _DTYPES[self.dtype]

    @property
    def weight_dtype(self) -> Any:
        return _DTYPES[self.param_dtype]

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> ModelConfig:
        """The inverse of `dataclasses.asdict` (as written to run.json and checkpoints)."""
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(fields) - known):
            raise ValueError(f"model config has unknown fields {unknown}; known: {sorted(known)}")
        fields = dict(fields)
        if fields.get("rope_scaling") is not None:
            fields["rope_scaling"] = RopeScaling(**fields["rope_scaling"])
        return cls(**fields)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameters of the language model (heads excluded)."""
        d, f, h = self.d_model, self.mlp_dim, self.head_dim
        attn = d * h * (2 * self.num_heads + 2 * self.num_kv_heads)
        per_layer = attn + 3 * d * f + 2 * d
        n = self.num_layers * per_layer + d
        if include_embeddings:
            n += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return n

    def flops_per_token(self, seq_len: int, backward: bool = True) -> float:
        """Matmul FLOPs per token: 2 per weight multiply-add plus attention scores.

        `seq_len` is the context attended over (the average key length for causal
        attention is about seq_len / 2, as in the PaLM MFU formula we count the full
        seq_len * causal factor 1/2). `backward=True` triples it (forward + 2x backward).
        """
        d, h = self.d_model, self.head_dim
        matmul_params = (
            self.num_layers
            * (d * h * (2 * self.num_heads + 2 * self.num_kv_heads) + 3 * d * self.mlp_dim)
            + self.vocab_size * d
        )
        # QK^T and AV: 2 matmuls * 2 flops * heads * head_dim * keys, keys ~ seq_len / 2.
        attention = self.num_layers * 2 * 2 * self.num_heads * h * (seq_len / 2)
        forward = 2 * matmul_params + attention
        return forward * (3 if backward else 1)


def tiny() -> ModelConfig:
    """~3M parameters: unit tests and the built-in `arith` task on a CPU."""
    return ModelConfig(
        vocab_size=1024,
        d_model=256,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        mlp_dim=768,
        max_seq_len=512,
    )


def small_50m() -> ModelConfig:
    """~50M parameters: the throughput benchmark's mid-size config."""
    return ModelConfig(
        vocab_size=32000,
        d_model=512,
        num_layers=8,
        num_heads=8,
        num_kv_heads=8,
        head_dim=64,
        mlp_dim=1536,
        max_seq_len=2048,
    )


def demo() -> ModelConfig:
    """~1M parameters: the model `jaxrl-reason demo` trains from scratch on `arith`."""
    return ModelConfig(
        vocab_size=512,
        d_model=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        mlp_dim=384,
        max_seq_len=256,
    )


def demo_smoke() -> ModelConfig:
    """The smoke demo's model (seconds on a CPU, for tests)."""
    return demo().replace(
        d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64
    )


def llama2_7b() -> ModelConfig:
    return ModelConfig(
        vocab_size=32000,
        d_model=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        head_dim=128,
        mlp_dim=11008,
        max_seq_len=4096,
        norm_eps=1e-5,
        dtype="bfloat16",
        param_dtype="float32",
    )


def llama2_13b() -> ModelConfig:
    return ModelConfig(
        vocab_size=32000,
        d_model=5120,
        num_layers=40,
        num_heads=40,
        num_kv_heads=40,
        head_dim=128,
        mlp_dim=13824,
        max_seq_len=4096,
        norm_eps=1e-5,
        dtype="bfloat16",
        param_dtype="float32",
    )


def llama2_70b() -> ModelConfig:
    return ModelConfig(
        vocab_size=32000,
        d_model=8192,
        num_layers=80,
        num_heads=64,
        num_kv_heads=8,
        head_dim=128,
        mlp_dim=28672,
        max_seq_len=4096,
        norm_eps=1e-5,
        dtype="bfloat16",
        param_dtype="bfloat16",
        remat=True,
    )


def llama3_8b() -> ModelConfig:
    return ModelConfig(
        vocab_size=128256,
        d_model=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        mlp_dim=14336,
        max_seq_len=8192,
        rope_theta=500000.0,
        norm_eps=1e-5,
        dtype="bfloat16",
        param_dtype="float32",
    )


PRESETS = {
    "tiny": tiny,
    "small_50m": small_50m,
    "demo": demo,
    "demo_smoke": demo_smoke,
    "llama2_7b": llama2_7b,
    "llama2_13b": llama2_13b,
    "llama2_70b": llama2_70b,
    "llama3_8b": llama3_8b,
}


@gin.configurable
def model_config(preset: str = "tiny", **overrides: Any) -> ModelConfig:
    """A preset by name with field overrides; the gin entry point for model sizes."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]().replace(**overrides)
