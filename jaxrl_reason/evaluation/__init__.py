"""Evaluation: maj@k, pass@k and rerank@k metrics, curves, bootstrap intervals (paired
for comparing methods on the same questions), ORM AUC; exploration in `exploration`."""

from jaxrl_reason.evaluation.metrics import (
    bootstrap_ci,
    maj_at_k,
    majority_answer,
    metric_curves,
    paired_bootstrap_ci,
    pass_at_k_any,
    pass_at_k_unbiased,
    per_question_columns,
    per_question_metrics,
    rerank_at_k,
    roc_auc,
    summarize,
)

__all__ = [
    "bootstrap_ci",
    "maj_at_k",
    "majority_answer",
    "metric_curves",
    "pass_at_k_any",
    "paired_bootstrap_ci",
    "pass_at_k_unbiased",
    "per_question_columns",
    "per_question_metrics",
    "rerank_at_k",
    "roc_auc",
    "summarize",
]
