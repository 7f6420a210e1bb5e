"""Sampler throughput against peers: ours, `transformers` generate, Tunix's sampler.

Same model shape, float32, random weights, every system generates the full length (no
EOS). Each system is built and run once (its first-call time minus the steady time is
reported as compile time), then the systems are timed in turn, round-robin, --repeats
times, so machine load falls on all of them alike; reported: median generated tokens/s
and the ratios. Tunix is measured when `tunix` imports (BENCHMARKS.md says how).

    .venv/bin/python benchmarks/sampler.py            # both workloads
    .venv/bin/python benchmarks/sampler.py --workloads W2 --repeats 9
    .venv/bin/python benchmarks/sampler.py --preset gemma_50m   # ours only: a family's cost
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

from jaxrl_reason.model import PRESETS, ModelConfig, init_params  # noqa: E402
from jaxrl_reason.model.hf_interop import config_to_hf  # noqa: E402
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


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def round_robin(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, dict]:
    """Each system's first-call seconds, then its median over `repeats` rounds in which
    every system runs once."""
    first = {name: seconds(run) for name, run in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(seconds(run))
    return {name: {"first": first[name], "median": statistics.median(times[name])} for name in runs}


def bench_ours(
    w: Workload, prompts: np.ndarray, repeats: int, model: ModelConfig | None = None
) -> Callable[[], None]:
    """Our `Sampler` over random weights of `model` (default: `MODEL`)."""
    model = model or MODEL
    params = init_params(model, jax.random.key(0))
    sampler = Sampler(model, pad_id=0)
    cfg = SamplingConfig(
        num_samples=w.samples, max_new_tokens=w.new_tokens, temperature=w.temperature, eos_ids=()
    )
    keys = iter(jax.random.split(jax.random.key(1), repeats + 1))

    def run() -> None:
        out = sampler.sample(params, [list(p) for p in prompts], cfg, next(keys))
        assert out.lengths.min() == w.new_tokens

    return run


def bench_transformers(
    w: Workload,
    prompts: np.ndarray,
    repeats: int,
    model: ModelConfig | None = None,
    device: str = "cpu",
) -> Callable[[], None]:
    """`transformers` generate over random weights of the same architecture as `model`
    (default: `MODEL`; its HF config from `config_to_hf`), in its weight dtype, on the
    torch `device` ("cpu": 2 threads, or "cuda")."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model = model or MODEL
    if device == "cpu":
        torch.set_num_threads(2)
    torch.manual_seed(0)
    hf = config_to_hf(model, dtype=model.param_dtype)
    config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    with torch.device(device):  # initialised where it runs: a 1B model in seconds
        net = AutoModelForCausalLM.from_config(config).to(getattr(torch, model.param_dtype))
    net.eval()
    ids = torch.as_tensor(prompts, dtype=torch.long, device=device)
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
            out = net.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        out = out.cpu()  # waits for the device
        assert out.shape == (w.prompts * w.samples, w.prompt_len + w.new_tokens)

    return run


def tunix_reason() -> str | None:
    """None if Tunix can be imported, else why it is not measured."""
    try:
        import tunix.generate.sampler  # noqa: F401
        import tunix.models.llama3.model  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "not measured"
        return f"`import tunix` failed ({type(e).__name__}: {e})"
    return None


class IdTokenizer:
    """Token ids written as text, for Tunix's sampler, which takes strings."""

    def encode(self, text: str, **_: object) -> list[int]:
        return [int(t) for t in text.split()]

    def decode(self, ids: list[int], **_: object) -> str:
        return " ".join(str(i) for i in ids)

    def bos_id(self) -> int:
        return 0  # falsy: Tunix then prepends no BOS

    def eos_id(self) -> int:
        return MODEL.vocab_size  # outside the vocabulary: never sampled

    def pad_id(self) -> int:
        return 0


def bench_tunix(w: Workload, prompts: np.ndarray, repeats: int) -> Callable[[], None]:
    """`tunix.generate.sampler.Sampler` over a `tunix.models.llama3` model of our shape.

    Tunix has no K: each prompt is repeated K times. Its KV cache is sized exactly to
    prompt + new tokens, the smallest it accepts.
    """
    from flax import nnx
    from tunix.generate import sampler as tunix_sampler
    from tunix.models.llama3 import model as tunix_llama

    config = tunix_llama.ModelConfig(
        num_layers=MODEL.num_layers,
        vocab_size=MODEL.vocab_size,
        embed_dim=MODEL.d_model,
        hidden_dim=MODEL.mlp_dim,
        num_heads=MODEL.num_heads,
        head_dim=MODEL.head_dim,
        num_kv_heads=MODEL.num_kv_heads,
        rope_theta=int(MODEL.rope_theta),
        norm_eps=MODEL.norm_eps,
    )
    model = tunix_llama.Llama3(config, rngs=nnx.Rngs(0))
    cache = tunix_sampler.CacheConfig(
        cache_size=w.prompt_len + w.new_tokens,
        num_layers=MODEL.num_layers,
        num_kv_heads=MODEL.num_kv_heads,
        head_dim=MODEL.head_dim,
    )
    sampler = tunix_sampler.Sampler(model, IdTokenizer(), cache)
    texts = [" ".join(map(str, p)) for p in prompts for _ in range(w.samples)]
    sampling = dict(temperature=w.temperature, top_p=1.0) if w.temperature else {}
    seeds = iter(range(repeats + 1))

    def run() -> None:
        out = sampler(
            texts,
            max_generation_steps=w.new_tokens,
            max_prompt_length=w.prompt_len,
            eos_tokens=[IdTokenizer().eos_id()],
            seed=next(seeds),
            **sampling,
        )
        assert {len(t) for t in out.tokens} == {w.new_tokens}

    return run


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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="our sampler only, on this model preset (e.g. small_50m, qwen_50m, gemma_50m): "
        "the peers build a Llama of the default shape",
    )
    args = parser.parse_args()
    global MODEL
    if args.preset:
        MODEL = PRESETS[args.preset]().replace(dtype="float32", param_dtype="float32")

    peak = matmul_flops_per_s()
    tunix_missing = tunix_reason()
    systems = {"ours": bench_ours}
    if not args.skip_transformers and not args.preset:
        systems["transformers"] = bench_transformers
    if not tunix_missing and not args.preset:
        systems["tunix"] = bench_tunix
    table = []
    for name in args.workloads:
        w = WORKLOADS[name]
        prompts = np.random.default_rng(0).integers(1, MODEL.vocab_size, (w.prompts, w.prompt_len))
        runs = {system: build(w, prompts, args.repeats) for system, build in systems.items()}
        result = round_robin(runs, args.repeats)
        rate = {system: w.generated / r["median"] for system, r in result.items()}
        compile_s = {system: r["first"] - r["median"] for system, r in result.items()}
        # Decode FLOPs: each generated token attends over the prompt plus about half the
        # new tokens; prefill is counted once per prompt.
        ctx = w.prompt_len + w.new_tokens / 2
        flops = w.generated * MODEL.flops_per_token(
            int(ctx), backward=False
        ) + w.prompts * w.prompt_len * MODEL.flops_per_token(w.prompt_len, False)
        frac = flops / result["ours"]["median"] / peak
        table.append((w, rate, compile_s, frac))
        print(
            f"{w.name}: "
            + ", ".join(f"{s} {rate[s]:,.0f} tok/s (compile {compile_s[s]:.2f}s)" for s in rate)
            + f"; ours at {100 * frac:.1f}% of the matmul rate",
            flush=True,
        )

    print(f"\nmatmul rate (jitted float32): {peak / 1e9:.1f} GFLOP/s; devices: {jax.devices()}")
    print(
        "\n| workload | ours tok/s (compile s) | % matmul rate | transformers tok/s "
        "| ours / transformers | Tunix tok/s (compile s) | ours / Tunix |"
    )
    print("|---|---|---|---|---|---|---|")
    for w, rate, compile_s, frac in table:
        cells = [f"{rate['ours']:,.0f} ({compile_s['ours']:.1f})", f"{100 * frac:.1f}%"]
        hf = rate.get("transformers")
        cells += [f"{hf:,.0f}", f"{rate['ours'] / hf:.2f}x"] if hf else ["n/a", "n/a"]
        tx = rate.get("tunix")
        if tx:
            cells += [f"{tx:,.0f} ({compile_s['tunix']:.1f})", f"{rate['ours'] / tx:.2f}x"]
        else:
            cells += ["not measured", "n/a"]
        shape = f"B={w.prompts}, P={w.prompt_len}, K={w.samples}, T={w.new_tokens}"
        print(f"| {w.name} ({shape}) | " + " | ".join(cells) + " |")
    if tunix_missing:
        print(f"\nTunix not measured: {tunix_missing}")


if __name__ == "__main__":
    main()
