"""Meshes, logical-axis rules and multi-host start-up."""

from jaxrl_reason.parallel.hosts import (
    OtherProcessError,
    any_process,
    check_shared_workdir,
    is_main_process,
    join_job,
    on_main_process,
    to_host,
)
from jaxrl_reason.parallel.mesh import MESH_AXES, make_mesh
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
    "OtherProcessError",
    "any_process",
    "check_shared_workdir",
    "is_main_process",
    "join_job",
    "on_main_process",
    "to_host",
    "activation_sharding",
    "axis_rules",
    "batch_shards",
    "batch_sharding",
    "logical_shardings",
    "make_mesh",
    "replicated",
]
