"""`state_shardings`: optimizer leaves mirroring a parameter get its sharding."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrl_reason.parallel import make_mesh
from jaxrl_reason.training import OptimizerConfig, TrainState, make_optimizer, state_shardings


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
@pytest.mark.parametrize("accumulation_steps", [1, 4])
def test_optimizer_leaves_follow_their_parameter(accumulation_steps):
    mesh = make_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    # Two parameters of the same shape with different shardings: matching is by path.
    params = {
        "a": {"kernel": jnp.zeros((4, 8))},
        "b": {"kernel": jnp.zeros((4, 8))},
        "norm": {"scale": jnp.zeros((8,))},
    }
    specs = {
        "a": {"kernel": P("fsdp", "tensor")},
        "b": {"kernel": P("tensor", None)},
        "norm": {"scale": P()},
    }
    param_shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    tx = make_optimizer(OptimizerConfig(weight_decay=0.1, accumulation_steps=accumulation_steps))
    abstract = jax.eval_shape(lambda: TrainState.create(params, tx))
    shardings = state_shardings(abstract, param_shardings, mesh)

    assert shardings.step.spec == P()
    assert shardings.params == param_shardings
    pairs = jax.tree_util.tree_leaves_with_path(shardings.opt_state)
    want_by_param = {"a": P("fsdp", "tensor"), "b": P("tensor", None), "norm": P()}
    mirrored = 0
    for path, sharding in pairs:
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        if keys:
            assert sharding.spec == want_by_param[keys[0]], jax.tree_util.keystr(path)
            mirrored += 1
        else:
            assert sharding.spec == P(), jax.tree_util.keystr(path)  # counts and scalars
    # mu and nu per parameter, plus the accumulated gradients when accumulating.
    assert mirrored == 3 * (2 + (accumulation_steps > 1))


def test_mismatched_param_shardings_raise():
    tx = make_optimizer(OptimizerConfig())
    abstract = jax.eval_shape(lambda: TrainState.create({"w": jnp.zeros(3)}, tx))
    with pytest.raises(ValueError, match="leaves"):
        state_shardings(abstract, {}, make_mesh(devices=jax.devices()[:1]))
