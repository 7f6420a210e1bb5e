"""Metrics of a run: one JSON object per line in `workdir/metrics.jsonl`, plus TensorBoard.

Only process 0 writes (every host computes the same global metrics).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import numpy as np


def _to_python(value: Any) -> Any:
    """A JSON-friendly scalar: arrays of one element become floats/ints/bools."""
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        value = np.asarray(value)
        if value.size != 1:
            return value.tolist()
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them readable
    return value


class MetricWriter:
    """`write(step, metrics, phase)` appends `{"step", "phase", "time", **metrics}`."""

    def __init__(self, workdir: str | os.PathLike, tensorboard: bool = True) -> None:
        self.workdir = os.fspath(workdir)
        self._active = jax.process_index() == 0
        self._file = None
        self._tb = None
        if self._active:
            os.makedirs(self.workdir, exist_ok=True)
            self._file = open(os.path.join(self.workdir, "metrics.jsonl"), "a")  # noqa: SIM115
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(self.workdir, "tb"))

    def write(self, step: int, metrics: dict[str, Any], phase: str = "train") -> None:
        if not self._active:
            return
        values = {k: _to_python(v) for k, v in metrics.items()}
        record = {"step": int(step), "phase": phase, "time": time.time(), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                if isinstance(value, bool | int | float):
                    # TensorBoard tags take no "@": maj@8 is written as maj_at_8.
                    tag = f"{phase}/{name}".replace("@", "_at_")
                    self._tb.add_scalar(tag, float(value), int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(workdir: str | os.PathLike, phase: str | None = None) -> list[dict[str, Any]]:
    """The records of `workdir/metrics.jsonl` (optionally of one phase), in order."""
    path = os.path.join(os.fspath(workdir), "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if phase is None or r.get("phase") == phase]
