"""Jitted, sharded train and eval steps around a pluggable loss function.

`make_train_step` returns `step(state, batch, rng) -> (state, metrics)`. On a mesh the
state is laid out by the logical-axis rules, the batch is split over ("data", "fsdp") and
the state's buffers are donated. A step whose loss or gradient is not finite leaves the
state untouched and reports `metrics["finite"] = False`; the caller decides to stop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxrl_reason.model import Transformer, lora, param_logical_axes
from jaxrl_reason.parallel import activation_sharding, batch_sharding, logical_shardings, replicated
from jaxrl_reason.parallel.rules import Rules
from jaxrl_reason.training.losses import Batch, LossFn, Metrics
from jaxrl_reason.training.train_state import TrainState, join_state, split_state, state_shardings

StepFn = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]
EvalFn = Callable[[Any, Batch, jax.Array], Metrics]


def model_param_shardings(model: Transformer, mesh: Mesh, rules: Rules | None = None) -> Any:
    """NamedShardings of `model`'s parameters under the logical-axis rules."""
    return logical_shardings(param_logical_axes(model.config, model.heads), mesh, rules)


def shard_batch(
    batch: dict[str, Any], mesh: Mesh | None, rules: Rules | None = None
) -> dict[str, jax.Array]:
    """Host arrays -> global device arrays split over the batch axes.

    Every process holds the same (whole) batch; each puts only the rows of its own
    devices, so the global batch is the same, in the same order, on any number of hosts.
    """
    if mesh is None:
        return {k: jnp.asarray(v) for k, v in batch.items()}
    return {
        k: jax.device_put(np.asarray(v), batch_sharding(mesh, np.ndim(v), rules))
        for k, v in batch.items()
    }


def _wrap(jitted: Callable[..., Any], mesh: Mesh | None, rules: Rules | None) -> Callable:
    """Call `jitted` inside the activation-sharding context (it must cover tracing)."""
    if mesh is None:
        return jitted

    def call(*args: Any) -> Any:
        with activation_sharding(mesh, rules):
            return jitted(*args)

    return call


def make_train_step(
    model: Transformer,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    param_shardings: Any = None,
    learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
    accumulation_steps: int = 1,
) -> StepFn:
    """A jitted `step(state, batch, rng) -> (state, metrics)` that donates `state`.

    metrics: the loss function's metrics plus `loss`, `grad_norm` (of this micro-batch's
    gradient, before clipping), `finite` and, given `learning_rate_fn` (the optimizer's
    schedule over updates), `learning_rate`. `accumulation_steps` must match the
    optimizer's, so that the logged rate is that of the update being accumulated.
    """

    def step_part(
        part: TrainState, frozen: Any, batch: Batch, rng: jax.Array
    ) -> tuple[TrainState, Metrics]:
        """The step on the trained part of a state (`split_state`; all of it without LoRA);
        `frozen` (LoRA's base) is read, never differentiated, updated or donated."""
        trained = part.params
        grad_fn = jax.value_and_grad(
            lambda t, batch, rng: loss_fn(lora.join(t, frozen), batch, rng), has_aux=True
        )
        (loss, metrics), grads = grad_fn(trained, batch, rng)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def apply(part: TrainState) -> TrainState:
            updates, opt_state = tx.update(grads, part.opt_state, trained)
            params = optax.apply_updates(trained, updates)
            return TrainState(step=part.step + 1, params=params, opt_state=opt_state)

        # Only a finite step touches the state; a cond (not a select over every leaf)
        # lets XLA update the donated buffers in place.
        new = jax.lax.cond(finite, apply, lambda part: part, part)
        metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "finite": finite}
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(part.step // accumulation_steps)
        return new, metrics

    def step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
        return step_part(state, {}, batch, rng)

    # With LoRA the jitted step takes the frozen base as a separate, undonated argument:
    # the base's buffers are shared with the caller (pi_0, PPO's reference), never copied.
    with_base = model.config.lora is not None
    if mesh is None:
        if not with_base:
            return jax.jit(step, donate_argnums=0)
        jitted = jax.jit(step_part, donate_argnums=0)

        def lora_step(state: TrainState, batch: Batch, rng: jax.Array) -> Any:
            part, frozen = split_state(state)
            new, metrics = jitted(part, frozen, batch, rng)
            return join_state(new, frozen), metrics

        return lora_step
    if param_shardings is None:
        param_shardings = model_param_shardings(model, mesh, rules)
    rep = replicated(mesh)
    compiled: dict[str, Callable[..., Any]] = {}

    def sharded_step(state: TrainState, batch: Batch, rng: jax.Array) -> Any:
        # The optimizer-state layout is read off the first state (any optax chain works).
        part, frozen = split_state(state)
        if "step" not in compiled:
            part_shardings, frozen_shardings = split_state(
                state_shardings(state, param_shardings, mesh)
            )
            compiled["step"] = jax.jit(
                step_part,
                in_shardings=(
                    part_shardings,
                    frozen_shardings,
                    batch_sharding(mesh, 1, rules),
                    rep,
                ),
                out_shardings=(part_shardings, rep),
                donate_argnums=0,
            )
        with activation_sharding(mesh, rules):
            new, metrics = compiled["step"](part, frozen, batch, rng)
        return join_state(new, frozen), metrics

    return sharded_step


def make_eval_step(
    model: Transformer,
    loss_fn: LossFn,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    param_shardings: Any = None,
) -> EvalFn:
    """A jitted loss-only pass `eval(params, batch, rng) -> metrics` (no gradients)."""

    def evaluate(params: Any, batch: Batch, rng: jax.Array) -> Metrics:
        loss, metrics = loss_fn(params, batch, rng)
        return {**metrics, "loss": loss}

    if mesh is None:
        return jax.jit(evaluate)
    if param_shardings is None:
        param_shardings = model_param_shardings(model, mesh, rules)
    rep = replicated(mesh)
    jitted = jax.jit(
        evaluate,
        in_shardings=(param_shardings, batch_sharding(mesh, 1, rules), rep),
        out_shardings=rep,
    )
    return _wrap(jitted, mesh, rules)
