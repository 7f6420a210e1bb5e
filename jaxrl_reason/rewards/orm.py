"""The outcome reward model (ORM): labels, loss and scores (Cobbe et al. 2021 style).

The ORM is a `Transformer(config, heads=("reward",))`; its reward head gives one logit
per position, read as P(final answer correct | question, tokens up to and including this
position). Training labels every response token of a sample with whether that sample's
final answer was correct (or only the step ends, with `step_ends_only`).

Frames: `reward_logits`, masks and labels share one [B, T] frame. The logit at slot t has
seen token t, so the score of a finished sample is the logit at its LAST response token,
and a step's score is the logit at the token that ends the step. (This differs from the
PPO value convention, where the value at a token is taken *before* the token.)
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def orm_token_labels(
    response_mask: jax.Array,
    correct: jax.Array,
    step_ends_only: bool = False,
    step_end_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(labels [B, T] float32, label_mask [B, T] bool) from per-sample correctness [B].

    Every response token gets its sample's label; with `step_ends_only` only the response
    tokens marked in `step_end_mask` do. Labels are 0 outside the label mask.
    """
    chex.assert_rank([response_mask, correct], [2, 1])
    label_mask = response_mask.astype(jnp.bool_)
    if step_ends_only:
        if step_end_mask is None:
            raise ValueError(
                "step_ends_only=True needs step_end_mask [B, T]; pass it or "
                "set step_ends_only=False"
            )
        chex.assert_equal_shape([step_end_mask, response_mask])
        label_mask = label_mask & step_end_mask.astype(jnp.bool_)
    labels = jnp.where(label_mask, correct.astype(jnp.float32)[:, None], 0.0)
    return labels, label_mask


def orm_loss(
    reward_logits: jax.Array, labels: jax.Array, label_mask: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Binary cross-entropy over labelled tokens (mean), with accuracy metrics.

    Metrics: loss, accuracy (sign of the logit agrees with the label), score_mean (mean
    sigmoid), label_mean, num_labels.
    """
    chex.assert_equal_shape([reward_logits, labels, label_mask])
    logits = reward_logits.astype(jnp.float32)
    m = label_mask.astype(jnp.float32)
    n = jnp.maximum(m.sum(), 1.0)
    bce = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))
    loss = (bce * m).sum() / n
    hit = (logits > 0) == (labels > 0.5)
    metrics = {
        "loss": loss,
        "accuracy": (hit * m).sum() / n,
        "score_mean": (jax.nn.sigmoid(logits) * m).sum() / n,
        "label_mean": (labels * m).sum() / n,
        "num_labels": m.sum(),
    }
    return loss, metrics


def last_token_onehot(mask: jax.Array) -> jax.Array:
    """[B, T] float32 with a 1 at each row's last valid slot (all 0 for an empty row)."""
    t = mask.shape[-1]
    valid = mask.astype(jnp.bool_)
    last = t - 1 - jnp.argmax(valid[:, ::-1], axis=-1)  # [B]
    onehot = jax.nn.one_hot(last, t, dtype=jnp.float32)
    return onehot * valid.any(axis=-1, keepdims=True)


def final_scores(reward_logits: jax.Array, response_mask: jax.Array) -> jax.Array:
    """sigmoid of the logit at each row's last response token [B] (0 for an empty row).

    This is the rerank@K score.
    """
    chex.assert_equal_shape([reward_logits, response_mask])
    onehot = last_token_onehot(response_mask)
    last_logit = (reward_logits.astype(jnp.float32) * onehot).sum(-1)
    return jnp.where(onehot.sum(-1) > 0, jax.nn.sigmoid(last_logit), 0.0)


def step_scores(reward_logits: jax.Array, step_end_mask: jax.Array) -> jax.Array:
    """sigmoid of the logit at step ends, 0 elsewhere [B, T]."""
    chex.assert_equal_shape([reward_logits, step_end_mask])
    probs = jax.nn.sigmoid(reward_logits.astype(jnp.float32))
    return jnp.where(step_end_mask.astype(jnp.bool_), probs, 0.0)


def dense_orm_rewards(
    scores: jax.Array,
    step_end_mask: jax.Array,
    mode: str = "delta",
    initial: float | jax.Array = 0.5,
) -> jax.Array:
    """Per-token "dense ORM" rewards [B, T], non-zero only at step ends.

    mode="delta": step i earns s_i - s_{i-1}, with s_0 = `initial` (0.5, an uninformed
      prior, or a [B] array such as the ORM score at the prompt's end). The rewards of a
      sample telescope to s_last - s_0, so the return matches the sparse ORM up to s_0.
    mode="score": step i earns s_i.
    `scores` is the output of `step_scores`.
    """
    chex.assert_equal_shape([scores, step_end_mask])
    ends = step_end_mask.astype(jnp.bool_)
    scores = jnp.where(ends, scores.astype(jnp.float32), 0.0)
    if mode == "score":
        return scores
    if mode != "delta":
        raise ValueError(f"dense_orm_rewards mode={mode!r}; choose 'delta' or 'score'")
    b, t = scores.shape
    slots = jnp.broadcast_to(jnp.arange(t), (b, t))
    last_end = jax.lax.cummax(jnp.where(ends, slots, -1), axis=1)  # [B, T] latest end <= t
    prev_end = jnp.concatenate([jnp.full((b, 1), -1), last_end[:, :-1]], axis=1)  # < t
    prev_score = jnp.take_along_axis(scores, jnp.maximum(prev_end, 0), axis=1)
    s0 = jnp.broadcast_to(jnp.asarray(initial, jnp.float32).reshape(-1, 1), (b, 1))
    prev_score = jnp.where(prev_end >= 0, prev_score, s0)
    return jnp.where(ends, scores - prev_score, 0.0)


def reward_logits(model: nn.Module, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """The reward head's logits [B, T] of a batch in the sequence frame (tokens, positions,
    input_mask); `model` is a `Transformer(config, heads=("reward",))`."""
    out = model.apply(
        {"params": params},
        batch["tokens"],
        batch["positions"],
        batch["input_mask"],
        return_logits=False,
    )
    return out.heads["reward"]


def orm_loss_fn(
    model: nn.Module, params: Any, batch: dict[str, jax.Array], rng: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """ORM training loss for the generic train step: `functools.partial(orm_loss_fn, model)`
    has the form `loss_fn(params, batch, rng) -> (loss, metrics)`.

    `model` is a `Transformer(config, heads=("reward",))`; batch holds tokens, input_mask,
    positions, labels and label_mask, all [B, T] in the sequence frame.
    """
    del rng  # the model has no dropout
    return orm_loss(reward_logits(model, params, batch), batch["labels"], batch["label_mask"])
