"""Sampler throughput against peers: ours vs `transformers` generate (vs Tunix if installed).

Same model shape, float32, random weights, every system generates the full length (no
EOS). Reports steady-state generated tokens/s (median of --repeats timed runs after one
warm-up; the warm-up's extra time is reported as compile time) and a markdown table.

    .venv/bin/python benchmarks/sampler.py            # both workloads
    .venv/bin/python benchmarks/sampler.py --workloads W2 --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxrl_reason.model import ModelConfig, init_params  # noqa: E402
from jaxrl_reason.sampling import Sampler, SamplingConfig  # noqa: E402

MODEL = ModelConfig(
    vocab_size=1024,
    d_model=256,
    num_layers=4,
    num_heads=4,
    num_kv_heads=4,
    head_dim=64,
    mlp_dim=1024,
    max_seq_len=2048,
)


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    prompts: int
    prompt_len: int
    samples: int
    new_tokens: int
    temperature: float  # 0 = greedy

    @property
    def generated(self) -> int:
        return self.prompts * self.samples * self.new_tokens


WORKLOADS = {
    "W1": Workload(
        "W1 greedy", prompts=8, prompt_len=32, samples=1, new_tokens=64, temperature=0.0
    ),
    "W2": Workload(
        "W2 EI-like", prompts=8, prompt_len=64, samples=16, new_tokens=128, temperature=0.7
    ),
}


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(first-call seconds, median steady-state seconds)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def bench_ours(w: Workload, prompts: np.ndarray, repeats: int) -> tuple[float, float]:
    params = init_params(MODEL, jax.random.key(0))
    sampler = Sampler(MODEL, pad_id=0)
    cfg = SamplingConfig(
        num_samples=w.samples, max_new_tokens=w.new_tokens, temperature=w.temperature, eos_ids=()
    )
    keys = iter(jax.random.split(jax.random.key(1), repeats + 1))

    def run() -> None:
        out = sampler.sample(params, [list(p) for p in prompts], cfg, next(keys))
        assert out.lengths.min() == w.new_tokens

    return timed(run, repeats)


def bench_transformers(w: Workload, prompts: np.ndarray, repeats: int) -> tuple[float, float]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(2)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=MODEL.vocab_size,
        hidden_size=MODEL.d_model,
        intermediate_size=MODEL.mlp_dim,
        num_hidden_layers=MODEL.num_layers,
        num_attention_heads=MODEL.num_heads,
        num_key_value_heads=MODEL.num_kv_heads,
        head_dim=MODEL.head_dim,
        max_position_embeddings=MODEL.max_seq_len,
        rms_norm_eps=MODEL.norm_eps,
        rope_theta=MODEL.rope_theta,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    ids = torch.as_tensor(prompts, dtype=torch.long)
    sampling = dict(do_sample=True, temperature=w.temperature, top_k=0, top_p=1.0)
    kwargs = dict(
        max_new_tokens=w.new_tokens,
        min_new_tokens=w.new_tokens,
        use_cache=True,
        num_return_sequences=w.samples,
        pad_token_id=0,
        **(sampling if w.temperature else dict(do_sample=False)),
    )

    def run() -> None:
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        assert out.shape == (w.prompts * w.samples, w.prompt_len + w.new_tokens)

    return timed(run, repeats)


def tunix_reason() -> str | None:
    """None if Tunix can be imported, else why it is not measured."""
    try:
        import tunix.generate.sampler  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "not measured"
        return f"`import tunix` failed ({type(e).__name__}: {e})"
    return None


def matmul_flops_per_s() -> float:
    """This machine's jitted float32 matmul rate (shared helper if present, else inline)."""
    try:
        from benchmarks.matmul_rate import measure_matmul_flops

        return float(measure_matmul_flops())
    except ImportError:
        pass
    n = 1024
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, a).block_until_ready()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        mm(a, a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()

    peak = matmul_flops_per_s()
    tunix_missing = tunix_reason()
    rows = []
    for name in args.workloads:
        w = WORKLOADS[name]
        prompts = np.random.default_rng(0).integers(1, MODEL.vocab_size, (w.prompts, w.prompt_len))
        first, steady = bench_ours(w, prompts, args.repeats)
        ours = w.generated / steady
        # Decode FLOPs: each generated token attends over the prompt plus about half the
        # new tokens; prefill is counted once per prompt.
        ctx = w.prompt_len + w.new_tokens / 2
        flops = w.generated * MODEL.flops_per_token(
            int(ctx), backward=False
        ) + w.prompts * w.prompt_len * MODEL.flops_per_token(w.prompt_len, False)
        frac = flops / steady / peak
        hf = hf_first = None
        if not args.skip_transformers:
            hf_first, hf_steady = bench_transformers(w, prompts, args.repeats)
            hf = w.generated / hf_steady
        rows.append((w, ours, first - steady, frac, hf, hf_first))
        print(
            f"{w.name}: ours {ours:,.0f} tok/s (compile {first - steady:.2f}s, "
            f"{100 * frac:.1f}% of matmul rate)"
            + (f"; transformers {hf:,.0f} tok/s" if hf else ""),
            flush=True,
        )

    print(f"\nmatmul rate (jitted float32): {peak / 1e9:.1f} GFLOP/s; devices: {jax.devices()}")
    print(
        "\n| workload | ours tok/s | compile s | % matmul rate | transformers tok/s "
        "| ours / transformers | Tunix |"
    )
    print("|---|---|---|---|---|---|---|")
    for w, ours, compile_s, frac, hf, _ in rows:
        hf_cell = f"{hf:,.0f}" if hf else "n/a"
        ratio = f"{ours / hf:.2f}x" if hf else "n/a"
        tunix = "not measured" if tunix_missing else "see below"
        print(
            f"| {w.name} (B={w.prompts}, P={w.prompt_len}, K={w.samples}, "
            f"T={w.new_tokens}) | {ours:,.0f} | {compile_s:.2f} | {100 * frac:.1f}% "
            f"| {hf_cell} | {ratio} | {tunix} |"
        )
    if tunix_missing:
        print(f"\nTunix not measured: {tunix_missing}")


if __name__ == "__main__":
    main()
