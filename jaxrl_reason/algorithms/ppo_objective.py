"""The PPO objective: clipped surrogate policy loss, clipped value loss, entropy bonus,
and the per-token KL penalty to the reference policy.

All arrays are [B, T] in the rollout frame of `advantages.py`; `mask` selects the tokens
that count. The policy loss is aggregated by `policy_gradient.aggregate_loss` (token-level
by default, as in trlX); the value loss and the statistics are means over valid tokens.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxrl_reason.algorithms.policy_gradient import aggregate_loss, clipped_surrogate

KL_KINDS = ("k1", "k2", "k3")


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x over the slots where mask is set (0 when none are)."""
    m = mask.astype(jnp.float32)
    return (x.astype(jnp.float32) * m).sum() / jnp.maximum(m.sum(), 1.0)


def logprobs_from_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(targets) [B, T] under logits [B, T, V] (float32)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, T, V]
    return jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def entropy_from_logits(logits: jax.Array) -> jax.Array:
    """Entropy [B, T] of the categorical distributions given by logits [B, T, V].

    Logits of -inf (e.g. from top-k masking) contribute 0, not NaN.
    """
    logits = logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(logp)
    return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


def kl_penalty(logprobs: jax.Array, ref_logprobs: jax.Array, kind: str = "k1") -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens' log-probs.

    Schulman's estimators, with log r = logp_ref - logp for tokens sampled from pi:
      k1 = logp - logp_ref         unbiased, can be negative per token
      k2 = 0.5 * (log r)^2         biased, >= 0, low variance
      k3 = (r - 1) - log r         unbiased, >= 0  (r = p_ref / p)
    All three are exactly 0 where the policy equals the reference.
    """
    chex.assert_equal_shape([logprobs, ref_logprobs])
    log_r = ref_logprobs.astype(jnp.float32) - logprobs.astype(jnp.float32)
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * jnp.square(log_r)
    if kind == "k3":
        return jnp.expm1(log_r) - log_r
    raise ValueError(f"kl_penalty kind={kind!r}; choose one of {KL_KINDS}")


def ppo_losses(
    new_logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    new_values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    mask: jax.Array,
    clip_ratio: float = 0.2,
    value_clip: float | None = 0.2,
    vf_coef: float = 1.0,
    entropy: jax.Array | None = None,
    entropy_coef: float = 0.0,
    aggregation: str = "token_mean",
    normalizer: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total PPO loss = policy_loss + vf_coef * value_loss - entropy_coef * entropy.

    policy_loss: max(-A r, -A clip(r, 1 - eps, 1 + eps)), r = pi / pi_old, aggregated over
      the valid tokens by `aggregate_loss(.., aggregation, normalizer)` (default: the
      masked mean over all tokens).
    value_loss: masked mean of 0.5 max((V - R)^2, (V_old + clip(V - V_old, +-eps_v) - R)^2);
      `value_clip=None` turns value clipping off.
    Metrics (scalars): loss, policy_loss, value_loss, entropy, clip_fraction (share of
    tokens where the clipped policy term is the larger one, so the token gets no policy
    gradient), value_clip_fraction (same for the value term), approx_kl (mean of
    (r - 1) - log r, the non-negative k3 estimate of KL(pi_old || pi)), ratio_mean,
    value_error (masked mean of (V - R)^2), values_mean, returns_mean.
    """
    chex.assert_equal_shape(
        [new_logprobs, old_logprobs, advantages, new_values, old_values, returns, mask]
    )
    f32 = lambda x: x.astype(jnp.float32)
    log_ratio = f32(new_logprobs) - f32(old_logprobs)
    ratio = jnp.exp(log_ratio)
    pg, clip = clipped_surrogate(
        new_logprobs, old_logprobs, advantages, mask, clip_ratio, clip_ratio
    )
    policy_loss = aggregate_loss(pg, mask, aggregation, normalizer)

    values, old_v, ret = f32(new_values), f32(old_values), f32(returns)
    vf_unclipped = jnp.square(values - ret)
    if value_clip is None:
        vf_clipped = vf_unclipped
    else:
        values_clipped = old_v + jnp.clip(values - old_v, -value_clip, value_clip)
        vf_clipped = jnp.square(values_clipped - ret)
    value_loss = 0.5 * masked_mean(jnp.maximum(vf_unclipped, vf_clipped), mask)

    mean_entropy = jnp.zeros((), jnp.float32) if entropy is None else masked_mean(entropy, mask)
    loss = policy_loss + vf_coef * value_loss - entropy_coef * mean_entropy

    metrics = {
        "loss": loss,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": mean_entropy,
        "clip_fraction": masked_mean(clip["clip_low"] | clip["clip_high"], mask),
        "value_clip_fraction": masked_mean(vf_clipped > vf_unclipped, mask),
        "approx_kl": masked_mean(jnp.expm1(log_ratio) - log_ratio, mask),
        "ratio_mean": masked_mean(ratio, mask),
        "value_error": masked_mean(vf_unclipped, mask),
        "values_mean": masked_mean(values, mask),
        "returns_mean": masked_mean(ret, mask),
    }
    return loss, metrics
