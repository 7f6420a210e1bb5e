"""Meshes, logical-axis rules and multi-host start-up."""

from jaxrl_reason.parallel.mesh import MESH_AXES, initialize_distributed, make_mesh
from jaxrl_reason.parallel.rules import (
    DEFAULT_RULES,
    activation_sharding,
    axis_rules,
    batch_sharding,
    batch_shards,
    logical_shardings,
    replicated,
)

__all__ = [
    "DEFAULT_RULES",
    "MESH_AXES",
    "activation_sharding",
    "axis_rules",
    "batch_shards",
    "batch_sharding",
    "initialize_distributed",
    "logical_shardings",
    "make_mesh",
    "replicated",
]
