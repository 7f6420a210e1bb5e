"""Deterministic numpy input pipeline: supervised batches and left-padded prompt batches.

Supervised (SFT) sequences are `[bos] prompt response [eos]`, RIGHT-padded with pad_id:

- `tokens[b, t]` int32; `positions[b, t]` = t on real tokens, 0 on padding;
- `input_mask[b, t]` = 1 on real tokens (prompt, response, eos), 0 on padding;
- `loss_mask[b, t]` = 1.0 iff token t is a response token (including the eos). A
  next-token loss uses `logits[:, t - 1]` to predict `tokens[:, t]` weighted by
  `loss_mask[:, t]`; `loss_mask[:, 0]` is always 0 (bos is never a response token).

Over-long examples (longer than `max_len` tokens) are DROPPED when the pipeline is built;
`num_dropped` counts them and a warning names the count (an error if all are dropped).

Order: epoch e visits the kept examples in the permutation
`numpy.random.default_rng([seed, e])`; batches never span epochs, and a last partial
batch of an epoch is dropped (every batch has exactly `batch_size` rows). `state()` is
`{"epoch", "batch"}` (ints; checkpoint it) and `restore(state)` makes the next batch the
one that would have followed.

Prompt batches for generation are LEFT-padded so every prompt ends at the same column;
their length is bucketed (`bucket_length`) so jitted samplers compile few shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

from jaxrl_reason.data.example import Example
from jaxrl_reason.data.prompts import PromptFormat
from jaxrl_reason.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def bucket_length(n: int, multiple: int = 32, powers_of_two: bool = False) -> int:
    """Smallest bucket >= n: a multiple of `multiple`, or a power of two (>= multiple)."""
    if powers_of_two:
        size = max(1, multiple)
        while size < n:
            size *= 2
        return size
    return max(multiple, -(-n // multiple) * multiple)


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer: Tokenizer,
    prompt_format: PromptFormat | None,
    prompts: Sequence[str] | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids with the tokenizer's bos if it adds one, response ids with eos) per example.

    The prompt of example i is `prompt_format.format(question)`, or `prompts[i]` when
    per-example prompt texts are given (e.g. RCRL's prompts, each with its return token).
    """
    prompt_ids = tokenizer.encode_batch(prompt_texts(examples, prompt_format, prompts))
    responses = tokenizer.encode_batch(
        [ex.solution for ex in examples], add_bos=False, add_eos=True
    )
    return prompt_ids, responses


def prompt_texts(
    examples: Sequence[Example],
    prompt_format: PromptFormat | None,
    prompts: Sequence[str] | None = None,
) -> list[str]:
    """Each example's prompt text: `prompts[i]` when given, else the formatted question."""
    if prompts is not None:
        if len(prompts) != len(examples):
            raise ValueError(f"{len(prompts)} prompt texts for {len(examples)} examples")
        return list(prompts)
    if prompt_format is None:
        raise ValueError("pass a prompt_format or one prompt text per example (prompts=...)")
    return [prompt_format.format(ex.question) for ex in examples]


def collate_supervised(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    length: int,
) -> dict[str, np.ndarray]:
    """Right-padded `[B, length]` arrays of prompt+response pairs (see module doc)."""
    batch = len(prompts)
    tokens = np.full((batch, length), pad_id, dtype=np.int32)  # [B, T]
    loss_mask = np.zeros((batch, length), dtype=np.float32)  # [B, T]
    input_mask = np.zeros((batch, length), dtype=np.int32)  # [B, T]
    positions = np.zeros((batch, length), dtype=np.int32)  # [B, T]
    for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        n = len(p) + len(r)
        if n > length:
            raise ValueError(f"row {b} has {n} tokens but the batch length is {length}")
        tokens[b, : len(p)] = p
        tokens[b, len(p) : n] = r
        loss_mask[b, len(p) : n] = 1.0
        input_mask[b, :n] = 1
        positions[b, :n] = np.arange(n)
    return {
        "tokens": tokens,
        "loss_mask": loss_mask,
        "input_mask": input_mask,
        "positions": positions,
    }


class EpochBatches:
    """Endless, deterministic, resumable epochs of batches: the position in them.

    Epoch e visits the `num_items` items in the permutation `default_rng([seed, e])`,
    `batch_size` at a time, `batches_per_epoch` batches an epoch. Subclasses make a batch
    of the rows `_next_rows()` returns; `state()` / `restore()` save and set the position.
    """

    def _start_epochs(
        self, num_items: int, batch_size: int, batches_per_epoch: int, seed: int
    ) -> None:
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.batches_per_epoch = batches_per_epoch
        self.restore({"epoch": 0, "batch": 0})

    def state(self) -> dict[str, int]:
        """The position of the next batch (plain ints, checkpointable)."""
        return {"epoch": self._epoch, "batch": self._batch}

    def restore(self, state: dict[str, int]) -> None:
        """Continue from a `state()`: the next batch is the one that followed it."""
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if not 0 <= batch < self.batches_per_epoch or epoch < 0:
            raise ValueError(
                f"invalid batch position {state} ({self.batches_per_epoch} batches/epoch)"
            )
        self._epoch, self._batch = epoch, batch
        self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def _next_rows(self) -> np.ndarray:
        """The item indices of the next batch; advances the position."""
        rows = self._order[self._batch * self.batch_size : (self._batch + 1) * self.batch_size]
        self._batch += 1
        if self._batch == self.batches_per_epoch:
            self.restore({"epoch": self._epoch + 1, "batch": 0})
        return rows

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self


class SupervisedBatches(EpochBatches):
    """Endless, deterministic, resumable batches of (prompt, solution) sequences.

    `length_multiple=None` pads every batch to `max_len` (one compiled shape); an int
    pads each batch to its longest row rounded up to that multiple (capped at max_len).
    `prompts` (one text per example) replaces `prompt_format` when prompts differ by
    more than their question.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        tokenizer: Tokenizer,
        prompt_format: PromptFormat | None,
        batch_size: int,
        max_len: int,
        seed: int = 0,
        length_multiple: int | None = None,
        prompts: Sequence[str] | None = None,
    ):
        prompts, responses = tokenize_examples(examples, tokenizer, prompt_format, prompts)
        keep = [i for i in range(len(examples)) if len(prompts[i]) + len(responses[i]) <= max_len]
        self.num_dropped = len(examples) - len(keep)
        if self.num_dropped:
            logger.warning(
                "dropped %d of %d examples longer than max_len=%d tokens",
                self.num_dropped,
                len(examples),
                max_len,
            )
        if len(keep) < batch_size:
            raise ValueError(
                f"only {len(keep)} of {len(examples)} examples fit max_len={max_len}, fewer "
                f"than batch_size={batch_size}; raise max_len or lower batch_size"
            )
        self.prompts = [prompts[i] for i in keep]
        self.responses = [responses[i] for i in keep]
        self.example_ids = [examples[i].id for i in keep]
        self.pad_id = tokenizer.pad_id
        self.max_len = max_len
        self.length_multiple = length_multiple
        self._start_epochs(len(keep), batch_size, len(keep) // batch_size, seed)

    def __next__(self) -> dict[str, np.ndarray]:
        rows = self._next_rows()
        prompts = [self.prompts[i] for i in rows]
        responses = [self.responses[i] for i in rows]
        length = self.max_len
        if self.length_multiple is not None:
            longest = max(len(p) + len(r) for p, r in zip(prompts, responses))
            length = min(self.max_len, bucket_length(longest, self.length_multiple))
        return collate_supervised(prompts, responses, self.pad_id, length)
