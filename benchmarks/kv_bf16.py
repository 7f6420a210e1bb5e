"""How often a bfloat16 KV cache changes greedy samples, against the float32 cache.

Greedy decoding is the harshest test of a lower-precision cache: one rounding that flips
an arg-max changes every token after it. Each prompt is decoded greedily twice, with
`SamplingConfig(kv_dtype="bfloat16")` and with the model's float32 cache, and the two
samples are compared token by token: the share of samples that agree entirely, where the
first divergence falls, and the share of tokens before it.

    python -m benchmarks.kv_bf16 --checkpoint workdirs/smollm2_135m --data-dir ../shared/data/gsm8k
    python -m benchmarks.kv_bf16 --preset tiny
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from jaxrl_reason.data.prompts import zero_shot
from jaxrl_reason.data.tasks import load_task
from jaxrl_reason.data.tokenizer import load_tokenizer
from jaxrl_reason.model import PRESETS, init_params
from jaxrl_reason.model.hf_interop import load_checkpoint
from jaxrl_reason.sampling import Sampler, SamplingConfig


def first_divergence(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N] the first position where rows of `a` and `b` [N, T] differ (T where they do
    not; ended samples are padded alike, so one ending early is a difference)."""
    differ = a != b
    return np.where(differ.any(axis=1), differ.argmax(axis=1), a.shape[1])


def agreement(ref_tokens: np.ndarray, ref_lengths: np.ndarray, tokens: np.ndarray) -> dict:
    """`tokens` [N, T] against the reference samples [N, T] of `ref_lengths` [N]."""
    d = first_divergence(ref_tokens, tokens)
    diverged = d < ref_tokens.shape[1]
    return {
        "samples": len(d),
        "identical_samples": float(np.mean(~diverged)),
        "tokens_before_divergence": float(np.minimum(d, ref_lengths).sum() / ref_lengths.sum()),
        "mean_first_divergence": float(d[diverged].mean()) if diverged.any() else None,
        "ref_mean_length": float(ref_lengths.mean()),
    }


def greedy_pair(config, params, prompts, eos_ids, pad_id, new_tokens) -> dict:
    """Greedy samples with the float32 and the bfloat16 cache, compared."""
    sampler = Sampler(config, pad_id=pad_id)
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=new_tokens, eos_ids=eos_ids)
    key = jax.random.key(0)
    ref = sampler.sample(params, prompts, cfg, key)
    bf16 = sampler.sample(params, prompts, cfg.replace(kv_dtype="bfloat16"), key)
    n = ref.tokens.shape[0] * ref.tokens.shape[1]
    return agreement(ref.tokens.reshape(n, -1), ref.lengths.reshape(n), bf16.tokens.reshape(n, -1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="an `import-hf` checkpoint with its tokenizer")
    parser.add_argument("--data-dir", help="GSM8K (train.jsonl, test.jsonl): the prompts")
    parser.add_argument("--preset", help="random weights of this preset, random prompts")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    if bool(args.checkpoint) == bool(args.preset):
        parser.error("give one of --checkpoint (with --data-dir) or --preset")
    if args.checkpoint:
        if not args.data_dir:
            parser.error("--checkpoint needs --data-dir (GSM8K's prompts)")
        config, params = load_checkpoint(args.checkpoint)
        tok = load_tokenizer(args.checkpoint)
        fmt = zero_shot()
        questions = load_task("gsm8k", "test", data_dir=args.data_dir)[: args.prompts]
        prompts = [tok.encode(fmt.format(ex.question)) for ex in questions]
        eos_ids, pad_id, what = tuple(tok.eos_ids), tok.pad_id, args.checkpoint
        what += f", {len(prompts)} GSM8K test questions (Q:/A: zero-shot)"
    else:
        config = PRESETS[args.preset]().replace(dtype="float32", param_dtype="float32")
        params = init_params(config, jax.random.key(0))
        rng = np.random.default_rng(0)
        prompts = rng.integers(1, config.vocab_size, (args.prompts, 32)).tolist()
        eos_ids, pad_id = (), 0
        what = f"{args.preset}, random init, {args.prompts} random prompts of 32 tokens"
    r = greedy_pair(config, params, prompts, eos_ids, pad_id, args.new_tokens)
    mean_d = r["mean_first_divergence"]
    print(f"{what}; greedy, at most {args.new_tokens} new tokens, bf16 KV cache vs f32")
    print(
        f"identical samples: {100 * r['identical_samples']:.1f}% of {r['samples']}; "
        f"tokens before the first divergence: {100 * r['tokens_before_divergence']:.1f}%; "
        "mean first divergence (diverging samples): "
        + (f"{mean_d:.1f}" if mean_d is not None else "none diverged")
        + f"; f32 samples' mean length {r['ref_mean_length']:.1f}"
    )


if __name__ == "__main__":
    main()
