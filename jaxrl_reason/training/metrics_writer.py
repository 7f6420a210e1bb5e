"""Metrics of a run: one JSON object per line in `workdir/metrics.jsonl`, plus TensorBoard.

Only process 0 writes (every host computes the same global metrics). A run that crashed
may have left a last line cut off mid-write, and records of the steps after its last
checkpoint, which the resumed run writes again: opening a `MetricWriter` drops both (see
its docstring), so the file of a resumed run is that of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxrl_reason.run_files import read_jsonl, read_jsonl_lines, write_atomic

log = logging.getLogger(__name__)
_FILE = "metrics.jsonl"


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
    """`write(step, metrics, phase)` appends `{"step", "phase", "time", **metrics}`.

    Opening the file repairs it first: a last line cut off by a crash mid-write is dropped
    (with a warning). A run resumed from its checkpoint at step `resume_step` passes it
    with the `phases` it writes: their records with a larger step (written after that
    checkpoint, before the crash) are dropped too, and are written again as the run
    redoes those steps; TensorBoard hides its events of those steps as well. The file is
    rewritten atomically, and only when something is dropped.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        tensorboard: bool = True,
        resume_step: int | None = None,
        phases: Sequence[str] = (),
    ) -> None:
        if resume_step is not None and not phases:
            raise ValueError("MetricWriter: resume_step needs the phases whose records it drops")
        self.workdir = os.fspath(workdir)
        self._active = jax.process_index() == 0
        self._file = None
        self._tb = None
        if self._active:
            os.makedirs(self.workdir, exist_ok=True)
            path = os.path.join(self.workdir, _FILE)
            _repair(path, resume_step, tuple(phases))
            self._file = open(path, "a")  # noqa: SIM115
            if tensorboard:
                from tensorboardX import SummaryWriter

                purge = None if resume_step is None else int(resume_step) + 1
                self._tb = SummaryWriter(os.path.join(self.workdir, "tb"), purge_step=purge)

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


def _repair(path: str, resume_step: int | None, phases: tuple[str, ...]) -> None:
    """Drop from `path` a last line cut off mid-write and `phases`' records past
    `resume_step`; a line damaged elsewhere raises `RunFileError` (nothing is changed)."""
    read = read_jsonl_lines(path, "metrics file")
    kept = [
        line
        for line, r in zip(read.lines, read.records)
        if resume_step is None
        or not isinstance(r, dict)
        or r.get("phase") not in phases
        or not isinstance(r.get("step"), int)
        or r["step"] <= resume_step
    ]
    if read.partial:
        log.warning(
            "%s: dropped its last line, cut off mid-write when the run stopped: %.60r",
            path,
            read.partial,
        )
    if stale := len(read.lines) - len(kept):
        log.warning(
            "%s: dropped %d record(s) of %s past step %d, written after the checkpoint the "
            "run resumes from; they are written again",
            path,
            stale,
            "/".join(phases),
            resume_step,
        )
    if read.partial or stale:
        write_atomic(path, "".join(kept))
    elif read.lines and not _ends_with_newline(path):
        with open(path, "a") as f:  # a last record whose newline was not written
            f.write("\n")


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read_metrics(workdir: str | os.PathLike, phase: str | None = None) -> list[dict[str, Any]]:
    """The records of `workdir/metrics.jsonl` (optionally of one phase), in order.

    A last line cut off by a crash mid-write is left out with a warning; a line damaged
    elsewhere raises `RunFileError` (a `ValueError`) naming the file and line.
    """
    records = read_jsonl(os.path.join(os.fspath(workdir), _FILE), "metrics file")
    return [r for r in records if phase is None or r.get("phase") == phase]
