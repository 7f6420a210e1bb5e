"""Prompt checking and left padding on the host (numpy), before anything is traced."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

# A ragged list of token-id lists, or a left-padded pair (ids [B, P], mask [B, P]).
Prompts = Sequence[Sequence[int]] | tuple[Any, Any]


def _is_pair(prompts: Any) -> bool:
    return (
        isinstance(prompts, tuple)
        and len(prompts) == 2
        and all(hasattr(x, "shape") and len(x.shape) == 2 for x in prompts)
    )


def _check_ids(ids: np.ndarray, where: str, vocab_size: int) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)][0]
        raise ValueError(
            f"{where}: token id {bad} is outside the vocabulary "
            f"[0, {vocab_size}); check the tokenizer matches the model"
        )


def validate_prompts(prompts: Prompts, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Check prompts and return them left-padded: ids [B, P] int32 (0 at padding), mask [B, P].

    Raises `ValueError` naming the prompt for: no prompts, an empty prompt, non-integer
    ids (floats, strings, bools) and ids outside [0, vocab_size).
    """
    if _is_pair(prompts):
        ids, mask = (np.asarray(x) for x in prompts)
        if ids.shape != mask.shape:
            raise ValueError(
                f"prompt ids {ids.shape} and mask {mask.shape} must have the "
                "same [batch, length] shape"
            )
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"prompt ids have dtype {ids.dtype}; token ids must be integers")
        if mask.dtype != np.bool_:
            raise ValueError(f"prompt mask has dtype {mask.dtype}; pass a bool mask")
        if ids.shape[0] == 0:
            raise ValueError("no prompts given; pass at least one prompt")
        empty = np.flatnonzero(~mask.any(axis=1))
        if empty.size:
            raise ValueError(
                f"prompt {empty[0]} is empty (mask all False); every prompt "
                "needs at least one token, e.g. BOS"
            )
        if np.any(mask[:, :-1] & ~mask[:, 1:]):
            raise ValueError(
                "prompt mask is not left-padded (a real token is followed by "
                "padding); pad on the left so all rows end at the last slot"
            )
        _check_ids(ids[mask], "prompts", vocab_size)
        return np.where(mask, ids, 0).astype(np.int32), mask

    if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence):
        raise ValueError(
            f"prompts must be a list of token-id lists or a pair (ids, mask); "
            f"got {type(prompts).__name__}"
        )
    if len(prompts) == 0:
        raise ValueError("no prompts given; pass at least one prompt")
    rows = []
    for i, p in enumerate(prompts):
        if isinstance(p, str | bytes) or not isinstance(p, Sequence | np.ndarray):
            raise ValueError(
                f"prompt {i} is a {type(p).__name__}, not a list of token ids; "
                "tokenize text first (or use TextSampler)"
            )
        if len(p) == 0:
            raise ValueError(
                f"prompt {i} is empty; every prompt needs at least one token, e.g. BOS"
            )
        for t in p:
            if isinstance(t, bool | np.bool_) or not isinstance(t, numbers.Integral):
                raise ValueError(
                    f"prompt {i} holds {t!r} ({type(t).__name__}); token ids must be integers"
                )
        row = np.asarray(p, dtype=np.int64)
        _check_ids(row, f"prompt {i}", vocab_size)
        rows.append(row)
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.bool_)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = True
    return ids, mask


def left_pad(
    ids: np.ndarray, mask: np.ndarray, rows: int, length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Grow a left-padded batch to [rows, length]: more padding on the left, dummy rows
    (all padding) at the bottom."""
    b, p = ids.shape
    out_ids = np.full((rows, length), pad_id, np.int32)
    out_mask = np.zeros((rows, length), np.bool_)
    out_ids[:b, length - p :] = np.where(mask, ids, pad_id)
    out_mask[:b, length - p :] = mask
    return out_ids, out_mask
