"""The jitted train step: sharded equals single-device, accumulation equals one big batch,
a non-finite loss leaves the state untouched, and the eval step computes the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_reason.model import Transformer, init_params
from jaxrl_reason.parallel import make_mesh
from jaxrl_reason.training import (
    OptimizerConfig,
    init_train_state,
    make_eval_step,
    make_optimizer,
    make_schedule,
    make_train_step,
    model_param_shardings,
    sft_loss_fn,
    shard_batch,
)

from .sft_run_script import SEQ_LEN, ToyBatches, tiny_config

CONFIG = tiny_config()
MODEL = Transformer(CONFIG)

_INIT = jax.jit(init_params, static_argnums=0)  # one compile, not op-by-op


def _params(seed=0):
    return _INIT(CONFIG, jax.random.key(seed))


def _copy(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def _assert_trees_close(a, b, **tol):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path), **tol
        )


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_sharded_train_and_eval_steps_equal_single_device():
    cfg = OptimizerConfig(learning_rate=1e-2, warmup_steps=1, total_steps=10, weight_decay=0.1)
    tx = make_optimizer(cfg)
    loss_fn = sft_loss_fn(MODEL)
    mesh = make_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    shardings = model_param_shardings(MODEL, mesh)
    params = _params()
    sharded = init_train_state(_copy(params), tx, mesh, shardings)
    single = init_train_state(_copy(params), tx)
    # The layout really is sharded: the fsdp x tensor split of an MLP weight.
    assert (
        sharded.params["layers"]["mlp"]["up"].sharding.spec == shardings["layers"]["mlp"]["up"].spec
    )
    assert len(sharded.params["layers"]["mlp"]["up"].addressable_shards[0].data.reshape(-1)) < (
        sharded.params["layers"]["mlp"]["up"].size
    )

    step_sharded = make_train_step(
        MODEL,
        tx,
        loss_fn,
        mesh=mesh,
        param_shardings=shardings,
        learning_rate_fn=make_schedule(cfg),
    )
    step_single = make_train_step(MODEL, tx, loss_fn, learning_rate_fn=make_schedule(cfg))
    data = ToyBatches(batch_size=4)
    for i in range(2):
        batch = next(data)
        rng = jax.random.key(i)
        sharded, m_sharded = step_sharded(sharded, shard_batch(batch, mesh), rng)
        single, m_single = step_single(single, shard_batch(batch, None), rng)
        for name in ("loss", "grad_norm", "accuracy", "learning_rate"):
            np.testing.assert_allclose(m_sharded[name], m_single[name], rtol=1e-5, atol=1e-6)
    assert int(sharded.step) == int(single.step) == 2
    _assert_trees_close(
        jax.device_get(sharded.params), jax.device_get(single.params), rtol=1e-4, atol=1e-6
    )
    _assert_trees_close(
        jax.device_get(sharded.opt_state), jax.device_get(single.opt_state), rtol=1e-4, atol=1e-7
    )
    assert (
        sharded.params["layers"]["mlp"]["up"].sharding.spec == shardings["layers"]["mlp"]["up"].spec
    )
    batch = next(data)
    eval_sharded = make_eval_step(MODEL, loss_fn, mesh=mesh, param_shardings=shardings)
    eval_single = make_eval_step(MODEL, loss_fn)
    np.testing.assert_allclose(
        eval_sharded(sharded.params, shard_batch(batch, mesh), jax.random.key(0))["loss"],
        eval_single(single.params, shard_batch(batch, None), jax.random.key(0))["loss"],
        rtol=1e-5,
    )


def test_accumulated_micro_batches_equal_one_big_batch():
    # Tight clipping, so the test also checks that clipping sees the averaged gradient.
    base = dict(
        learning_rate=1e-2,
        warmup_steps=0,
        total_steps=10,
        weight_decay=0.1,
        grad_clip_norm=0.05,
        eps=1e-3,
    )  # eps: keep Adam's g / |g| well conditioned
    cfg_big, cfg_acc = OptimizerConfig(**base), OptimizerConfig(**base, accumulation_steps=2)
    loss_fn = sft_loss_fn(MODEL)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, CONFIG.vocab_size, (4, SEQ_LEN)).astype(np.int32)
    loss_mask = np.zeros((4, SEQ_LEN), np.float32)
    loss_mask[:, 5:12] = 1.0  # equal token counts, so the mean of means is the global mean
    batch = {"tokens": tokens, "loss_mask": loss_mask}
    key = jax.random.key(0)

    tx_big = make_optimizer(cfg_big)
    big = init_train_state(_copy(_params()), tx_big)
    big, m_big = make_train_step(MODEL, tx_big, loss_fn)(big, shard_batch(batch, None), key)
    assert float(m_big["grad_norm"]) > 0.05  # clipping is active

    tx_acc = make_optimizer(cfg_acc)
    acc = init_train_state(_copy(_params()), tx_acc)
    step = make_train_step(
        MODEL, tx_acc, loss_fn, learning_rate_fn=make_schedule(cfg_acc), accumulation_steps=2
    )
    start = _copy(acc.params)
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    acc, m0 = step(acc, shard_batch(halves[0], None), key)
    _assert_trees_close(acc.params, start, rtol=0, atol=0)  # accumulating, not updating yet
    acc, m1 = step(acc, shard_batch(halves[1], None), key)
    np.testing.assert_allclose((m0["loss"] + m1["loss"]) / 2, m_big["loss"], rtol=1e-5)
    assert float(m0["learning_rate"]) == float(m1["learning_rate"]) == np.float32(1e-2)
    _assert_trees_close(acc.params, big.params, rtol=1e-4, atol=1e-6)


def test_non_finite_loss_leaves_state_unchanged():
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-2, total_steps=10))
    sft = sft_loss_fn(MODEL)

    def poisoned(params, batch, rng):
        loss, metrics = sft(params, batch, rng)
        return jnp.where(batch["batch_index"][0] == 1, jnp.nan, loss), metrics

    state = init_train_state(_copy(_params()), tx)
    step = make_train_step(MODEL, tx, poisoned)
    data = ToyBatches()
    state, m = step(state, shard_batch(next(data), None), jax.random.key(0))
    assert bool(m["finite"])
    before = _copy(state)
    state, m = step(state, shard_batch(next(data), None), jax.random.key(1))
    assert not bool(m["finite"]) and np.isnan(m["loss"])
    assert int(state.step) == 1
    _assert_trees_close(state, before, rtol=0, atol=0)


def test_eval_step_computes_the_loss_without_changing_params():
    params = _params()
    batch = shard_batch(next(ToyBatches()), None)
    want, _ = sft_loss_fn(MODEL)(params, batch, jax.random.key(0))
    metrics = make_eval_step(MODEL, sft_loss_fn(MODEL))(params, batch, jax.random.key(0))
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-6)
    assert set(metrics) >= {"loss", "accuracy", "num_tokens"}
