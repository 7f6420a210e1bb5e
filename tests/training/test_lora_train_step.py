"""The train step with LoRA adapters: only adapters (and heads) are differentiated, updated
and given optimizer state; the frozen base passes through bit for bit; a sharded LoRA
step equals the single-device step; QLoRA's int8 base trains the same way."""

import jax
import numpy as np
import pytest

from jaxrl_reason.model import LoraConfig, Transformer, init_params, lora
from jaxrl_reason.parallel import make_mesh
from jaxrl_reason.training import (
    OptimizerConfig,
    init_train_state,
    make_optimizer,
    make_train_step,
    model_param_shardings,
    sft_loss_fn,
    shard_batch,
)

from .sft_run_script import ToyBatches, tiny_config

BASE = tiny_config()
CONFIG = BASE.replace(lora=LoraConfig(rank=4, alpha=8.0))
MODEL = Transformer(CONFIG)
OPT = OptimizerConfig(learning_rate=1e-2, total_steps=10, weight_decay=0.1)


def _lora_params(config=CONFIG, seed=0):
    return lora.add_adapters(config, init_params(BASE, jax.random.key(seed)), jax.random.key(1))


def _flat(tree):
    return {
        jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
    }


def test_one_step_changes_only_the_adapters_and_keeps_state_for_them_only():
    tx = make_optimizer(OPT)
    params = _lora_params()
    before = _flat(params)
    state = init_train_state(params, tx)
    # Optimizer state mirrors the adapters alone (Adam's mu and nu, no base leaf).
    adapter_shapes = sorted(v.shape for k, v in before.items() if "_lora_" in k)
    mu = state.opt_state[1][0].mu
    assert sorted(np.shape(x) for x in jax.tree.leaves(mu)) == adapter_shapes
    step = make_train_step(MODEL, tx, sft_loss_fn(MODEL))
    state, metrics = step(
        state, shard_batch(next(ToyBatches(batch_size=4)), None), jax.random.key(0)
    )
    assert bool(metrics["finite"]) and float(metrics["grad_norm"]) > 0
    # The base is shared, not copied or donated: the caller's arrays are the state's.
    assert state.params["layers"]["mlp"]["up"] is params["layers"]["mlp"]["up"]
    assert not params["layers"]["mlp"]["up"].is_deleted()
    after = _flat(state.params)
    assert after.keys() == before.keys()
    for k in before:
        if "_lora_" in k:
            assert not np.array_equal(after[k], before[k]), f"{k} did not train"
        else:
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)


def test_qlora_step_trains_adapters_over_the_int8_base():
    config = CONFIG.replace(lora=CONFIG.lora.replace(quantize="int8"))
    model = Transformer(config)
    params = _lora_params(config)
    assert params["layers"]["mlp"]["up"].dtype == np.int8
    before = _flat(params)
    tx = make_optimizer(OPT)
    step = make_train_step(model, tx, sft_loss_fn(model))
    state, _ = step(
        init_train_state(params, tx), shard_batch(next(ToyBatches(4)), None), jax.random.key(0)
    )
    after = _flat(state.params)
    for k in before:
        assert np.array_equal(after[k], before[k]) != ("_lora_" in k), k


def test_adapter_dropout_needs_the_rng_and_masks_per_key():
    config = CONFIG.replace(lora=CONFIG.lora.replace(dropout=0.5))
    model = Transformer(config)
    params = jax.tree.map(lambda x: x + 0.1 if x.ndim else x, _lora_params(config))  # B != 0
    loss = jax.jit(sft_loss_fn(model))
    batch = shard_batch(next(ToyBatches(4)), None)
    a, b = (float(loss(params, batch, jax.random.key(s))[0]) for s in (0, 1))
    assert a != b
    assert float(loss(params, batch, jax.random.key(0))[0]) == a


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_sharded_lora_step_equals_single_device(quantize):
    config = CONFIG.replace(lora=CONFIG.lora.replace(quantize=quantize))
    model = Transformer(config)
    tx = make_optimizer(OPT)
    mesh = make_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    shardings = model_param_shardings(model, mesh)
    assert shardings["layers"]["attn"]["q_lora_b"].spec[-2] == "tensor"  # heads, by the rules
    params = _lora_params(config)
    sharded = init_train_state(jax.tree.map(np.array, params), tx, mesh, shardings)
    single = init_train_state(jax.tree.map(np.array, params), tx)
    loss_fn = sft_loss_fn(model)
    step_sharded = make_train_step(model, tx, loss_fn, mesh=mesh, param_shardings=shardings)
    step_single = make_train_step(model, tx, loss_fn)
    batch = next(ToyBatches(batch_size=4))
    sharded, m_sharded = step_sharded(sharded, shard_batch(batch, mesh), jax.random.key(0))
    single, m_single = step_single(single, shard_batch(batch, None), jax.random.key(0))
    np.testing.assert_allclose(m_sharded["loss"], m_single["loss"], rtol=1e-5)
    np.testing.assert_allclose(m_sharded["grad_norm"], m_single["grad_norm"], rtol=1e-4)
    got, want = _flat(jax.device_get(sharded.params)), _flat(jax.device_get(single.params))
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)
