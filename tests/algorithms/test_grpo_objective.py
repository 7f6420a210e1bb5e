"""The GRPO family's pure pieces against slow references and hand-computed values: group
advantages, loss aggregation, the clipped surrogate (token and sequence ratio), the KL
term, DAPO's overlong penalty."""

import itertools
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_reason.algorithms.advantages import group_advantages
from jaxrl_reason.algorithms.grpo import informative_groups, overlong_penalty
from jaxrl_reason.algorithms.grpo_objective import grpo_loss
from jaxrl_reason.algorithms.policy_gradient import aggregate_loss
from jaxrl_reason.algorithms.ppo_objective import ppo_losses

# ----------------------------------------------------------------- group advantages


def _group_reference(rewards, mask, normalize_std, leave_one_out, eps):
    """Python loops over each group's valid samples."""
    out = np.zeros(rewards.shape, np.float64)
    for b in range(rewards.shape[0]):
        idx = [k for k in range(rewards.shape[1]) if mask[b, k]]
        r = [float(rewards[b, k]) for k in idx]
        if len(r) < 2 or max(r) == min(r):
            continue  # no signal: 0
        std = statistics.stdev(r)  # ddof 1
        for k, rk in zip(idx, r):
            others = [x for j, x in zip(idx, r) if j != k]
            base = sum(others) / len(others) if leave_one_out else sum(r) / len(r)
            a = rk - base
            out[b, k] = a / (std + eps) if normalize_std else a
    return out


@pytest.mark.parametrize(
    "normalize_std, leave_one_out", list(itertools.product([True, False], [True, False]))
)
def test_group_advantages_match_a_slow_reference(normalize_std, leave_one_out):
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(7, 5)).astype(np.float32)
    rewards[1] = 0.3  # all equal
    rewards[2] = rng.integers(0, 2, 5)  # 0/1 rewards, the sparse case
    mask = np.ones((7, 5), bool)
    mask[3, 1:] = False  # a group of one sample
    mask[4, 3:] = False  # a shorter group
    mask[5] = False  # a padding group
    kw = dict(normalize_std=normalize_std, leave_one_out=leave_one_out, eps=1e-6)
    got = np.asarray(group_advantages(rewards, mask=mask, **kw))
    want = _group_reference(rewards, mask, normalize_std, leave_one_out, 1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.isfinite(got).all()
    assert not got[1].any() and not got[3].any() and not got[5].any()
    assert not got[~mask].any()


def test_group_advantages_edge_cases_without_a_mask():
    one = np.array([[1.0], [0.0]], np.float32)  # groups of one sample
    for loo in (False, True):
        assert not np.asarray(group_advantages(one, leave_one_out=loo)).any()
    equal = np.full((2, 4), 0.1, np.float32)  # the mean's rounding must not leak through
    assert not np.asarray(group_advantages(equal)).any()
    r = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
    # GRPO: mean 0.25, sample std 0.5; RLOO: 1 - 0 and 0 - 1/3.
    np.testing.assert_allclose(group_advantages(r, eps=0.0), [[1.5, -0.5, -0.5, -0.5]])
    np.testing.assert_allclose(
        group_advantages(r, normalize_std=False, leave_one_out=True),
        [[1.0, -1 / 3, -1 / 3, -1 / 3]],
        rtol=1e-6,
    )
    # RLOO's advantage is K / (K - 1) times the mean-baseline one.
    x = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
    np.testing.assert_allclose(
        group_advantages(x, normalize_std=False, leave_one_out=True),
        6 / 5 * np.asarray(group_advantages(x, normalize_std=False)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_informative_groups_and_overlong_penalty():
    returns = np.array([[1, 1, 1], [0, 0, 0], [0, 1, 0]], np.float32)
    assert informative_groups(returns).tolist() == [False, False, True]
    # Budget 10, buffer 4: free up to 6 tokens, then -1/4 per token down to -1 at 10.
    np.testing.assert_allclose(
        overlong_penalty(np.array([3, 6, 7, 8, 10]), 10, 4), [0, 0, -0.25, -0.5, -1.0]
    )
    np.testing.assert_allclose(overlong_penalty(np.array([9]), 10, 4, factor=0.5), [-0.375])
    assert not overlong_penalty(np.array([10, 12]), 10, 0).any()


# ------------------------------------------------------------------ aggregation


def test_loss_aggregations_are_the_named_formulas():
    loss = jnp.array([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0], [9.0] * 4])
    mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])  # row 3: padding
    assert float(aggregate_loss(loss, mask, "token_mean")) == pytest.approx((1 + 2 + 3 + 4) / 4)
    # Two sequences with tokens: their means 2 and 4.
    assert float(aggregate_loss(loss, mask, "seq_mean_token_mean")) == pytest.approx(3.0)
    # Dr.GRPO: token sums 6 and 4 over the constant 8, mean over the two sequences.
    assert float(aggregate_loss(loss, mask, "seq_mean_token_sum", 8)) == pytest.approx(10 / 8 / 2)
    assert float(aggregate_loss(loss, jnp.zeros_like(mask), "seq_mean_token_mean")) == 0.0
    with pytest.raises(ValueError, match="loss aggregation 'sum'"):
        aggregate_loss(loss, mask, "sum")


# ------------------------------------------------------------------- the losses

MASK = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]], jnp.float32)


def _loss(new, old, adv, **kw):
    ref = kw.pop("ref", jnp.zeros_like(new))
    return grpo_loss(new, old, ref, adv, MASK, **kw)


def test_ratio_one_gives_the_plain_policy_gradient():
    old = jnp.log(jnp.array([[0.5, 0.2, 0.9, 1.0], [0.3, 0.6, 1.0, 1.0]]))
    adv = jnp.array([1.5, -0.5])
    cases = (("token_mean", None), ("seq_mean_token_mean", None), ("seq_mean_token_sum", 4))
    for agg, norm in cases:
        f = lambda new, agg=agg, norm=norm: _loss(new, old, adv, aggregation=agg, normalizer=norm)[
            0
        ]
        value, grad = jax.value_and_grad(f)(old)
        # d/d logp of -A exp(logp - old) at logp = old is -A, weighted by the aggregation.
        weights = {
            "token_mean": MASK / MASK.sum(),
            "seq_mean_token_mean": MASK / MASK.sum(-1, keepdims=True) / 2,
            "seq_mean_token_sum": MASK / 4 / 2,
        }[agg]
        np.testing.assert_allclose(grad, -adv[:, None] * weights, rtol=1e-6, atol=1e-7)
        assert float(value) == pytest.approx(float((-adv[:, None] * weights).sum()), rel=1e-6)


def test_clip_bounds_on_both_sides():
    old = jnp.zeros((2, 4))
    # Row 0: A > 0, token ratios 1.5 (above 1 + 0.28), 1.1 (inside), 0.5 (below, no clip
    # for A > 0). Row 1: A < 0, ratios 0.5 (below 1 - 0.2: clipped), 1.5 (above: not).
    new = jnp.log(jnp.array([[1.5, 1.1, 0.5, 1.0], [0.5, 1.5, 1.0, 1.0]]))
    adv = jnp.array([2.0, -1.0])
    f = lambda n: _loss(n, old, adv, eps_low=0.2, eps_high=0.28, aggregation="token_mean")
    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(new)
    per_token = [-2 * 1.28, -2 * 1.1, -2 * 0.5, 1 * 0.8, 1 * 1.5]
    assert float(loss) == pytest.approx(sum(per_token) / 5, rel=1e-6)
    g = np.asarray(grad) * 5  # undo the token mean
    np.testing.assert_allclose(g[0, :3], [0.0, -2 * 1.1, -2 * 0.5], rtol=1e-5)
    np.testing.assert_allclose(g[1, :2], [0.0, 1.5], rtol=1e-5)
    assert float(metrics["clip_high_fraction"]) == pytest.approx(1 / 5)
    assert float(metrics["clip_low_fraction"]) == pytest.approx(1 / 5)
    # PPO's objective is the symmetric special case, through the same surrogate.
    z = jnp.zeros((2, 4))
    _, ppo = ppo_losses(new, old, adv[:, None] * MASK, z, z, z, MASK, clip_ratio=0.2)
    assert float(ppo["clip_fraction"]) == pytest.approx(2 / 5)  # 1.5 > 1.2 joins 0.5


def test_gspo_uses_one_length_normalised_ratio_per_sequence():
    old = jnp.zeros((2, 4))
    new = jnp.array([[0.3, -0.1, 0.1, 5.0], [0.02, -0.02, 5.0, 5.0]])  # padding ignored
    adv = jnp.array([1.0, -1.0])
    kw = dict(ratio_level="sequence", eps_low=0.05, eps_high=0.05)
    loss, metrics = _loss(new, old, adv, **kw)
    s0, s1 = np.exp(0.3 / 3), np.exp(0.0)  # exp of the mean log-ratio over valid tokens
    # Sequence 0: s0 = 1.105 > 1.05 with A > 0: clipped to 1.05. Sequence 1: s1 = 1.
    assert s0 > 1.05
    assert float(loss) == pytest.approx((-1.05 + 1.0 * s1) / 2, rel=1e-6)
    assert float(metrics["clip_high_fraction"]) == pytest.approx(3 / 5)  # seq 0's 3 tokens
    # Inside the bounds, the gradient is -A s_i / |y_i| on every token of sequence i.
    grad = jax.grad(lambda n: _loss(n, old, adv, **{**kw, "eps_high": 0.5})[0])(new)
    np.testing.assert_allclose(grad[0, :3], -s0 / 3 / 2, rtol=1e-5)
    np.testing.assert_allclose(grad[1, :2], s1 / 2 / 2, rtol=1e-5)
    assert not np.asarray(grad)[MASK == 0].any()


def test_kl_term_is_k3_to_the_reference_and_off_at_beta_zero():
    old = jnp.zeros((2, 4))
    new = jnp.log(jnp.full((2, 4), 0.5))
    ref = jnp.log(jnp.full((2, 4), 0.25))
    adv = jnp.zeros(2)  # no policy term
    k3 = 0.5 - np.log(0.5) - 1  # pi_ref / pi - log(pi_ref / pi) - 1 with pi_ref / pi = 1/2
    loss, metrics = _loss(new, old, adv, ref=ref, beta=0.1, aggregation="token_mean")
    assert float(metrics["kl"]) == pytest.approx(k3, rel=1e-5)
    assert float(loss) == pytest.approx(0.1 * k3, rel=1e-5)
    loss, metrics = _loss(new, old, adv, ref=ref, beta=0.0)
    assert float(loss) == 0.0 and float(metrics["kl"]) == 0.0
