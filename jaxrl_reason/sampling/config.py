"""`SamplingConfig`: how many samples, how long, which decoding strategy, which buckets."""

from __future__ import annotations

import dataclasses

import gin


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
      per chunk).
    """

    num_samples: int = 1
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_ids: tuple[int, ...] = ()
    prompt_bucket: int = 32
    generation_bucket: int = 32
    batch_bucket: int = 0
    decode_chunks: int = 4

    def __post_init__(self) -> None:
        # gin hands lists; a frozen dataclass must hold a hashable tuple.
        object.__setattr__(self, "eos_ids", tuple(int(i) for i in self.eos_ids))
        if self.num_samples < 1:
            raise ValueError(
                f"SamplingConfig.num_samples={self.num_samples}: need at least "
                "one sample per prompt (K >= 1)"
            )
        if self.max_new_tokens < 1:
            raise ValueError(
                f"SamplingConfig.max_new_tokens={self.max_new_tokens}: must be "
                ">= 1 to generate anything"
            )
        if self.temperature < 0:
            raise ValueError(
                f"SamplingConfig.temperature={self.temperature}: must be >= 0 (0 = greedy)"
            )
        if self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k={self.top_k}: must be >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(
                f"SamplingConfig.top_p={self.top_p}: must be in (0, 1] "
                "(1.0 = off); an empty nucleus cannot be sampled from"
            )
        if self.decode_chunks < 1:
            raise ValueError(f"SamplingConfig.decode_chunks={self.decode_chunks}: must be >= 1")
        for name in ("prompt_bucket", "generation_bucket", "batch_bucket"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"SamplingConfig.{name}={getattr(self, name)}: use a "
                    "positive multiple, or 0 for powers of two"
                )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def replace(self, **changes: object) -> SamplingConfig:
        return dataclasses.replace(self, **changes)
