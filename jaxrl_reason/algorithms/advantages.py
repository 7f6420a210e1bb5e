"""Per-token rewards, GAE advantages and masked whitening for PPO; group-relative
advantages for the GRPO family.

Rollout frame: every array is [B, T] over the response slots of a batch. `mask` is 1 on
tokens the policy generated and 0 elsewhere (padding after EOS, or any slot the policy
did not choose, such as injected tool output). `values[:, t]` is the value head at the
position that predicts token t, i.e. the value of the state *before* token t.

An episode ends after its last valid token, so GAE bootstraps with 0 there. Invalid slots
are skipped: they get 0 advantage, and the recursion jumps over them to the next valid
token, so the result does not depend on where padding sits.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxrl_reason.rewards.orm import last_token_onehot


def gae(
    rewards: jax.Array,
    values: jax.Array,
    mask: jax.Array,
    gamma: float | jax.Array,
    lam: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation (Schulman et al. 2016) over valid tokens.

    With t' the next valid token after t (none at the episode's end, V = 0 there):
      delta_t = r_t + gamma * V_t' - V_t,   A_t = delta_t + gamma * lam * A_t'.
    Returns (advantages, returns) [B, T] float32, `returns = advantages + values` on valid
    tokens; both are 0 on invalid slots. Rewards on invalid slots are ignored.
    """
    chex.assert_rank([rewards, values, mask], 2)
    chex.assert_equal_shape([rewards, values, mask])
    valid = mask.astype(jnp.bool_)
    rewards = jnp.where(valid, rewards, 0.0).astype(jnp.float32)
    values = jnp.where(valid, values, 0.0).astype(jnp.float32)

    def step(carry, xs):
        next_value, next_adv = carry  # [B] each, of the next valid token (0 past the end)
        r, v, m = xs
        delta = r + gamma * next_value - v
        adv = delta + gamma * lam * next_adv
        carry = (jnp.where(m, v, next_value), jnp.where(m, adv, next_adv))
        return carry, jnp.where(m, adv, 0.0)

    b = rewards.shape[0]
    init = (jnp.zeros((b,), jnp.float32), jnp.zeros((b,), jnp.float32))
    # Scan over time (axis 0 after the transpose), from the last slot to the first.
    _, adv = jax.lax.scan(step, init, (rewards.T, values.T, valid.T), reverse=True)
    advantages = adv.T  # [B, T]
    returns = jnp.where(valid, advantages + values, 0.0)
    return advantages, returns


def whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
    """Normalise x to mean 0, std 1 over valid tokens (population variance).

    With `shift_mean=False` the mean is added back (only the scale changes). Invalid slots
    are set to 0. Under jit on a sharded batch the statistics are global.
    """
    chex.assert_equal_shape([x, mask])
    m = mask.astype(jnp.float32)
    x = x.astype(jnp.float32)
    n = jnp.maximum(m.sum(), 1.0)
    mean = (x * m).sum() / n
    var = (jnp.square(x - mean) * m).sum() / n
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def token_rewards(
    score: jax.Array,
    mask: jax.Array,
    kl: jax.Array,
    kl_coef: float | jax.Array,
    dense: jax.Array | None = None,
) -> jax.Array:
    """Per-token PPO rewards [B, T]: -kl_coef * kl on every valid token, the sequence
    score [B] on the last valid token, plus optional dense per-token rewards [B, T].

    `kl` is the per-token penalty from `ppo_objective.kl_penalty`. Pass `kl_coef` as an
    array (not a Python float) to avoid recompiling when the adaptive controller moves.
    """
    chex.assert_rank([score, mask, kl], [1, 2, 2])
    chex.assert_equal_shape([mask, kl])
    m = mask.astype(jnp.float32)
    rewards = -kl_coef * kl.astype(jnp.float32) * m
    rewards = rewards + score.astype(jnp.float32)[:, None] * last_token_onehot(mask)
    if dense is not None:
        chex.assert_equal_shape([dense, mask])
        rewards = rewards + dense.astype(jnp.float32) * m
    return rewards


def group_advantages(
    rewards: jax.Array,
    *,
    normalize_std: bool = True,
    leave_one_out: bool = False,
    eps: float = 1e-6,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Group-relative advantages [B, K] of K samples per question, from rewards [B, K].

    Over the n valid samples of group b (`mask`, default all; padding gets 0):
      baseline  mean_j r_bj                     (GRPO, Dr.GRPO)
                mean_{j != i} r_bj              (`leave_one_out`: RLOO, Ahmadian et al. 2024)
      A_bi = r_bi - baseline,  divided by (std_b + eps) when `normalize_std` (GRPO), where
      std_b is the sample standard deviation (ddof 1, as TRL and Tunix) of the group.
    A group of one sample, or whose rewards are all equal, has advantage 0 (never NaN).
    """
    chex.assert_rank(rewards, 2)
    r = rewards.astype(jnp.float32)
    m = jnp.ones_like(r) if mask is None else mask.astype(jnp.float32)
    chex.assert_equal_shape([r, m])
    r = r * m
    n = m.sum(-1, keepdims=True)
    total = r.sum(-1, keepdims=True)
    mean = total / jnp.maximum(n, 1.0)
    if leave_one_out:
        baseline = (total - r) / jnp.maximum(n - 1.0, 1.0)
        adv = jnp.where(n > 1, r - baseline, 0.0)
    else:
        adv = r - mean
    if normalize_std:
        var = (jnp.square(r - mean) * m).sum(-1, keepdims=True) / jnp.maximum(n - 1.0, 1.0)
        adv = adv / (jnp.sqrt(var) + eps)
    # All-equal groups carry no signal: exactly 0, not the rounding error of their mean.
    valid = m > 0
    spread = jnp.max(jnp.where(valid, r, -jnp.inf), -1) - jnp.min(jnp.where(valid, r, jnp.inf), -1)
    return jnp.where(valid & (spread[:, None] > 0), adv, 0.0)
