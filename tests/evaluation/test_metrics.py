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
    pass_at_k_any,
    pass_at_k_unbiased,
    rerank_at_k,
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
