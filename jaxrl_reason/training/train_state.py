"""`TrainState` (step, params, optimizer state) and its shardings on a mesh.

The optimizer is not stored in the state: the state is a plain pytree of arrays (easy to
checkpoint, donate and shard) and the jitted step closes over the `optax` transformation.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from jaxrl_reason.model import lora
from jaxrl_reason.parallel import replicated


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 [] number of train-step calls (micro-batches) applied
    params: Any
    opt_state: Any

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation) -> TrainState:
        """With LoRA adapters in `params`, optimizer state for the adapters and heads only."""
        trained, _ = lora.split_trainable(params)
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trained))


def split_state(arrays: Any) -> tuple[Any, Any]:
    """(the trained part, the frozen base) of a `TrainState` or a params tree: with LoRA
    adapters the state with only the adapters and heads as params, and the rest of the
    params; without, everything and {}."""
    if isinstance(arrays, TrainState):
        trained, frozen = lora.split_trainable(arrays.params)
        return arrays.replace(params=trained), frozen
    return lora.split_trainable(arrays)


def join_state(part: Any, frozen: Any) -> Any:
    """The inverse of `split_state`."""
    if isinstance(part, TrainState):
        return part.replace(params=lora.join(part.params, frozen))
    return lora.join(part, frozen)


def _path_keys(path: tuple[Any, ...]) -> tuple[str, ...]:
    """The dict keys along a pytree path (optax state wrappers and indices dropped)."""
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def state_shardings(abstract_state: TrainState, param_shardings: Any, mesh: Mesh) -> TrainState:
    """Shardings for a state: optimizer leaves that mirror a parameter get its sharding.

    An optimizer leaf mirrors a parameter when the dict keys of its path end with the
    parameter's path (optax nests `mu`, `nu`, accumulated gradients ... as copies of the
    params tree) and the shapes agree. Everything else (counts, scalars) is replicated.
    """
    by_path: dict[tuple[str, ...], tuple[tuple[int, ...], NamedSharding]] = {}
    param_leaves = jax.tree_util.tree_leaves_with_path(abstract_state.params)
    sharding_leaves = jax.tree_util.tree_leaves(param_shardings)
    if len(param_leaves) != len(sharding_leaves):
        raise ValueError(
            f"param_shardings has {len(sharding_leaves)} leaves but the params "
            f"have {len(param_leaves)}; build them from the same params tree"
        )
    for (path, leaf), sharding in zip(param_leaves, sharding_leaves):
        by_path[_path_keys(path)] = (tuple(leaf.shape), sharding)
    rep = replicated(mesh)

    def opt_sharding(path: tuple[Any, ...], leaf: Any) -> NamedSharding:
        keys = _path_keys(path)
        for start in range(len(keys)):
            hit = by_path.get(keys[start:])
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return rep

    opt = jax.tree_util.tree_map_with_path(opt_sharding, abstract_state.opt_state)
    return TrainState(step=rep, params=param_shardings, opt_state=opt)


def init_train_state(
    params: Any,
    tx: optax.GradientTransformation,
    mesh: Mesh | None = None,
    param_shardings: Any = None,
) -> TrainState:
    """A fresh state; on a mesh, params and optimizer state are laid out by the shardings.

    The state owns fresh buffers (a copy of `params`), so donating it to the train step
    leaves the caller's `params` usable, e.g. to restart every EI round from them.
    With LoRA adapters only the trained part is copied: the frozen base's arrays are the
    caller's (the train step never donates them).
    """
    trained, frozen = lora.split_trainable(params)
    if mesh is None:
        return join_state(jax.jit(lambda p: TrainState.create(p, tx))(trained), frozen)
    if param_shardings is None:
        raise ValueError(
            "init_train_state: a mesh needs param_shardings (e.g. "
            "logical_shardings(param_logical_axes(config), mesh))"
        )
    abstract = jax.eval_shape(lambda p: TrainState.create(p, tx), params)
    part_shardings, frozen_shardings = split_state(state_shardings(abstract, param_shardings, mesh))
    trained = jax.device_put(trained, part_shardings.params)
    frozen = jax.device_put(frozen, frozen_shardings)
    part = jax.jit(lambda p: TrainState.create(p, tx), out_shardings=part_shardings)(trained)
    return join_state(part, frozen)
