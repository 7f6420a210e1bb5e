"""How `dense_reward`'s time grows with the number of calculator annotations.

A completion with n annotations (all on one line, in reverse order: the worst case for a
per-annotation search) against a reference with n lines. Linear time doubles when n
doubles; the quadratic version it replaced (issue #16) quadrupled: 310 s at n = 16,000.

    python -m benchmarks.dense_reward --sizes 1000,2000,4000,8000,16000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

from jaxrl_reason.rewards.heuristic import dense_reward


def texts(n: int) -> tuple[str, str]:
    """(completion, reference) with n annotations each."""
    reference = "\n".join(f"<<{i}+1={i + 1}>>{i + 1}" for i in range(n))
    completion = " ".join(f"<<{i}+1={i + 1}>>" for i in reversed(range(n)))
    return completion, reference


def seconds(n: int, repeats: int) -> float:
    """Median wall time of `dense_reward` on `texts(n)` over `repeats` calls."""
    completion, reference = texts(n)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dense_reward(completion, reference)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000,4000,8000,16000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    previous = None
    print("| annotations | chars (completion + reference) | median s | x per doubling |")
    print("|---|---|---|---|")
    for n in (int(x) for x in args.sizes.split(",")):
        s = seconds(n, args.repeats)
        growth = f"{s / previous:.2f}" if previous else "-"
        chars = sum(map(len, texts(n)))
        print(f"| {n:,} | {chars:,} | {s:.3f} | {growth} |")
        previous = s


if __name__ == "__main__":
    main()
