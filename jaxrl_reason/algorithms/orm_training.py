"""Train the outcome reward model (ORM, paper §3): a one-round algorithm on the one loop.

Its single round (Cobbe et al. 2021) draws K solutions per training question from the start
policy, labels each by whether its final answer is right, gives that label to every
response token (or only to the step ends, `step_ends_only`), and fits the reward head plus
the trunk with plain BCE, starting from the policy's weights and a zero reward head. The
phase state holds the trained ORM's params (`orm_scoring.load_orm` reads them); the round's
history entry is the summary (sample counts, fraction correct, label balance, last epoch's
loss and accuracy).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reason.algorithms.orm_scoring import ORM_HEADS, ORMScorer
from jaxrl_reason.algorithms.policy import Policy
from jaxrl_reason.algorithms.rollouts import place_response_values, sequence_batch, step_ends
from jaxrl_reason.algorithms.round_sampling import RolloutConfig, draw_questions, round_key
from jaxrl_reason.algorithms.rounds import (
    Algorithm,
    Improved,
    PhaseContext,
    PhaseState,
    RoundPlan,
)
from jaxrl_reason.data.pipeline import EpochBatches
from jaxrl_reason.model import ModelConfig, Transformer, init_params
from jaxrl_reason.model.transformer import HEAD_NAMES
from jaxrl_reason.parallel import batch_shards
from jaxrl_reason.rewards.grading import is_correct
from jaxrl_reason.rewards.orm import orm_loss_fn, orm_token_labels
from jaxrl_reason.sampling.rollouts import Rollouts
from jaxrl_reason.training.metrics_writer import read_metrics
from jaxrl_reason.training.optimizer import phase_optimizer
from jaxrl_reason.training.sft_loop import train_sft
from jaxrl_reason.validation import POSITIVE, setting

PHASE = "orm"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ORMConfig(RolloutConfig):
    num_questions: int | None = setting(None, POSITIVE)  # None: every training question
    epochs: float = setting(2.0, POSITIVE)
    batch_size: int = setting(32, POSITIVE)
    length_multiple: int = setting(64, POSITIVE)
    learning_rate: float | None = setting(None, POSITIVE)  # None: the optimizer's
    step_ends_only: bool = False  # label only step-end tokens (else every response token)


@dataclasses.dataclass(frozen=True)
class LabelledSamples:
    """N sampled solutions with their exact token ids and correctness."""

    question_ids: list[str]  # [N]
    texts: list[str]  # [N]
    prompt_ids: list[list[int]]  # [N] BOS included
    response_ids: list[list[int]]  # [N] EOS included when sampled
    correct: list[bool]  # [N]

    def __len__(self) -> int:
        return len(self.texts)


class ORMBatches(EpochBatches):
    """Endless, deterministic, resumable ORM batches (a `ResumableIterator`).

    Epoch e visits the samples in the permutation `default_rng([seed, e])`; every batch has
    `batch_size` rows, the last of an epoch padded with empty (unlabelled) rows. A batch
    holds tokens, positions, input_mask, labels and label_mask ([B, T], sequence frame).
    `step_end_masks` (bool per response token) are required with `step_ends_only`.
    """

    def __init__(
        self,
        samples: LabelledSamples,
        pad_id: int,
        batch_size: int,
        length_multiple: int = 64,
        seed: int = 0,
        step_ends_only: bool = False,
        step_end_masks: Sequence[np.ndarray] | None = None,
    ):
        if not len(samples):
            raise ValueError("ORMBatches: no samples to train on")
        if step_ends_only and step_end_masks is None:
            raise ValueError("ORMBatches: step_ends_only=True needs step_end_masks")
        self.samples = samples
        self.pad_id = pad_id
        self.length_multiple = length_multiple
        self.step_ends_only = step_ends_only
        self.step_end_masks = step_end_masks
        self._start_epochs(len(samples), batch_size, math.ceil(len(samples) / batch_size), seed)

    def __next__(self) -> dict[str, np.ndarray]:
        rows = self._next_rows()
        s = self.samples
        prompts = [s.prompt_ids[i] for i in rows]
        batch = sequence_batch(
            prompts,
            [s.response_ids[i] for i in rows],
            self.pad_id,
            self.length_multiple,
            rows_multiple=self.batch_size,
        )
        response_mask = batch.pop("response_mask")  # [B, T]
        correct = np.zeros(self.batch_size, np.bool_)  # padding rows have no labels anyway
        correct[: len(rows)] = [s.correct[i] for i in rows]
        ends = None
        if self.step_ends_only:
            masks = [self.step_end_masks[i] for i in rows]
            ends = place_response_values(masks, prompts, response_mask.shape) > 0
        labels, label_mask = orm_token_labels(response_mask, correct, self.step_ends_only, ends)
        batch["labels"] = np.asarray(labels)
        batch["label_mask"] = np.asarray(label_mask)
        return batch


@functools.lru_cache(maxsize=8)
def orm_train_loss(config: ModelConfig) -> Any:
    """`loss_fn(params, batch, rng)` of the ORM, one object per config (train_sft caches the
    compiled step on it)."""
    return functools.partial(orm_loss_fn, Transformer(config, heads=ORM_HEADS))


def orm_init_params(config: ModelConfig, policy_params: Any) -> Any:
    """The policy's trunk plus a zero reward head: the ORM starts as the LM."""
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0), heads=ORM_HEADS))
    head_names = tuple(f"{h}_head" for h in HEAD_NAMES)
    trunk = {k: v for k, v in policy_params.items() if not k.startswith(head_names)}
    heads = {
        k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items() if k.startswith("reward_head")
    }
    return {**trunk, **heads}


def label_rollouts(rollouts: Rollouts) -> LabelledSamples:
    """Each rollout with its exact token ids and whether its final answer is right."""
    return LabelledSamples(
        question_ids=[ex.id for ex in rollouts.examples],
        texts=list(rollouts.texts),
        prompt_ids=[list(p) for p in rollouts.prompt_ids],
        response_ids=[list(r) for r in rollouts.response_ids],
        correct=[is_correct(t, ex.answer) for t, ex in zip(rollouts.texts, rollouts.examples)],
    )


def _last_epoch_metrics(workdir: Path, num_steps: int, steps_per_epoch: int) -> dict[str, float]:
    """Mean loss/accuracy over the last epoch's logged steps (a resumed step: its last log)."""
    by_step = {r["step"]: r for r in read_metrics(workdir, PHASE)}
    steps = range(max(1, num_steps - steps_per_epoch + 1), num_steps + 1)
    last = [by_step[s] for s in steps if s in by_step]
    return {
        f"final_{k}": float(np.mean([float(r[k]) for r in last])) if last else float("nan")
        for k in ("loss", "accuracy")
    }


class ORMTraining(Algorithm):
    """The ORM on the one loop: one round whose improve labels the samples and trains."""

    phase, title = PHASE, "ORM"
    num_rounds = 1
    eval_every = 0
    makes_scorer = True

    def __init__(self, cfg: ORMConfig):
        self.cfg = cfg

    def init(self, ctx: PhaseContext) -> tuple[Any, dict[str, Any]]:
        if not ctx.train:
            raise ValueError("ORM training: no training questions (the train split is empty)")
        return orm_init_params(ctx.policy.model_config, ctx.init_params), {}

    def plan(self, ctx: PhaseContext, state: PhaseState, round_index: int) -> RoundPlan:
        cfg = self.cfg
        return RoundPlan(
            questions=draw_questions(ctx.train, cfg.num_questions, cfg.seed, 1),
            params=ctx.init_params,  # samples of the start policy, not of the ORM
            sampling=cfg.sampling(ctx.policy),
            key=round_key(cfg.seed, 0),
            prompts_per_call=cfg.prompts_per_call,
        )

    def improve(
        self, ctx: PhaseContext, state: PhaseState, rollouts: Rollouts, round_index: int
    ) -> Improved:
        cfg, policy = self.cfg, ctx.policy
        samples = label_rollouts(rollouts)
        masks = None
        if cfg.step_ends_only:
            masks = [
                step_ends(policy.tokenizer, r, t)
                for r, t in zip(samples.response_ids, samples.texts)
            ]
        shards = batch_shards(policy.mesh)
        batch_size = -(-min(cfg.batch_size, len(samples)) // shards) * shards
        batches = ORMBatches(
            samples,
            policy.tokenizer.pad_id,
            batch_size,
            cfg.length_multiple,
            cfg.seed,
            cfg.step_ends_only,
            masks,
        )
        num_steps = max(1, math.ceil(cfg.epochs * batches.batches_per_epoch))
        lr = cfg.learning_rate or ctx.optimizer.learning_rate
        trained = train_sft(
            policy.model_config,
            state.arrays,
            lambda: batches,
            phase_optimizer(ctx.optimizer.replace(learning_rate=lr), num_steps),
            ctx.round_dir(round_index),
            num_steps,
            cfg.seed,
            mesh=policy.mesh,
            checkpoint_every=max(1, num_steps // 4),
            keep=1,
            loss_fn=orm_train_loss(policy.model_config),
            show_progress=ctx.show_progress,
            phase=PHASE,
            heads=ORM_HEADS,
        )
        summary = _summary(samples, masks, rollouts.num_samples)
        summary["num_steps"] = num_steps
        steps_per_epoch = batches.batches_per_epoch
        summary.update(_last_epoch_metrics(ctx.round_dir(round_index), num_steps, steps_per_epoch))
        return Improved(trained.params, {}, summary)

    def eval_config(self, round_index: int, cfg: Any) -> None:
        return None  # a reward model: it is measured by rerank@K in the policies' evaluations

    def scorer(self, policy: Policy, params: Any) -> ORMScorer:
        return ORMScorer(policy, params)

    def fingerprint(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)  # other settings make another ORM


def _summary(
    samples: LabelledSamples, masks: Sequence[np.ndarray] | None, k: int
) -> dict[str, Any]:
    """Sample counts, fraction correct and the positive fraction of the labelled tokens."""
    correct = np.asarray(samples.correct, np.float64)
    num_labels = [int(m.sum()) for m in masks] if masks else list(map(len, samples.response_ids))
    solved = {q for q, c in zip(samples.question_ids, samples.correct) if c}
    num_questions = len(samples) // k
    return {
        "num_questions": num_questions,
        "labelled_samples": len(samples),
        "fraction_correct": float(correct.mean()),
        "questions_solved_fraction": len(solved) / num_questions,
        "label_positive_fraction": float(np.dot(correct, num_labels) / max(sum(num_labels), 1)),
    }
