"""Device meshes with axes ("data", "fsdp", "tensor"), and multi-host start-up."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import gin
import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")
log = logging.getLogger(__name__)


@gin.configurable
def make_mesh(
    data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A mesh over `devices` (default: all). One axis may be -1 to take what is left.

    Axes are `AxisType.Auto`, so `with_sharding_constraint` and jit shardings apply.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = [data, fsdp, tensor]
    if shape.count(-1) > 1:
        raise ValueError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): at most one -1")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(
            f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): sizes must be >= 1 or -1"
        )
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(
                f"{len(devices)} devices do not divide into a mesh with fixed axes "
                f"of product {known} (data={data}, fsdp={fsdp}, tensor={tensor})"
            )
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh (data, fsdp, tensor) = {tuple(shape)} needs {math.prod(shape)} "
            f"devices, but {len(devices)} are available"
        )
    grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def initialize_distributed() -> None:
    """Join the multi-host job on a pod (`jax.distributed.initialize()`); nothing locally.

    A multi-host run is recognised by the environment that TPU pods and launchers set:
    JAX_COORDINATOR_ADDRESS, a TPU pod's worker list, or SLURM with several tasks.
    """
    if jax.distributed.is_initialized():
        return
    tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    multi_host = (
        "JAX_COORDINATOR_ADDRESS" in os.environ
        or len([h for h in tpu_hosts.split(",") if h]) > 1
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    )
    if multi_host:
        jax.distributed.initialize()
        log.info("joined a %d-process job as process %d", jax.process_count(), jax.process_index())
