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


def sft_loss_fn(model: Transformer) -> LossFn:
    """The SFT loss: response cross-entropy of `model` on batch {tokens, loss_mask, ...}."""

    def loss_fn(params: Any, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]:
        del rng  # deterministic: no dropout in the model
        tokens, positions, input_mask = model_inputs(batch)
        out = model.apply({"params": params}, tokens, positions, input_mask)
        return response_cross_entropy(out.logits, tokens, batch["loss_mask"])

    return loss_fn
