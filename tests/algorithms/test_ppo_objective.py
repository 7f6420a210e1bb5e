"""PPO loss terms against values computed by hand on tiny arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_reason.algorithms.ppo_objective import (
    entropy_from_logits,
    kl_penalty,
    logprobs_from_logits,
    ppo_losses,
)

# Ratios r = exp(new - old), eps = 0.2:
#   row 0: r = 1.5 (A=+1: clipped to 1.2), 0.5 (A=+1: unclipped), 1.0 (A=-2)
#   row 1: r = 0.5 (A=-1: clipped to 0.8), 1.5 (A=-1: unclipped), padding
RATIOS = np.array([[1.5, 0.5, 1.0], [0.5, 1.5, 1.0]])
ADV = np.array([[1.0, 1.0, -2.0], [-1.0, -1.0, 3.0]], np.float32)
MASK = np.array([[1, 1, 1], [1, 1, 0]], bool)
OLD = np.full((2, 3), -1.0, np.float32)
NEW = (OLD + np.log(RATIOS)).astype(np.float32)


def _call(new=NEW, values=None, **kw):
    values = np.zeros((2, 3), np.float32) if values is None else values
    return ppo_losses(
        new, OLD, ADV, values, np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32), MASK, **kw
    )


def test_policy_loss_and_clip_fraction_by_hand():
    _, m = _call(clip_ratio=0.2)
    # per-token max(-A r, -A clip(r, 0.8, 1.2)), by hand:
    #   row 0: max(-1.5, -1.2) = -1.2 (clipped), max(-0.5, -0.8) = -0.5, max(2, 2) = 2
    #   row 1: max(0.5, 0.8) = 0.8 (clipped), max(1.5, 1.2) = 1.5; the third is padding
    per_token = [-1.2, -0.5, 2.0, 0.8, 1.5]
    np.testing.assert_allclose(m["policy_loss"], np.mean(per_token), rtol=1e-6)
    np.testing.assert_allclose(m["clip_fraction"], 2 / 5, rtol=1e-6)
    np.testing.assert_allclose(m["ratio_mean"], (1.5 + 0.5 + 1.0 + 0.5 + 1.5) / 5, rtol=1e-6)
    approx = [(r - 1) - np.log(r) for r in (1.5, 0.5, 1.0, 0.5, 1.5)]
    np.testing.assert_allclose(m["approx_kl"], np.mean(approx), rtol=1e-5)


def test_policy_gradient_is_zero_on_pessimistically_clipped_tokens():
    def policy_loss(new):
        return _call(new=new)[1]["policy_loss"]

    grad = np.asarray(jax.grad(policy_loss)(jnp.asarray(NEW)))
    clipped = np.array([[1, 0, 0], [1, 0, 0]], bool)
    assert np.all(grad[clipped] == 0)
    assert grad[1, 2] == 0  # padding
    # unclipped tokens: d/dlogp of -A r / n = -A r / n
    n = MASK.sum()
    for b, t in [(0, 1), (0, 2), (1, 1)]:
        np.testing.assert_allclose(grad[b, t], -ADV[b, t] * RATIOS[b, t] / n, rtol=1e-5)


def test_value_loss_clipping_by_hand():
    values = np.array([[1.5, 0.9, -0.5], [0.1, 3.0, 9.0]], np.float32)  # old V = 0, R = 1
    total, m = _call(values=values, value_clip=0.2, vf_coef=0.5)
    # clipped V = clip(V, -0.2, 0.2); per token max((V-1)^2, (Vc-1)^2)
    per_token = [
        max((v - 1) ** 2, (np.clip(v, -0.2, 0.2) - 1) ** 2) for v in (1.5, 0.9, -0.5, 0.1, 3.0)
    ]
    np.testing.assert_allclose(m["value_loss"], 0.5 * np.mean(per_token), rtol=1e-6)
    # the clipped term wins for V = 1.5 (0.64 > 0.25) and V = 0.9 (0.64 > 0.01) only
    np.testing.assert_allclose(m["value_clip_fraction"], 2 / 5, rtol=1e-6)
    errs = [(v - 1) ** 2 for v in (1.5, 0.9, -0.5, 0.1, 3.0)]
    np.testing.assert_allclose(m["value_error"], np.mean(errs), rtol=1e-6)
    np.testing.assert_allclose(total, m["policy_loss"] + 0.5 * m["value_loss"], rtol=1e-6)
    _, unclipped = _call(values=values, value_clip=None)
    np.testing.assert_allclose(unclipped["value_loss"], 0.5 * np.mean(errs), rtol=1e-6)


def test_entropy_bonus_enters_total_with_negative_sign():
    ent = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]], np.float32)
    base, _ = _call()
    total, m = _call(entropy=ent, entropy_coef=0.1)
    np.testing.assert_allclose(m["entropy"], 3.0, rtol=1e-6)  # padding's 100 excluded
    np.testing.assert_allclose(total, base - 0.3, rtol=1e-5)


def test_entropy_and_logprobs_from_logits_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(entropy_from_logits(logits), -(p * np.log(p)).sum(-1), rtol=1e-5)
    targets = rng.integers(0, 5, size=(2, 3))
    want = np.log(np.take_along_axis(p, targets[..., None], -1))[..., 0]
    np.testing.assert_allclose(logprobs_from_logits(logits, targets), want, rtol=1e-5)
    masked = logits.copy()
    masked[..., :2] = -np.inf  # top-k style masking: no NaN
    assert np.all(np.isfinite(entropy_from_logits(masked)))


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_penalty_zero_at_reference(kind):
    logp = np.log(np.random.default_rng(0).random((3, 4))).astype(np.float32)
    np.testing.assert_array_equal(kl_penalty(logp, logp, kind), 0.0)


def test_kl_penalty_values_and_k3_nonnegative():
    logp = np.log(np.random.default_rng(1).random((50, 8))).astype(np.float64)
    ref = np.log(np.random.default_rng(2).random((50, 8))).astype(np.float64)
    r = np.exp(ref - logp)
    np.testing.assert_allclose(kl_penalty(logp, ref, "k1"), logp - ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        kl_penalty(logp, ref, "k2"), 0.5 * (logp - ref) ** 2, rtol=1e-5, atol=1e-6
    )
    k3 = np.asarray(kl_penalty(logp, ref, "k3"))
    np.testing.assert_allclose(k3, (r - 1) - np.log(r), rtol=1e-4, atol=1e-5)
    assert np.all(k3 >= 0)
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(logp, ref, "k4")


def test_k1_k3_are_unbiased_kl_estimators():
    """Averaged over tokens sampled from pi, k1 and k3 approach the exact KL(pi || ref)."""
    pi = np.array([0.5, 0.3, 0.2])
    ref = np.array([0.2, 0.5, 0.3])
    exact = np.sum(pi * np.log(pi / ref))
    tokens = np.random.default_rng(3).choice(3, size=200_000, p=pi)
    logp, ref_logp = np.log(pi)[tokens], np.log(ref)[tokens]
    for kind in ("k1", "k3"):
        est = float(np.mean(np.asarray(kl_penalty(logp, ref_logp, kind))))
        assert abs(est - exact) < 0.01, (kind, est, exact)
