"""A (data 2, fsdp 2, tensor 2) mesh computes what one device computes.

Reference: the same jitted functions on a single device, without shardings. Needs 8
devices (tests/conftest.py simulates 8 CPU devices before JAX is imported).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from jaxrl_reason.model import (
    Transformer,
    default_positions,
    init_cache,
    init_params,
    model_config,
    param_logical_axes,
)
from jaxrl_reason.parallel import (
    activation_sharding,
    batch_sharding,
    logical_shardings,
    make_mesh,
    replicated,
)

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8,
    reason="needs 8 devices: run with XLA_FLAGS=--xla_force_host_platform_device_count=8 "
    "(tests/conftest.py sets it before JAX is imported)",
)

HEADS = ("value",)
CONFIG = model_config(
    "tiny", num_layers=2, d_model=128, mlp_dim=256, vocab_size=512, max_seq_len=64
)
MODEL = Transformer(CONFIG, HEADS)
TOL = dict(rtol=1e-5, atol=1e-5)
# The KV cache layout of `init_cache`: k, v [L, B, K, S, H] (kv heads before slots).
CACHE_AXES = {
    "k": P("layers", "batch", "kv_heads", "length", "head_dim"),
    "v": P("layers", "batch", "kv_heads", "length", "head_dim"),
    "mask": P("batch", "length"),
    "index": P(),
}


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])


@pytest.fixture(scope="module")
def batch():
    """8 left-padded rows of 16 slots with 0..7 padding slots each."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CONFIG.vocab_size, (8, 16)).astype(np.int32)
    mask = np.arange(16)[None, :] >= np.arange(8)[:, None]
    positions = np.asarray(default_positions(jnp.asarray(mask)))
    return tokens, positions, mask


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, jax.random.key(0), heads=HEADS)


def _put(tree, shardings):
    return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)


def _param_shardings(mesh):
    return logical_shardings(param_logical_axes(CONFIG, HEADS), mesh)


def _forward(params, tokens, positions, mask):
    out = MODEL.apply({"params": params}, tokens, positions, mask)
    return out.logits, out.heads["value"]


def _loss(params, tokens, positions, mask):
    """Masked next-token cross entropy, plus the mean value so the head gets a gradient."""
    out = MODEL.apply({"params": params}, tokens, positions, mask)
    logp = jax.nn.log_softmax(out.logits[:, :-1], axis=-1)  # [B, T-1, V]
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]  # [B, T-1]
    weight = (mask[:, :-1] & mask[:, 1:]).astype(jnp.float32)
    value = jnp.sum(out.heads["value"] * mask) / jnp.sum(mask)
    return jnp.sum(nll * weight) / jnp.sum(weight) + value


# eps bounds how much Adam amplifies float-rounding noise in near-zero gradients
# (update ~ lr * g / (|g| + eps)); the default 1e-8 turns 1e-9 noise into lr-sized steps.
TX = optax.adamw(1e-3, eps=1e-5, weight_decay=0.1)


def _train_step(state, tokens, positions, mask):
    params, opt_state = state
    loss, grads = jax.value_and_grad(_loss)(params, tokens, positions, mask)
    updates, opt_state = TX.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss


def _opt_shardings(params_shape, param_shardings, mesh):
    """Adam moments shard like their parameters; the step count is replicated."""
    return optax.tree_map_params(
        TX,
        lambda _, s: s,
        jax.eval_shape(TX.init, params_shape),
        param_shardings,
        transform_non_params=lambda _: replicated(mesh),
    )


def test_params_are_sharded_by_the_rules(mesh, params):
    sharded = _put(params, _param_shardings(mesh))
    # DEFAULT_RULES: embed -> fsdp; vocab, mlp, heads, kv_heads -> tensor; layers unsharded.
    expected = {
        ("embedding",): P("tensor", "fsdp"),
        ("lm_head",): P("fsdp", "tensor"),
        ("layers", "attn", "q"): P(None, "fsdp", "tensor", None),
        ("layers", "attn", "k"): P(None, "fsdp", "tensor", None),
        ("layers", "attn", "o"): P(None, "tensor", None, "fsdp"),
        ("layers", "mlp", "down"): P(None, "tensor", "fsdp"),
        ("layers", "mlp_norm", "scale"): P(None, "fsdp"),
        ("final_norm", "scale"): P("fsdp"),
        ("value_head",): P("fsdp"),
    }
    for path, spec in expected.items():
        leaf = sharded
        for key in path:
            leaf = leaf[key]
        assert leaf.sharding.spec == spec, path
        # The shard held by one device really is that fraction of the array.
        shard = leaf.addressable_shards[0].data.shape
        ways = [1 if a is None else mesh.shape[a] for a in spec]
        assert shard == tuple(d // w for d, w in zip(leaf.shape, ways)), path


def test_sharded_forward_equals_single_device(mesh, params, batch):
    logits_ref, value_ref = jax.jit(_forward)(params, *batch)
    data = [batch_sharding(mesh, 2)] * 3
    with activation_sharding(mesh):
        forward = jax.jit(
            _forward,
            in_shardings=(_param_shardings(mesh), *data),
            out_shardings=(batch_sharding(mesh, 3), batch_sharding(mesh, 2)),
        )
        logits, value = forward(_put(params, _param_shardings(mesh)), *batch)
    assert logits.sharding.spec == P(("data", "fsdp"), None, None)
    np.testing.assert_allclose(logits, logits_ref, **TOL)
    np.testing.assert_allclose(value, value_ref, **TOL)


def test_sharded_train_step_equals_single_device(mesh, params, batch):
    state = (params, TX.init(params))
    (params_ref, opt_ref), loss_ref = jax.jit(_train_step)(state, *batch)

    param_sh = _param_shardings(mesh)
    state_sh = (param_sh, _opt_shardings(params, param_sh, mesh))
    data = [batch_sharding(mesh, 2)] * 3
    with activation_sharding(mesh):
        step = jax.jit(
            _train_step,
            in_shardings=(state_sh, *data),
            out_shardings=(state_sh, replicated(mesh)),
            donate_argnums=(0,),
        )
        # A copy: device_put may reuse the fixture's buffers, and the step donates them.
        sharded_params = _put(jax.tree.map(jnp.copy, params), param_sh)
        opt_state = jax.jit(TX.init, out_shardings=state_sh[1])(sharded_params)
        (new_params, new_opt), loss = step((sharded_params, opt_state), *batch)
    assert sharded_params["embedding"].is_deleted()  # donated
    np.testing.assert_allclose(loss, loss_ref, **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), new_params, params_ref)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), new_opt, opt_ref)
    assert new_params["layers"]["mlp"]["up"].sharding.spec == P(None, "fsdp", "tensor")
    mu_up = new_opt[0].mu["layers"]["mlp"]["up"]
    assert mu_up.sharding.spec == P(None, "fsdp", "tensor")


def _prefill_and_decode(params, tokens, positions, mask, next_token):
    """Prefill the prompts into a cache, then decode one token; the step's logits + cache."""
    cache = init_cache(CONFIG, tokens.shape[0], tokens.shape[1] + 4)
    cache = MODEL.apply(
        {"params": params}, tokens, positions, mask, cache=cache, return_logits=False
    ).cache
    next_position = positions[:, -1:] + 1
    out = MODEL.apply(
        {"params": params}, next_token, next_position, None, cache=cache, last_logits_only=True
    )
    return out.logits, out.heads["value"], out.cache


def test_sharded_kv_cache_decode_equals_single_device(mesh, params, batch):
    next_token = np.arange(8, dtype=np.int32)[:, None] * 7  # [B, 1]
    logits_ref, value_ref, cache_ref = jax.jit(_prefill_and_decode)(params, *batch, next_token)

    shape = init_cache(CONFIG, 8, 20)["k"].shape
    assert shape == (CONFIG.num_layers, 8, CONFIG.num_kv_heads, 20, CONFIG.head_dim), (
        f"init_cache's layout changed to {shape}: update CACHE_AXES"
    )
    cache_sh = logical_shardings(CACHE_AXES, mesh)
    data = [batch_sharding(mesh, 2)] * 4
    with activation_sharding(mesh):
        decode = jax.jit(
            _prefill_and_decode,
            in_shardings=(_param_shardings(mesh), *data),
            out_shardings=(batch_sharding(mesh, 3), batch_sharding(mesh, 2), cache_sh),
        )
        logits, value, cache = decode(_put(params, _param_shardings(mesh)), *batch, next_token)
    assert cache["k"].sharding.spec == P(None, ("data", "fsdp"), "tensor", None, None)
    np.testing.assert_allclose(logits, logits_ref, **TOL)
    np.testing.assert_allclose(value, value_ref, **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), cache, cache_ref)


@pytest.mark.parametrize(
    "sizes, match",
    [
        (dict(data=3, fsdp=2, tensor=2), "needs 12 devices"),
        (dict(data=-1, fsdp=-1, tensor=2), "at most one -1"),
        (dict(data=-1, fsdp=3, tensor=1), "do not divide"),
        (dict(data=0, fsdp=8, tensor=1), ">= 1 or -1"),
    ],
)
def test_bad_mesh_raises(sizes, match):
    with pytest.raises(ValueError, match=match):
        make_mesh(**sizes, devices=jax.devices()[:8])


def test_mesh_axes_are_auto(mesh):
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    # Inside the context the rules resolve activations; "embed" -> fsdp is dropped here
    # because the batch already uses fsdp (an array may use a mesh axis only once).
    with activation_sharding(mesh):
        spec = nn.logical_to_mesh_axes(("batch", "length", "embed"))
    assert spec == P(("data", "fsdp"), None, None)
