"""The decoder in Flax linen: RMSNorm, RoPE, SwiGLU/GeGLU, grouped-query attention, with the
switches of the Qwen2/3 and Gemma 2/3 families (`ModelConfig`); a switch that is off adds
no op, so the Llama path is unchanged.

Einsum letters: B batch, T query length, S key length (cache slots), D embed, N query heads,
K kv heads, G query heads per kv head (N = K * G), H head dim, F mlp, V vocab, L layers.

Masking works on *slots*: a batch is left-padded so that all rows share one timeline of
slots, `input_mask` says which slots hold real tokens, and a query at slot t sees keys at
slots s <= t that are real. RoPE uses the explicit `positions`, so a left-padded row's
first real token has position 0 whatever its slot.

Sliding-window layers (`ModelConfig.layer_types`) also mask keys more than
`sliding_window - 1` slots behind the query. The layers are one scanned block: whether a
layer slides is a per-layer input of the scan (and the masks and RoPE tables of both kinds
are made once, outside it), not a Python branch.

The KV cache is a plain pytree made by `init_cache`:
  {"k": [L, B, K, S, H], "v": [L, B, K, S, H], "mask": [B, S] bool, "index": int32 []}
KV heads come before slots so that a decode step reads the cache with no transpose.
A call with a cache writes its T tokens at slots index .. index + T - 1 and advances index.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from jaxrl_reason.model import quantization
from jaxrl_reason.model.config import ModelConfig

Cache = dict[str, jax.Array]
HEAD_NAMES = ("value", "reward")
_MASKED = -1e30  # finite, so a fully masked (padding) query row stays NaN-free


@flax.struct.dataclass
class ModelOutput:
    logits: jax.Array | None  # [B, T, V] float32 (T = 1 with last_logits_only)
    hidden: jax.Array  # [B, T, D] final-normed hidden states
    heads: dict[str, jax.Array]  # name -> [B, T] float32 scalars
    cache: Cache | None


def init_cache(config: ModelConfig, batch_size: int, max_len: int, dtype: Any = None) -> Cache:
    """An empty KV cache of `max_len` slots for `batch_size` rows."""
    dtype = dtype or config.compute_dtype
    shape = (config.num_layers, batch_size, config.num_kv_heads, max_len, config.head_dim)
    return {
        "k": jnp.zeros(shape, dtype),
        "v": jnp.zeros(shape, dtype),
        "mask": jnp.zeros((batch_size, max_len), jnp.bool_),
        "index": jnp.zeros((), jnp.int32),
    }


def rope_frequencies(config: ModelConfig, local: bool = False) -> jax.Array:
    """Inverse frequencies [H/2], with `rope_scaling` when configured. `local`: those of
    sliding-window layers, which differ when `rope_local_theta` is set (that base, and
    no scaling, as Gemma 3)."""
    h = config.head_dim
    theta, s = config.rope_theta, config.rope_scaling
    if local and config.rope_local_theta is not None:
        theta, s = config.rope_local_theta, None
    inv_freq = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
    if s is None:
        return inv_freq
    if s.rope_type == "linear":
        return inv_freq / s.factor
    wavelen = 2 * jnp.pi / inv_freq
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    mid = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(is_mid, mid, scaled)


def rope_tables(positions: jax.Array, inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, T, 1, H/2] of the RoPE angles of `positions` [B, T], computed once
    per forward pass and shared by every layer (why: BENCHMARKS.md)."""
    angles = positions[:, :, None, None].astype(jnp.float32) * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def rope_table(
    num_positions: int, config: ModelConfig, local: bool = False
) -> tuple[jax.Array, jax.Array]:
    """cos and sin [num_positions, H/2] of positions 0 .. num_positions - 1 (for lookups);
    `local`: of sliding-window layers (see `rope_frequencies`)."""
    cos, sin = rope_tables(jnp.arange(num_positions)[None], rope_frequencies(config, local))
    return cos[0, :, 0], sin[0, :, 0]


def apply_rope(x: jax.Array, rope: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotate halves (the HF Llama convention) of x [B, T, n, H] by `rope_tables`."""
    cos, sin = rope
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def _param(
    module: nn.Module,
    name: str,
    shape: tuple[int, ...],
    axes: tuple[str, ...],
    init: Any,
    dtype: Any,
) -> jax.Array:
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def _fan_in(in_axis: Any, out_axis: Any) -> Any:
    return nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis
    )


def _weight(
    module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...], init: Any
) -> jax.Array:
    """A layer matrix (`name` one of `LORA_TARGETS`, shape [*in, *out]): its param, or
    with QLoRA's int8 base (`LoraConfig.quantize`) its int8 codes times their float32
    block scales (`quantization.dequantize`)."""
    c = module.config
    if c.lora is None or c.lora.quantize == "none":
        return _param(module, name, shape, axes, init, c.weight_dtype)
    codes = _param(module, name, shape, axes, nn.initializers.zeros, jnp.int8)
    scales = _param(
        module,
        f"{name}{quantization.SCALE_SUFFIX}",
        quantization.scale_shape(shape, c.lora.quant_block),
        (*axes[:-1], None),  # the blocks axis may be too short to split as the matrix's
        nn.initializers.ones,
        jnp.float32,
    )
    return quantization.dequantize(codes, scales).astype(c.weight_dtype)


def _add_lora(
    module: nn.Module, name: str, x: jax.Array, y: jax.Array, axes: tuple[str, ...]
) -> jax.Array:
    """y + (alpha / r) * dropout(x) A B when `name` is an adapter target, else y.

    x [B, T, *in] is the matrix's input and y [B, T, *out] its output; `axes` are the
    matrix's logical axes (in, then out), which A [*in, r] and B [r, *out] share, with
    "lora_rank" for r. Dropout acts only when the caller passes a "dropout" rng.
    """
    cfg = module.config.lora
    if cfg is None or name not in cfg.targets:
        return y
    n_in = x.ndim - 2
    in_shape, out_shape = x.shape[2:], y.shape[2:]
    pdt, r = jnp.dtype(cfg.param_dtype), cfg.rank
    a = _param(
        module,
        f"{name}_lora_a",
        (*in_shape, r),
        (*axes[:n_in], "lora_rank"),
        _fan_in(tuple(range(n_in)), n_in),
        pdt,
    )
    b = _param(
        module,
        f"{name}_lora_b",
        (r, *out_shape),
        ("lora_rank", *axes[n_in:]),
        nn.initializers.zeros,
        pdt,
    )
    if cfg.dropout > 0 and module.has_rng("dropout"):
        keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - cfg.dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - cfg.dropout), 0).astype(x.dtype)
    dt = y.dtype
    low = jnp.tensordot(x, a.astype(dt), axes=n_in)  # [B, T, r]
    low = nn.with_logical_constraint(low, ("batch", "length", "lora_rank"))
    delta = jnp.tensordot(low, b.astype(dt), axes=1)  # [B, T, *out]
    return y + (cfg.scale * delta).astype(dt)


class RMSNorm(nn.Module):
    """RMSNorm over the last axis; with `plus_one` the scale is 1 + the param (Gemma's,
    stored as HF stores it, so a round trip is exact)."""

    eps: float
    dtype: Any
    param_dtype: Any
    plus_one: bool = False
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
        scale = _param(self, "scale", (x.shape[-1],), (self.axis_name,), init, self.param_dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        scale = scale.astype(jnp.float32)
        if self.plus_one:
            scale = 1.0 + scale
        return (scale * x32).astype(self.dtype)


def _norm(c: ModelConfig, name: str | None = None, axis_name: str = "embed") -> RMSNorm:
    return RMSNorm(
        c.norm_eps, c.compute_dtype, c.weight_dtype, c.norm_plus_one, axis_name, name=name
    )


def _softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """cap * tanh(x / cap) (Gemma 2's soft-capping); x itself when cap is None."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def _append(buf: jax.Array, new: jax.Array, slot: jax.Array) -> jax.Array:
    """`buf` [B, K, S, H] with the new token's `new` [B, 1, K, H] written at `slot`: one
    slot [] for every row, or one per row [B]."""
    new = new[:, 0].astype(buf.dtype)  # [B, K, H]
    if jnp.ndim(slot) == 0:
        return jax.lax.dynamic_update_slice(buf, new[:, :, None], (0, 0, slot, 0))
    return buf.at[jnp.arange(buf.shape[0]), :, slot].set(new)


def _slot_masks(seg_mask: jax.Array) -> jax.Array:
    """A segment mask [Bs, S] (every query alike) or [Bs, T, S] as [Bs, 1 | T, S]."""
    return seg_mask if seg_mask.ndim == 3 else seg_mask[:, None, :]


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, rope, new_mask, segments_kv, segment_masks, append_at=None):
        """Attend from the T new tokens to cached segments (if any) and to each other.

        `rope`: the new tokens' `rope_tables`. `new_mask` [B, T, T]: causal and padding
        mask among the new tokens. `segments_kv`: (k, v) pairs [B / g, K, S, H] of cached
        keys; a segment with B / g rows is shared by g consecutive rows (a prompt's cache
        by its K samples, so it is stored and read once). `segment_masks` [B / g or 1, S]
        mark each segment's filled slots ([B / g or 1, T, S]: per query, as a sliding
        window makes them). Returns the output and `new_kv`:
          - `append_at` None: the new tokens' (k, v) [B, K, T, H], for the caller to write
            into its cache (None when `segments_kv` is None: no cache to write to);
          - `append_at` a slot (decoding, T = 1): the new token's k, v are first written at
            that slot of the last segment, which is then attended (its mask must already
            mark the slot), and the updated segment is returned. Writing before reading
            lets XLA update the cache in place instead of copying it every step. A slot
            per row ([B]: rows at different lengths, as the refilling sampler has them)
            writes each row at its own slot.
        """
        c = self.config
        dt, pdt = c.compute_dtype, c.weight_dtype
        d, n, k, h = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim
        q_axes, kv_axes = ("embed", "heads", "head_dim"), ("embed", "kv_heads", "head_dim")
        o_axes = ("heads", "head_dim", "embed")
        wq = _weight(self, "q", (d, n, h), q_axes, _fan_in(0, (1, 2)))
        wk = _weight(self, "k", (d, k, h), kv_axes, _fan_in(0, (1, 2)))
        wv = _weight(self, "v", (d, k, h), kv_axes, _fan_in(0, (1, 2)))
        wo = _weight(self, "o", (n, h, d), o_axes, _fan_in((0, 1), 2))

        # q, k and v in one einsum (one pass over x, one larger matmul).
        qkv = jnp.concatenate([wq, wk, wv], axis=1).astype(dt)  # [D, N + 2K, H]
        both = jnp.einsum("BTD,DNH->BTNH", x, qkv)
        if c.attention_bias:
            axes = [("heads", "head_dim"), ("kv_heads", "head_dim"), ("kv_heads", "head_dim")]
            biases = [
                _param(self, f"{name}_bias", (m, h), ax, nn.initializers.zeros, pdt)
                for name, m, ax in zip("qkv", (n, k, k), axes)
            ]
            both = both + jnp.concatenate(biases, axis=0).astype(dt)
        q, key, val = jnp.split(both, [n, n + k], axis=2)
        q = _add_lora(self, "q", x, q, q_axes)
        key = _add_lora(self, "k", x, key, kv_axes)
        val = _add_lora(self, "v", x, val, kv_axes)
        if c.qk_norm:  # per head, over head_dim, before RoPE
            q = _norm(c, "q_norm", "head_dim")(q)
            key = _norm(c, "k_norm", "head_dim")(key)
        q = apply_rope(q, rope)
        key = apply_rope(key, rope)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
        key = nn.with_logical_constraint(key, ("batch", "length", "kv_heads", "head_dim"))

        b, t = q.shape[:2]
        new_kv = None
        if append_at is not None:
            if t != 1:
                raise ValueError(f"append_at writes one token per row, got {t}")
            *earlier, last = segments_kv
            new_kv = tuple(_append(buf, a, append_at) for buf, a in zip(last, (key, val)))
            segments_kv = (*earlier, new_kv)
        elif segments_kv is not None:
            new_kv = tuple(jnp.swapaxes(a, 1, 2) for a in (key, val))  # [B, K, T, H]

        scale = (c.query_scale or h) ** -0.5
        q = q.reshape(b, t, k, n // k, h) * scale  # [B, T, K, G, H]
        scores, groups = [], []
        for (seg_k, _), seg_mask in zip(segments_kv or (), segment_masks, strict=True):
            g = b // seg_k.shape[0]  # rows per segment row: J below
            qg = q.reshape(b // g, g, *q.shape[1:])
            s = jnp.einsum("BJTKGH,BKSH->BJKGTS", qg, seg_k.astype(dt)).astype(jnp.float32)
            s = _softcap(s, c.attn_softcap)
            if seg_mask.ndim == 2:  # [Bs, S]: every query alike
                m = seg_mask[:, None, None, None, None, :]
            else:  # [Bs, T, S]: per query (sliding windows)
                m = seg_mask[:, None, None, None, :, :]
            s = jnp.where(m, s, _MASKED)
            scores.append(s.reshape(b, *s.shape[2:]))
            groups.append(g)
        if append_at is None:  # the new tokens attend to each other
            s = jnp.einsum("BTKGH,BSKH->BKGTS", q, key).astype(jnp.float32)  # S = T
            s = _softcap(s, c.attn_softcap)
            scores.append(jnp.where(new_mask[:, None, None], s, _MASKED))
        probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1).astype(dt)
        start, out = 0, 0
        for (_, seg_v), g in zip(segments_kv or (), groups):
            size = seg_v.shape[2]
            p = probs[..., start : start + size]
            p = p.reshape(b // g, g, *p.shape[1:])
            o = jnp.einsum("BJKGTS,BKSH->BJKGTH", p, seg_v.astype(dt))
            out = out + o.reshape(b, *o.shape[2:])
            start += size
        if append_at is None:
            out = out + jnp.einsum("BKGTS,BSKH->BKGTH", probs[..., start:], val)
        # One [B, T, N * H] x [N * H, D] matmul (why: BENCHMARKS.md, output projection).
        out = jnp.moveaxis(out, 3, 1).reshape(b, t, n * h)
        y = jnp.einsum("BTF,FD->BTD", out, wo.reshape(n * h, d).astype(dt))
        return _add_lora(self, "o", out.reshape(b, t, n, h), y, o_axes), new_kv


class Mlp(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        dt = c.compute_dtype
        d, f = c.d_model, c.mlp_dim
        gate = _weight(self, "gate", (d, f), ("embed", "mlp"), _fan_in(0, 1))
        up = _weight(self, "up", (d, f), ("embed", "mlp"), _fan_in(0, 1))
        down = _weight(self, "down", (f, d), ("mlp", "embed"), _fan_in(0, 1))
        # Gate and up in one einsum (why: BENCHMARKS.md, train_throughput).
        gate_up = jnp.stack([gate, up], axis=1).astype(dt)  # [D, 2, F]
        both = jnp.einsum("BTD,DCF->BTCF", x, gate_up)
        pre_act = _add_lora(self, "gate", x, both[:, :, 0], ("embed", "mlp"))
        if c.activation == "silu":
            act = jax.nn.silu(pre_act)
        else:  # gelu_tanh: GeGLU with the tanh approximation (HF's gelu_pytorch_tanh)
            act = jax.nn.gelu(pre_act, approximate=True)
        hidden = act * _add_lora(self, "up", x, both[:, :, 1], ("embed", "mlp"))
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
        y = jnp.einsum("BTF,FD->BTD", hidden, down.astype(dt))
        return _add_lora(self, "down", hidden, y, ("mlp", "embed"))


class Block(nn.Module):
    """One decoder layer; scanned over layers, so it maps (carry, per-layer input).

    `sliding` (a scanned per-layer bool, or a Python bool when the layers are unrolled)
    and `local` (None without sliding layers): (local RoPE tables or None, the new
    tokens' window [T, T] or None, each segment's window [T, S]), True where a key is
    within the window of a query. A sliding layer ands them into its masks and uses the
    local RoPE; the others use the masks and RoPE as given.
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        x,
        segments_kv,
        rope,
        new_mask,
        segment_masks,
        append_at=None,
        sliding=None,
        local=None,
    ):
        c = self.config
        if local is not None:
            local_rope, new_window, segment_windows = local
            if isinstance(sliding, bool):  # unrolled: pick at trace time
                pick = lambda if_sliding, otherwise: if_sliding if sliding else otherwise
            else:
                pick = lambda if_sliding, otherwise: jnp.where(sliding, if_sliding, otherwise)
            if local_rope is not None:
                rope = tuple(pick(a, b) for a, b in zip(local_rope, rope))
            if new_window is not None:
                new_mask = pick(new_mask & new_window, new_mask)
            segment_masks = tuple(
                pick(_slot_masks(m) & w, _slot_masks(m))
                for m, w in zip(segment_masks, segment_windows, strict=True)
            )
        attn_out, new_kv = Attention(c, name="attn")(
            _norm(c, "attn_norm")(x), rope, new_mask, segments_kv, segment_masks, append_at
        )
        if c.sandwich_norms:
            attn_out = _norm(c, "post_attn_norm")(attn_out)
        x = x + attn_out
        mlp_out = Mlp(c, name="mlp")(_norm(c, "mlp_norm")(x))
        if c.sandwich_norms:
            mlp_out = _norm(c, "post_mlp_norm")(mlp_out)
        x = x + mlp_out
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x, new_kv


class Transformer(nn.Module):
    """Decoder-only LM with optional scalar heads ("value", "reward") on the shared trunk.

    `__call__(tokens [B, T], positions [B, T], input_mask [B, T] | None, cache | None)`
    returns a `ModelOutput`. Without a cache the call attends within `tokens` (and with
    `return_kv` returns a cache of exactly those T slots: a prefill); with one it appends
    `tokens` at `cache["index"]` and attends over every filled slot.
    """

    config: ModelConfig
    heads: tuple[str, ...] = ()

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        input_mask: jax.Array | None = None,
        cache: Cache | None = None,
        last_logits_only: bool = False,
        return_logits: bool = True,
        return_kv: bool = False,
    ) -> ModelOutput:
        c = self.config
        for name in self.heads:
            if name not in HEAD_NAMES:
                raise ValueError(f"unknown head {name!r}; choose from {HEAD_NAMES}")
        b, t = tokens.shape
        if input_mask is None:
            input_mask = jnp.ones((b, t), jnp.bool_)
        input_mask = input_mask.astype(jnp.bool_)

        embedding = _param(
            self,
            "embedding",
            (c.vocab_size, c.d_model),
            ("vocab", "embed"),
            nn.initializers.normal(1.0),
            c.weight_dtype,
        )
        # Gather the table's fsdp shards first (as for every FSDP weight); a lookup into a
        # table sharded on both axes makes XLA rematerialise it in full.
        table = nn.with_logical_constraint(embedding, ("vocab", None))
        x = _embed(c, table, tokens)  # [B, T, D]

        # Among the new tokens: causal, and only real tokens are keys. [B, T, T]
        causal = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]
        new_mask = causal[None] & input_mask[:, None, :]
        if cache is None:
            # With `return_kv`, an empty segment list: attend within `tokens`, return k, v.
            segments_kv, segment_masks = (() if return_kv else None), ()
        else:
            cache_index = cache["index"]
            filled = jnp.arange(cache["mask"].shape[1]) < cache_index
            segment_masks = (cache["mask"] & filled[None, :],)  # [B, S]
            segments_kv = ((cache["k"], cache["v"]),)  # scanned: [B, K, S, H] per layer

        block = Block
        if c.remat:
            block = nn.remat(Block, prevent_cse=False)
        bcast = nn.broadcast
        rngs = {"params": True}
        if c.lora is not None and c.lora.dropout > 0:
            rngs["dropout"] = True  # each layer its own adapter-dropout masks
        layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs=rngs,
            in_axes=(0, bcast, bcast, bcast, bcast, 0, bcast),
            length=c.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(c, name="layers")
        rope = rope_tables(positions, rope_frequencies(c))
        sliding, local = None, None
        if c.has_sliding_layers:
            # Windows in slots: the new tokens sit at slots start .. start + t - 1.
            start = 0 if cache is None else cache_index
            query_slots = start + jnp.arange(t)
            key_slots = [] if cache is None else [jnp.arange(cache["mask"].shape[1])]
            local = (
                _local_rope(c, positions),
                _window(c, jnp.arange(t), jnp.arange(t)),
                tuple(_window(c, query_slots, s) for s in key_slots),
            )
            sliding = jnp.asarray(c.sliding_layers)
        x, new_kv = layers(x, segments_kv, rope, new_mask, segment_masks, None, sliding, local)

        hidden = _norm(c, "final_norm")(x)
        new_cache = None
        if cache is None and return_kv:
            # A cache holding exactly these tokens, as `init_cache` + this call would make.
            k_new, v_new = (a.astype(c.compute_dtype) for a in new_kv)
            new_cache = {"k": k_new, "v": v_new, "mask": input_mask, "index": jnp.int32(t)}
        elif cache is not None:
            # One in-place write of the new tokens' k, v [L, B, K, T, H] at slot `index`.
            at = (0, 0, 0, cache_index, 0)
            new_cache = {
                name: jax.lax.dynamic_update_slice(cache[name], kv.astype(cache[name].dtype), at)
                for name, kv in zip(("k", "v"), new_kv)
            } | {
                "mask": jax.lax.dynamic_update_slice(cache["mask"], input_mask, (0, cache_index)),
                "index": cache_index + t,
            }

        # Tied embeddings: the table [V, D] also projects back to the vocabulary.
        lm_head = embedding.T
        if not c.tie_embeddings:
            lm_head = _param(
                self,
                "lm_head",
                (c.d_model, c.vocab_size),
                ("embed", "vocab"),
                _fan_in(0, 1),
                c.weight_dtype,
            )  # [D, V]
        logits = None
        if return_logits:
            h = hidden[:, -1:] if last_logits_only else hidden
            logits = lm_logits(c, h, lm_head)

        heads = {}
        for name in self.heads:
            w = _param(
                self, f"{name}_head", (c.d_model,), ("embed",), nn.initializers.zeros, jnp.float32
            )
            bias = _param(self, f"{name}_head_bias", (), (), nn.initializers.zeros, jnp.float32)
            heads[name] = jnp.einsum("BTD,D->BT", hidden.astype(jnp.float32), w) + bias
        return ModelOutput(logits=logits, hidden=hidden, heads=heads, cache=new_cache)


def _embed(c: ModelConfig, table: jax.Array, tokens: jax.Array) -> jax.Array:
    """The embeddings [B, T, D] of `tokens`, times sqrt(d_model) with `scale_embeddings`
    (rounded to the compute dtype first, as HF's Gemma does)."""
    x = jnp.take(table, tokens, axis=0).astype(c.compute_dtype)
    if c.scale_embeddings:
        x = x * jnp.asarray(c.d_model**0.5, c.compute_dtype)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def lm_head_weights(c: ModelConfig, params: Any) -> jax.Array:
    """The [D, V] output projection of `params` (the embedding table when tied)."""
    return params["embedding"].T if c.tie_embeddings else params["lm_head"]


def lm_logits(c: ModelConfig, hidden: jax.Array, lm_head: jax.Array) -> jax.Array:
    """Float32 logits [B, T, V] of final-normed `hidden` through `lm_head` [D, V] (with
    Gemma 2's final soft-cap): the one place the model, the decode step and the chunked
    loss (`training.losses`) make them."""
    logits = jnp.einsum("BTD,DV->BTV", hidden, lm_head.astype(c.compute_dtype))
    logits = _softcap(logits.astype(jnp.float32), c.final_softcap)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def _window(c: ModelConfig, query_slots: jax.Array, key_slots: jax.Array) -> jax.Array:
    """[T, S]: whether each key slot is within the sliding window of each query slot
    (HF's `kv_idx > q_idx - sliding_window`; causality is masked elsewhere)."""
    return query_slots[:, None] - key_slots[None, :] < c.sliding_window


def _local_rope(
    c: ModelConfig, positions: jax.Array, table: tuple[jax.Array, jax.Array] | None = None
) -> tuple[jax.Array, jax.Array] | None:
    """Sliding layers' RoPE tables of `positions` (from `table` if given), or None when
    they share the full layers' RoPE."""
    if c.rope_local_theta is None:
        return None
    if table is None:
        return rope_tables(positions, rope_frequencies(c, local=True))
    return tuple(jnp.take(a, positions, axis=0)[:, :, None, :] for a in table)


def unstack_layers(params: Any) -> list[Any]:
    """The scanned layers' params as one tree per layer.

    A decode loop slices them once, before the loop: slicing the stacked weights inside
    the loop (as the layer scan does) copies every weight at every step.
    """
    layers = params["layers"]
    num_layers = jax.tree.leaves(layers)[0].shape[0]
    return [jax.tree.map(lambda a, i=i: a[i], layers) for i in range(num_layers)]


def decode_step(
    config: ModelConfig,
    params: Any,
    layers: list[Any],
    tokens: jax.Array,
    positions: jax.Array,
    segments_kv: list[tuple[tuple[jax.Array, jax.Array], ...]],
    segment_masks: tuple[jax.Array, ...],
    append_at: jax.Array,
    rope_table: tuple[jax.Array, jax.Array] | None = None,
    window_slots: tuple[tuple[jax.Array, ...], jax.Array] | None = None,
    local_rope_table: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
    """One new token per row (`tokens`, `positions` [B, 1]) with the layers unrolled.

    The sampler's decode step: `layers` = `unstack_layers(params)`, `segments_kv[l]` the
    cached (k, v) segments of layer l and `segment_masks` their filled slots, shared by
    every layer (see `Attention`: a segment may be shared by consecutive rows). The new
    token's key and value are written at slot `append_at` of each layer's last segment
    (whose mask must include that slot); `append_at` [B] gives each row its own slot.
    `rope_table`: `rope_table(n, config)` with n above every position, made once before a
    decode loop; without it the step computes its sines and cosines, which XLA:CPU
    recomputes in every fusion that reads them (per element of each layer's q and k).
    Returns logits [B, V] float32 and each layer's updated last segment. The same
    computation as `Transformer.__call__` with a cache of those keys
    (tests/model/test_transformer.py checks they agree).

    With sliding-window layers, `window_slots` = (each segment's key slots [S], the new
    token's slot [], or [B] with a slot per row): one timeline shared by every row (a
    left-padded prompt's P slots, then the generated ones), so that slot distance is
    position distance for real tokens. `local_rope_table`: `rope_table(n, config,
    local=True)`, as `rope_table`.
    """
    c = config
    table = nn.with_logical_constraint(params["embedding"], ("vocab", None))
    x = _embed(c, table, tokens)  # [B, 1, D]
    no_mask = jnp.ones((tokens.shape[0], 1, 1), jnp.bool_)  # unused with append_at
    if rope_table is None:
        rope = rope_tables(positions, rope_frequencies(c))
    else:
        rope = tuple(jnp.take(a, positions, axis=0)[:, :, None, :] for a in rope_table)
    local = None
    if c.has_sliding_layers:
        if window_slots is None:
            raise ValueError(
                "decode_step: the config has sliding-window layers; pass window_slots "
                "(each segment's key slots and the new token's slot)"
            )
        key_slots, query_slot = window_slots
        if jnp.ndim(query_slot) == 0:  # one timeline for every row: windows [1, S]
            windows = tuple(_window(c, jnp.reshape(query_slot, (1,)), s) for s in key_slots)
        else:  # a query slot per row: windows [B, 1, S]
            windows = tuple(_window(c, query_slot, s)[:, None, :] for s in key_slots)
        local = (_local_rope(c, positions, local_rope_table), None, windows)
    block = Block(c)
    updated = []
    for i, (layer_params, layer_segments) in enumerate(zip(layers, segments_kv, strict=True)):
        x, kv = block.apply(
            {"params": layer_params},
            x,
            layer_segments,
            rope,
            no_mask,
            segment_masks,
            append_at,
            c.sliding_layers[i],
            local,
        )
        updated.append(kv)
    hidden = _norm(c).apply({"params": params["final_norm"]}, x)
    lm_head = lm_head_weights(c, params)
    return lm_logits(c, hidden, lm_head)[:, 0], updated


def init_params(config: ModelConfig, rng: jax.Array, heads: tuple[str, ...] = ()) -> Any:
    """Random parameters (plain arrays, logical-axis metadata stripped).

    Jitted: initialising op by op is many times slower, as every initializer of every
    layer would dispatch (and compile) on its own.
    """
    return _jitted_init(config, tuple(heads))(rng)


@functools.lru_cache(maxsize=16)
def _jitted_init(config: ModelConfig, heads: tuple[str, ...]) -> Any:
    tokens = jnp.zeros((1, 1), jnp.int32)
    model = Transformer(config, heads)
    return jax.jit(lambda rng: nn.meta.unbox(model.init(rng, tokens, tokens)["params"]))


def param_logical_axes(config: ModelConfig, heads: tuple[str, ...] = ()) -> Any:
    """The logical axis names of every parameter, as a pytree of `PartitionSpec`s."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    abstract = jax.eval_shape(
        lambda: Transformer(config, heads).init(jax.random.key(0), tokens, tokens)
    )
    return nn.get_partition_spec(abstract)["params"]


def default_positions(input_mask: jax.Array) -> jax.Array:
    """RoPE positions for a left-padded batch: 0 at each row's first real token."""
    mask = input_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
