"""GAE, whitening and per-token rewards against slow, obvious references."""

import numpy as np
import pytest

from jaxrl_reason.algorithms.advantages import gae, token_rewards, whiten
from jaxrl_reason.rewards.orm import last_token_onehot


def _gae_reference(rewards, values, mask, gamma, lam):
    """Double loop: A_t = sum_k (gamma lam)^k delta_{t_k} over the valid tokens t_k >= t."""
    adv = np.zeros_like(rewards, dtype=np.float64)
    for b in range(rewards.shape[0]):
        idx = [t for t in range(rewards.shape[1]) if mask[b, t]]
        deltas = []
        for j, t in enumerate(idx):
            next_v = values[b, idx[j + 1]] if j + 1 < len(idx) else 0.0
            deltas.append(rewards[b, t] + gamma * next_v - values[b, t])
        for j, t in enumerate(idx):
            adv[b, t] = sum((gamma * lam) ** k * deltas[j + k] for k in range(len(idx) - j))
    return adv


def _ragged_batch(rng, b=5, t=9):
    lengths = rng.integers(0, t + 1, size=b)
    lengths[0] = t  # one full row
    lengths[1] = 0  # one empty row
    mask = np.arange(t)[None] < lengths[:, None]
    rewards = rng.normal(size=(b, t)).astype(np.float32)
    values = rng.normal(size=(b, t)).astype(np.float32)
    return rewards, values, mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.95), (0.9, 1.0), (1.0, 0.0)])
def test_gae_matches_double_loop(gamma, lam):
    rewards, values, mask = _ragged_batch(np.random.default_rng(0))
    adv, ret = gae(rewards, values, mask, gamma, lam)
    ref = _gae_reference(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, np.where(mask, ref + values, 0.0), rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(adv)[~mask] == 0)


def test_gae_skips_holes_and_left_padding():
    """Invalid slots anywhere are jumped over: same result as compacting the valid tokens."""
    rng = np.random.default_rng(1)
    rewards, values, _ = _ragged_batch(rng, b=4, t=10)
    mask = rng.random((4, 10)) < 0.6
    adv, _ = gae(rewards, values, mask, 0.97, 0.9)
    ref = _gae_reference(rewards, values, mask, 0.97, 0.9)
    np.testing.assert_allclose(adv, ref, rtol=1e-5, atol=1e-5)


def test_gae_sparse_reward_gamma_one_lambda_one_is_reward_to_go_minus_value():
    rewards = np.array([[0.0, 0.0, 1.0, 7.0]], np.float32)  # 7 sits on padding: ignored
    values = np.array([[0.2, 0.4, 0.6, 9.0]], np.float32)
    mask = np.array([[1, 1, 1, 0]], bool)
    adv, ret = gae(rewards, values, mask, 1.0, 1.0)
    np.testing.assert_allclose(adv, [[0.8, 0.6, 0.4, 0.0]], atol=1e-6)
    np.testing.assert_allclose(ret, [[1.0, 1.0, 1.0, 0.0]], atol=1e-6)


def test_whiten_mean_zero_std_one_on_valid_tokens():
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 5.0, size=(4, 7)).astype(np.float32)
    mask = rng.random((4, 7)) < 0.7
    out = np.asarray(whiten(x, mask))
    assert abs(out[mask].mean()) < 1e-5
    assert abs(out[mask].std() - 1.0) < 1e-4
    assert np.all(out[~mask] == 0)
    kept = np.asarray(whiten(x, mask, shift_mean=False))
    np.testing.assert_allclose(
        kept[mask],
        (x[mask] - x[mask].mean()) / x[mask].std() + x[mask].mean(),
        rtol=1e-4,
        atol=1e-4,
    )


def test_token_rewards_places_score_on_last_valid_token():
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    score = np.array([2.0, -1.0, 5.0], np.float32)
    kl = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    dense = np.full((3, 4), 0.25, np.float32)
    out = np.asarray(token_rewards(score, mask, kl, 0.5, dense=dense))
    expected = np.array(
        [
            [-0.5 * 0.0 + 0.25, -0.5 * 0.1 + 0.25, -0.5 * 0.2 + 0.25 + 2.0, 0.0],
            [-0.5 * 0.4 + 0.25 - 1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],  # empty row: the score has nowhere to go
        ]
    )
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_array_equal(
        last_token_onehot(mask), [[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    )


def test_sharded_batch_matches_single_device():
    """GAE + whitening + rewards on a batch sharded over 8 devices equal the local result."""
    import jax

    from jaxrl_reason.parallel import batch_sharding, make_mesh

    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices; the test suite's conftest provides them")
    rng = np.random.default_rng(4)
    rewards, values, mask = _ragged_batch(rng, b=8, t=6)
    score = rng.normal(size=8).astype(np.float32)

    def pipeline(rewards, values, mask, score):
        r = token_rewards(score, mask, rewards, 0.1)
        adv, ret = gae(r, values, mask, 1.0, 0.95)
        return whiten(adv, mask), ret

    local = jax.jit(pipeline)(rewards, values, mask, score)
    mesh = make_mesh(data=8)
    args = [jax.device_put(x, batch_sharding(mesh, x.ndim)) for x in (rewards, values, mask)]
    args.append(jax.device_put(score, batch_sharding(mesh, 1)))
    sharded = jax.jit(pipeline)(*args)
    for a, b in zip(local, sharded):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
