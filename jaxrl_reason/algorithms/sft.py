"""Supervised fine-tuning on (question, reference solution) pairs, evaluated every epoch.

Logging maj@1 and pass@K after each epoch reproduces the paper's SFT trade-off: more
epochs raise maj@1 and lower pass@K (metrics.jsonl, phase "sft_eval").
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import gin

from jaxrl_reason.algorithms.policy import Policy
from jaxrl_reason.data.example import Example
from jaxrl_reason.data.pipeline import SupervisedBatches
from jaxrl_reason.evaluation.evaluate import EvalConfig, flat_summary
from jaxrl_reason.parallel import batch_shards
from jaxrl_reason.training.metrics_writer import read_metrics
from jaxrl_reason.training.optimizer import OptimizerConfig, phase_optimizer
from jaxrl_reason.training.sft_loop import train_sft
from jaxrl_reason.validation import NON_NEGATIVE, POSITIVE, setting, validate

log = logging.getLogger(__name__)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SFTConfig:
    num_epochs: float = setting(3.0, POSITIVE)
    batch_size: int = setting(32, POSITIVE)  # also a multiple of the mesh's batch shards
    max_len: int = setting(512, POSITIVE)
    length_multiple: int | None = setting(64, POSITIVE)  # None: no padding to a multiple
    evaluate_each_epoch: bool = True
    checkpoint_every: int = setting(200, POSITIVE)
    seed: int = setting(0, NON_NEGATIVE)

    def __post_init__(self) -> None:
        validate(self)


def run_sft(
    policy: Policy,
    params: Any,
    train_examples: Sequence[Example],
    eval_examples: Sequence[Example],
    cfg: SFTConfig,
    optimizer: OptimizerConfig,
    eval_cfg: EvalConfig,
    workdir: str | os.PathLike,
    show_progress: bool = True,
) -> tuple[Any, list[dict[str, Any]]]:
    """Fine-tune `params` on reference solutions; return (params, per-epoch eval history).

    Resumes from `workdir` if it holds checkpoints. The optimizer's schedule length is set
    to the number of steps this run takes.
    """
    shards = batch_shards(policy.mesh)
    if cfg.batch_size % shards:
        raise ValueError(
            f"SFTConfig.batch_size={cfg.batch_size} must be a multiple of the "
            f"mesh's {shards} batch shards (data x fsdp)"
        )
    batches = SupervisedBatches(
        train_examples,
        policy.tokenizer,
        policy.prompt_format,
        cfg.batch_size,
        cfg.max_len,
        seed=cfg.seed,
        length_multiple=cfg.length_multiple,
    )
    steps_per_epoch = batches.batches_per_epoch
    num_steps = max(1, round(cfg.num_epochs * steps_per_epoch))
    eval_fn = None
    if cfg.evaluate_each_epoch and eval_examples:
        eval_fn = lambda p, step: {
            "epoch": step / steps_per_epoch,
            **flat_summary(policy.evaluate(p, eval_examples, eval_cfg)),
        }
    log.info(
        "SFT: %d examples, %d steps (%.1f epochs of %d steps)",
        len(train_examples),
        num_steps,
        cfg.num_epochs,
        steps_per_epoch,
    )
    state = train_sft(
        policy.model_config,
        params,
        lambda: batches,
        phase_optimizer(optimizer, num_steps),
        workdir,
        num_steps,
        cfg.seed,
        mesh=policy.mesh,
        eval_fn=eval_fn,
        eval_every=steps_per_epoch if eval_fn else None,
        checkpoint_every=cfg.checkpoint_every,
        show_progress=show_progress,
    )
    return state.params, read_metrics(workdir, "sft_eval")
