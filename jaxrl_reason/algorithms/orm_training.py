"""Train the outcome reward model (ORM, paper §3) and score samples with it.

Training (Cobbe et al. 2021): draw K solutions per training question from a policy, label
each by whether its final answer is right, give that label to every response token (or
only to the step ends, `step_ends_only`), and fit the reward head plus the trunk with plain
BCE, starting from the policy's weights and a zero reward head.

Workdir layout (`run_orm_training`):
  samples.jsonl      the labelled samples, exact token ids (written once, atomically)
  checkpoints/       train_sft's resumable train-state checkpoints
  metrics.jsonl, tb/ per-step training metrics (phase "orm")
  orm/               the trained ORM params and summary (`orm_scoring.load_orm`)
  summary.json       the summary returned
Re-running the same call reuses `samples.jsonl` (no resampling) and resumes or restores
the training from `checkpoints/`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reason.algorithms.orm_scoring import ORM_HEADS, save_orm
from jaxrl_reason.algorithms.policy import Policy
from jaxrl_reason.algorithms.rollouts import (
    place_response_values,
    sample_rollouts,
    sequence_batch,
    step_ends,
)
from jaxrl_reason.algorithms.sft import phase_optimizer
from jaxrl_reason.data.example import Example
from jaxrl_reason.evaluation.report import write_atomic, write_json
from jaxrl_reason.model import ModelConfig, Transformer, init_params
from jaxrl_reason.model.transformer import HEAD_NAMES
from jaxrl_reason.parallel import batch_shards
from jaxrl_reason.rewards.grading import is_correct
from jaxrl_reason.rewards.orm import orm_loss_fn, orm_token_labels
from jaxrl_reason.training.metrics_writer import read_metrics
from jaxrl_reason.training.optimizer import OptimizerConfig
from jaxrl_reason.training.sft_loop import train_sft

log = logging.getLogger(__name__)
PHASE = "orm"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ORMConfig:
    samples_per_question: int = 4  # K
    temperature: float = 0.7
    max_new_tokens: int = 256
    num_questions: int | None = None  # None: every training question
    epochs: float = 2.0
    batch_size: int = 32
    length_multiple: int = 64
    learning_rate: float | None = None  # None: the optimizer's
    step_ends_only: bool = False  # label only step-end tokens (else every response token)
    prompts_per_call: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        positive = {
            "samples_per_question": self.samples_per_question,
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,
            "length_multiple": self.length_multiple,
            "prompts_per_call": self.prompts_per_call,
            "epochs": self.epochs,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"ORMConfig.{name} must be > 0, got {value}")
        if self.num_questions is not None and self.num_questions < 1:
            raise ValueError(
                f"ORMConfig.num_questions must be >= 1 or None (all), got {self.num_questions}"
            )
        if self.temperature < 0:
            raise ValueError(f"ORMConfig.temperature must be >= 0, got {self.temperature}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(
                f"ORMConfig.learning_rate must be > 0 or None (the optimizer's), "
                f"got {self.learning_rate}"
            )


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

    def to_jsonl(self) -> str:
        rows = zip(self.question_ids, self.texts, self.prompt_ids, self.response_ids, self.correct)
        return "".join(
            json.dumps({"id": q, "text": t, "prompt_ids": p, "response_ids": r, "correct": c})
            + "\n"
            for q, t, p, r, c in rows
        )

    @classmethod
    def from_jsonl(cls, text: str) -> LabelledSamples:
        rows = [json.loads(line) for line in text.splitlines() if line]
        return cls(
            question_ids=[r["id"] for r in rows],
            texts=[r["text"] for r in rows],
            prompt_ids=[r["prompt_ids"] for r in rows],
            response_ids=[r["response_ids"] for r in rows],
            correct=[bool(r["correct"]) for r in rows],
        )


class ORMBatches:
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
        self.batch_size = batch_size
        self.length_multiple = length_multiple
        self.seed = seed
        self.step_ends_only = step_ends_only
        self.step_end_masks = step_end_masks
        self.batches_per_epoch = math.ceil(len(samples) / batch_size)
        self.restore({"epoch": 0, "batch": 0})

    def state(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batch": self._batch}

    def restore(self, state: dict[str, int]) -> None:
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if not 0 <= batch < self.batches_per_epoch or epoch < 0:
            raise ValueError(
                f"invalid ORM batch state {state} ({self.batches_per_epoch} batches/epoch)"
            )
        self._epoch, self._batch = epoch, batch
        self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.samples))

    def __iter__(self) -> ORMBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rows = self._order[self._batch * self.batch_size : (self._batch + 1) * self.batch_size]
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
        self._batch += 1
        if self._batch == self.batches_per_epoch:
            self.restore({"epoch": self._epoch + 1, "batch": 0})
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


def _questions(examples: Sequence[Example], cfg: ORMConfig) -> list[Example]:
    if cfg.num_questions is None or cfg.num_questions >= len(examples):
        return list(examples)
    rng = np.random.default_rng([cfg.seed, 1])
    idx = np.sort(rng.choice(len(examples), cfg.num_questions, replace=False))
    return [examples[i] for i in idx]


def _sample_and_label(
    policy: Policy, params: Any, questions: Sequence[Example], cfg: ORMConfig
) -> LabelledSamples:
    sampling = policy.sampling_config(cfg.samples_per_question, cfg.temperature, cfg.max_new_tokens)
    key = jax.random.fold_in(jax.random.key(cfg.seed), 0)
    rollouts = sample_rollouts(policy, params, questions, sampling, key, cfg.prompts_per_call)
    return LabelledSamples(
        question_ids=[ex.id for ex in rollouts.examples],
        texts=list(rollouts.texts),
        prompt_ids=[list(p) for p in rollouts.prompt_ids],
        response_ids=[list(r) for r in rollouts.response_ids],
        correct=[is_correct(t, ex.answer) for t, ex in zip(rollouts.texts, rollouts.examples)],
    )


def _load_or_sample(
    policy: Policy, params: Any, questions: Sequence[Example], cfg: ORMConfig, path: Path
) -> LabelledSamples:
    expected = [ex.id for ex in questions for _ in range(cfg.samples_per_question)]
    if path.exists():
        samples = LabelledSamples.from_jsonl(path.read_text())
        if samples.question_ids != expected:
            raise ValueError(
                f"{path} holds samples of other questions or another samples_per_question "
                "than this call asks for; use a fresh workdir or delete the file"
            )
        log.info("ORM: reusing %d labelled samples from %s", len(samples), path)
        return samples
    samples = _sample_and_label(policy, params, questions, cfg)
    write_atomic(path, samples.to_jsonl())
    return samples


def _last_epoch_metrics(workdir: Path, num_steps: int, steps_per_epoch: int) -> dict[str, float]:
    """Mean loss/accuracy over the last epoch's logged steps (a resumed step: its last log)."""
    by_step = {r["step"]: r for r in read_metrics(workdir, PHASE)}
    steps = range(max(1, num_steps - steps_per_epoch + 1), num_steps + 1)
    last = [by_step[s] for s in steps if s in by_step]
    return {
        f"final_{k}": float(np.mean([float(r[k]) for r in last])) if last else float("nan")
        for k in ("loss", "accuracy")
    }


def run_orm_training(
    policy: Policy,
    policy_params: Any,
    train_examples: Sequence[Example],
    cfg: ORMConfig,
    optimizer: OptimizerConfig,
    workdir: str | os.PathLike,
    show_progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Sample, label and train (or resume) an ORM from `policy_params`; return
    (orm params, summary). The summary has the sample counts, fraction correct, the
    positive fraction of the labelled tokens (class balance) and the last epoch's mean
    train loss and accuracy. See the module doc for what is written in `workdir`.
    """
    if not train_examples:
        raise ValueError("run_orm_training: no training questions (train_examples is empty)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    questions = _questions(train_examples, cfg)
    samples = _load_or_sample(policy, policy_params, questions, cfg, workdir / "samples.jsonl")
    masks = None
    if cfg.step_ends_only:
        masks = [
            step_ends(policy.tokenizer, r, t) for r, t in zip(samples.response_ids, samples.texts)
        ]
    shards = batch_shards(policy.mesh)
    batch_size = -(-min(cfg.batch_size, len(samples)) // shards) * shards
    batches = ORMBatches(
        samples,
        policy.tokenizer.pad_id,
        batch_size,
        cfg.length_multiple,
        seed=cfg.seed,
        step_ends_only=cfg.step_ends_only,
        step_end_masks=masks,
    )
    correct = np.asarray(samples.correct, np.float64)
    num_labels = [int(m.sum()) for m in masks] if masks else list(map(len, samples.response_ids))
    positive = float(np.dot(correct, num_labels) / max(sum(num_labels), 1))
    log.info(
        "ORM: %d samples of %d questions, %.1f%% correct, %.1f%% of labelled tokens positive",
        len(samples),
        len(questions),
        100 * correct.mean(),
        100 * positive,
    )
    num_steps = max(1, math.ceil(cfg.epochs * batches.batches_per_epoch))
    lr = cfg.learning_rate or optimizer.learning_rate
    state = train_sft(
        policy.model_config,
        orm_init_params(policy.model_config, policy_params),
        lambda: batches,
        phase_optimizer(optimizer.replace(learning_rate=lr), num_steps),
        workdir,
        num_steps,
        cfg.seed,
        mesh=policy.mesh,
        checkpoint_every=max(1, num_steps // 4),
        keep=1,
        loss_fn=orm_train_loss(policy.model_config),
        show_progress=show_progress,
        phase=PHASE,
        heads=ORM_HEADS,
    )
    solved = {q for q, c in zip(samples.question_ids, samples.correct) if c}
    summary = {
        "num_questions": len(questions),
        "num_samples": len(samples),
        "fraction_correct": float(correct.mean()),
        "questions_solved_fraction": len(solved) / len(questions),
        "label_positive_fraction": positive,
        "num_steps": num_steps,
        **_last_epoch_metrics(workdir, num_steps, batches.batches_per_epoch),
    }
    save_orm(workdir, state.params, summary)
    write_json(workdir / "summary.json", summary)
    return state.params, summary
