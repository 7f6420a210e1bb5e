"""`ModelConfig`: one decoder for the Llama, Qwen2/3 and Gemma 2/3 families, its presets
(published config.json values) and its parameter and FLOP counts.

Every family is the Llama decoder with switches; each switch defaults to Llama's behaviour
(and adds no parameter), so old run.json files and checkpoints load unchanged."""

from __future__ import annotations

import dataclasses
from typing import Any

import gin
import jax.numpy as jnp

from jaxrl_reason.validation import POSITIVE, between, setting, validate

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ROPE_TYPES = ("llama3", "linear")
ACTIVATIONS = ("silu", "gelu_tanh")  # SwiGLU (Llama, Qwen) / GeGLU with tanh GELU (Gemma)
FULL, SLIDING = "full_attention", "sliding_attention"  # HF's `layer_types` values


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling, as HF configs' `rope_scaling`: "llama3" (Llama-3.1's
    smooth band-wise scaling) or "linear" (every frequency / `factor`: positions
    interpolated, Gemma-3 4B's global layers; the other fields are unused)."""

    factor: float = setting(8.0, POSITIVE)
    low_freq_factor: float = setting(1.0, POSITIVE)
    high_freq_factor: float = setting(4.0, POSITIVE)
    original_max_position_embeddings: int = setting(8192, POSITIVE)
    rope_type: str = setting("llama3", choices=ROPE_TYPES)

    def __post_init__(self) -> None:
        validate(self)


LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # attention, then MLP matrices
QUANTIZATIONS = ("none", "int8")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (Hu et al. 2021) on the decoder's matrices, and QLoRA's frozen
    quantized base (Dettmers et al. 2023; here blockwise int8, `model.lora`).

    Each target W [in, out] gets A [in, r] (fan-in init) and B [r, out] (zeros), and the
    layer computes x W + (alpha / r) * dropout(x) A B: zero-initialised adapters leave
    the model as it was. `targets` name the matrices: q, k, v, o (attention projections)
    and gate, up, down (MLP). Only adapters and scalar heads are trained; the reference
    policy of PPO and GRPO is the base with the adapters off. `quantize="int8"` stores the
    frozen targets' base weights as int8 with one float32 scale per block of
    `quant_block` values (absmax), dequantized on the fly.
    """

    rank: int = setting(16, POSITIVE)
    alpha: float = setting(32.0, POSITIVE)
    dropout: float = setting(0.0, between(0, 1, open_high=True))
    targets: tuple[str, ...] = setting(LORA_TARGETS, choices=LORA_TARGETS)
    quantize: str = setting("none", choices=QUANTIZATIONS)
    quant_block: int = setting(64, POSITIVE)
    param_dtype: str = setting("float32", choices=("float32", "bfloat16"))

    def __post_init__(self) -> None:
        validate(self)
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"LoraConfig.targets lists a module twice: {self.targets}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def replace(self, **changes: Any) -> LoraConfig:
        return dataclasses.replace(self, **changes)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of the decoder.

    `dtype` is the compute dtype of activations and matmuls; `param_dtype` is how weights
    are stored. Logits, norms, softmax and the heads are computed in float32.

    Family switches (HF config.json name in brackets):
      attention_bias   biases on q, k, v (Qwen2) [attention_bias / Qwen2 always]
      qk_norm          RMSNorm of each head's q and k over head_dim, before RoPE (Qwen3, Gemma 3)
      scale_embeddings embeddings times sqrt(d_model) (Gemma)
      norm_plus_one    every RMSNorm scales by (1 + w): w stored as HF stores it (Gemma)
      activation       "silu" (SwiGLU) or "gelu_tanh" (GeGLU) [hidden_act, hidden_activation]
      sandwich_norms   RMSNorms also after attention and after the MLP, before each
                       residual add (Gemma 2/3) [post_attention/post_feedforward_layernorm]
      attn_softcap     attention logits -> cap * tanh(logits / cap) (Gemma 2)
      final_softcap    the same on the output logits (Gemma 2)
      query_scale      scores scaled by query_scale ** -0.5, not head_dim ** -0.5
                       [query_pre_attn_scalar]
      layer_types      per layer "full_attention" or "sliding_attention" (empty: all full);
                       a sliding layer's query at slot t sees keys at slots > t - sliding_window
                       (slots = positions for a left-padded row, as HF masks them)
      rope_local_theta the RoPE base of sliding layers, which then also skip `rope_scaling`
                       (Gemma 3's rope_local_base_freq); None: the same RoPE as full layers

    `lora`: low-rank adapters (and QLoRA's quantized base) on the layers' matrices
    (`LoraConfig`, `model/lora.py`); None: none.
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
    attention_bias: bool = False
    qk_norm: bool = False
    scale_embeddings: bool = False
    norm_plus_one: bool = False
    activation: str = setting("silu", choices=ACTIVATIONS)
    sandwich_norms: bool = False
    attn_softcap: float | None = setting(None, POSITIVE, hint="None = off")
    final_softcap: float | None = setting(None, POSITIVE, hint="None = off")
    query_scale: float | None = setting(None, POSITIVE, hint="None = head_dim")
    layer_types: tuple[str, ...] = setting((), choices=(FULL, SLIDING), hint="() = all full")
    sliding_window: int | None = setting(None, POSITIVE, hint="None = no sliding layers")
    rope_local_theta: float | None = setting(None, POSITIVE, hint="None = rope_theta")
    dtype: str = setting("float32", choices=tuple(_DTYPES))
    param_dtype: str = setting("float32", choices=tuple(_DTYPES))
    remat: bool = False
    lora: LoraConfig | None = None

    def __post_init__(self) -> None:
        validate(self)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads}) for grouped-query attention"
            )
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise ValueError(
                f"ModelConfig.layer_types has {len(self.layer_types)} entries for num_layers="
                f"{self.num_layers}; give one per layer, or () for all full attention"
            )
        if self.has_sliding_layers and self.sliding_window is None:
            raise ValueError(
                "ModelConfig.layer_types has sliding_attention layers but sliding_window is "
                "None; set sliding_window (in tokens)"
            )

    @property
    def has_sliding_layers(self) -> bool:
        """Whether any layer attends within a window (else no window op is built)."""
        return SLIDING in self.layer_types

    @property
    def sliding_layers(self) -> tuple[bool, ...]:
        """Per layer: True for a sliding-window layer."""
        return tuple(t == SLIDING for t in self.layer_types) or (False,) * self.num_layers

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
        fields = dict(fields)  # fields added since (family switches) take their defaults
        if fields.get("rope_scaling") is not None:
            fields["rope_scaling"] = RopeScaling(**fields["rope_scaling"])
        if fields.get("lora") is not None:
            fields["lora"] = LoraConfig(**fields["lora"])
        return cls(**fields)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameters of the language model (heads excluded)."""
        d, f, h = self.d_model, self.mlp_dim, self.head_dim
        attn = d * h * (2 * self.num_heads + 2 * self.num_kv_heads)
        attn += self.attention_bias * h * (self.num_heads + 2 * self.num_kv_heads)
        attn += self.qk_norm * 2 * h
        per_layer = attn + 3 * d * f + (4 if self.sandwich_norms else 2) * d
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
        # QK^T and AV: 2 matmuls * 2 flops * heads * head_dim * keys, keys ~ seq_len / 2;
        # a sliding layer's query sees min(its index, window) keys: on average
        # w - w^2 / (2 seq_len) once the window is shorter than the sequence.
        keys = 0.0
        for sliding in self.sliding_layers:
            w = self.sliding_window if sliding else None
            keys += seq_len / 2 if w is None or w >= seq_len else w - w * w / (2 * seq_len)
        attention = 2 * 2 * self.num_heads * h * keys
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


def _pattern(num_layers: int, every: int) -> tuple[str, ...]:
    """Gemma's layer_types: every `every`-th layer full, the others sliding."""
    return tuple(FULL if (i + 1) % every == 0 else SLIDING for i in range(num_layers))


_LLAMA32_ROPE = RopeScaling(32.0, 1.0, 4.0, 8192)


def _llama3(**shape: Any) -> ModelConfig:
    """Llama 3.x: 128k vocab, GQA, rope_theta 5e5 with llama3 scaling (config.json)."""
    fields = dict(
        vocab_size=128256,
        max_seq_len=131072,
        rope_theta=500000.0,
        norm_eps=1e-5,
        dtype="bfloat16",
        param_dtype="float32",
    )
    return ModelConfig(**(fields | shape))


def llama3_2_1b() -> ModelConfig:  # 1.24B
    return _llama3(
        d_model=2048,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        head_dim=64,
        mlp_dim=8192,
        rope_scaling=_LLAMA32_ROPE,
        tie_embeddings=True,
    )


def llama3_2_3b() -> ModelConfig:  # 3.21B
    return _llama3(
        d_model=3072,
        num_layers=28,
        num_heads=24,
        num_kv_heads=8,
        head_dim=128,
        mlp_dim=8192,
        rope_scaling=_LLAMA32_ROPE,
        tie_embeddings=True,
    )


def llama3_1_8b() -> ModelConfig:  # 8.03B
    return _llama3(
        d_model=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        mlp_dim=14336,
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192),
    )


def _qwen(**shape: Any) -> ModelConfig:
    """Qwen2.5 / Qwen3: 152k vocab, rope_theta 1e6, eps 1e-6 (config.json)."""
    fields = dict(
        vocab_size=151936,
        rope_theta=1000000.0,
        norm_eps=1e-6,
        dtype="bfloat16",
        param_dtype="float32",
    )
    return ModelConfig(**(fields | shape))


def qwen2_5_0_5b() -> ModelConfig:  # 0.49B
    return _qwen(
        d_model=896,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        mlp_dim=4864,
        max_seq_len=32768,
        attention_bias=True,
        tie_embeddings=True,
    )


def qwen2_5_1_5b() -> ModelConfig:  # 1.54B
    return _qwen(
        d_model=1536,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        head_dim=128,
        mlp_dim=8960,
        max_seq_len=32768,
        attention_bias=True,
        tie_embeddings=True,
    )


def qwen2_5_7b() -> ModelConfig:  # 7.62B
    return _qwen(
        vocab_size=152064,
        d_model=3584,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        head_dim=128,
        mlp_dim=18944,
        max_seq_len=131072,
        attention_bias=True,
    )


def qwen3_0_6b() -> ModelConfig:  # 0.60B
    return _qwen(
        d_model=1024,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
        mlp_dim=3072,
        max_seq_len=40960,
        qk_norm=True,
        tie_embeddings=True,
    )


def qwen3_8b() -> ModelConfig:  # 8.19B
    return _qwen(
        d_model=4096,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        mlp_dim=12288,
        max_seq_len=40960,
        qk_norm=True,
    )


def _gemma(**shape: Any) -> ModelConfig:
    """Gemma 2 / 3: GeGLU, (1 + w) norms, sandwich norms, scaled tied embeddings."""
    fields = dict(
        head_dim=256,
        query_scale=256.0,
        norm_eps=1e-6,
        tie_embeddings=True,
        scale_embeddings=True,
        norm_plus_one=True,
        activation="gelu_tanh",
        sandwich_norms=True,
        dtype="bfloat16",
        param_dtype="float32",
    )
    return ModelConfig(**(fields | shape))


def _gemma2(num_layers: int, **shape: Any) -> ModelConfig:
    """Gemma 2: alternating sliding (4096) and full layers, soft-capped logits."""
    return _gemma(
        vocab_size=256000,
        num_layers=num_layers,
        max_seq_len=8192,
        rope_theta=10000.0,
        attn_softcap=50.0,
        final_softcap=30.0,
        layer_types=_pattern(num_layers, 2),
        sliding_window=4096,
        **shape,
    )


def gemma2_2b() -> ModelConfig:  # 2.61B
    return _gemma2(26, d_model=2304, num_heads=8, num_kv_heads=4, mlp_dim=9216)


def gemma2_9b() -> ModelConfig:  # 9.24B
    return _gemma2(42, d_model=3584, num_heads=16, num_kv_heads=8, mlp_dim=14336)


def _gemma3(num_layers: int, **shape: Any) -> ModelConfig:
    """Gemma 3 (text): 5 sliding layers to 1 full, q/k norms, local RoPE base 1e4."""
    return _gemma(
        num_layers=num_layers,
        rope_theta=1000000.0,
        rope_local_theta=10000.0,
        qk_norm=True,
        layer_types=_pattern(num_layers, 6),
        **shape,
    )


def gemma3_1b() -> ModelConfig:  # 1.00B
    return _gemma3(
        26,
        vocab_size=262144,
        d_model=1152,
        num_heads=4,
        num_kv_heads=1,
        mlp_dim=6912,
        max_seq_len=32768,
        sliding_window=512,
    )


def gemma3_4b() -> ModelConfig:  # 3.88B: the language model of the 4.3B image-text model
    return _gemma3(
        34,
        vocab_size=262208,
        d_model=2560,
        num_heads=8,
        num_kv_heads=4,
        mlp_dim=10240,
        max_seq_len=131072,
        sliding_window=1024,
        rope_scaling=RopeScaling(factor=8.0, rope_type="linear"),
    )


def qwen_50m() -> ModelConfig:
    """`small_50m` with Qwen3's switches (q/k norms) and Qwen2's biases: throughput rows."""
    return small_50m().replace(attention_bias=True, qk_norm=True)


def gemma_50m() -> ModelConfig:
    """`small_50m` with Gemma 3's switches (window 512, 5:1 pattern): throughput rows."""
    return small_50m().replace(
        scale_embeddings=True,
        norm_plus_one=True,
        activation="gelu_tanh",
        sandwich_norms=True,
        qk_norm=True,
        query_scale=64.0,
        final_softcap=30.0,
        layer_types=_pattern(8, 6),
        sliding_window=512,
        rope_local_theta=10000.0,
        tie_embeddings=True,
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
    "llama3_1_8b": llama3_1_8b,
    "llama3_2_1b": llama3_2_1b,
    "llama3_2_3b": llama3_2_3b,
    "qwen2_5_0_5b": qwen2_5_0_5b,
    "qwen2_5_1_5b": qwen2_5_1_5b,
    "qwen2_5_7b": qwen2_5_7b,
    "qwen3_0_6b": qwen3_0_6b,
    "qwen3_8b": qwen3_8b,
    "gemma2_2b": gemma2_2b,
    "gemma2_9b": gemma2_9b,
    "gemma3_1b": gemma3_1b,
    "gemma3_4b": gemma3_4b,
    "qwen_50m": qwen_50m,
    "gemma_50m": gemma_50m,
}


@gin.configurable
def model_config(preset: str = "tiny", **overrides: Any) -> ModelConfig:
    """A preset by name with field overrides; the gin entry point for model sizes."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]().replace(**overrides)
