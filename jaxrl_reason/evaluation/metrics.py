"""Evaluation metrics over sampled answers: maj@k, pass@k, rerank@k, curves, bootstrap CIs.

Inputs per question are the final answers extracted from its samples (canonical strings
from `rewards.grading.extract_answer`, or None when a sample has no answer) and the
reference answer. Answers are compared by value (`answers_equal`), so `"18"` and
`"18.0"` vote together.

- maj@k: plurality vote over the first k answers; None never wins (all None is wrong).
  Ties go to the tied answer that appeared FIRST among the k samples.
- pass@k (`pass_at_k_any`): any of the first k samples is correct. This is the paper's
  pass@96 ("best of K by ground truth"). `pass_at_k_unbiased` is Chen et al. (2021)'s
  estimator from n samples with c correct.
- rerank@k: the answer of the highest-scoring sample among the first k (ties go to the
  first such sample), e.g. scored by an ORM.

Intervals resample questions (percentile bootstrap). Two methods evaluated on the same
questions are compared by `paired_bootstrap_ci`, which resamples the questions jointly:
the interval of a difference, far tighter than two separate intervals suggest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction

import numpy as np

from jaxrl_reason.rewards.grading import parse_number


def _value(answer: str | None) -> Fraction | None:
    return parse_number(answer) if answer is not None else None


def answer_matches(answer: str | None, reference: str | None) -> bool:
    """Whether an extracted answer equals the reference by value (None never does)."""
    a, r = _value(answer), _value(reference)
    return a is not None and r is not None and a == r


def majority_answer(answers: Sequence[str | None], k: int) -> str | None:
    """The plurality answer among the first k (by value; first-seen wins ties)."""
    counts: dict[Fraction, int] = {}
    first: dict[Fraction, str] = {}
    for answer in answers[:k]:
        value = _value(answer)
        if value is None:
            continue
        counts[value] = counts.get(value, 0) + 1
        first.setdefault(value, answer)
    if not counts:
        return None
    best = max(counts.values())
    # dicts keep insertion order, so the first value reaching `best` appeared first.
    winner = next(v for v, c in counts.items() if c == best)
    return first[winner]


def maj_at_k(answers: Sequence[str | None], reference: str | None, k: int) -> bool:
    """Whether the majority vote over the first k answers is correct."""
    return answer_matches(majority_answer(answers, k), reference)


def pass_at_k_any(correct_flags: Sequence[bool], k: int) -> bool:
    """Whether any of the first k samples is correct."""
    return bool(any(correct_flags[:k]))


def pass_at_k_unbiased(n: int, c: int, k: int) -> float:
    """Chen et al. (2021): 1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def rerank_at_k(
    answers: Sequence[str | None], scores: Sequence[float], reference: str | None, k: int
) -> bool:
    """Whether the highest-scoring of the first k samples is correct (ties: first)."""
    if k < 1 or not answers:
        return False
    head = np.asarray(scores[:k], dtype=np.float64)
    best = int(np.argmax(head))  # argmax returns the first maximum
    return answer_matches(answers[best], reference)


def _ks(num_samples: int, ks: Sequence[int] | None) -> list[int]:
    if ks is not None:
        return [k for k in ks if 1 <= k <= num_samples]
    out, k = [], 1
    while k < num_samples:
        out.append(k)
        k *= 2
    return [*out, num_samples]


def metric_curves(
    sample_answers: Sequence[Sequence[str | None]],
    references: Sequence[str | None],
    scores: Sequence[Sequence[float]] | None = None,
    ks: Sequence[int] | None = None,
) -> dict[str, dict[int, float]]:
    """maj@k, pass@k (and rerank@k with scores) averaged over questions, for each k.

    `ks` defaults to {1, 2, 4, ...} ∪ {K}, with K the smallest number of samples of any
    question. All k reuse the same K samples (the first k of them).
    """
    if len(sample_answers) != len(references):
        raise ValueError(
            f"{len(sample_answers)} questions of samples but {len(references)} references"
        )
    num = min((len(a) for a in sample_answers), default=0)
    curves: dict[str, dict[int, float]] = {"maj": {}, "pass": {}}
    if scores is not None:
        curves["rerank"] = {}
    for k in _ks(num, ks):
        per_q = per_question_metrics(sample_answers, references, k, scores)
        for name, values in per_q.items():
            curves[name][k] = float(np.mean(values)) if len(values) else 0.0
    return curves


def per_question_metrics(
    sample_answers: Sequence[Sequence[str | None]],
    references: Sequence[str | None],
    k: int,
    scores: Sequence[Sequence[float]] | None = None,
) -> dict[str, np.ndarray]:
    """0/1 arrays over questions for maj@k, pass@k and (with scores) rerank@k."""
    out = {
        "maj": np.array([maj_at_k(a, r, k) for a, r in zip(sample_answers, references)]),
        "pass": np.array(
            [
                pass_at_k_any([answer_matches(x, r) for x in a], k)
                for a, r in zip(sample_answers, references)
            ]
        ),
    }
    if scores is not None:
        out["rerank"] = np.array(
            [rerank_at_k(a, s, r, k) for a, s, r in zip(sample_answers, scores, references)]
        )
    return {name: v.astype(np.float64) for name, v in out.items()}


def bootstrap_ci(
    per_question_values: Sequence[float] | np.ndarray,
    num_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of the mean, resampling questions."""
    values = np.asarray(per_question_values, dtype=np.float64)
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(num_resamples, values.size))
    means = values[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a
    random negative (ties count half); NaN without both classes. E.g. how well an ORM's
    scores separate correct from wrong samples (0.5 is chance)."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    if s.shape != y.shape:
        raise ValueError(f"roc_auc: {s.shape[0]} scores but {y.shape[0]} labels")
    pos, neg = s[y], s[~y]
    if not pos.size or not neg.size:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(order.size)
    ranks[order] = np.arange(1, order.size + 1)
    values = np.concatenate([pos, neg])
    for v in np.unique(values):  # average ranks over ties
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def paired_bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    baseline: Sequence[float] | np.ndarray,
    num_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """mean(values - baseline) and its percentile bootstrap (1 - alpha) interval.

    Both arrays hold one number per question, for the same questions in the same order;
    a resample draws questions with replacement and takes both methods' values of them.
    """
    a, b = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"paired_bootstrap_ci needs one value per question for both methods, got shapes "
            f"{a.shape} and {b.shape}"
        )
    diff = a - b
    return float(diff.mean()) if diff.size else float("nan"), bootstrap_ci(
        diff, num_resamples, alpha, seed
    )


def per_question_columns(
    greedy_answers: Sequence[str | None],
    sample_answers: Sequence[Sequence[str | None]],
    references: Sequence[str | None],
    scores: Sequence[Sequence[float]] | None = None,
) -> dict[str, np.ndarray]:
    """0/1 per question for maj@1 (greedy) and, with samples, maj@K, pass@K and rerank@K,
    keyed by their numbered names (K = the smallest number of samples of any question)."""
    if len(greedy_answers) != len(references):
        raise ValueError(f"{len(greedy_answers)} greedy answers but {len(references)} references")
    columns = {
        "maj@1": np.array([answer_matches(a, r) for a, r in zip(greedy_answers, references)], float)
    }
    if sample_answers:
        k = min(len(a) for a in sample_answers)
        per_q = per_question_metrics(sample_answers, references, k, scores)
        if k == 1:  # one sample's majority is its correctness, pass@1: maj@1 stays greedy
            per_q.pop("maj")
        columns.update({f"{name}@{k}": v for name, v in per_q.items()})
    return columns


def summarize(
    greedy_answers: Sequence[str | None],
    sample_answers: Sequence[Sequence[str | None]],
    references: Sequence[str | None],
    scores: Sequence[Sequence[float]] | None = None,
    num_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, float | tuple[float, float]]:
    """Headline metrics with bootstrap CIs: maj@1 (greedy), maj@K, pass@K, rerank@K.

    Keys use K = the smallest number of samples of any question, e.g. `"maj@96"`, and
    each metric `m` has `m + "_ci"` holding `(low, high)`.
    """
    columns = per_question_columns(greedy_answers, sample_answers, references, scores)
    return summary_of(columns, num_resamples, seed)


def summary_of(
    columns: Mapping[str, np.ndarray], num_resamples: int = 1000, seed: int = 0
) -> dict[str, float | tuple[float, float]]:
    """The mean of each per-question column, and its bootstrap CI under `name + "_ci"`."""
    result: dict[str, float | tuple[float, float]] = {}
    for name, values in columns.items():
        result[name] = float(values.mean()) if values.size else 0.0
        result[f"{name}_ci"] = bootstrap_ci(values, num_resamples=num_resamples, seed=seed)
    return result
