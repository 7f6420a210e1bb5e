"""Evaluation runs: greedy and K sampled solutions per question, graded into metrics.

maj@1 is one greedy decode per question (as in the paper); maj@K, pass@K and rerank@K
come from K samples at `temperature`. Every metric carries a bootstrap 95% interval.
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
from jaxrl_reason.evaluation.metrics import metric_curves, summarize
from jaxrl_reason.rewards.grading import extract_answer
from jaxrl_reason.sampling import SamplingConfig

log = logging.getLogger(__name__)

# (examples, [B][K] sample texts) -> [B][K] scores, e.g. an ORM's final-token probability.
Scorer = Callable[[Sequence[Example], Sequence[Sequence[str]]], Sequence[Sequence[float]]]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How a policy is evaluated: K samples at `temperature`, plus one greedy decode.

    `num_samples=0` evaluates the greedy decode alone (maj@1), e.g. between EI rounds.
    """

    num_samples: int = 16
    temperature: float = 0.7
    max_new_tokens: int = 256
    prompts_per_call: int = 64
    seed: int = 0


def greedy_only(cfg: EvalConfig) -> EvalConfig:
    """`cfg` without the K samples: the cheap maj@1-only evaluation."""
    return dataclasses.replace(cfg, num_samples=0)


def sampling_config(
    num_samples: int, temperature: float, max_new_tokens: int, eos_id: int
) -> SamplingConfig:
    """How evaluation and the algorithms sample: stop at EOS, prompt counts bucketed by 8."""
    return SamplingConfig(
        num_samples=num_samples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        eos_ids=(eos_id,),
        batch_bucket=8,
    )


def generate(
    text_sampler: Any,
    params: Any,
    prompts: Sequence[str],
    cfg: SamplingConfig,
    rng: jax.Array,
    prompts_per_call: int,
    stop_sequences: Sequence[str],
) -> list[list[str]]:
    """[B][K] completions, sampling `prompts_per_call` prompts per sampler call."""
    texts: list[list[str]] = []
    for n, start in enumerate(range(0, len(prompts), prompts_per_call)):
        chunk = list(prompts[start : start + prompts_per_call])
        out = text_sampler.generate(
            params, chunk, cfg, jax.random.fold_in(rng, n), stop_sequences=tuple(stop_sequences)
        )
        texts.extend(out.texts)
    return texts


def evaluate_policy(
    text_sampler: Any,
    params: Any,
    examples: Sequence[Example],
    prompt_format: PromptFormat,
    eos_id: int,
    cfg: EvalConfig,
    scorer: Scorer | None = None,
) -> dict[str, Any]:
    """Metrics of `params` on `examples`: a JSON-able dict (summary, curves, answers)."""
    if not examples:
        raise ValueError("evaluate_policy: no examples to evaluate")
    prompts = [prompt_format.format(ex.question) for ex in examples]
    rng = jax.random.key(cfg.seed)
    base = sampling_config(1, 0.0, cfg.max_new_tokens, eos_id)
    stops = prompt_format.stop_sequences
    greedy = generate(
        text_sampler, params, prompts, base, jax.random.fold_in(rng, 0), cfg.prompts_per_call, stops
    )
    samples: list[list[str]] = [[] for _ in examples]
    if cfg.num_samples:
        samples = generate(
            text_sampler,
            params,
            prompts,
            base.replace(num_samples=cfg.num_samples, temperature=cfg.temperature),
            jax.random.fold_in(rng, 1),
            cfg.prompts_per_call,
            stops,
        )
    references = [ex.answer for ex in examples]
    greedy_answers = [extract_answer(g[0]) for g in greedy]
    sample_answers = [[extract_answer(s) for s in row] for row in samples if row]
    scores = None
    if scorer is not None and sample_answers:
        scores = [list(map(float, s)) for s in scorer(examples, samples)]
    summary = summarize(greedy_answers, sample_answers, references, scores)
    k = cfg.num_samples
    # Generic column names (maj@K ...) alongside the numbered ones, for tables.
    for name in ("maj", "pass", "rerank"):
        if f"{name}@{k}" in summary:
            summary[f"{name}@K"] = summary[f"{name}@{k}"]
            summary[f"{name}@K_ci"] = summary[f"{name}@{k}_ci"]
    curves = metric_curves(sample_answers, references, scores) if sample_answers else {}
    return {
        "summary": summary,
        "curves": {m: {str(kk): v for kk, v in c.items()} for m, c in curves.items()},
        "k": k,
        "num_questions": len(examples),
        "samples_drawn": len(examples) * (k + 1),
        "mean_greedy_length_chars": float(np.mean([len(g[0]) for g in greedy])),
        "examples": [
            {"id": ex.id, "answer": ex.answer, "greedy": g[0], "greedy_answer": ga}
            for ex, g, ga in list(zip(examples, greedy, greedy_answers))[:20]
        ],
    }
