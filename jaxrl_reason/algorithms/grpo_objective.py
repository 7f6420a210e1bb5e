"""The GRPO family's loss: the clipped surrogate with a sequence's advantage on each of its
tokens, plus the k3 KL to the frozen reference inside the loss (not in the reward).

Arrays are [B, T] in the sequence frame; advantages are [B], one per sequence.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxrl_reason.algorithms.policy_gradient import aggregate_loss, clipped_surrogate
from jaxrl_reason.algorithms.ppo_objective import kl_penalty, masked_mean


def grpo_loss(
    new_logprobs: jax.Array,
    old_logprobs: jax.Array,
    ref_logprobs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.0,
    ratio_level: str = "token",
    aggregation: str = "seq_mean_token_mean",
    normalizer: float | None = None,
    entropy: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """loss = aggregate_loss(l_pg + beta * k3, mask, aggregation, normalizer), per token

      l_pg[i, t] = max(-A_i r, -A_i clip(r, 1 - eps_low, 1 + eps_high))
      k3[i, t]   = pi_ref / pi - log(pi_ref / pi) - 1   at the sampled token (>= 0)

    with r the token ratio pi / pi_old (GRPO, Dr.GRPO, RLOO, DAPO) or GSPO's sequence
    ratio (`ratio_level="sequence"`, see `clipped_surrogate`). With pi = pi_old the
    gradient is the plain policy gradient -A_i grad log pi. `beta = 0` drops the KL term
    (`ref_logprobs` are then unused).

    Metrics: loss, policy_loss (the aggregated l_pg), kl (token mean of k3),
    clip_low_fraction / clip_high_fraction (token shares where a bound took the gradient
    away), ratio_mean, approx_kl (token mean of the k3 estimate of KL(pi_old || pi)),
    entropy (token mean; 0 when not given).
    """
    chex.assert_equal_shape([new_logprobs, old_logprobs, ref_logprobs, mask])
    chex.assert_shape(advantages, new_logprobs.shape[:1])
    adv = jnp.broadcast_to(advantages.astype(jnp.float32)[:, None], new_logprobs.shape)
    pg, clip = clipped_surrogate(
        new_logprobs, old_logprobs, adv, mask, eps_low, eps_high, ratio_level
    )
    valid = mask.astype(jnp.bool_)
    per_token = pg
    kl = jnp.zeros_like(pg)
    if beta:
        kl = jnp.where(valid, kl_penalty(new_logprobs, ref_logprobs, "k3"), 0.0)
        per_token = pg + beta * kl
    loss = aggregate_loss(per_token, mask, aggregation, normalizer)
    log_ratio = jnp.where(valid, new_logprobs.astype(jnp.float32) - old_logprobs, 0.0)
    metrics = {
        "loss": loss,
        "policy_loss": aggregate_loss(pg, mask, aggregation, normalizer),
        "kl": masked_mean(kl, mask),
        "clip_low_fraction": masked_mean(clip["clip_low"], mask),
        "clip_high_fraction": masked_mean(clip["clip_high"], mask),
        "ratio_mean": masked_mean(clip["ratio"], mask),
        "approx_kl": masked_mean(jnp.expm1(log_ratio) - log_ratio, mask),
        "entropy": jnp.zeros((), jnp.float32) if entropy is None else masked_mean(entropy, mask),
    }
    return loss, metrics
