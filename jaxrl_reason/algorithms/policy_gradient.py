"""What every policy-gradient method here shares: the loss aggregation, the clipped
surrogate (separate low and high bounds; a token or a sequence importance ratio), and the
minibatch epochs over one batch of rollouts.

Arrays are [B, T] in the sequence frame of `rollouts.sequence_batch`; `mask` selects the
response tokens that count. PPO (`ppo_objective.ppo_losses`) and the GRPO family
(`grpo_objective.grpo_loss`) both aggregate with `aggregate_loss`, so
`loss_aggregation` means the same in every method's config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reason.algorithms.round_sampling import round_key
from jaxrl_reason.parallel.hosts import to_host
from jaxrl_reason.training.train_step import shard_batch

LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")
RATIO_LEVELS = ("token", "sequence")


def aggregate_loss(
    per_token: jax.Array,
    mask: jax.Array,
    mode: str = "token_mean",
    normalizer: float | None = None,
) -> jax.Array:
    """One scalar from per-token losses l[i, t] over the valid tokens (m[i, t] = 1).

    With G the number of sequences that have a valid token, |y_i| = sum_t m[i, t]:
      token_mean           sum_{i,t} m l / sum_{i,t} m              (trlX's PPO; DAPO)
      seq_mean_token_mean  1/G sum_i (sum_t m l) / |y_i|            (GRPO, GSPO)
      seq_mean_token_sum   1/G sum_i (sum_t m l) / normalizer       (Dr.GRPO: the constant
                           normalizer is the max generation length; None: 1)
    A batch with no valid token gives 0. Under jit on a sharded batch the sums are global.
    """
    chex.assert_equal_shape([per_token, mask])
    m = mask.astype(jnp.float32)
    total = per_token.astype(jnp.float32) * m
    if mode == "token_mean":
        return total.sum() / jnp.maximum(m.sum(), 1.0)
    lengths = m.sum(-1)
    has_tokens = (lengths > 0).astype(jnp.float32)
    num_sequences = jnp.maximum(has_tokens.sum(), 1.0)
    if mode == "seq_mean_token_mean":
        return (total.sum(-1) / jnp.maximum(lengths, 1.0) * has_tokens).sum() / num_sequences
    if mode == "seq_mean_token_sum":
        scale = 1.0 if normalizer is None else float(normalizer)
        return total.sum() / scale / num_sequences
    raise ValueError(f"loss aggregation {mode!r}; choose one of {LOSS_AGGREGATIONS}")


def sequence_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """[B] mean of x over each row's valid tokens (0 for a row without any)."""
    m = mask.astype(jnp.float32)
    return (x.astype(jnp.float32) * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)


def clipped_surrogate(
    new_logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    eps_low: float,
    eps_high: float,
    level: str = "token",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-token clipped policy loss  max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)).

    level "token" (PPO, GRPO): r[i, t] = pi(y_it) / pi_old(y_it), A = advantages [B, T].
    level "sequence" (GSPO, Zheng et al. 2025): one length-normalised ratio per sequence,
      s_i = exp(1/|y_i| sum_t log(pi / pi_old)(y_it)), clipped per sequence with the
      sequence's advantage A_i = advantages[i, first valid t] (GSPO gives every token the
      same advantage); every valid token carries the sequence's loss, so
      `seq_mean_token_mean` aggregation gives GSPO's 1/G sum_i.
    Returns (loss [B, T], 0 on invalid slots; metrics): `clip_low` / `clip_high` are masks
    of where the bound took the gradient away (A < 0 below 1 - eps_low; A > 0 above
    1 + eps_high), per token or per sequence broadcast to its tokens; `ratio` the ratio
    used.
    """
    chex.assert_equal_shape([new_logprobs, old_logprobs, advantages, mask])
    valid = mask.astype(jnp.bool_)
    log_ratio = jnp.where(valid, new_logprobs.astype(jnp.float32) - old_logprobs, 0.0)
    adv = advantages.astype(jnp.float32)
    if level == "sequence":
        seq_log_ratio = sequence_mean(log_ratio, mask)  # [B]
        first = jnp.argmax(valid, axis=-1)
        seq_adv = jnp.take_along_axis(adv, first[:, None], axis=-1)[:, 0]
        ratio = jnp.broadcast_to(jnp.exp(seq_log_ratio)[:, None], adv.shape)
        adv = jnp.broadcast_to(seq_adv[:, None], adv.shape)
    elif level == "token":
        ratio = jnp.exp(log_ratio)
    else:
        raise ValueError(f"ratio level {level!r}; choose one of {RATIO_LEVELS}")
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss = jnp.where(valid, jnp.maximum(unclipped, clipped), 0.0)
    metrics = {
        "clip_low": valid & (adv < 0) & (ratio < 1.0 - eps_low),
        "clip_high": valid & (adv > 0) & (ratio > 1.0 + eps_high),
        "ratio": ratio,
    }
    return loss, metrics


def minibatch_epochs(
    step_fn: Callable[..., Any],
    train_state: Any,
    exp: dict[str, np.ndarray],
    mesh: Any,
    cfg: Any,
    iteration: int,
    phase: str,
) -> tuple[Any, list[dict[str, Any]]]:
    """`cfg.epochs_per_iteration` shuffled passes of `cfg.minibatch_size`-row updates over
    the rows of `exp` (host arrays); `cfg` is PPO's or the GRPO family's config.

    Pass e of iteration i shuffles with `default_rng([seed, i, e])`, so a resumed run
    updates in the same order. Raises FloatingPointError when an update was not finite.
    """
    rows, size, metrics = exp["tokens"].shape[0], cfg.minibatch_size, []
    key = round_key(cfg.seed, iteration)
    for epoch in range(cfg.epochs_per_iteration):
        order = np.random.default_rng([cfg.seed, iteration, epoch]).permutation(rows)
        for j in range(rows // size):
            mb = {k: v[order[j * size : (j + 1) * size]] for k, v in exp.items()}
            train_state, m = step_fn(train_state, shard_batch(mb, mesh), key)
            metrics.append(m)
    metrics = to_host(metrics)
    if not all(bool(m["finite"]) for m in metrics):
        raise FloatingPointError(
            f"{phase} iteration {iteration + 1}: a non-finite loss (that update was skipped); "
            "the phase resumes from its last saved state"
        )
    return train_state, metrics
