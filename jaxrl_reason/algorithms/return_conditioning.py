"""Return-Conditioned RL (RCRL): return tokens, conditioned prompts and training examples.

Each scored sample is turned into a training example whose prompt ends with a return
token saying how good the solution was: `"[BAD]"` / `"[GOOD]"` (binary, the default) or
`"[SCORE_0]"` .. `"[SCORE_{n-1}]"` for `num_bins` levels of a score in [0, 1]. At
inference the prompt carries the best token, asking the model for a high-return answer.

Placement: the token opens the answer, right after the prompt's answer prefix:
  "Q: <question>\nA: " -> "Q: <question>\nA: [GOOD] "
It belongs to the PROMPT, so SFT-style training puts no loss on it (the model conditions
on it, never predicts it); see `conditioned_sequence`. Pass `return_tokens(num_bins)` to
the sentencepiece trainer as `user_defined_symbols` so each token is one piece.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

GOOD = "[GOOD]"
BAD = "[BAD]"
_BOUNDARY_TOL = 1e-9  # so a score of exactly i / num_bins lands in bin i despite rounding


def return_tokens(num_bins: int = 2) -> list[str]:
    """All return tokens, from the lowest return to the highest."""
    if num_bins < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    if num_bins == 2:
        return [BAD, GOOD]
    return [f"[SCORE_{i}]" for i in range(num_bins)]


def best_return_token(num_bins: int = 2) -> str:
    """The token to condition on at inference: the highest return."""
    return return_tokens(num_bins)[-1]


def return_bin(score: float, num_bins: int = 2) -> int:
    """Bin of a score in [0, 1]: floor(score * num_bins), with 1.0 in the top bin.

    Bin i covers [i / n, (i + 1) / n). Scores outside [0, 1] are clipped into it.
    """
    score = float(score)
    if math.isnan(score):
        raise ValueError("return score is NaN; score samples before conditioning on them")
    if num_bins < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    score = min(max(score, 0.0), 1.0)
    return min(int(math.floor(score * num_bins + _BOUNDARY_TOL)), num_bins - 1)


def return_token_for(score: float, num_bins: int = 2) -> str:
    """The return token for a score in [0, 1] (binary: [GOOD] iff score >= 0.5)."""
    return return_tokens(num_bins)[return_bin(score, num_bins)]


def condition_prompt(prompt_text: str, token: str) -> str:
    """Append the return token (and a space) to a prompt that ends with its answer prefix."""
    if not token or any(ch.isspace() for ch in token):
        raise ValueError(f"return token {token!r} must be non-empty with no whitespace")
    return f"{prompt_text}{token} "


def inference_prompt(prompt_text: str, num_bins: int = 2) -> str:
    """The prompt conditioned on the best return token, for sampling and evaluation."""
    return condition_prompt(prompt_text, best_return_token(num_bins))


class ConditionedExample(NamedTuple):
    prompt: str  # prompt text ending with the return token: no loss here
    completion: str  # the sampled solution: the training target
    return_token: str


def build_rcrl_examples(
    prompts: Sequence[str], solutions: Sequence[str], scores: Sequence[float], num_bins: int = 2
) -> list[ConditionedExample]:
    """RCRL training set from scored samples: one conditioned example per sample.

    `prompts[i]` is the formatted prompt (e.g. "Q: ...\nA: ") of sample i, `solutions[i]`
    its generated text and `scores[i]` its return in [0, 1] (sparse correctness, an ORM
    score, ...). Every sample is kept, bad ones too: they teach what [BAD] means.
    """
    if not len(prompts) == len(solutions) == len(scores):
        raise ValueError(
            f"prompts ({len(prompts)}), solutions ({len(solutions)}) and "
            f"scores ({len(scores)}) must have the same length"
        )
    out = []
    for prompt, solution, score in zip(prompts, solutions, scores):
        token = return_token_for(score, num_bins)
        out.append(ConditionedExample(condition_prompt(prompt, token), solution, token))
    return out


def conditioned_sequence(
    prompt_ids: Sequence[int], return_token_id: int, response_ids: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, loss_mask) int32 for [prompt][return token][response]: loss only on the
    response, so the return token is a condition, never a target."""
    prompt = np.asarray(prompt_ids, np.int32).reshape(-1)
    response = np.asarray(response_ids, np.int32).reshape(-1)
    tokens = np.concatenate([prompt, np.asarray([return_token_id], np.int32), response])
    loss_mask = np.concatenate(
        [np.zeros(prompt.size + 1, np.int32), np.ones(response.size, np.int32)]
    )
    return tokens, loss_mask
