"""Metrics against brute force and hand-made cases."""

import itertools
import math

import numpy as np
import pytest

from jaxrl_reason.evaluation.metrics import (
    bootstrap_ci,
    maj_at_k,
    majority_answer,
    metric_curves,
    paired_bootstrap_ci,
    pass_at_k_any,
    pass_at_k_unbiased,
    per_question_columns,
    rerank_at_k,
    roc_auc,
    summarize,
)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_unbiased_matches_enumeration(n):
    for c in range(n + 1):
        flags = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(flags, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k_unbiased(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_unbiased_large_n_is_stable():
    value = pass_at_k_unbiased(1000, 1, 96)
    assert value == pytest.approx(96 / 1000)
    assert 0.0 <= pass_at_k_unbiased(10_000, 3, 5000) <= 1.0
    with pytest.raises(ValueError):
        pass_at_k_unbiased(3, 4, 1)


def test_pass_at_k_any():
    assert pass_at_k_any([False, True], 2)
    assert not pass_at_k_any([False, True], 1)


@pytest.mark.parametrize(
    "answers, k, winner",
    [
        (["1", "2", "2"], 3, "2"),
        (["1", "2", "2"], 2, "1"),  # tie: the first seen wins
        ([None, None, "3"], 3, "3"),  # None never wins
        ([None, None], 2, None),
        (["18", "18.0", "7"], 3, "18"),  # votes by value
        (["5", "7", "7", "5"], 4, "5"),
    ],
)
def test_majority_answer(answers, k, winner):
    assert majority_answer(answers, k) == winner


def test_maj_at_k():
    assert maj_at_k(["1", "2", "2"], "2.0", 3)
    assert not maj_at_k(["1", "2", "2"], "2", 1)
    assert not maj_at_k([None, None], "2", 2)


def test_rerank_at_k():
    answers, scores = ["1", "2", "3"], [0.1, 0.9, 0.9]
    assert rerank_at_k(answers, scores, "2", 3)  # tie between 2 and 3 -> first
    assert rerank_at_k(answers, scores, "1", 1)
    assert not rerank_at_k(answers, scores, "3", 3)


def test_metric_curves():
    answers = [["1", "2", "2", "2"], [None, "5", "6", "6"]]
    curves = metric_curves(answers, ["2", "5"], scores=[[0, 1, 0, 0], [1, 0, 0, 0]])
    assert sorted(curves["maj"]) == [1, 2, 4]
    assert curves["maj"][1] == 0.0 and curves["maj"][4] == 0.5
    assert curves["pass"][1] == 0.0 and curves["pass"][2] == 1.0
    assert curves["rerank"][4] == 0.5


def test_bootstrap_ci_contains_mean_and_narrows():
    rng = np.random.default_rng(1)
    small = rng.random(50) < 0.4
    large = rng.random(5000) < 0.4
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s
    assert lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < hi_s - lo_s
    # A Bernoulli mean's 95% interval is about +-1.96 sigma/sqrt(n).
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * math.sqrt(0.24 / 5000), rel=0.2)
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)


def test_summarize():
    out = summarize(
        greedy_answers=["2", None],
        sample_answers=[["1", "2", "2"], ["5", "6", "6"]],
        references=["2", "5"],
        scores=[[0.0, 1.0, 0.0], [0.9, 0.1, 0.0]],
        num_resamples=200,
    )
    assert out["maj@1"] == 0.5 and out["maj@3"] == 0.5
    assert out["pass@3"] == 1.0 and out["rerank@3"] == 1.0
    low, high = out["maj@3_ci"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0


def _slow_paired_bootstrap(a, b, num_resamples, alpha, seed):
    """The obvious loop: resample question indices, take both methods' values of them."""
    rng = np.random.default_rng(seed)
    n = len(a)
    idx = rng.integers(0, n, size=(num_resamples, n))  # the same draws bootstrap_ci makes
    means = []
    for row in idx:
        means.append(sum(a[i] - b[i] for i in row) / n)
    means.sort()
    quantile = lambda q: float(np.quantile(np.array(means), q))
    return sum(x - y for x, y in zip(a, b)) / n, (quantile(alpha / 2), quantile(1 - alpha / 2))


def test_paired_bootstrap_matches_a_slow_reference():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, 60).astype(float)
    b = np.where(rng.random(60) < 0.8, a, 1 - a)  # mostly agree, as two checkpoints do
    diff, ci = paired_bootstrap_ci(a, b, num_resamples=300, alpha=0.1, seed=4)
    ref_diff, ref_ci = _slow_paired_bootstrap(list(a), list(b), 300, 0.1, 4)
    assert diff == pytest.approx(ref_diff) and ci == pytest.approx(ref_ci)


def test_paired_interval_is_tighter_than_the_unpaired_difference():
    """When two methods agree on most questions, the paired interval of their difference
    is far narrower than the gap between their separate intervals suggests."""
    rng = np.random.default_rng(0)
    b = rng.integers(0, 2, 500).astype(float)
    a = b.copy()
    flip = rng.choice(500, 40, replace=False)
    a[flip[:30]] = 1.0  # 30 questions newly right (some already were), 10 newly wrong
    a[flip[30:]] = 0.0
    diff, (low, high) = paired_bootstrap_ci(a, b)
    assert low <= diff <= high
    a_lo, a_hi = bootstrap_ci(a)
    b_lo, b_hi = bootstrap_ci(b)
    assert high - low < 0.5 * ((a_hi - a_lo) + (b_hi - b_lo))
    same, (s_lo, s_hi) = paired_bootstrap_ci(b, b)
    assert same == s_lo == s_hi == 0.0  # a method against itself: exactly no difference


def test_paired_bootstrap_refuses_unpaired_input():
    with pytest.raises(ValueError, match="one value per question for both methods"):
        paired_bootstrap_ci([1.0, 0.0, 1.0], [1.0, 0.0])


def test_per_question_columns_mean_to_the_summary():
    greedy = ["2", None, "7"]
    samples = [["1", "2", "2"], ["5", "6", "6"], ["7", "7", "1"]]
    refs = ["2", "5", "1"]
    cols = per_question_columns(greedy, samples, refs)
    assert {k: list(v) for k, v in cols.items()} == {
        "maj@1": [1, 0, 0],
        "maj@3": [1, 0, 0],
        "pass@3": [1, 1, 1],
    }
    summary = summarize(greedy, samples, refs)
    assert all(summary[k] == pytest.approx(v.mean()) for k, v in cols.items())


def test_roc_auc_matches_pairwise_counting():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    labels = rng.random(40) < 0.4
    pos, neg = scores[labels], scores[~labels]
    slow = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])
    assert roc_auc(scores, labels) == pytest.approx(slow)
    assert roc_auc([0.1, 0.9], [False, True]) == 1.0 and roc_auc([0.9, 0.1], [False, True]) == 0.0
    assert math.isnan(roc_auc([0.3, 0.4], [True, True]))  # one class: undefined
