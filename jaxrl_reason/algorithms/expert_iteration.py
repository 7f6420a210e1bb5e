"""Expert Iteration (paper §2.2): sample, keep the correct, grow a dataset, fine-tune, repeat.

Round i draws K solutions per training question from pi_{i-1}, keeps those whose final
answer is right (and, with `check_calculations`, whose every calculator step is right),
de-duplicates them per question (exact match after collapsing whitespace), and adds them
to the cumulative dataset D_i = R_i ∪ D_{i-1}. pi_i is then fine-tuned on D_i, with SFT's
reference solutions too when `include_sft_data` (see `fine_tuning`: from the initial
weights by default), and evaluated on held-out questions. The dataset is the phase's host
state; `rounds.run_rounds` saves, resumes and evaluates it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import gin

from jaxrl_reason.algorithms.fine_tuning import (
    SampleFineTuneConfig,
    dedup_key,
    fine_tune_round,
    merge_distinct,
    sampling_plan,
)
from jaxrl_reason.algorithms.rounds import (
    Algorithm,
    Improved,
    PhaseContext,
    PhaseState,
    RoundPlan,
)
from jaxrl_reason.data.example import Example
from jaxrl_reason.evaluation.evaluate import EvalConfig, greedy_only
from jaxrl_reason.rewards.grading import is_correct
from jaxrl_reason.rewards.heuristic import calculations_hold
from jaxrl_reason.sampling.rollouts import Rollouts

Dataset = dict[str, list[str]]  # question id -> distinct correct solutions, in order found


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ExpertIterationConfig(SampleFineTuneConfig):
    full_eval_every_round: bool = False  # else maj@1 per round, the full evaluation last
    include_sft_data: bool = False  # fine-tune on D_i ∪ SFT's reference solutions
    # Keep a correct sample only if each of its <<expr=result>> steps is right too
    # (`rewards.heuristic.calculations_hold`): a right answer reached through wrong
    # arithmetic otherwise teaches the wrong arithmetic.
    check_calculations: bool = False


def correct_solutions(
    examples: Sequence[Example],
    samples: Sequence[Sequence[str]],
    check_calculations: bool = False,
) -> Dataset:
    """Per question, its distinct samples whose final answer matches the reference (and,
    with `check_calculations`, whose every calculator annotation holds)."""
    if len(examples) != len(samples):
        raise ValueError(f"{len(examples)} questions but {len(samples)} rows of samples")
    kept: Dataset = {}
    for ex, row in zip(examples, samples):
        seen: set[str] = set()
        for text in row:
            key = dedup_key(text)
            if not key or key in seen or not is_correct(text, ex.answer):
                continue
            if check_calculations and not calculations_hold(text):
                continue
            seen.add(key)
            kept.setdefault(ex.id, []).append(text.strip())
    return kept


def merge(
    dataset: Mapping[str, Sequence[str]], new: Mapping[str, Sequence[str]]
) -> tuple[Dataset, int]:
    """D_i = R_i ∪ D_{i-1}, de-duplicated per question; also the number newly added."""
    return merge_distinct(dataset, new, dedup_key)


def as_examples(
    dataset: Mapping[str, Sequence[str]], by_id: Mapping[str, Example]
) -> list[Example]:
    """Training examples: each kept solution paired with its question."""
    return [
        dataclasses.replace(by_id[q], id=f"{q}#{i}", solution=s)
        for q in sorted(dataset)
        for i, s in enumerate(dataset[q])
    ]


class ExpertIteration(Algorithm):
    """EI on the one loop: improve = keep the correct, de-duplicate, merge, fine-tune."""

    phase, title = "ei", "EI"

    def __init__(self, cfg: ExpertIterationConfig):
        self.cfg = cfg
        self.num_rounds = cfg.num_rounds

    def init(self, ctx: PhaseContext) -> tuple[Any, dict[str, Any]]:
        return ctx.init_params, {"dataset": {}}

    def plan(self, ctx: PhaseContext, state: PhaseState, round_index: int) -> RoundPlan:
        return sampling_plan(self.cfg, ctx, state, round_index)

    def improve(
        self, ctx: PhaseContext, state: PhaseState, rollouts: Rollouts, round_index: int
    ) -> Improved:
        questions = rollouts.questions()
        new = correct_solutions(questions, rollouts.grouped(), self.cfg.check_calculations)
        dataset, added = merge(state.host["dataset"], new)
        by_id = {ex.id: ex for ex in ctx.train}
        examples = as_examples(dataset, by_id)
        if self.cfg.include_sft_data:
            examples = [*ctx.sft_examples, *examples]
        params = fine_tune_round(self.cfg, ctx, state, round_index, examples)
        stats = {
            "questions": len(questions),
            "solved_fraction": len(new) / len(questions),
            "new_solutions": added,
            "dataset_size": sum(map(len, dataset.values())),
        }
        return Improved(params, {"dataset": dataset}, stats)

    def eval_config(self, round_index: int, cfg: EvalConfig) -> EvalConfig | None:
        full = round_index == self.num_rounds or self.cfg.full_eval_every_round
        return cfg if full else greedy_only(cfg)
