"""Return-Conditioned RL (paper §2.4): label samples with their return, train on them all,
then ask for the best return.

Round i draws K solutions per training question from pi_{i-1}, scores each (sparse
correctness, or a `scorer` such as an ORM's probability in [0, 1]) and bins the score into
a return token (`[BAD]`/`[GOOD]`, or `[SCORE_0]`.. for `num_bins` > 2). Every sample, bad
ones too, becomes a training example whose prompt ends with its token:
  "Q: <question>\nA: [BAD] " -> <sampled solution>
The token is part of the prompt, so it carries no loss. Examples accumulate over rounds,
de-duplicated per question and token (exact match after collapsing whitespace); with
`include_references` each question's reference solution is added under the best token, so
that the best token means "a right answer" from round 1 on. pi_i is fine-tuned on the
cumulative set, by default from the INITIAL weights (as in EI), and evaluated conditioned
on the best token.

Round 1 samples with plain prompts (the initial policy has never seen a return token);
later rounds sample conditioned on the best token, as at inference.

The labelled dataset is the phase's host state; `rounds.run_rounds` saves, resumes and
evaluates it (through `eval_policy`, conditioned on the best token).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
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
from jaxrl_reason.algorithms.policy import Policy
from jaxrl_reason.algorithms.return_conditioning import (
    best_return_token,
    condition_prompt,
    return_token_for,
    return_tokens,
)
from jaxrl_reason.algorithms.rounds import (
    Algorithm,
    Improved,
    PhaseContext,
    PhaseState,
    RoundPlan,
)
from jaxrl_reason.data.example import Example
from jaxrl_reason.data.prompts import PromptFormat
from jaxrl_reason.evaluation.evaluate import Scorer
from jaxrl_reason.rewards.heuristic import sparse_reward
from jaxrl_reason.sampling.rollouts import Rollouts
from jaxrl_reason.validation import at_least, setting

# question id -> distinct (return token, solution) pairs, in the order found
Dataset = dict[str, list[tuple[str, str]]]
_SCORE_TOL = 1e-6  # scores a hair outside [0, 1] (float error) are fine; logits are not


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RCRLConfig(SampleFineTuneConfig):
    num_rounds: int = 2
    # 2: [BAD]/[GOOD]; more: [SCORE_0] .. [SCORE_{n-1}]
    num_bins: int = setting(2, at_least(2), hint="2 gives [BAD]/[GOOD]")
    include_references: bool = True  # reference solutions as best-return examples


def conditioned_format(prompt_format: PromptFormat, token: str) -> PromptFormat:
    """`prompt_format` with `token` (and a space) right after the answer prefix:
    "Q: {question}\\nA: " -> "Q: {question}\\nA: [GOOD] "."""
    escaped = token.replace("{", "{{").replace("}", "}}")  # the template is str.format'ted
    return dataclasses.replace(
        prompt_format, template=condition_prompt(prompt_format.template, escaped)
    )


def inference_format(prompt_format: PromptFormat, num_bins: int = 2) -> PromptFormat:
    """`prompt_format` conditioned on the best return token: how an RCRL policy is asked."""
    return conditioned_format(prompt_format, best_return_token(num_bins))


def score_samples(
    examples: Sequence[Example],
    samples: Sequence[Sequence[str]],
    scorer: Scorer | None = None,
) -> list[list[float]]:
    """[B][K] returns in [0, 1]: sparse correctness (1/0), or `scorer`'s probabilities."""
    if len(examples) != len(samples):
        raise ValueError(f"{len(examples)} questions but {len(samples)} rows of samples")
    if scorer is None:
        return [
            sparse_reward(row, [ex.answer] * len(row)).tolist()
            for ex, row in zip(examples, samples)
        ]
    scores = [[float(s) for s in row] for row in scorer(examples, samples)]
    if [len(r) for r in scores] != [len(r) for r in samples]:
        raise ValueError(
            f"scorer returned rows of lengths {[len(r) for r in scores]} for samples of "
            f"lengths {[len(r) for r in samples]}; it must return one score per sample"
        )
    for ex, row in zip(examples, scores):
        bad = [s for s in row if not -_SCORE_TOL <= s <= 1 + _SCORE_TOL]
        if bad:
            raise ValueError(
                f"scorer returned {bad[0]} for question {ex.id!r}; RCRL bins returns in "
                "[0, 1], so pass probabilities (e.g. sigmoid of an ORM logit)"
            )
    return scores


def label_samples(
    examples: Sequence[Example],
    samples: Sequence[Sequence[str]],
    scores: Sequence[Sequence[float]],
    num_bins: int = 2,
) -> Dataset:
    """Per question, its distinct non-empty samples, each with the token of its score."""
    labelled: Dataset = {}
    for ex, row, row_scores in zip(examples, samples, scores, strict=True):
        seen: set[tuple[str, str]] = set()
        for text, score in zip(row, row_scores, strict=True):
            token = return_token_for(score, num_bins)
            key = (token, dedup_key(text))
            if key[1] and key not in seen:
                seen.add(key)
                labelled.setdefault(ex.id, []).append((token, text.strip()))
    return labelled


def reference_examples(examples: Sequence[Example], num_bins: int = 2) -> Dataset:
    """Each question's reference solution under the best return token."""
    best = best_return_token(num_bins)
    return {ex.id: [(best, ex.solution.strip())] for ex in examples if ex.solution.strip()}


def merge(
    dataset: Mapping[str, Sequence[tuple[str, str]]], new: Mapping[str, Sequence[tuple[str, str]]]
) -> tuple[Dataset, int]:
    """The union, de-duplicated per question and token; also the number newly added."""
    return merge_distinct(dataset, new, lambda pair: (pair[0], dedup_key(pair[1])))


def training_data(
    dataset: Mapping[str, Sequence[tuple[str, str]]],
    by_id: Mapping[str, Example],
    prompt_format: PromptFormat,
) -> tuple[list[Example], list[str]]:
    """(examples, prompt texts): each solution with its question's prompt + return token."""
    examples, prompts = [], []
    for q in sorted(dataset):
        ex = by_id[q]
        for i, (token, solution) in enumerate(dataset[q]):
            examples.append(dataclasses.replace(ex, id=f"{q}#{i}", solution=solution))
            prompts.append(condition_prompt(prompt_format.format(ex.question), token))
    return examples, prompts


class RCRL(Algorithm):
    """RCRL on the one loop: improve = label every sample with its return token, merge,
    fine-tune. `scorer` gives returns in [0, 1] (default: sparse correctness)."""

    phase, title = "rcrl", "RCRL"

    def __init__(self, cfg: RCRLConfig, scorer: Scorer | None = None):
        self.cfg = cfg
        self.scorer = scorer
        self.num_rounds = cfg.num_rounds
        self.tokenizer_symbols = tuple(return_tokens(cfg.num_bins))
        self.best = best_return_token(cfg.num_bins)

    def init(self, ctx: PhaseContext) -> tuple[Any, dict[str, Any]]:
        if not ctx.train:
            raise ValueError("RCRL: no training questions")
        return ctx.init_params, {"dataset": {}}

    def plan(self, ctx: PhaseContext, state: PhaseState, round_index: int) -> RoundPlan:
        # Round 1's policy has never seen a return token: it is asked plainly.
        fmt = None if round_index == 1 else self.eval_policy(ctx.policy).prompt_format
        return sampling_plan(self.cfg, ctx, state, round_index, fmt)

    def improve(
        self, ctx: PhaseContext, state: PhaseState, rollouts: Rollouts, round_index: int
    ) -> Improved:
        cfg, questions, samples = self.cfg, rollouts.questions(), rollouts.grouped()
        scores = score_samples(questions, samples, self.scorer)
        counts = Counter(return_token_for(s, cfg.num_bins) for row in scores for s in row)
        new = label_samples(questions, samples, scores, cfg.num_bins)
        if cfg.include_references:
            new, _ = merge(reference_examples(questions, cfg.num_bins), new)
        dataset = {q: [tuple(p) for p in pairs] for q, pairs in state.host["dataset"].items()}
        dataset, added = merge(dataset, new)
        by_id = {ex.id: ex for ex in ctx.train}
        examples, prompts = training_data(dataset, by_id, ctx.policy.prompt_format)
        params = fine_tune_round(cfg, ctx, state, round_index, examples, prompts, "rcrl")
        stats = {
            "questions": len(questions),
            "sampled_with": None if round_index == 1 else self.best,
            "good_fraction": counts[self.best] / len(rollouts),
            "token_counts": {t: counts[t] for t in return_tokens(cfg.num_bins)},
            "new_examples": added,
            "dataset_size": sum(map(len, dataset.values())),
        }
        return Improved(params, {"dataset": dataset}, stats)

    def eval_policy(self, policy: Policy) -> Policy:
        return policy.with_prompt_format(inference_format(policy.prompt_format, self.cfg.num_bins))

    def fingerprint(self) -> dict[str, Any]:
        return {"num_bins": self.cfg.num_bins}
