"""`SamplingConfig`: how many samples, how long, which decoding strategy, which buckets."""

from __future__ import annotations

import dataclasses

import gin

from jaxrl_reason.validation import NON_NEGATIVE, POSITIVE, between, setting, validate

_BUCKET = "a multiple to round up to, or 0 for the next power of two"


def bucket_size(n: int, bucket: int) -> int:
    """Round `n` up to a multiple of `bucket`, or to the next power of two when `bucket` is 0.

    Bucketing keeps the number of compiled programs small: every shape inside a bucket
    reuses one program.
    """
    if n < 1:
        raise ValueError(f"cannot bucket a size of {n}; sizes must be >= 1")
    if bucket < 0:
        raise ValueError(f"bucket={bucket}: use a positive multiple, or 0 for powers of two")
    if bucket == 0:
        return 1 << (n - 1).bit_length()
    return -(-n // bucket) * bucket


def chunk_sizes(length: int, chunks: int) -> tuple[int, ...]:
    """`length` split into `min(chunks, length)` nearly equal parts, larger ones first."""
    n = min(chunks, length)
    return tuple(length // n + (j < length % n) for j in range(n))


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """One sampling request.

    - `num_samples` (K): samples per prompt; all K share one prefill of the prompt.
    - `temperature`: 0 means greedy (argmax); otherwise logits are divided by it.
    - `top_k`: keep the k most likely tokens (0 = off).
    - `top_p`: keep the nucleus, the smallest set of most likely tokens whose probability
      sums to >= top_p; the token that crosses the threshold is included (1.0 = off).
      Applied after temperature and top-k, on the renormalised top-k distribution.
    - `eos_ids`: tokens that end a sample (included in its length); empty = never stop early.
    - `prompt_bucket`, `generation_bucket`, `batch_bucket`: the prompt length, the number
      of new tokens and the number of prompts are rounded up to a multiple of these (0 =
      next power of two) so that a run compiles a few programs, not one per batch.
    - `decode_chunks`: the generated tokens' keys are kept in this many chunks, decoded
      one loop each, so the first tokens do not attend over the empty slots of later
      ones. More chunks read less cache but compile a longer program (one model step
      per chunk). The static decode only (`decode_rows` = 0 or enough rows for all).
    - `decode_rows`: 0 decodes every sample of the call at once, until the longest ends
      (static). R > 0 decodes at most R rows at once (rounded up to the batch shards) and
      refills: a finished row's slot takes the next pending sample. Each sample draws its
      randomness from its own index, so refill gives the static samples up to float
      rounding; it pays when the call has more than R samples of varied lengths.
    - `kv_dtype`: the KV cache's dtype ("bfloat16" halves its memory and reads; scores
      are still computed in the model's compute dtype); None: the compute dtype.
    """

    num_samples: int = setting(1, POSITIVE, hint="K samples per prompt")
    max_new_tokens: int = setting(256, POSITIVE)
    temperature: float = setting(1.0, NON_NEGATIVE, hint="0 = greedy")
    top_k: int = setting(0, NON_NEGATIVE, hint="0 = off")
    top_p: float = setting(
        1.0,
        between(0, 1, open_low=True),
        hint="1.0 = off; an empty nucleus cannot be sampled from",
    )
    eos_ids: tuple[int, ...] = setting((), NON_NEGATIVE)  # gin's lists become tuples
    prompt_bucket: int = setting(32, NON_NEGATIVE, hint=_BUCKET)
    generation_bucket: int = setting(32, NON_NEGATIVE, hint=_BUCKET)
    batch_bucket: int = setting(0, NON_NEGATIVE, hint=_BUCKET)
    decode_chunks: int = setting(4, POSITIVE)
    decode_rows: int = setting(0, NON_NEGATIVE, hint="0 = static: every sample at once")
    kv_dtype: str | None = setting(None, choices=(None, "float32", "bfloat16"))

    def __post_init__(self) -> None:
        validate(self)
        # numpy ids become ints: a frozen dataclass must hold a hashable tuple of ints.
        object.__setattr__(self, "eos_ids", tuple(int(i) for i in self.eos_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def replace(self, **changes: object) -> SamplingConfig:
        return dataclasses.replace(self, **changes)
