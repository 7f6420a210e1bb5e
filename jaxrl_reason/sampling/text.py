"""Text in, text out: tokenize prompts, sample, detokenize and cut at stop sequences."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from jaxrl_reason.sampling.config import SamplingConfig
from jaxrl_reason.sampling.sampler import Sampler


class TokenizerLike(Protocol):
    bos_id: int | None
    eos_id: int
    eos_ids: tuple[int, ...]  # every end-of-sequence id, eos_id first
    pad_id: int
    vocab_size: int

    def encode(self, text: str, add_bos: bool | None = None, add_eos: bool = False) -> list[int]:
        """add_bos None: the special tokens the tokenizer itself adds (see data.tokenizer)."""

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class TextSamples:
    """K completions per prompt, cut at the first stop sequence.

    `texts[b][k]` excludes the stop sequence and the EOS. `num_tokens` counts the tokens
    kept: all generated tokens (EOS included) when no stop sequence was found; otherwise the
    fewest tokens whose text covers everything before the stop sequence, so a token that
    straddles the start of the stop sequence is kept and the tokens after it are dropped.
    `tokens` and the log-probs are padded (pad id / 0) past `num_tokens`.
    """

    texts: list[list[str]]  # [B][K]
    tokens: np.ndarray  # [B, K, T] int32
    num_tokens: np.ndarray  # [B, K] int32
    logprobs: np.ndarray  # [B, K, T] float32, sampling distribution
    policy_logprobs: np.ndarray  # [B, K, T] float32, raw policy
    stopped_by_eos: np.ndarray  # [B, K] bool
    stopped_by_sequence: np.ndarray  # [B, K] bool
    prompt_ids: list[list[int]]  # [B] the tokenized prompts (with the tokenizer's BOS, if any)


def _first_stop(text: str, stop_sequences: Sequence[str]) -> int:
    """Index of the earliest stop sequence in `text`, or -1."""
    hits = [i for i in (text.find(s) for s in stop_sequences if s) if i >= 0]
    return min(hits) if hits else -1


def _tokens_covering(tokenizer: TokenizerLike, ids: Sequence[int], chars: int) -> int:
    """Fewest leading tokens of `ids` whose text is at least `chars` long (binary search;
    decoded length grows with the number of tokens)."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(list(ids[:mid]))) >= chars:
            hi = mid
        else:
            lo = mid + 1
    return lo


# Text that may come before a stop sequence, to find its tokenizations after other text
# ("\nQ:" alone may encode unlike "\nQ:" after a number).
_CONTEXTS = ("", "0", "a", ".", " ")


def stop_token_ids(tokenizer: TokenizerLike, stop_sequences: Sequence[str]) -> list[list[int]]:
    """Token-id sequences whose text contains a stop sequence, for the sampler to end a
    row in its decode loop: each stop string's encodings alone and after a few contexts.

    Only a speed-up: a row whose stop sequence came out as other tokens runs on and is cut
    afterwards, as before; a listed sequence always decodes to text holding the stop
    string, so ending there never cuts a sample short of what the text cut keeps.
    """
    found: dict[tuple[int, ...], None] = {}
    for stop in stop_sequences:
        if not stop:
            continue
        for context in _CONTEXTS:
            before = tokenizer.encode(context, add_bos=False) if context else []
            ids = tokenizer.encode(context + stop, add_bos=False)
            if ids[: len(before)] != before:
                continue
            seq = tuple(ids[len(before) :])
            if seq and stop in tokenizer.decode(list(seq)):
                found[seq] = None
    return [list(seq) for seq in found]


class TextSampler:
    """`Sampler` plus a tokenizer. When `cfg.eos_ids` is empty, the tokenizer's eos ids
    (every one: Llama-3 and Qwen end turns on several) are used."""

    def __init__(self, sampler: Sampler, tokenizer: TokenizerLike) -> None:
        if tokenizer.vocab_size > sampler.config.vocab_size:
            raise ValueError(
                f"tokenizer vocab_size={tokenizer.vocab_size} exceeds the "
                f"model's {sampler.config.vocab_size}; they must match"
            )
        self.sampler = sampler
        self.tokenizer = tokenizer
        self._stops: dict[tuple[str, ...], list[list[int]]] = {}

    def _stop_ids(self, stop_sequences: tuple[str, ...]) -> list[list[int]]:
        if stop_sequences not in self._stops:
            self._stops[stop_sequences] = stop_token_ids(self.tokenizer, stop_sequences)
        return self._stops[stop_sequences]

    def generate(
        self,
        params: Any,
        prompts: Sequence[str],
        cfg: SamplingConfig,
        rng: jax.Array,
        stop_sequences: Sequence[str] = ("\nQ:",),
        progress: Callable[[int], None] | None = None,
    ) -> TextSamples:
        """Sample K completions of each prompt string and detokenize them. Rows end in the
        decode loop at the stop sequences' usual tokenizations (`stop_token_ids`).
        `progress`: see `Sampler.sample`."""
        if isinstance(prompts, str):
            raise ValueError(
                "prompts must be a list of strings, got a single string; wrap it in a list"
            )
        tok = self.tokenizer
        prompt_ids = [tok.encode(p) for p in prompts]
        if not cfg.eos_ids:
            cfg = cfg.replace(eos_ids=tuple(tok.eos_ids))
        stops = self._stop_ids(tuple(stop_sequences))
        out = self.sampler.sample(params, prompt_ids, cfg, rng, stop_ids=stops, progress=progress)

        b, k, t = out.tokens.shape
        texts: list[list[str]] = [[""] * k for _ in range(b)]
        num_tokens = out.lengths.copy()
        by_sequence = np.zeros((b, k), np.bool_)
        for i in range(b):
            for j in range(k):
                n = int(out.lengths[i, j])
                body = out.tokens[i, j, : n - int(out.stopped_by_eos[i, j])].tolist()
                text = tok.decode(body)
                cut = _first_stop(text, stop_sequences)
                if cut >= 0:
                    text = text[:cut]
                    num_tokens[i, j] = _tokens_covering(tok, body, cut)
                    by_sequence[i, j] = True
                texts[i][j] = text
        kept = np.arange(t) < num_tokens[..., None]  # [B, K, T]
        return TextSamples(
            texts=texts,
            tokens=np.where(kept, out.tokens, self.sampler.pad_id).astype(np.int32),
            num_tokens=num_tokens,
            logprobs=np.where(kept, out.logprobs, 0.0).astype(np.float32),
            policy_logprobs=np.where(kept, out.policy_logprobs, 0.0).astype(np.float32),
            stopped_by_eos=out.stopped_by_eos & ~by_sequence,
            stopped_by_sequence=by_sequence,
            prompt_ids=prompt_ids,
        )
