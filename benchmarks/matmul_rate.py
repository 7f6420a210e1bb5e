"""The FLOP/s a large jitted square matmul reaches here: the MFU denominator of benchmarks.

On a CPU the vendor's peak is rarely reachable (thread pools, turbo, memory), so MFU is
measured against what XLA's own best kernel achieves on this machine in the same run.

    python -m benchmarks.matmul_rate --n 2048 --repeats 10 --dtype float32
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def measure_matmul_flops(
    dtype: Any = jnp.float32,
    n: int = 2048,
    repeats: int = 10,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Achieved FLOP/s (2 n^3 per product) of an n x n matmul: median of `repeats` runs.

    Each timed call chains 4 products (a @ b, then @ b, ...), so dispatch overhead is
    amortised and XLA cannot elide any; the first `warmup` calls (compilation, page
    faults, thread-pool start-up) are not timed. `clock=time.process_time` gives FLOPs
    per CPU-second of this process instead, which a busy shared host distorts less.
    """
    if n < 1 or repeats < 1:
        raise ValueError(f"need n >= 1 and repeats >= 1, got n={n}, repeats={repeats}")
    chain = 4
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(dtype)
    b = (jax.random.normal(kb, (n, n), jnp.float32) / n**0.5).astype(dtype)  # keeps |x| ~ 1

    @jax.jit
    def products(x: jax.Array, w: jax.Array) -> jax.Array:
        for _ in range(chain):
            x = jnp.einsum("ij,jk->ik", x, w, preferred_element_type=dtype)
        return x

    for _ in range(warmup):
        products(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = clock()
        products(a, b).block_until_ready()
        times.append(clock() - start)
    return chain * 2 * n**3 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    rate = measure_matmul_flops(jnp.dtype(args.dtype), args.n, args.repeats)
    print(
        f"{jax.devices()[0].device_kind} ({jax.device_count()} devices): {args.n}x{args.n} "
        f"{args.dtype} matmul {rate / 1e9:.1f} GFLOP/s"
    )


if __name__ == "__main__":
    main()
