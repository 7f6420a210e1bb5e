"""Return-Conditioned RL (RCRL): return tokens, conditioned prompts and training examples.

Each scored sample is turned into a training example whose prompt ends with a return
token saying how good the solution was: `"[BAD]"` / `"[GOOD]"` (binary, the default) or
`"[SCORE_0]"` .. `"[SCORE_{n-1}]"` for `num_bins` levels of a score in [0, 1]. At
inference the prompt carries the best token, asking the model for a high-return answer.

Placement: the token opens the answer, right after the prompt's answer prefix:
  "Q: <question>\nA: " -> "Q: <question>\nA: [GOOD] "
It belongs to the PROMPT, so SFT-style training puts no loss on it (the model conditions
on it, never predicts it; `rcrl.training_data`). Pass `return_tokens(num_bins)` to
the sentencepiece trainer as `user_defined_symbols` so each token is one piece.
"""

from __future__ import annotations

import math

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
