"""Next-token losses on response tokens, and the SFT loss function for the train step.

A loss function has the signature `loss_fn(params, batch, rng) -> (loss, metrics)`, where
`batch` is a dict of arrays with a leading batch axis and `metrics` a dict of scalars. The
train step differentiates `loss`; PPO, the ORM and RCRL plug in their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp

from jaxrl_reason.model import Transformer
from jaxrl_reason.model.transformer import lm_head_weights, lm_logits

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, Metrics]]


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log p(tokens[:, t + 1] | logits[:, t]) for t < T - 1: [B, T-1] float32."""
    chex.assert_rank(logits, 3)
    chex.assert_equal_shape_prefix((logits, tokens), 2)
    logits = logits[:, :-1].astype(jnp.float32)  # [B, T-1, V]
    targets = tokens[:, 1:]  # [B, T-1]
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return target_logits - jax.nn.logsumexp(logits, axis=-1)


def response_cross_entropy(
    logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array
) -> tuple[jax.Array, Metrics]:
    """Mean next-token cross-entropy over response tokens.

    `loss_mask[b, t] = 1` marks token t as a response token, predicted by logits[:, t-1].
    Prompt and padding tokens get weight 0, hence no gradient. Returns the loss and
    metrics {loss, num_tokens, accuracy} (accuracy of the arg-max prediction).
    """
    chex.assert_equal_shape((tokens, loss_mask))
    weights = loss_mask[:, 1:].astype(jnp.float32)  # [B, T-1]
    logp = token_logprobs(logits, tokens)  # [B, T-1]
    num_tokens = jnp.sum(weights)
    denom = jnp.maximum(num_tokens, 1.0)
    loss = -jnp.sum(logp * weights) / denom
    correct = jnp.argmax(logits[:, :-1], axis=-1) == tokens[:, 1:]
    accuracy = jnp.sum(correct * weights) / denom
    return loss, {"loss": loss, "num_tokens": num_tokens, "accuracy": accuracy}


def model_inputs(batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """(tokens, positions, input_mask) from a batch; defaults suit right-padded rows.

    Right padding sits after every real token, so causal attention never lets a real
    token see it: no input mask is needed unless the batch carries one.
    """
    tokens = batch["tokens"]
    positions = batch.get("positions")
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    return tokens, positions, batch.get("input_mask")


def dropout_rngs(config: Any, rng: jax.Array) -> dict[str, jax.Array] | None:
    """The `rngs` of a training forward pass: LoRA's adapter dropout is the model's only
    randomness, so None (deterministic) unless `config.lora.dropout` > 0."""
    if config.lora is None or config.lora.dropout == 0:
        return None
    return {"dropout": rng}


# Above this many bytes of float32 logits [B, T, V], the SFT loss computes them in chunks.
CHUNKED_LOGITS_BYTES = 256 * 2**20
LOGIT_CHUNK_TOKENS = 1024  # B x chunk rows of logits at a time


def chunked_response_cross_entropy(
    config: Any,
    hidden: jax.Array,
    lm_head: jax.Array,
    tokens: jax.Array,
    loss_mask: jax.Array,
    chunk_tokens: int = LOGIT_CHUNK_TOKENS,
) -> tuple[jax.Array, Metrics]:
    """`response_cross_entropy` from the final hidden states [B, T, D], never holding the
    [B, T, V] logits: they are made `chunk_tokens` positions at a time and, in the backward
    pass, made again (`jax.checkpoint`) instead of stored.

    Why: with a 49k-256k vocabulary the float32 logits and their gradient are the largest
    tensors of a training step (SmolLM2 at batch 8 x 256: 0.4 GB each; BENCHMARKS.md).
    Each logit is computed as the model computes it, so the loss equals the unchunked one
    to float32 rounding (tests/training/test_losses.py).
    """
    chex.assert_equal_shape((tokens, loss_mask))
    b, t, d = hidden.shape
    n = t - 1  # positions with a next token
    c = max(1, min(chunk_tokens // max(b, 1), n))
    chunks = -(-n // c)
    pad = chunks * c - n
    h = jnp.pad(hidden[:, :-1], ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, pad)))
    # [chunks, B, c, ...]: one row of the map per chunk of positions.
    h = h.reshape(b, chunks, c, d).swapaxes(0, 1)
    targets = targets.reshape(b, chunks, c).swapaxes(0, 1)

    @jax.checkpoint
    def chunk(args: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        h_c, y_c = args
        logits = lm_logits(config, h_c, lm_head)
        target = jnp.take_along_axis(logits, y_c[..., None], axis=-1)[..., 0]
        logp = target - jax.nn.logsumexp(logits, axis=-1)
        return logp, jnp.argmax(logits, axis=-1) == y_c

    logp, correct = jax.lax.map(chunk, (h, targets))
    logp = logp.swapaxes(0, 1).reshape(b, chunks * c)[:, :n]
    correct = correct.swapaxes(0, 1).reshape(b, chunks * c)[:, :n]
    weights = loss_mask[:, 1:].astype(jnp.float32)
    num_tokens = jnp.sum(weights)
    denom = jnp.maximum(num_tokens, 1.0)
    loss = -jnp.sum(logp * weights) / denom
    accuracy = jnp.sum(correct * weights) / denom
    return loss, {"loss": loss, "num_tokens": num_tokens, "accuracy": accuracy}


def sft_loss_fn(model: Transformer, chunked: bool | None = None) -> LossFn:
    """The SFT loss: response cross-entropy of `model` on batch {tokens, loss_mask, ...}.

    `chunked` (None: when a batch's float32 logits exceed `CHUNKED_LOGITS_BYTES`) computes
    it by `chunked_response_cross_entropy`, which never stores the logits.
    """
    config = model.config

    def loss_fn(params: Any, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]:
        tokens, positions, input_mask = model_inputs(batch)
        rngs = dropout_rngs(config, rng)
        use_chunks = chunked
        if use_chunks is None:
            use_chunks = tokens.size * config.vocab_size * 4 > CHUNKED_LOGITS_BYTES
        if not use_chunks:
            out = model.apply({"params": params}, tokens, positions, input_mask, rngs=rngs)
            return response_cross_entropy(out.logits, tokens, batch["loss_mask"])
        out = model.apply(
            {"params": params}, tokens, positions, input_mask, return_logits=False, rngs=rngs
        )
        return chunked_response_cross_entropy(
            config, out.hidden, lm_head_weights(config, params), tokens, batch["loss_mask"]
        )

    return loss_fn
