"""Sampler throughput against peers: ours, `transformers` generate, Tunix's sampler.

W1, W2: same model shape, float32, random weights, every system generates the full length
(no EOS). W4: the same at a real model's size, on the weights of `--weights` (an
`import-hf` checkpoint, e.g. SmolLM2-135M; ours and `transformers` only). Each system is
built and run once (its first-call time minus the steady time is reported as compile
time), then the systems are timed in turn, round-robin, --repeats times, so machine load
falls on all of them alike; reported: median generated tokens/s and the ratios. Tunix is
measured when `tunix` imports (BENCHMARKS.md says how).

W3 (`benchmarks/w3.py`): the trained demo policy of `--w3-workdir` on arith prompts, each
sample ended by the policy's own EOS; useful tokens/s of our static and refilling decodes
and the peers. It is not in the default workloads: it needs a trained demo run.

    .venv/bin/python benchmarks/sampler.py            # W1 and W2
    .venv/bin/python benchmarks/sampler.py --workloads W2 --repeats 9
    .venv/bin/python benchmarks/sampler.py --preset gemma_50m   # ours only: a family's cost
    .venv/bin/python benchmarks/sampler.py --workloads W4 --weights workdirs/smollm2_135m
    .venv/bin/python -m benchmarks.sampler --workloads W3 --w3-workdir workdirs/demo
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import w3  # noqa: E402
from benchmarks.w3_policy import arith_prompts, load_w3_policy  # noqa: E402
from jaxrl_reason.model import PRESETS, ModelConfig, init_params  # noqa: E402
from jaxrl_reason.model.hf_interop import config_to_hf, load_checkpoint, save_hf  # noqa: E402
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
T = TypeVar("T")


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
    # At a real model's size: `--weights` an imported SmolLM2-135M (issue #19's goal).
    "W4": Workload(
        "W4 real size", prompts=8, prompt_len=64, samples=4, new_tokens=128, temperature=0.7
    ),
}


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def timed_rounds(
    runs: dict[str, Callable[[], T]], repeats: int
) -> tuple[dict[str, tuple[float, T]], dict[str, list[tuple[float, T]]]]:
    """Each system's first call (seconds, result), then `repeats` rounds in which every
    system runs once, in turn, so machine load falls on all of them alike."""
    first = {name: timed(run) for name, run in runs.items()}
    rounds: dict[str, list[tuple[float, T]]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            rounds[name].append(timed(run))
    return first, rounds


def round_robin(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, dict]:
    """Each system's first-call seconds, then its median over `repeats` rounds in which
    every system runs once."""
    first, rounds = timed_rounds(runs, repeats)
    return {
        name: {"first": first[name][0], "median": statistics.median(s for s, _ in rounds[name])}
        for name in runs
    }


def bench_ours(
    w: Workload,
    prompts: np.ndarray,
    repeats: int,
    model: ModelConfig | None = None,
    params: object = None,
) -> Callable[[], None]:
    """Our `Sampler` over `params` of `model` (default: random weights of `MODEL`)."""
    model = model or MODEL
    if params is None:
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
    hf_dir: str | Path | None = None,
) -> Callable[[], None]:
    """`transformers` generate over random weights of the same architecture as `model`
    (default: `MODEL`; its HF config from `config_to_hf`), in its weight dtype, on the
    torch `device` ("cpu": 2 threads, or "cuda"); or over the weights in `hf_dir`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model = model or MODEL
    if device == "cpu":
        torch.set_num_threads(2)
    torch.manual_seed(0)
    dtype = getattr(torch, model.param_dtype)
    if hf_dir is not None:
        net = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).to(device)
    else:
        hf = config_to_hf(model, dtype=model.param_dtype)
        config = AutoConfig.for_model(hf.pop("model_type"), **hf)
        with torch.device(device):  # initialised where it runs: a 1B model in seconds
            net = AutoModelForCausalLM.from_config(config).to(dtype)
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


def main_w3(args: argparse.Namespace, tunix_missing: str | None) -> None:
    """W3 (`benchmarks/w3.py`): the trained demo policy of `--w3-workdir` on arith prompts."""
    w = w3.RealisticWorkload(prompts=args.w3_prompts)
    policy = load_w3_policy(args.w3_workdir, max_seq_len=512)
    prompts = arith_prompts(policy, w.prompts)
    if max(map(len, prompts)) + w.new_tokens > policy.config.max_seq_len:
        raise ValueError(f"an arith prompt + {w.new_tokens} tokens exceeds max_seq_len 512")
    builders = w3.systems(
        [int(r) for r in args.decode_rows.split(",") if r],
        bf16=args.kv_bf16,
        transformers=not args.skip_transformers,
        tunix=not tunix_missing,
    )
    if tunix_missing:
        print(f"W3: Tunix not measured: {tunix_missing}", flush=True)
    runs = {name: build(w, policy, prompts, args.repeats) for name, build in builders.items()}
    first, rounds = timed_rounds(runs, args.repeats)
    results = {name: w3.summarize(first[name], rounds[name]) for name in runs}
    w3.report(w, policy, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workloads", nargs="+", default=["W1", "W2"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument(
        "--weights",
        help="W1/W2/W4: ours and transformers on this `jaxrl-reason import-hf` checkpoint "
        "(e.g. SmolLM2-135M) instead of random weights; no Tunix",
    )
    parser.add_argument(
        "--w3-workdir",
        default="workdirs/demo",
        help="W3: a demo run whose SFT policy samples (jaxrl-reason demo --algorithms sft)",
    )
    parser.add_argument("--w3-prompts", type=int, default=32, help="W3: arith questions")
    parser.add_argument(
        "--decode-rows", default="64,128,256", help="W3: the refilling decode's row counts"
    )
    parser.add_argument(
        "--kv-bf16", action="store_true", help="W3: also each setting with a bfloat16 KV cache"
    )
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

    unknown = set(args.workloads) - {*WORKLOADS, "W3"}
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; choose from W1, W2, W3, W4")
    if "W4" in args.workloads and not args.weights:
        parser.error("W4 is sized for a real model: pass --weights DIR (`jaxrl-reason import-hf`)")
    tunix_missing = tunix_reason()
    fixed = [name for name in args.workloads if name != "W3"]
    if fixed:
        main_fixed(args, fixed, tunix_missing)
    if "W3" in args.workloads:  # last: its ratio ends the output
        main_w3(args, tunix_missing)


def with_weights(systems: dict[str, Callable], checkpoint: str) -> dict[str, Callable]:
    """`systems` (ours, transformers) over the weights of an `import-hf` checkpoint
    instead of random ones: `MODEL` becomes its config, `transformers` loads the same
    weights exported by `save_hf` (float32)."""
    global MODEL
    MODEL, params = load_checkpoint(checkpoint)
    out = {"ours": functools.partial(bench_ours, model=MODEL, params=params)}
    if "transformers" in systems:
        hf_dir = Path(tempfile.mkdtemp()) / "hf"
        save_hf(MODEL, params, hf_dir)
        out["transformers"] = functools.partial(bench_transformers, model=MODEL, hf_dir=hf_dir)
    return out


def main_fixed(args: argparse.Namespace, workloads: list[str], tunix_missing: str | None) -> None:
    """W1 and W2: random weights, every system generates the full length."""
    peak = matmul_flops_per_s()
    systems = {"ours": bench_ours}
    if not args.skip_transformers and not args.preset:
        systems["transformers"] = bench_transformers
    if not tunix_missing and not args.preset and not args.weights:
        systems["tunix"] = bench_tunix
    if args.weights:
        systems = with_weights(systems, args.weights)
    table = []
    for name in workloads:
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
