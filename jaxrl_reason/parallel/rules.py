"""Logical-axis rules (MaxText style) and the shardings they give a pytree.

Every parameter and activation names its axes logically (`embed`, `heads`, `batch` ...);
the rules map those names to mesh axes. Changing parallelism is a change of rules (gin),
never of model code. A logical axis whose mesh axes are already used by an earlier axis
of the same array is left unsharded (Flax resolves rules in order).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import gin
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("lora_rank", None),  # LoRA adapters: the rank axis is small, never split
)


@gin.configurable
def axis_rules(rules: Any = DEFAULT_RULES) -> Rules:
    """The active rules; gin binds `axis_rules.rules` (lists become tuples)."""
    return tuple((name, tuple(m) if isinstance(m, list) else m) for name, m in rules)


def logical_shardings(logical_specs: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """A pytree of `NamedSharding`s for a pytree of logical `PartitionSpec`s."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules or axis_rules())


def batch_sharding(mesh: Mesh, ndim: int, rules: Rules | None = None) -> NamedSharding:
    """Sharding of a [batch, ...] array: batch over the rules' `batch` axes, rest replicated."""
    spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules or axis_rules())
    return NamedSharding(mesh, spec)


def batch_shards(mesh: Mesh | None, rules: Rules | None = None) -> int:
    """How many ways the rules split a batch over `mesh` (1 without a mesh).

    Every batch (and sampler row count) must be a multiple of it.
    """
    if mesh is None:
        return 1
    spec = batch_sharding(mesh, 1, rules).spec[0]
    axes = spec if isinstance(spec, tuple) else (spec,) if spec else ()
    return math.prod(mesh.shape[a] for a in axes)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules | None = None) -> Iterator[None]:
    """Context in which `nn.with_logical_constraint` inside the model takes effect."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules or axis_rules()):
        yield
