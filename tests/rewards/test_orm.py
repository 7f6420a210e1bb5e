"""ORM labels, loss and scores by hand, and a tiny ORM that learns a separable labelling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrl_reason.model import Transformer, default_positions, init_params, model_config
from jaxrl_reason.rewards.orm import (
    dense_orm_rewards,
    final_scores,
    orm_loss,
    orm_loss_fn,
    orm_token_labels,
    reward_logits,
    step_scores,
)


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def test_token_labels_placement():
    response_mask = np.array([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], bool)
    correct = np.array([True, False])
    labels, label_mask = orm_token_labels(response_mask, correct)
    np.testing.assert_array_equal(labels, [[0, 1, 1, 1, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(label_mask, response_mask)
    step_ends = np.array([[0, 0, 1, 1, 1], [1, 0, 1, 0, 0]], bool)
    labels, label_mask = orm_token_labels(
        response_mask, correct, step_ends_only=True, step_end_mask=step_ends
    )
    np.testing.assert_array_equal(label_mask, [[0, 0, 1, 1, 0], [0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(labels, [[0, 0, 1, 1, 0], [0, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match="step_end_mask"):
        orm_token_labels(response_mask, correct, step_ends_only=True)


def test_orm_loss_is_masked_bce():
    logits = np.array([[2.0, -1.0, 0.5], [-3.0, 4.0, 100.0]], np.float32)
    labels = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    mask = np.array([[1, 1, 1], [1, 1, 0]], bool)
    loss, m = orm_loss(logits, labels, mask)
    bce = np.logaddexp(0.0, logits) - labels * logits  # -log sigmoid(+-x), stably
    np.testing.assert_allclose(loss, bce[mask].mean(), rtol=1e-5)
    # correct signs: 2>0 (1) yes, -1 (1) no, 0.5 (0) no, -3 (0) yes, 4 (0) no
    np.testing.assert_allclose(m["accuracy"], 2 / 5, rtol=1e-6)
    np.testing.assert_allclose(m["label_mean"], 2 / 5, rtol=1e-6)
    # stable at extreme logits
    big, _ = orm_loss(
        np.array([[1e4, -1e4]], np.float32),
        np.array([[0.0, 1.0]], np.float32),
        np.ones((1, 2), bool),
    )
    np.testing.assert_allclose(big, 1e4, rtol=1e-5)


def test_final_and_step_scores():
    logits = np.array(
        [[5.0, 1.0, -2.0, 9.0], [0.3, 9.0, 9.0, 9.0], [1.0, 1.0, 1.0, 1.0]], np.float32
    )
    response_mask = np.array([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    np.testing.assert_allclose(
        final_scores(logits, response_mask), [_sigmoid(-2.0), _sigmoid(0.3), 0.0], rtol=1e-6
    )
    ends = np.array([[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 0, 0]], bool)
    s = np.asarray(step_scores(logits, ends))
    np.testing.assert_allclose(s, np.where(ends, _sigmoid(logits), 0.0), rtol=1e-6)


def test_dense_orm_rewards_deltas_by_hand():
    scores = np.array([[0.0, 0.7, 0.0, 0.4, 0.9], [0.2, 0.0, 0.0, 0.0, 0.0]], np.float32)
    ends = np.array([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0]], bool)
    out = np.asarray(dense_orm_rewards(scores, ends))
    np.testing.assert_allclose(
        out, [[0, 0.7 - 0.5, 0, 0.4 - 0.7, 0.9 - 0.4], [0.2 - 0.5, 0, 0, 0, 0]], atol=1e-6
    )
    # telescoping: the rewards of a row sum to its last step score minus s_0
    prompt_end = np.array([0.6, 0.1], np.float32)
    out = np.asarray(dense_orm_rewards(scores, ends, initial=prompt_end))
    np.testing.assert_allclose(out.sum(-1), [0.9 - 0.6, 0.2 - 0.1], atol=1e-6)
    np.testing.assert_allclose(dense_orm_rewards(scores, ends, mode="score"), scores)
    with pytest.raises(ValueError, match="mode"):
        dense_orm_rewards(scores, ends, mode="sum")


def _toy_batch(rng, b, prompt_len=2, resp_len=6):
    """Right-padded responses of random length; correct iff token 5 appears in them."""
    t = prompt_len + resp_len
    tokens = rng.integers(6, 16, size=(b, t))
    tokens[:, :prompt_len] = [1, 2]
    lengths = rng.integers(3, resp_len + 1, size=b)
    correct = rng.random(b) < 0.5
    for i in np.nonzero(correct)[0]:
        tokens[i, prompt_len + rng.integers(lengths[i])] = 5
    input_mask = np.arange(t)[None] < prompt_len + lengths[:, None]
    tokens = np.where(input_mask, tokens, 0)
    response_mask = input_mask & (np.arange(t)[None] >= prompt_len)
    return {
        "tokens": jnp.asarray(tokens, jnp.int32),
        "input_mask": jnp.asarray(input_mask),
        "positions": default_positions(jnp.asarray(input_mask)),
        "response_mask": jnp.asarray(response_mask),
        "correct": correct,
    }


@pytest.mark.slow  # 56 s of the default suite's 64 min (shared 2-core CPU)
def test_orm_learns_separable_toy_labelling():
    config = model_config(
        "tiny",
        vocab_size=16,
        d_model=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=2,
        head_dim=16,
        mlp_dim=64,
        max_seq_len=16,
    )
    model = Transformer(config, heads=("reward",))
    params = init_params(config, jax.random.key(0), heads=("reward",))
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)
    loss_fn = functools.partial(orm_loss_fn, model)

    @jax.jit
    def step(params, opt_state, batch):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, None)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    rng = np.random.default_rng(0)
    for _ in range(150):
        data = _toy_batch(rng, 64)
        labels, label_mask = orm_token_labels(data["response_mask"], data["correct"])
        batch = {k: data[k] for k in ("tokens", "input_mask", "positions")}
        batch |= {"labels": labels, "label_mask": label_mask}
        params, opt_state, metrics = step(params, opt_state, batch)

    test = _toy_batch(np.random.default_rng(123), 256)
    scores = np.asarray(final_scores(reward_logits(model, params, test), test["response_mask"]))
    accuracy = np.mean((scores > 0.5) == test["correct"])
    assert accuracy > 0.95, (accuracy, metrics)
