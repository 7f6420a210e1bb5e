"""Many hosts: joining a multi-controller JAX job, moving data between host and mesh, and
letting process 0 alone write a run's files.

Every process runs the same program on the same host data (the questions, the rollouts'
texts, the rewards): host-side work is computed identically everywhere, device arrays are
global arrays over every process's devices, and what comes back to the host is gathered
in full (`to_host`). Only files differ: process 0 writes them (`on_main_process`), the
others wait until they are written; orbax writes checkpoints from every process itself.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import secrets
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)
T = TypeVar("T")

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
DEFAULT_TIMEOUT_S = 300  # seconds to wait for every process to join (jax's default)
_MESSAGE_BYTES = 1024  # of an error process 0 hands to the others


class OtherProcessError(RuntimeError):
    """Process 0 failed at work it does for all (writing a run file); its message is kept."""


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a whole number: set it to e.g. 0") from None


def _pod_or_cluster() -> bool:
    """A TPU pod's worker list or a Slurm job of several tasks: jax finds the peers."""
    tpu_hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return len(tpu_hosts) > 1 or (_env_int("SLURM_NTASKS") or 1) > 1


def join_job(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = DEFAULT_TIMEOUT_S,
    what: str = "jaxrl-reason",
    find_peers: bool = False,
) -> bool:
    """Join the multi-controller job this process is one of; False (nothing done) when it
    runs alone.

    Each argument left None is read from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID; given, all three are needed (a job of one process is joined too: its
    collectives then run as a larger job's do). With none of them set, a TPU pod or a
    Slurm job of several tasks is joined with `jax.distributed.initialize()`, which finds
    its peers itself, and so is whatever jax detects when `find_peers` (a Cloud TPU VM
    tells its peers only through its metadata server, which only jax reads: what
    `launch/tpu_pod.sh` passes); otherwise the process runs alone, as it always has.
    A job that does not assemble within `timeout_s` seconds ends the process (exit
    status 2) with one line, `WHAT: error: ...`, naming the coordinator.
    """
    if jax.distributed.is_initialized():
        return True
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    n = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    i = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    if timeout_s < 1:
        raise ValueError(f"--init_timeout must be >= 1 second, got {timeout_s}")
    if address is None and n is None and i is None:
        if not (find_peers or _pod_or_cluster()):
            return False
        where = "the job jax found (TPU pod slice, Slurm ...)"
    else:
        where = f"the coordinator {address}"
        _check_job(address, n, i)
    # Collectives between the processes' CPU devices (tests, CPU clusters) need gloo; set
    # before any backend starts, it changes nothing on GPUs and TPUs.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    who = "this process" if i is None else f"process {i} of {n}"
    message = (
        f"{who} could not join {where} within {timeout_s} s: start every process of the "
        "job (process 0 hosts the coordinator), check the address and port, or wait "
        "longer with --init_timeout"
    )
    # jax ends the process from C++ (an abort, no Python error) when its deadline passes:
    # our own, earlier, says what happened and exits with the status of a usage error.
    watchdog = threading.Timer(timeout_s, _give_up, (f"{what}: error: {message}",))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(address, n, i, initialization_timeout=timeout_s + 60)
    except Exception as err:  # noqa: BLE001 - jax's errors are C++ status texts
        text = " ".join(str(err).split())[:300]
        raise OtherProcessError(f"{message} ({type(err).__name__}: {text})") from None
    finally:
        watchdog.cancel()
    log.info(
        "joined a %d-process job as process %d (%d of %d devices here)",
        jax.process_count(),
        jax.process_index(),
        jax.local_device_count(),
        jax.device_count(),
    )
    check_devices()
    return True


def _give_up(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    os._exit(2)


def _check_job(address: str | None, n: int | None, i: int | None) -> None:
    """Refuse an incomplete or inconsistent job description before anything connects."""
    if n is not None and n < 1:
        raise ValueError(f"JAX_NUM_PROCESSES / --num_processes must be >= 1, got {n}")
    flags = ("--coordinator_address", "--num_processes", "--process_id")
    missing = [f"{e} ({f})" for e, f, v in zip(ENV, flags, (address, n, i)) if v is None]
    if missing:
        raise ValueError(
            f"a multi-process job needs {', '.join(missing)} as well: give all three of "
            "JAX_COORDINATOR_ADDRESS=HOST:PORT, JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=0..N-1 "
            "(or the matching flags), or none of them to run as one process"
        )
    if not 0 <= i < n:
        raise ValueError(
            f"JAX_PROCESS_ID / --process_id {i} is out of range for a job of {n} processes: "
            f"give each process its own id in 0..{n - 1}"
        )


def check_devices() -> None:
    """Every process of the job must hold as many devices as the others."""
    if jax.process_count() == 1:
        return
    per_process = collections.Counter(d.process_index for d in jax.devices())
    counts = [per_process[p] for p in range(jax.process_count())]
    if len(set(counts)) > 1:
        raise ValueError(
            f"the processes hold different numbers of devices ({counts}, by process "
            "id): give every process the same number (e.g. the same CUDA_VISIBLE_DEVICES "
            "count, or the same --xla_force_host_platform_device_count)"
        )


def is_main_process() -> bool:
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """Whether `flag` holds on any process (every process must call it: it synchronises)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _broadcast_text(text: str) -> str:
    """Process 0's `text` (cut to _MESSAGE_BYTES) on every process."""
    raw = np.zeros(_MESSAGE_BYTES, np.uint8)
    data = text.encode()[:_MESSAGE_BYTES]
    raw[: len(data)] = np.frombuffer(data, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(raw))
    return bytes(out).rstrip(b"\0").decode(errors="replace")


def on_main_process(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorator: `fn` (it writes run files) runs on process 0 alone; every process calls
    the wrapper at the same point of the program and waits there until it is done, so no
    process reads a file before it is written, nor after it changes. An error of process 0
    is raised on every process (there as `OtherProcessError` with its message). Returns
    `fn`'s value on process 0, None on the others."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        if jax.process_count() == 1:
            return fn(*args, **kwargs)
        multihost_utils.sync_global_devices(f"before {fn.__qualname__}")
        result, error = None, None
        if is_main_process():
            try:
                result = fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - handed to every process below
                error = err
        if any_process(error is not None):
            message = _broadcast_text("" if error is None else f"{type(error).__name__}: {error}")
            if error is not None:
                raise error
            raise OtherProcessError(f"process 0 failed in {fn.__name__}: {message}")
        return result

    return wrapper


def to_host(tree: Any) -> Any:
    """The pytree's arrays as numpy arrays holding their global values on every process
    (gathered from the other processes where this one holds only part of an array)."""

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(leaf, tree)


def check_shared_workdir(workdir: str | os.PathLike, create: bool = True) -> None:
    """Refuse a workdir that the processes do not share: process 0 writes a marker file
    there and every process must see it (run files and checkpoints live there once).

    `create`: process 0 makes a missing workdir; otherwise a workdir missing on process 0
    is left for the caller's own checks to report.
    """
    if jax.process_count() == 1:
        return
    workdir = Path(workdir)
    nonce = int(multihost_utils.broadcast_one_to_all(np.int32(secrets.randbits(31))))
    marker = workdir / f".jaxrl_reason_shared_{nonce}"

    @on_main_process
    def write_marker() -> bool:
        if create:
            workdir.mkdir(parents=True, exist_ok=True)
        elif not workdir.is_dir():
            return False
        marker.write_text(f"written by process 0 of {jax.process_count()}\n")
        return True

    written = bool(multihost_utils.broadcast_one_to_all(np.bool_(bool(write_marker()))))
    if not written:
        return
    seen = np.asarray(multihost_utils.process_allgather(np.asarray(marker.is_file())))
    on_main_process(lambda: marker.unlink(missing_ok=True))()
    if not seen.all():
        blind = [int(p) for p in np.flatnonzero(~seen)]
        raise ValueError(
            f"--workdir {workdir} is not shared between the processes: process(es) {blind} do "
            "not see the file process 0 wrote there; give a directory on a file system every "
            "host mounts (NFS, a GCS FUSE bucket, ...)"
        )
