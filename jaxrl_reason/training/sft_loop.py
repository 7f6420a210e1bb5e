"""The supervised fine-tuning loop: resumable, checkpointed, preemption-safe.

A thin Python loop around the jitted train step. Re-running the same call on the same
workdir resumes from the newest checkpoint (state and data position), and a resumed run
reproduces an uninterrupted one: the step's RNG key is `fold_in(key(seed), step)`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

import jax

from jaxrl_reason.model import ModelConfig, Transformer
from jaxrl_reason.parallel.hosts import to_host
from jaxrl_reason.parallel.rules import Rules
from jaxrl_reason.training.adapter_checkpoints import adapter_checkpointer
from jaxrl_reason.training.checkpointing import Checkpointer
from jaxrl_reason.training.losses import LossFn, sft_loss_fn
from jaxrl_reason.training.metrics_writer import MetricWriter
from jaxrl_reason.training.optimizer import OptimizerConfig, make_optimizer, make_schedule
from jaxrl_reason.training.preemption import Preempted, PreemptionGuard
from jaxrl_reason.training.progress import ThroughputBar
from jaxrl_reason.training.train_state import TrainState, init_train_state
from jaxrl_reason.training.train_step import make_train_step, model_param_shardings, shard_batch

log = logging.getLogger(__name__)


class ResumableIterator(Protocol):
    """Yields batches (dicts of host arrays); `state()`/`restore()` save its position."""

    def __next__(self) -> dict[str, Any]: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


EvalCallback = Callable[[Any, int], dict[str, Any]]


def _next_batch(data: ResumableIterator, step: int) -> dict[str, Any]:
    try:
        return next(data)
    except StopIteration:
        raise ValueError(
            f"the data iterator ran out at step {step}; make it repeat (several epochs) or "
            "lower num_steps"
        ) from None


@functools.lru_cache(maxsize=8)
def _compiled_step(
    model_config: ModelConfig,
    optimizer_config: OptimizerConfig,
    mesh: jax.sharding.Mesh | None,
    rules: Rules | None,
    loss_fn: LossFn | None,
    heads: tuple[str, ...] = (),
) -> tuple[Any, Any, Any]:
    """(tx, train step, param shardings), cached so that repeated calls (EI rounds, resumed
    runs in one process) reuse the compiled step instead of tracing it again."""
    model = Transformer(model_config, heads=heads)
    tx = make_optimizer(optimizer_config)
    shardings = None if mesh is None else model_param_shardings(model, mesh, rules)
    step_fn = make_train_step(
        model,
        tx,
        loss_fn or sft_loss_fn(model),
        mesh,
        rules,
        shardings,
        learning_rate_fn=make_schedule(optimizer_config),
        accumulation_steps=optimizer_config.accumulation_steps,
    )
    return tx, step_fn, shardings


def train_sft(
    model_config: ModelConfig,
    params: Any,
    batches_iterator_factory: Callable[[], ResumableIterator],
    optimizer_config: OptimizerConfig,
    workdir: str | os.PathLike,
    num_steps: int,
    seed: int,
    mesh: jax.sharding.Mesh | None = None,
    eval_fn: EvalCallback | None = None,
    eval_every: int | None = None,
    checkpoint_every: int = 500,
    keep: int = 3,
    loss_fn: LossFn | None = None,
    rules: Rules | None = None,
    async_save: bool = True,
    show_progress: bool = True,
    phase: str = "sft",
    heads: tuple[str, ...] = (),
) -> TrainState:
    """Train `params` for `num_steps` train-step calls (micro-batches); return the state.

    `batches_iterator_factory()` makes the data iterator; on resume its position is
    restored from the checkpoint's meta. `eval_fn(params, step) -> metrics` runs every
    `eval_every` steps. Checkpoints go to `workdir/checkpoints` every `checkpoint_every`
    steps and at the end; metrics to `workdir/metrics.jsonl` and `workdir/tb`.
    `loss_fn` defaults to response cross-entropy. Raises `FloatingPointError` on a
    non-finite loss (after saving the last good state) and `Preempted` (a `SystemExit`)
    after saving on SIGTERM. `phase` names the run in metrics and checkpoint meta.
    `heads` are the model's scalar heads (e.g. ("reward",) for the ORM with its own
    `loss_fn`); the params must carry them.
    """
    if num_steps < 0 or checkpoint_every < 1:
        raise ValueError(
            f"train_sft: num_steps={num_steps} must be >= 0 and checkpoint_every="
            f"{checkpoint_every} >= 1"
        )
    if eval_fn is not None and not eval_every:
        raise ValueError("train_sft: eval_fn needs eval_every (a number of steps)")
    workdir = os.fspath(workdir)
    tx, step_fn, shardings = _compiled_step(
        model_config, optimizer_config, mesh, rules, loss_fn, tuple(heads)
    )
    state = init_train_state(params, tx, mesh, shardings)
    data = batches_iterator_factory()
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=keep, async_save=async_save)
    ckpt = adapter_checkpointer(ckpt, state)  # LoRA: adapters, heads, optimizer state only
    start = 0
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        start = int(meta["step"])
        if meta.get("final") and start < num_steps:
            log.warning(
                "continuing a finished run (step %d) to %d steps: its optimizer state was "
                "not kept, so it starts afresh",
                start,
                num_steps,
            )
        data.restore(meta["data"])
        if meta.get("seed") != seed:
            log.warning("resuming a run started with seed %s under seed %s", meta.get("seed"), seed)
        log.info("resumed from step %d in %s", start, ckpt.directory)
    if start >= num_steps:
        ckpt.close()
        return state

    key = jax.random.key(seed)

    def meta_at(step: int, data_state: dict[str, Any]) -> dict[str, Any]:
        meta = {"step": step, "data": data_state, "seed": seed, "phase": phase}
        return {**meta, "final": True} if step == num_steps else meta

    # Records past `start` (written after the checkpoint, before a crash) are redone.
    writer = MetricWriter(workdir, resume_step=start, phases=(phase, f"{phase}_eval"))
    bar = ThroughputBar(
        num_steps,
        initial=start,
        desc=phase,
        disable=not show_progress or None,
        flops_per_token=None,
    )
    try:
        with PreemptionGuard() as guard:
            data_before = data.state()  # position before the batch of the current step
            batch = _next_batch(data, start)
            for step in range(start, num_steps):
                bar.flops_per_token = model_config.flops_per_token(batch["tokens"].shape[1])
                num_tokens = int(batch["tokens"].size)
                state, metrics = step_fn(
                    state, shard_batch(batch, mesh, rules), jax.random.fold_in(key, step)
                )
                data_after = data.state()
                if step + 1 < num_steps:
                    batch = _next_batch(data, step + 1)  # host work that overlaps the device's step
                metrics = to_host(metrics)
                if not bool(metrics["finite"]):
                    # The step left the state as it was: that state is the last good one.
                    ckpt.save(step, state, meta_at(step, data_before), force=True)
                    ckpt.wait()
                    raise FloatingPointError(
                        f"non-finite loss at step {step + 1} (loss={metrics['loss']}, "
                        f"grad_norm={metrics['grad_norm']}); last good checkpoint: step {step} "
                        f"in {ckpt.directory}"
                    )
                done = step + 1
                rates = bar.update(1, num_tokens, loss=float(metrics["loss"]))
                writer.write(done, {**metrics, **rates}, phase)
                if eval_fn is not None and done % eval_every == 0:
                    writer.write(done, eval_fn(state.params, done), f"{phase}_eval")
                if done % checkpoint_every == 0 or done == num_steps:
                    final = done == num_steps  # a finished phase needs no optimizer state
                    ckpt.save(done, state, meta_at(done, data_after), force=True, final=final)
                data_before = data_after
                if done < num_steps and guard.should_stop:
                    ckpt.save(done, state, meta_at(done, data_after), force=True)
                    ckpt.wait()
                    message = (
                        f"received SIGTERM: saved checkpoint at step {done} in "
                        f"{ckpt.directory}; re-run the same command to resume"
                    )
                    log.warning(message)
                    print(message, flush=True)
                    raise Preempted(message)
    finally:
        bar.close()
        writer.close()
        ckpt.close()
    return state
