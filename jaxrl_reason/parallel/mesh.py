"""Device meshes with axes ("data", "fsdp", "tensor") (multi-host start-up: `hosts.py`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import gin
import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")


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
