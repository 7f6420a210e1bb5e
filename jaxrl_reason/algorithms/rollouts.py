"""Rollouts (`sampling.rollouts`) in the sequence frame, and PPO's rewards there.

Sequence frame: `sequence_batch` lays the rows out as right-padded [N, T] arrays,
`[bos] prompt response pad...`, with `response_mask[n, t] = 1` on response tokens. A
per-token quantity of response token t (its log-prob, its reward, the ORM's score after
it) sits at slot t; `place_response_values` puts per-row arrays there, and
`rollout_rewards` computes PPO's rewards there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxrl_reason.data.pipeline import bucket_length, collate_supervised
from jaxrl_reason.data.tokenizer import token_char_ends
from jaxrl_reason.rewards.heuristic import (
    char_offsets_to_token_positions,
    dense_reward_per_token,
    sparse_reward,
)
from jaxrl_reason.rewards.orm import dense_orm_rewards
from jaxrl_reason.sampling.rollouts import Rollouts


def sequence_batch(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_id: int,
    length_multiple: int = 64,
    rows_multiple: int = 1,
) -> dict[str, np.ndarray]:
    """Right-padded [N', T] arrays: tokens, positions, input_mask, response_mask (int32).

    T is the longest row rounded up to `length_multiple`; N' is N rounded up to
    `rows_multiple` with empty rows (all masks 0) so a batch splits over a mesh.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    if not prompt_ids:
        raise ValueError("sequence_batch: no rows")
    longest = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
    pad_rows = -len(prompt_ids) % rows_multiple
    prompts = [list(p) for p in prompt_ids] + [[]] * pad_rows
    responses = [list(r) for r in response_ids] + [[]] * pad_rows
    batch = collate_supervised(prompts, responses, pad_id, bucket_length(longest, length_multiple))
    batch["response_mask"] = batch.pop("loss_mask").astype(np.int32)
    return batch


def place_response_values(
    values: Sequence[np.ndarray], prompt_ids: Sequence[Sequence[int]], shape: tuple[int, int]
) -> np.ndarray:
    """float32 `shape` array with row n's per-response-token `values[n]` at its response
    slots (after its prompt), 0 elsewhere."""
    out = np.zeros(shape, np.float32)
    for n, (v, p) in enumerate(zip(values, prompt_ids, strict=True)):
        out[n, len(p) : len(p) + len(v)] = v
    return out


def step_ends(tokenizer: Any, response_ids: Sequence[int], text: str) -> np.ndarray:
    """bool [len(response_ids)]: the tokens that end a reasoning step.

    A step is a line of the solution: its end is the token that emits the line's last
    character before a newline (as for the dense heuristic reward), and the last response
    token (EOS when sampled) ends the final step.
    """
    ends = np.zeros(len(response_ids), np.bool_)
    if not len(response_ids):
        return ends
    offsets = [i for i, ch in enumerate(text) if ch == "\n" and i > 0]
    char_ends = token_char_ends(tokenizer, response_ids)
    for pos in char_offsets_to_token_positions(char_ends, offsets):
        ends[pos] = True
    ends[-1] = True
    return ends


def rollout_rewards(
    rollouts: Rollouts,
    kind: str,
    tokenizer: Any,
    shape: tuple[int, int],
    orm_scorer: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(sequence scores [N'], dense per-token rewards [N', T]) in the sequence frame.

    Rows past the rollouts (mesh padding) get 0. `orm_scorer` (an `ORMScorer`) is needed
    for "orm" and "dense_orm".
    """
    n = len(rollouts)
    score = np.zeros(shape[0], np.float32)
    dense = np.zeros(shape, np.float32)
    references = [ex.solution for ex in rollouts.examples]
    answers = [ex.answer for ex in rollouts.examples]
    if kind in ("sparse", "dense"):
        score[:n] = sparse_reward(rollouts.texts, answers)
    if kind == "dense":
        per_row = [
            dense_reward_per_token(text, ref, token_char_ends(tokenizer, ids))
            for text, ref, ids in zip(rollouts.texts, references, rollouts.response_ids)
        ]
        dense[:n] = place_response_values(per_row, rollouts.prompt_ids, (n, shape[1]))
    if kind in ("orm", "dense_orm"):
        if orm_scorer is None:
            raise ValueError(f"PPO reward {kind!r} needs a trained ORM (orm_scorer)")
        ends = [
            step_ends(tokenizer, ids, text)
            for ids, text in zip(rollouts.response_ids, rollouts.texts)
        ]
        final, steps = orm_scorer.score_tokens(rollouts.prompt_ids, rollouts.response_ids, ends)
        if kind == "orm":
            score[:n] = final
        else:
            step_mask = place_response_values(ends, rollouts.prompt_ids, (n, shape[1])) > 0
            step_scores = place_response_values(steps, rollouts.prompt_ids, (n, shape[1]))
            dense[:n] = np.asarray(dense_orm_rewards(step_scores, step_mask, "delta", 0.5))
    return score, dense
