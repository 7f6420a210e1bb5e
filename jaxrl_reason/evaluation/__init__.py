"""Evaluation: maj@k, pass@k and rerank@k metrics, curves and bootstrap intervals."""

from jaxrl_reason.evaluation.metrics import (
    bootstrap_ci,
    maj_at_k,
    majority_answer,
    metric_curves,
    pass_at_k_any,
    pass_at_k_unbiased,
    per_question_metrics,
    rerank_at_k,
    summarize,
)

__all__ = [
    "bootstrap_ci",
    "maj_at_k",
    "majority_answer",
    "metric_curves",
    "pass_at_k_any",
    "pass_at_k_unbiased",
    "per_question_metrics",
    "rerank_at_k",
    "summarize",
]
