"""What the sample-then-fine-tune methods (Expert Iteration, RCRL) share: their settings,
how a round samples, and how a round fine-tunes on the examples it built.

Round r draws `questions_per_round` training questions (all by default) and K samples of
each from pi_{r-1} with the key `round_key(seed, r)`; the method turns the samples into SFT
examples, and pi_r is fine-tuned on them for `epochs_per_round` epochs, by default from the
INITIAL weights (STaR-style; the paper leaves this open, so `retrain_from_initial` is a
flag). The fine-tuning checkpoints live in the round's scratch directory, so a run killed
mid-round resumes inside it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from jaxrl_reason.algorithms.round_sampling import RolloutConfig, draw_questions, round_key
from jaxrl_reason.algorithms.rounds import PhaseContext, PhaseState, RoundPlan
from jaxrl_reason.data.example import Example
from jaxrl_reason.data.pipeline import SupervisedBatches
from jaxrl_reason.data.prompts import PromptFormat
from jaxrl_reason.parallel import batch_shards
from jaxrl_reason.training.optimizer import phase_optimizer
from jaxrl_reason.training.sft_loop import train_sft
from jaxrl_reason.validation import POSITIVE, setting

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class SampleFineTuneConfig(RolloutConfig):
    """Settings of a sample-then-fine-tune method (the fields EI's and RCRL's share)."""

    num_rounds: int = setting(4, POSITIVE)
    questions_per_round: int | None = setting(None, POSITIVE)  # None: every training question
    epochs_per_round: float = setting(2.0, POSITIVE)
    batch_size: int = setting(32, POSITIVE)
    max_len: int = setting(512, POSITIVE)
    length_multiple: int | None = setting(64, POSITIVE)  # None: no padding to a multiple
    retrain_from_initial: bool = True
    # fine-tuning rate per round; None: the optimizer's
    learning_rate: float | None = setting(None, POSITIVE)


def sampling_plan(
    cfg: SampleFineTuneConfig,
    ctx: PhaseContext,
    state: PhaseState,
    round_index: int,
    prompt_format: PromptFormat | None = None,
) -> RoundPlan:
    """Round `round_index`'s questions and K samples from the current policy."""
    return RoundPlan(
        questions=draw_questions(ctx.train, cfg.questions_per_round, cfg.seed, round_index),
        params=state.arrays,
        sampling=cfg.sampling(ctx.policy),
        key=round_key(cfg.seed, round_index),
        prompts_per_call=cfg.prompts_per_call,
        prompt_format=prompt_format,
    )


def fine_tune_round(
    cfg: SampleFineTuneConfig,
    ctx: PhaseContext,
    state: PhaseState,
    round_index: int,
    examples: Sequence[Example],
    prompts: Sequence[str] | None = None,
    phase: str = "sft",
) -> Any:
    """pi_r: `cfg.epochs_per_round` epochs on `examples` (each with its `prompts` text, or
    the policy's prompt format) from the initial or the current params; unchanged when
    there are no examples. Checkpointed in the round's scratch directory."""
    start = ctx.init_params if cfg.retrain_from_initial else state.arrays
    if not examples:
        return start
    batches = round_batches(ctx, examples, prompts, cfg, round_index)
    num_steps = max(1, math.ceil(cfg.epochs_per_round * batches.batches_per_epoch))
    lr = cfg.learning_rate or ctx.optimizer.learning_rate
    trained = train_sft(
        ctx.policy.model_config,
        start,
        lambda: batches,
        phase_optimizer(ctx.optimizer.replace(learning_rate=lr), num_steps),
        ctx.round_dir(round_index),
        num_steps,
        cfg.seed + round_index,
        mesh=ctx.policy.mesh,
        checkpoint_every=num_steps,
        keep=1,
        show_progress=ctx.show_progress,
        phase=phase,
    )
    return trained.params


def round_batches(
    ctx: PhaseContext,
    examples: Sequence[Example],
    prompts: Sequence[str] | None,
    cfg: SampleFineTuneConfig,
    round_index: int,
) -> SupervisedBatches:
    """A round's SFT batches. A batch splits evenly over the mesh's batch shards; a
    dataset smaller than one batch is repeated to fill it."""
    policy = ctx.policy
    shards = batch_shards(policy.mesh)
    batch_size = max(shards, min(cfg.batch_size, len(examples)) // shards * shards)
    repeats = -(-batch_size // len(examples))
    return SupervisedBatches(
        list(examples) * repeats,
        policy.tokenizer,
        None if prompts is not None else policy.prompt_format,
        batch_size,
        cfg.max_len,
        seed=cfg.seed * 1000 + round_index,
        length_multiple=cfg.length_multiple,
        prompts=None if prompts is None else list(prompts) * repeats,
    )


def dedup_key(solution: str) -> str:
    """Two solutions are the same when they differ only in white space."""
    return " ".join(solution.split())


def merge_distinct(
    dataset: Mapping[str, Sequence[T]], new: Mapping[str, Sequence[T]], key: Callable[[T], Any]
) -> tuple[dict[str, list[T]], int]:
    """The union of two per-question datasets, keeping the first of the items whose `key`
    is equal; also the number of items newly added. Neither input is modified."""
    merged = {q: list(items) for q, items in dataset.items()}
    added = 0
    for q, items in new.items():
        have = {key(x) for x in merged.get(q, [])}
        for x in items:
            if key(x) not in have:
                have.add(key(x))
                merged.setdefault(q, []).append(x)
                added += 1
    return merged, added
