"""Training throughput: tokens/s and MFU of a jitted forward + backward + AdamW step.

MFU = model FLOPs/s (`ModelConfig.flops_per_token(seq_len, backward=True)` x tokens/s)
divided by the FLOP/s a large square matmul reaches on this machine in the same run
(`benchmarks.matmul_rate`), timed right after each step. Compilation is timed separately;
step time is the median of `--steps` timed steps after `--warmup` untimed ones.

    python -m benchmarks.train_throughput --configs tiny,small_50m --seq-len 256 \
        --batch 8 --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.matmul_rate import measure_matmul_flops
from jaxrl_reason.model import ModelConfig, Transformer, init_params, model_config

State = tuple[Any, Any]  # (params, opt_state)


def next_token_loss(
    model: Transformer, params: Any, tokens: jax.Array, input_mask: jax.Array
) -> jax.Array:
    """Mean cross entropy of each real token given the ones before it."""
    positions = jnp.maximum(jnp.cumsum(input_mask, axis=-1) - 1, 0)
    logits = model.apply({"params": params}, tokens, positions, input_mask).logits
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)  # [B, T-1, V]
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]  # [B, T-1]
    weight = (input_mask[:, :-1] & input_mask[:, 1:]).astype(jnp.float32)
    return jnp.sum(nll * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def make_train_step(model: Transformer, tx: optax.GradientTransformation) -> Callable:
    """A jitted (state, tokens, mask) -> (state, loss) step that donates the old state."""

    def step(state: State, tokens: jax.Array, input_mask: jax.Array) -> tuple[State, jax.Array]:
        params, opt_state = state
        loss, grads = jax.value_and_grad(lambda p: next_token_loss(model, p, tokens, input_mask))(
            params
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return jax.jit(step, donate_argnums=(0,))


def measure_train_step(
    config: ModelConfig,
    batch: int,
    seq_len: int,
    steps: int = 10,
    warmup: int = 2,
    matmul_n: int = 2048,
    model_cls: type = Transformer,
) -> dict[str, float]:
    """Compile time, median step time, tokens/s, model FLOP/s and MFU of `config`.

    After each timed step one n x n matmul chain (`matmul_n`; 0 skips it) is timed too,
    and MFU is the median over steps of (model FLOP/s / that matmul's FLOP/s): on a
    shared machine both halves of each pair see the same load. `mfu_cpu` is the same
    ratio in FLOPs per CPU-second of this process.
    """
    if seq_len > config.max_seq_len:
        config = config.replace(max_seq_len=seq_len)
    model = model_cls(config)
    tx = optax.adamw(1e-4, weight_decay=0.1)
    params = init_params(config, jax.random.key(0))
    state = (params, tx.init(params))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, (batch, seq_len), np.int32))
    mask = jnp.ones((batch, seq_len), jnp.bool_)

    start = time.perf_counter()
    step = make_train_step(model, tx).lower(state, tokens, mask).compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        state, loss = step(state, tokens, mask)
    loss.block_until_ready()
    step_s, step_cpu_s, matmul_rates, matmul_cpu_rates = [], [], [], []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        state, loss = step(state, tokens, mask)
        loss.block_until_ready()
        step_s.append(time.perf_counter() - start)
        step_cpu_s.append(time.process_time() - start_cpu)
        if matmul_n:  # paired with each step, so both see the same load on a shared host
            matmul_rates.append(measure_matmul_flops(jnp.float32, matmul_n, 1, warmup=0))
            matmul_cpu_rates.append(
                measure_matmul_flops(jnp.float32, matmul_n, 1, warmup=0, clock=time.process_time)
            )
    plan = step.memory_analysis()  # XLA's own accounting of the compiled step, if it has one
    if not np.isfinite(float(loss)):
        raise RuntimeError(f"non-finite loss {float(loss)} while benchmarking {config}")
    flops = config.flops_per_token(seq_len) * batch * seq_len
    median = statistics.median
    result = {
        "compile_s": compile_s,
        "step_s": median(step_s),
        "tokens_per_s": batch * seq_len / median(step_s),
        "model_flops": flops / median(step_s),
        "loss": float(loss),
    }
    if plan is not None:  # arguments (the donated state, updated in place) + temporaries
        result["step_bytes"] = plan.argument_size_in_bytes + plan.temp_size_in_bytes
    if matmul_n:
        result["matmul_flops"] = median(matmul_rates)
        result["mfu"] = median(flops / t / r for t, r in zip(step_s, matmul_rates))
        # The same ratio in FLOPs per CPU-second: a cross-check on a shared machine.
        result["mfu_cpu"] = median(flops / t / r for t, r in zip(step_cpu_s, matmul_cpu_rates))
    return result


def run(
    configs: list[str], batch: int, seq_len: int, steps: int, warmup: int, matmul_n: int = 2048
) -> list[dict[str, Any]]:
    """Benchmark each preset at `seq_len` (raising its max_seq_len if needed)."""
    rows = []
    for name in configs:
        config = model_config(name)
        result = measure_train_step(config, batch, seq_len, steps, warmup, matmul_n=matmul_n)
        rows.append(
            {
                "config": name,
                "params": config.num_params(),
                "batch": batch,
                "seq_len": seq_len,
                **result,
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| config | params | batch x seq | compile (s) | step (ms, median) | tokens/s "
        "| model GFLOP/s | matmul GFLOP/s | MFU | MFU (CPU time) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['params'] / 1e6:.1f}M | {r['batch']} x {r['seq_len']} "
            f"| {r['compile_s']:.1f} | {r['step_s'] * 1e3:.0f} | {r['tokens_per_s']:,.0f} "
            f"| {r['model_flops'] / 1e9:.1f} | {r['matmul_flops'] / 1e9:.1f} "
            f"| {r['mfu']:.0%} | {r['mfu_cpu']:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,small_50m")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--matmul-n", type=int, default=2048)
    args = parser.parse_args()
    rows = run(
        args.configs.split(","), args.batch, args.seq_len, args.steps, args.warmup, args.matmul_n
    )
    print(f"{jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}, float32")
    print(markdown(rows))


if __name__ == "__main__":
    main()
