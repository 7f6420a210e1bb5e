"""Blockwise absmax int8 quantization of weight matrices (QLoRA's frozen base here).

A matrix [..., n] is cut along its last axis into blocks of `block` values (the whole
axis when `block` does not divide n); each block stores int8 codes round(w / s * 127)
and one float32 scale s = max |w| of the block, so w ~ codes * s / 127 with an error of
at most s / 254 per value. 1 byte + 4 / block bytes per weight (1.06 at block 64).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SCALE_SUFFIX = "_qscale"  # the params key of a quantized matrix's scales: "<name>_qscale"


def block_size(n: int, block: int) -> int:
    """The block length along an axis of `n` values."""
    return block if n % block == 0 else n


def scale_shape(shape: tuple[int, ...], block: int) -> tuple[int, ...]:
    """The shape of the scales of a quantized matrix of `shape`."""
    return (*shape[:-1], shape[-1] // block_size(shape[-1], block))


def quantize(w: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """(int8 codes of w's shape, float32 scales of `scale_shape`)."""
    n = w.shape[-1]
    b = block_size(n, block)
    blocks = w.astype(jnp.float32).reshape(*w.shape[:-1], n // b, b)
    scale = jnp.max(jnp.abs(blocks), axis=-1)
    safe = jnp.where(scale > 0, scale, 1.0)
    codes = jnp.clip(jnp.round(blocks / safe[..., None] * 127.0), -127, 127).astype(jnp.int8)
    return codes.reshape(w.shape), scale


def dequantize(codes: jax.Array, scale: jax.Array) -> jax.Array:
    """float32 weights from int8 `codes` and their block `scale`s."""
    nb = scale.shape[-1]
    blocks = codes.astype(jnp.float32).reshape(*codes.shape[:-1], nb, -1)
    return (blocks * (scale[..., None] / 127.0)).reshape(codes.shape)
