"""Expert Iteration (paper §2.2): sample, keep the correct, grow a dataset, fine-tune, repeat.

Round i draws K solutions per training question from pi_{i-1}, keeps those whose final
answer is right, de-duplicates them per question (exact match after collapsing
whitespace), and adds them to the cumulative dataset D_i = R_i ∪ D_{i-1}. pi_i is then
fine-tuned on D_i, by default from the INITIAL weights (STaR-style; the paper leaves this
open, so `retrain_from_initial` is a flag), and evaluated on held-out questions.

Each round's full evaluation is kept in `workdir/ei/eval_round_<i>.json`.

Resume: each finished round is recorded in `workdir/ei/state.json` with its dataset in
`workdir/ei/dataset_round_<i>.jsonl` (written atomically); a round's fine-tuning
checkpoints live in `workdir/ei/round_<i>`, so a killed run picks up mid-round. Rollouts
of an unfinished round are drawn again with the same key from the same policy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
import jax
import numpy as np

from jaxrl_reason.algorithms.policy import Policy
from jaxrl_reason.algorithms.sft import flat_summary, phase_optimizer
from jaxrl_reason.data.example import Example
from jaxrl_reason.data.pipeline import SupervisedBatches
from jaxrl_reason.evaluation.evaluate import EvalConfig, greedy_only
from jaxrl_reason.evaluation.report import write_atomic, write_json
from jaxrl_reason.parallel import batch_shards
from jaxrl_reason.rewards.grading import is_correct
from jaxrl_reason.training.optimizer import OptimizerConfig
from jaxrl_reason.training.sft_loop import train_sft

log = logging.getLogger(__name__)
Dataset = dict[str, list[str]]  # question id -> distinct correct solutions, in order found


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ExpertIterationConfig:
    num_rounds: int = 4
    samples_per_question: int = 4  # K
    temperature: float = 0.7
    max_new_tokens: int = 256
    questions_per_round: int | None = None  # None: every training question
    epochs_per_round: float = 2.0
    batch_size: int = 32
    max_len: int = 512
    length_multiple: int | None = 64
    retrain_from_initial: bool = True
    learning_rate: float | None = None  # fine-tuning rate per round; None: the optimizer's
    full_eval_every_round: bool = False
    prompts_per_call: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_rounds < 1 or self.samples_per_question < 1:
            raise ValueError(
                f"ExpertIterationConfig needs num_rounds >= 1 and "
                f"samples_per_question >= 1, got {self}"
            )


def dedup_key(solution: str) -> str:
    return " ".join(solution.split())


def correct_solutions(examples: Sequence[Example], samples: Sequence[Sequence[str]]) -> Dataset:
    """Per question, its distinct samples whose final answer matches the reference."""
    if len(examples) != len(samples):
        raise ValueError(f"{len(examples)} questions but {len(samples)} rows of samples")
    kept: Dataset = {}
    for ex, row in zip(examples, samples):
        seen: set[str] = set()
        for text in row:
            key = dedup_key(text)
            if key and key not in seen and is_correct(text, ex.answer):
                seen.add(key)
                kept.setdefault(ex.id, []).append(text.strip())
    return kept


def merge(
    dataset: Mapping[str, Sequence[str]], new: Mapping[str, Sequence[str]]
) -> tuple[Dataset, int]:
    """D_i = R_i ∪ D_{i-1}, de-duplicated per question; also the number newly added."""
    merged = {q: list(s) for q, s in dataset.items()}
    added = 0
    for q, solutions in new.items():
        have = {dedup_key(s) for s in merged.get(q, [])}
        for s in solutions:
            if dedup_key(s) not in have:
                have.add(dedup_key(s))
                merged.setdefault(q, []).append(s)
                added += 1
    return merged, added


def as_examples(
    dataset: Mapping[str, Sequence[str]], by_id: Mapping[str, Example]
) -> list[Example]:
    """Training examples: each kept solution paired with its question."""
    return [
        dataclasses.replace(by_id[q], id=f"{q}#{i}", solution=s)
        for q in sorted(dataset)
        for i, s in enumerate(dataset[q])
    ]


def round_questions(
    examples: Sequence[Example], questions_per_round: int | None, seed: int, round_index: int
) -> list[Example]:
    """Round `round_index`'s questions: all of them, or a seeded subset in original order."""
    if questions_per_round is None or questions_per_round >= len(examples):
        return list(examples)
    rng = np.random.default_rng([seed, round_index])
    idx = np.sort(rng.choice(len(examples), questions_per_round, replace=False))
    return [examples[i] for i in idx]


def _load_state(ei_dir: Path) -> dict[str, Any]:
    path = ei_dir / "state.json"
    if not path.exists():
        return {"rounds_done": 0, "samples_drawn": 0, "history": []}
    return json.loads(path.read_text())


def _load_dataset(ei_dir: Path, round_index: int) -> Dataset:
    if round_index == 0:
        return {}
    lines = (ei_dir / f"dataset_round_{round_index}.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line]
    return {r["id"]: r["solutions"] for r in rows}


def run_expert_iteration(
    policy: Policy,
    init_params: Any,
    train_examples: Sequence[Example],
    eval_examples: Sequence[Example],
    cfg: ExpertIterationConfig,
    optimizer: OptimizerConfig,
    eval_cfg: EvalConfig,
    workdir: str | os.PathLike,
    show_progress: bool = True,
) -> tuple[Any, list[dict[str, Any]]]:
    """Run (or resume) EI from `init_params`; return (final params, per-round history).

    Each history entry has the round, cumulative `samples_drawn`, dataset size, the
    fraction of sampled questions solved at least once, and the held-out metrics.
    """
    ei_dir = Path(workdir) / "ei"
    ei_dir.mkdir(parents=True, exist_ok=True)
    state = _load_state(ei_dir)
    by_id = {ex.id: ex for ex in train_examples}
    dataset = _load_dataset(ei_dir, state["rounds_done"])
    params = init_params
    if state["rounds_done"]:
        # The last finished round's fine-tuning is complete: this restores its params.
        params = _train_round(
            policy,
            init_params,
            dataset,
            by_id,
            cfg,
            optimizer,
            ei_dir,
            state["rounds_done"],
            show_progress,
        )
    for r in range(state["rounds_done"] + 1, cfg.num_rounds + 1):
        questions = round_questions(train_examples, cfg.questions_per_round, cfg.seed, r)
        sampling = policy.sampling_config(
            cfg.samples_per_question, cfg.temperature, cfg.max_new_tokens
        )
        key = jax.random.fold_in(jax.random.key(cfg.seed), r)
        samples = policy.sample(params, questions, sampling, key, cfg.prompts_per_call)
        new = correct_solutions(questions, samples)
        dataset, added = merge(dataset, new)
        dataset_size = sum(map(len, dataset.values()))
        drawn = state["samples_drawn"] + len(questions) * cfg.samples_per_question
        log.info(
            "EI round %d: %d/%d questions solved at least once, %d new solutions, dataset %d",
            r,
            len(new),
            len(questions),
            added,
            dataset_size,
        )
        start = init_params if cfg.retrain_from_initial else params
        params = _train_round(
            policy, start, dataset, by_id, cfg, optimizer, ei_dir, r, show_progress
        )
        result = None
        if eval_examples:
            # Every round's maj@1 (for the accuracy-against-samples curve); the full
            # evaluation (K samples) only after the last round unless asked for.
            last = r == cfg.num_rounds
            per_round = eval_cfg if last or cfg.full_eval_every_round else greedy_only(eval_cfg)
            result = policy.evaluate(params, eval_examples, per_round)
            write_json(ei_dir / f"eval_round_{r}.json", result)
        entry = {
            "round": r,
            "samples_drawn": drawn,
            "questions": len(questions),
            "solved_fraction": len(new) / len(questions),
            "new_solutions": added,
            "dataset_size": dataset_size,
            "eval": flat_summary(result) if result else {},
        }
        write_atomic(
            ei_dir / f"dataset_round_{r}.jsonl",
            "".join(
                json.dumps({"id": q, "solutions": s}) + "\n" for q, s in sorted(dataset.items())
            ),
        )
        state = {"rounds_done": r, "samples_drawn": drawn, "history": [*state["history"], entry]}
        write_json(ei_dir / "state.json", state)
    return params, state["history"]


def _train_round(
    policy: Policy,
    start_params: Any,
    dataset: Dataset,
    by_id: Mapping[str, Example],
    cfg: ExpertIterationConfig,
    optimizer: OptimizerConfig,
    ei_dir: Path,
    round_index: int,
    show_progress: bool,
) -> Any:
    """Fine-tune on the dataset; a round already finished in `ei_dir` is just restored."""
    examples = as_examples(dataset, by_id)
    if not examples:
        log.warning("EI round %d: no correct samples; the policy is unchanged", round_index)
        return start_params
    batches = round_batches(policy, examples, None, cfg, round_index)
    return fine_tune_round(
        policy, start_params, batches, cfg, optimizer, ei_dir, round_index, show_progress, "sft"
    )


def round_batches(
    policy: Policy,
    examples: Sequence[Example],
    prompts: Sequence[str] | None,
    cfg: Any,
    round_index: int,
) -> SupervisedBatches:
    """A round's SFT batches of `examples` (with per-example `prompts`, or the policy's
    prompt format). `cfg` is an EI- or RCRL-style config (batch_size, max_len,
    length_multiple, seed).

    A batch must split evenly over the mesh's batch shards; a dataset smaller than one
    batch is repeated to fill it.
    """
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


def fine_tune_round(
    policy: Policy,
    start_params: Any,
    batches: SupervisedBatches,
    cfg: Any,
    optimizer: OptimizerConfig,
    rounds_dir: Path,
    round_index: int,
    show_progress: bool,
    phase: str,
) -> Any:
    """`cfg.epochs_per_round` epochs of `batches` from `start_params` (at `cfg.learning_rate`
    or the optimizer's), checkpointed in `rounds_dir/round_<i>`; a finished round is just
    restored."""
    num_steps = max(1, math.ceil(cfg.epochs_per_round * batches.batches_per_epoch))
    lr = cfg.learning_rate or optimizer.learning_rate
    state = train_sft(
        policy.model_config,
        start_params,
        lambda: batches,
        phase_optimizer(optimizer.replace(learning_rate=lr), num_steps),
        rounds_dir / f"round_{round_index}",
        num_steps,
        cfg.seed + round_index,
        mesh=policy.mesh,
        checkpoint_every=num_steps,
        keep=1,
        show_progress=show_progress,
        phase=phase,
    )
    return state.params
