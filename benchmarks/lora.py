"""LoRA / QLoRA measurements for BENCHMARKS.md ("LoRA (issue #14)").

memory    bytes of params, gradients and AdamW state (our TrainState, `jax.eval_shape`:
          nothing is allocated) for full fine-tuning, LoRA and QLoRA, and PPO totals
sampling  the sampler with the adapters applied unmerged (every prefill/decode step)
          vs merging them once into a plain copy of the weights (the merge timed too)
qlora     the error of the int8 base's logits against the float32 base: `tiny` (random
          weights) and SmolLM2-135M-Instruct (its GGUF, de-quantised to float32 first)

  python benchmarks/lora.py memory
  python benchmarks/lora.py sampling --preset demo
  python benchmarks/lora.py qlora --gguf ~/.cache/jaxrl_reason/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxrl_reason.model import PRESETS, LoraConfig, Transformer, init_params, lora  # noqa: E402
from jaxrl_reason.sampling import Sampler, SamplingConfig  # noqa: E402
from jaxrl_reason.training.optimizer import OptimizerConfig, make_optimizer  # noqa: E402
from jaxrl_reason.training.train_state import TrainState, split_state  # noqa: E402

GB = 1e9


def nbytes(tree: Any) -> int:
    return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def memory_row(preset: str, mode: str, rank: int = 16) -> dict[str, Any]:
    """Bytes of one policy's train state in `mode` (full / lora / qlora), weights bf16."""
    config = PRESETS[preset]().replace(param_dtype="bfloat16", dtype="bfloat16")
    if mode != "full":
        config = config.replace(
            lora=LoraConfig(rank=rank, quantize="int8" if mode == "qlora" else "none")
        )
    tx = make_optimizer(OptimizerConfig())
    heads = ("value",)
    params = jax.eval_shape(lambda: init_params(config, jax.random.key(0), heads=heads))
    state = jax.eval_shape(lambda p: TrainState.create(p, tx), params)
    trained, frozen = split_state(state)
    return {
        "preset": preset,
        "mode": mode,
        "params": nbytes(params),
        "base": nbytes(frozen) if mode != "full" else nbytes(params),
        "trained_params": nbytes(trained.params) if mode != "full" else nbytes(params),
        "grads": nbytes(trained.params) if mode != "full" else nbytes(params),
        "opt_state": nbytes(state.opt_state),
    }


def ppo_bytes(row: dict[str, Any]) -> float:
    """PPO (shared critic) weights + grads + optimizer state; full FT also holds a frozen
    reference copy of the LM, LoRA's reference is the base itself."""
    total = row["params"] + row["grads"] + row["opt_state"]
    return total + (row["params"] if row["mode"] == "full" else 0)


def memory(args: argparse.Namespace) -> None:
    print("| model | mode | params | trained | grads | AdamW state | PPO total |")
    print("|---|---|---|---|---|---|---|")
    for preset in args.presets:
        for mode in ("full", "lora", "qlora"):
            r = memory_row(preset, mode, args.rank)
            print(
                f"| {preset} | {mode} | {r['params'] / GB:.3f} | {r['trained_params'] / GB:.4f} "
                f"| {r['grads'] / GB:.4f} | {r['opt_state'] / GB:.4f} | {ppo_bytes(r) / GB:.2f} |"
            )


def _timed(fn: Any, repeats: int) -> tuple[float, float]:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def sampling(args: argparse.Namespace) -> None:
    base_config = PRESETS[args.preset]()
    config = base_config.replace(lora=LoraConfig(rank=args.rank))
    params = lora.add_adapters(
        config, init_params(base_config, jax.random.key(0)), jax.random.key(1)
    )
    key = jax.random.key(2)
    params = jax.tree_util.tree_map_with_path(  # trained-looking B
        lambda p, x: 0.02 * jax.random.normal(key, x.shape) if p[-1].key.endswith("_lora_b") else x,
        params,
    )
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(3, base_config.vocab_size, args.prompt_len)) for _ in range(8)]
    cfg = SamplingConfig(
        num_samples=args.samples, max_new_tokens=args.new_tokens, temperature=0.7, eos_ids=()
    )
    keys = iter(jax.random.split(jax.random.key(3), 4 * (args.repeats + 1)))
    unmerged = Sampler(config, pad_id=0)
    merged_sampler = Sampler(base_config, pad_id=0)
    merge = jax.jit(lambda p: lora.merge_adapters(config, p)[1])
    merged = merge(params)
    plain = init_params(base_config, jax.random.key(0))
    runs = {
        "unmerged adapters": lambda: unmerged.sample(params, prompts, cfg, next(keys)).tokens,
        "merged once (sampling only)": lambda: (
            merged_sampler.sample(merged, prompts, cfg, next(keys)).tokens
        ),
        "plain model (no LoRA)": lambda: (
            merged_sampler.sample(plain, prompts, cfg, next(keys)).tokens
        ),
        "the merge itself": lambda: merge(params),
    }
    tokens = 8 * args.samples * args.new_tokens
    shape = f"8 prompts x {args.samples} samples x {args.new_tokens} new tokens"
    print(f"{args.preset}: {shape}, r={args.rank}")
    print("| what | first call s | median s | tokens/s |")
    print("|---|---|---|---|")
    for name, fn in runs.items():
        first, median = _timed(fn, args.repeats)
        rate = "" if name == "the merge itself" else f"{tokens / median:.0f}"
        print(f"| {name} | {first:.3f} | {median:.4f} | {rate} |")


def _logit_error(config: Any, params: Any, tokens: np.ndarray) -> dict[str, float]:
    qconfig = config.replace(lora=LoraConfig(rank=16, quantize="int8"))
    qparams = lora.add_adapters(qconfig, params, jax.random.key(0))
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    ref = Transformer(config).apply({"params": params}, tokens, positions).logits
    got = Transformer(qconfig).apply({"params": qparams}, tokens, positions).logits
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    lp_ref = (
        ref
        - np.log(np.exp(ref - ref.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - ref.max(-1, keepdims=True)
    )
    lp_got = (
        got
        - np.log(np.exp(got - got.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - got.max(-1, keepdims=True)
    )
    p = np.exp(lp_ref)
    return {
        "max_abs_logit_err": float(np.abs(got - ref).max()),
        "rel_logit_err": float(np.abs(got - ref).max() / np.abs(ref).max()),
        "kl_per_token": float((p * (lp_ref - lp_got)).sum(-1).mean()),
        "argmax_agree": float((ref.argmax(-1) == got.argmax(-1)).mean()),
        "base_bytes_f32": nbytes(params),
        "base_bytes_int8": nbytes(lora.split_trainable(qparams)[1]),
    }


def qlora(args: argparse.Namespace) -> None:
    config = PRESETS["tiny"]()
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (4, 64))
    print(
        "tiny (random init):", _logit_error(config, init_params(config, jax.random.key(0)), tokens)
    )
    if args.gguf and Path(args.gguf).expanduser().exists():
        from jaxrl_reason.model.gguf import load_gguf

        config, params = load_gguf(Path(args.gguf).expanduser())
        tokens = np.random.default_rng(0).integers(0, config.vocab_size, (4, 64))
        print(f"{Path(args.gguf).name}:", _logit_error(config, params, tokens))


def ppo_step(args: argparse.Namespace) -> None:
    """Peak RSS and median time of one PPO train step (shared critic) in one mode; run each
    mode in its own process so that the peak is that mode's."""
    import functools
    import resource

    from jaxrl_reason.algorithms import ppo
    from jaxrl_reason.algorithms.actor_critic import ActorCritic
    from jaxrl_reason.training.train_state import init_train_state
    from jaxrl_reason.training.train_step import make_train_step

    base = PRESETS[args.preset]()
    config = base
    params = init_params(base, jax.random.key(0))
    if args.mode != "full":
        quantize = "int8" if args.mode == "qlora" else "none"
        config = base.replace(lora=LoraConfig(rank=args.rank, quantize=quantize))
        params = lora.add_adapters(config, params, jax.random.key(1))
    ac = ActorCritic(config)
    cfg = ppo.PPOConfig(max_new_tokens=args.seq_len // 2)
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-5))
    step = make_train_step(Transformer(config), tx, functools.partial(ppo._ppo_loss, ac, cfg))
    state = init_train_state(ac.init(params, jax.random.key(2)), tx)
    b, t = args.batch, args.seq_len
    rng = np.random.default_rng(0)
    batch = {
        "tokens": jnp.asarray(rng.integers(3, base.vocab_size, (b, t)), jnp.int32),
        "mask": jnp.ones((b, t), jnp.int32).at[:, : t // 2].set(0),
        "old_logprobs": jnp.full((b, t), -5.0),
        "old_values": jnp.zeros((b, t)),
        "advantages": jnp.asarray(rng.normal(size=(b, t)), jnp.float32),
        "returns": jnp.ones((b, t)),
    }
    times = []
    for i in range(args.steps + 1):
        start = time.perf_counter()
        state, metrics = step(state, batch, jax.random.key(i))
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB -> GB
    print(
        f"| {args.preset} | {args.mode} | {b}x{t} | {times[0]:.1f} | "
        f"{statistics.median(times[1:]):.2f} | {peak:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--presets", nargs="+", default=["small_50m", "llama2_7b", "llama2_13b"])
    m.add_argument("--rank", type=int, default=16)
    s = sub.add_parser("sampling")
    s.add_argument("--preset", default="demo")
    s.add_argument("--rank", type=int, default=16)
    s.add_argument("--prompt-len", type=int, default=32)
    s.add_argument("--samples", type=int, default=4)
    s.add_argument("--new-tokens", type=int, default=64)
    s.add_argument("--repeats", type=int, default=5)
    q = sub.add_parser("qlora")
    q.add_argument("--gguf", default="~/.cache/jaxrl_reason/SmolLM2-135M-Instruct.Q4_1.gguf")
    p = sub.add_parser("ppo_step")
    p.add_argument("--preset", default="small_50m")
    p.add_argument("--mode", default="lora", choices=("full", "lora", "qlora"))
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    {"memory": memory, "sampling": sampling, "qlora": qlora, "ppo_step": ppo_step}[args.what](args)


if __name__ == "__main__":
    main()
