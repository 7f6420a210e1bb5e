"""W3, rollouts at realistic lengths: a trained policy's own EOS ends each sample.

K samples per `arith` question from the demo's trained policy (`w3_policy`): lengths vary
widely, and a static decode keeps every finished row in its batch until the longest ends.
Every system samples the same prompts at the same temperature and stops a sample at EOS
as it normally does (no `min_new_tokens`), so what is compared is *useful* tokens/s: the
tokens of each sample up to and including its EOS (all of them for a sample that ran to
the budget). Also reported: the fraction of decode work (rows x steps the loop ran) spent
on rows whose sample had ended.

Systems: our sampler static (`decode_rows=0`: every sample decoded at once) and refilling
(`decode_rows=R`: R rows, a finished row's slot takes the next pending sample), optionally
with a bfloat16 KV cache; `transformers` generate on the same weights (exported with
`save_hf`); Tunix's sampler on the same weights, when it imports.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from benchmarks.w3_policy import W3Policy, format_stats, length_stats, useful_lengths
from jaxrl_reason.model.hf_interop import save_hf
from jaxrl_reason.sampling import Sampler, SamplingConfig

BF16 = "bf16 KV"  # in the names of the systems with a bfloat16 KV cache


@dataclasses.dataclass(frozen=True)
class RealisticWorkload:
    name: str = "W3 realistic"
    prompts: int = 32
    samples: int = 16
    new_tokens: int = 256
    temperature: float = 0.7  # the demo's EI / evaluation sampling temperature


@dataclasses.dataclass(frozen=True)
class Rollout:
    """One call's result: its samples' lengths (EOS included) and its decode work."""

    lengths: np.ndarray  # [N] int
    work: int  # rows x steps the decode loop ran

    @property
    def useful(self) -> int:
        return int(self.lengths.sum())


def bench_ours(
    w: RealisticWorkload,
    policy: W3Policy,
    prompts: list[list[int]],
    repeats: int,
    decode_rows: int = 0,
    kv_dtype: str | None = None,
) -> Callable[[], Rollout]:
    """Our `Sampler`; every setting of it draws the same keys in the same order, so all
    of them sample the same tokens (up to float rounding) in each round."""
    sampler = Sampler(policy.config, pad_id=policy.pad_id)
    cfg = SamplingConfig(
        num_samples=w.samples,
        max_new_tokens=w.new_tokens,
        temperature=w.temperature,
        eos_ids=policy.eos_ids,
        decode_rows=decode_rows,
        kv_dtype=kv_dtype,
    )
    keys = iter(jax.random.split(jax.random.key(1), repeats + 1))

    def run() -> Rollout:
        out = sampler.sample(policy.params, prompts, cfg, next(keys))
        return Rollout(out.lengths.ravel(), int(out.decode_rows_steps))

    return run


def _left_padded(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    return ids, mask


def bench_transformers(
    w: RealisticWorkload, policy: W3Policy, prompts: list[list[int]], repeats: int
) -> Callable[[], Rollout]:
    """`transformers` generate on the policy's weights (exported by `save_hf`, float32,
    2 torch threads): every prompt's K samples in one call, left-padded, stopping each
    sample at the policy's EOS ids; the call ends when every sample has."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(policy.config, policy.params, Path(tmp) / "hf")
        net = AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf", dtype=torch.float32)
    net.eval()
    ids, mask = (torch.as_tensor(x) for x in _left_padded(prompts, policy.pad_id))
    kwargs = dict(
        do_sample=True,
        temperature=w.temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=w.new_tokens,
        use_cache=True,
        num_return_sequences=w.samples,
        eos_token_id=list(policy.eos_ids),
        pad_token_id=policy.pad_id,
    )
    seeds = iter(range(repeats + 1))

    def run() -> Rollout:
        torch.manual_seed(next(seeds))
        with torch.inference_mode():
            out = net.generate(ids, attention_mask=mask, **kwargs)
        new = out[:, ids.shape[1] :].numpy()
        return Rollout(useful_lengths(new, policy.eos_ids), new.shape[0] * new.shape[1])

    return run


class TunixIds:
    """Token ids written as text, for Tunix's sampler, which takes strings; the prompts
    already hold their BOS, so Tunix adds none (bos 0 is falsy to it)."""

    def __init__(self, eos_id: int, pad_id: int) -> None:
        self._eos, self._pad = eos_id, pad_id

    def encode(self, text: str, **_: object) -> list[int]:
        return [int(t) for t in text.split()]

    def decode(self, ids: list[int], **_: object) -> str:
        return " ".join(str(i) for i in ids)

    def bos_id(self) -> int:
        return 0

    def eos_id(self) -> int:
        return self._eos

    def pad_id(self) -> int:
        return self._pad


def _tunix_rope_theta(tunix_llama: Any, theta: float) -> None:
    """Make Tunix's llama3 model rotate with `theta`. Tunix 0.1.7's attention calls
    `apply_rope` without the config's `rope_theta`, so every model gets its default of
    1e6; the demo policy was trained with 1e4, and without this its logits differ from
    `transformers`' on the same weights by up to half the largest logit. With it they
    agree within 1e-5 (checked by hand on the trained policy); the work is the same."""
    original = getattr(tunix_llama.apply_rope, "func", tunix_llama.apply_rope)
    tunix_llama.apply_rope = functools.partial(original, rope_theta=theta)


def bench_tunix(
    w: RealisticWorkload, policy: W3Policy, prompts: list[list[int]], repeats: int
) -> Callable[[], Rollout]:
    """Tunix's sampler over a `tunix.models.llama3` model loaded by Tunix's own loader
    from the policy's weights exported by `save_hf` (float32). Tunix has no K: each
    prompt is repeated K times. Its KV cache is sized to the longest prompt + the budget.
    Its loop ends when every row has hit EOS (as ours static), so its decode work is
    inferred as rows x the longest sample. Its RoPE is set to the policy's
    (`_tunix_rope_theta`)."""
    from tunix.generate import sampler as tunix_sampler
    from tunix.models.llama3 import model as tunix_llama
    from tunix.models.llama3 import params as tunix_params

    c = policy.config
    _tunix_rope_theta(tunix_llama, c.rope_theta)
    config = tunix_llama.ModelConfig(
        num_layers=c.num_layers,
        vocab_size=c.vocab_size,
        embed_dim=c.d_model,
        hidden_dim=c.mlp_dim,
        num_heads=c.num_heads,
        head_dim=c.head_dim,
        num_kv_heads=c.num_kv_heads,
        rope_theta=int(c.rope_theta),
        norm_eps=c.norm_eps,
        weight_tying=c.tie_embeddings,
    )
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(c, policy.params, Path(tmp) / "hf")
        model = tunix_params.create_model_from_safe_tensors(str(Path(tmp) / "hf"), config)
    longest = max(len(p) for p in prompts)
    cache = tunix_sampler.CacheConfig(
        cache_size=longest + w.new_tokens,
        num_layers=c.num_layers,
        num_kv_heads=c.num_kv_heads,
        head_dim=c.head_dim,
    )
    sampler = tunix_sampler.Sampler(model, TunixIds(policy.eos_ids[0], policy.pad_id), cache)
    texts = [" ".join(map(str, p)) for p in prompts for _ in range(w.samples)]
    seeds = iter(range(repeats + 1))

    def run() -> Rollout:
        out = sampler(
            texts,
            max_generation_steps=w.new_tokens,
            max_prompt_length=longest,
            eos_tokens=list(policy.eos_ids),
            temperature=w.temperature,
            top_p=1.0,
            seed=next(seeds),
        )
        # Tunix returns each sample cut before its EOS: + 1 for the EOS of those that end.
        kept = np.array([len(t) for t in out.tokens])
        lengths = np.where(kept < w.new_tokens, kept + 1, kept)
        return Rollout(lengths, len(kept) * int(lengths.max()))

    return run


def summarize(first: tuple[float, Rollout], rounds: list[tuple[float, Rollout]]) -> dict:
    """Median useful tokens/s over the rounds, the pooled share of decode work spent on
    finished rows, and compile time (the first call minus the median call)."""
    rates = [r.useful / s for s, r in rounds]
    useful = sum(r.useful for _, r in rounds)
    work = sum(r.work for _, r in rounds)
    return {
        "rate": statistics.median(rates),
        "seconds": statistics.median(s for s, _ in rounds),
        "compile": first[0] - statistics.median(s for s, _ in rounds),
        "wasted": 1.0 - useful / work,
        "lengths": np.concatenate([r.lengths for _, r in rounds]),
    }


def report(w: RealisticWorkload, policy: W3Policy, results: dict[str, dict]) -> None:
    """The W3 table; the last line is `W3 refill/static useful tokens/s: N.NNx` for the
    fastest refilling setting measured."""
    static = results["ours static"]
    n = w.prompts * w.samples
    print(f"\n{w.name}: {policy.where}; {w.prompts} arith prompts x K={w.samples} = {n} samples,")
    print(f"at most {w.new_tokens} new tokens, temperature {w.temperature}")
    for name in ("ours static", "transformers", "tunix"):
        if name in results:
            stats = length_stats(results[name]["lengths"], w.new_tokens)
            print(f"lengths ({name}, every round pooled): {format_stats(stats)}")
    print(
        "\n| system | useful tok/s | s per call | compile s | decode work on finished rows "
        "| vs static | vs transformers | vs Tunix |"
    )
    print("|---|---|---|---|---|---|---|---|")
    hf, tx = results.get("transformers"), results.get("tunix")
    for name, r in results.items():
        cells = [
            f"{r['rate']:,.0f}",
            f"{r['seconds']:.2f}",
            f"{r['compile']:.1f}",
            f"{100 * r['wasted']:.1f}%",
            f"{r['rate'] / static['rate']:.2f}x",
            f"{r['rate'] / hf['rate']:.2f}x" if hf else "n/a",
            f"{r['rate'] / tx['rate']:.2f}x" if tx else "n/a",
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    refills = {k: r for k, r in results.items() if k.startswith("ours refill") and BF16 not in k}
    if not refills:
        return
    best = max(refills, key=lambda k: refills[k]["rate"])
    print(f"\nfastest refill (float32 KV cache): {best}")
    print(f"W3 refill/static useful tokens/s: {refills[best]['rate'] / static['rate']:.2f}x")


def systems(
    decode_rows: list[int], bf16: bool, transformers: bool, tunix: bool
) -> dict[str, Callable[..., Callable[[], Rollout]]]:
    """Name -> builder(w, policy, prompts, repeats) of every system to time."""
    out = {"ours static": bench_ours}
    out |= {f"ours refill {r}": functools.partial(bench_ours, decode_rows=r) for r in decode_rows}
    if bf16:
        bf = functools.partial(bench_ours, kv_dtype="bfloat16")
        out[f"ours static, {BF16}"] = bf
        out |= {
            f"ours refill {r}, {BF16}": functools.partial(bf, decode_rows=r) for r in decode_rows
        }
    if transformers:
        out["transformers"] = bench_transformers
    if tunix:
        out["tunix"] = bench_tunix
    return out
