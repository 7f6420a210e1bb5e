"""Evaluation runs: greedy and K sampled solutions per question, graded into metrics.

maj@1 is one greedy decode per question (as in the paper); maj@K, pass@K and rerank@K
come from K samples at `temperature`. Every metric carries a bootstrap 95% interval, and
the result keeps every question's 0/1 outcome (`per_question`), so that two methods
evaluated on the same questions can be compared pairwise (`metrics.paired_bootstrap_ci`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import gin
import jax
import numpy as np

from jaxrl_reason.data.example import Example
from jaxrl_reason.data.prompts import PromptFormat
from jaxrl_reason.evaluation.metrics import (
    answer_matches,
    metric_curves,
    per_question_columns,
    roc_auc,
    summary_of,
)
from jaxrl_reason.rewards.grading import extract_answer
from jaxrl_reason.sampling import SamplingConfig
from jaxrl_reason.sampling.rollouts import sample_rollouts
from jaxrl_reason.validation import NON_NEGATIVE, POSITIVE, setting, validate

log = logging.getLogger(__name__)

# (examples, [B][K] sample texts) -> [B][K] scores, e.g. an ORM's final-token probability.
Scorer = Callable[[Sequence[Example], Sequence[Sequence[str]]], Sequence[Sequence[float]]]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How a policy is evaluated: K samples at `temperature`, plus one greedy decode.

    `num_samples=0` evaluates the greedy decode alone (maj@1), e.g. between EI rounds.
    """

    num_samples: int = setting(16, NON_NEGATIVE, hint="0 = the greedy decode alone")
    temperature: float = setting(0.7, NON_NEGATIVE, hint="0 = greedy")
    max_new_tokens: int = setting(256, POSITIVE)
    prompts_per_call: int = setting(64, POSITIVE)
    seed: int = setting(0, NON_NEGATIVE)

    def __post_init__(self) -> None:
        validate(self)


def greedy_only(cfg: EvalConfig) -> EvalConfig:
    """`cfg` without the K samples: the cheap maj@1-only evaluation."""
    return dataclasses.replace(cfg, num_samples=0)


def sampling_config(
    num_samples: int, temperature: float, max_new_tokens: int, eos_ids: Sequence[int]
) -> SamplingConfig:
    """How evaluation and the algorithms sample: stop at any of the tokenizer's eos ids,
    prompt counts bucketed by 8."""
    return SamplingConfig(
        num_samples=num_samples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        eos_ids=tuple(eos_ids),
        batch_bucket=8,
    )


def _sampled_key(name: str, k: int) -> str:
    """The numbered metric of K samples; maj@1 is the greedy decode's, so with K = 1 the
    samples' majority (one sample's correctness) is read from pass@1."""
    return "pass@1" if (name, k) == ("maj", 1) else f"{name}@{k}"


def flat_summary(result: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of an evaluation result (CIs dropped), for histories and metrics."""
    return {k: float(v) for k, v in result["summary"].items() if not k.endswith("_ci")}


def evaluate_policy(
    text_sampler: Any,
    params: Any,
    examples: Sequence[Example],
    prompt_format: PromptFormat,
    eos_ids: Sequence[int],
    cfg: EvalConfig,
    scorer: Scorer | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Metrics of `params` on `examples`: a JSON-able dict (summary, curves, answers).

    maj@1 is the greedy decode. With K = 1 sample, maj@K is that sample's correctness,
    which is pass@1 (the greedy maj@1 is never overwritten by it).
    """
    if not examples:
        raise ValueError("evaluate_policy: no examples to evaluate")
    rng = jax.random.key(cfg.seed)
    base = sampling_config(1, 0.0, cfg.max_new_tokens, eos_ids)
    sample = lambda sampling, key, desc: sample_rollouts(
        text_sampler,
        prompt_format,
        params,
        examples,
        sampling,
        key,
        cfg.prompts_per_call,
        progress=desc if show_progress else None,
    ).grouped()
    greedy = sample(base, jax.random.fold_in(rng, 0), "greedy")
    samples: list[list[str]] = [[] for _ in examples]
    if cfg.num_samples:
        sampled = base.replace(num_samples=cfg.num_samples, temperature=cfg.temperature)
        samples = sample(sampled, jax.random.fold_in(rng, 1), f"{cfg.num_samples} samples")
    references = [ex.answer for ex in examples]
    greedy_answers = [extract_answer(g[0]) for g in greedy]
    sample_answers = [[extract_answer(s) for s in row] for row in samples if row]
    scores = None
    if scorer is not None and sample_answers:
        scores = [list(map(float, s)) for s in scorer(examples, samples)]
    columns = per_question_columns(greedy_answers, sample_answers, references, scores)
    summary = summary_of(columns)
    k = cfg.num_samples
    # Generic column names (maj@K ...) alongside the numbered ones, for tables.
    for name in ("maj", "pass", "rerank"):
        numbered = _sampled_key(name, k)
        if numbered in summary:
            summary[f"{name}@K"] = summary[numbered]
            summary[f"{name}@K_ci"] = summary[f"{numbered}_ci"]
    per_question: dict[str, Any] = {"id": [ex.id for ex in examples]}
    for name, values in columns.items():
        generic = name if name == "maj@1" else name.split("@")[0] + "@K"
        per_question[generic] = [int(v) for v in values]
    if k == 1 and "pass@K" in per_question:
        per_question["maj@K"] = per_question["pass@K"]
    if sample_answers:
        per_question["num_correct"] = [
            sum(answer_matches(a, r) for a in row) for row, r in zip(sample_answers, references)
        ]
        # A random one of the K samples: what reranking must beat (with majority vote).
        summary["random@K"] = float(np.mean([c / k for c in per_question["num_correct"]]))
    if scores is not None:
        flat = [
            (x, answer_matches(a, r))
            for s_row, a_row, r in zip(scores, sample_answers, references)
            for x, a in zip(s_row, a_row)
        ]
        summary["orm_auc"] = roc_auc([x for x, _ in flat], [y for _, y in flat])
    curves = metric_curves(sample_answers, references, scores) if sample_answers else {}
    return {
        "summary": summary,
        "curves": {m: {str(kk): v for kk, v in c.items()} for m, c in curves.items()},
        "k": k,
        "num_questions": len(examples),
        # 0/1 per question (and correct samples of K), for paired comparisons of methods
        "per_question": per_question,
        "samples_drawn": len(examples) * (k + 1),
        "mean_greedy_length_chars": float(np.mean([len(g[0]) for g in greedy])),
        "examples": [
            {"id": ex.id, "answer": ex.answer, "greedy": g[0], "greedy_answer": ga}
            for ex, g, ga in list(zip(examples, greedy, greedy_answers))[:20]
        ],
    }
