"""Train state, losses, jitted steps, checkpoints, metric writers and the SFT loop."""

from jaxrl_reason.training.checkpointing import Checkpointer, CheckpointRestoreError
from jaxrl_reason.training.losses import (
    LossFn,
    model_inputs,
    response_cross_entropy,
    sft_loss_fn,
    token_logprobs,
)
from jaxrl_reason.training.metrics_writer import MetricWriter, read_metrics
from jaxrl_reason.training.optimizer import (
    OptimizerConfig,
    learning_rate_at,
    make_optimizer,
    make_schedule,
)
from jaxrl_reason.training.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionGuard
from jaxrl_reason.training.progress import ThroughputBar, peak_flops_per_device
from jaxrl_reason.training.sft_loop import ResumableIterator, train_sft
from jaxrl_reason.training.train_state import TrainState, init_train_state, state_shardings
from jaxrl_reason.training.train_step import (
    make_eval_step,
    make_train_step,
    model_param_shardings,
    shard_batch,
)

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "CheckpointRestoreError",
    "Checkpointer",
    "LossFn",
    "MetricWriter",
    "OptimizerConfig",
    "Preempted",
    "PreemptionGuard",
    "ResumableIterator",
    "ThroughputBar",
    "TrainState",
    "init_train_state",
    "learning_rate_at",
    "make_eval_step",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "model_inputs",
    "model_param_shardings",
    "peak_flops_per_device",
    "read_metrics",
    "response_cross_entropy",
    "sft_loss_fn",
    "shard_batch",
    "state_shardings",
    "token_logprobs",
    "train_sft",
]
