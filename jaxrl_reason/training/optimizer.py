"""AdamW with warm-up, a decay schedule, global-norm clipping and gradient accumulation.

Schedule steps count *optimizer updates*: with `accumulation_steps = k`, k calls of the
train step (micro-batches) make one update, and the schedule advances once per update.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax

from jaxrl_reason.validation import FRACTION, NON_NEGATIVE, POSITIVE, between, setting, validate

SCHEDULES = ("cosine", "constant", "linear")
_NO_DECAY_SUFFIXES = ("scale", "bias")  # norm scales and head biases are not decayed


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW hyperparameters. `grad_clip_norm <= 0` disables clipping."""

    learning_rate: float = setting(1e-5, NON_NEGATIVE)
    warmup_steps: int = setting(0, NON_NEGATIVE)
    total_steps: int = setting(1000, POSITIVE)
    schedule: str = setting("cosine", choices=SCHEDULES)
    end_lr_fraction: float = setting(0.1, FRACTION)
    weight_decay: float = setting(0.0, NON_NEGATIVE)
    b1: float = setting(0.9, between(0, 1, open_high=True))
    b2: float = setting(0.95, between(0, 1, open_high=True))
    eps: float = setting(1e-8, NON_NEGATIVE)
    grad_clip_norm: float = 1.0  # <= 0: no clipping
    accumulation_steps: int = setting(1, POSITIVE)

    def __post_init__(self) -> None:
        validate(self)
        if self.total_steps < self.warmup_steps:
            raise ValueError(
                f"OptimizerConfig.total_steps ({self.total_steps}) must be >= 1 and "
                f">= warmup_steps ({self.warmup_steps})"
            )

    def replace(self, **changes: Any) -> OptimizerConfig:
        return dataclasses.replace(self, **changes)


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """Learning rate as a function of the optimizer-update count (linear warm-up from 0)."""
    peak, warmup = cfg.learning_rate, cfg.warmup_steps
    end = peak * cfg.end_lr_fraction
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, cfg.total_steps, end)
    if cfg.schedule == "linear":
        after = optax.linear_schedule(peak, end, cfg.total_steps - warmup)
    else:
        after = optax.constant_schedule(peak)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def learning_rate_at(cfg: OptimizerConfig, step: int | jax.Array) -> jax.Array:
    """The learning rate of optimizer update number `step` (0-based), for logging."""
    return jnp.asarray(make_schedule(cfg)(step), jnp.float32)


def _decay_mask(params: Any) -> Any:
    """True for weights that get weight decay: everything but norm scales and biases."""

    def decays(path: tuple[Any, ...], _: Any) -> bool:
        name = str(getattr(path[-1], "key", path[-1])) if path else ""
        return not name.endswith(_NO_DECAY_SUFFIXES)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW on the schedule; `optax.MultiSteps` when k > 1.

    Clipping sits inside the accumulation, so it sees the averaged gradient of all k
    micro-batches, exactly as one big batch would.
    """
    chain = []
    if cfg.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    chain.append(
        optax.adamw(
            make_schedule(cfg),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=_decay_mask,
        )
    )
    tx = optax.chain(*chain)
    if cfg.accumulation_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.accumulation_steps).gradient_transformation()
    return tx


def phase_optimizer(optimizer: OptimizerConfig, num_steps: int) -> OptimizerConfig:
    """`optimizer` with its schedule fitted to a phase of `num_steps` steps.

    Warm-up is capped to leave at least one decay step, so short phases (a small EI round)
    still get a valid schedule.
    """
    warmup = min(optimizer.warmup_steps, max(num_steps - 1, 0))
    return optimizer.replace(total_steps=max(num_steps, 1), warmup_steps=warmup)
