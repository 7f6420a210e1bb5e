"""Rule-based rewards: sparse final-answer reward and the dense step-matching heuristic.

Sparse: 1.0 when the completion's final answer equals the reference's (by value, see
`grading`), else 0.0 (the paper's prototype uses 1/0; a wrong answer is not -1).

Dense heuristic (paper §3, prototype in Dahoas/trlx, rewritten with explicit placement):

- The reference's steps are its calculator annotations `<<expr=result>>`; their stated
  results form a multiset R (size n = number of reference annotations).
- Each annotation in the completion yields a step value: its stated result, counted
  only if the stated result parses and, when the expression parses too, the calculator
  agrees with it (a step whose arithmetic is wrong earns nothing).
- Scanning the completion left to right, a step value that equals (by value) a still
  unused element of R consumes that element and earns 1 / (n + 1). Each reference
  result is credited at most once, so matching every step sums to n / (n + 1) < 1,
  leaving room for the final-answer reward.
- The reward sits at the END of the line holding the annotation: the character offset
  of the next newline, or `len(completion)` on the last line. Several matches on one
  line give several entries at the same offset.
- Time is linear in the lengths of both texts: unused reference results are counted by
  value in a hash map, and each line end is searched for once.

`char_offsets_to_token_positions` maps those character offsets to token indices so a
per-token reward array can be filled; `token_char_ends` in `jaxrl_reason.data.tokenizer`
computes its input.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from jaxrl_reason.rewards.calculator import evaluate, find_annotations
from jaxrl_reason.rewards.grading import is_correct, parse_number


def sparse_reward(completions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """1.0 for each completion whose final answer matches its reference, else 0.0."""
    if len(completions) != len(references):
        raise ValueError(
            f"got {len(completions)} completions but {len(references)} references; "
            "pass one reference per completion (repeat references for K samples)"
        )
    return np.asarray(
        [float(is_correct(c, r)) for c, r in zip(completions, references, strict=True)],
        dtype=np.float32,
    )


def calculations_hold(text: str) -> bool:
    """Whether every calculator annotation `<<expr=result>>` in `text` states the value
    the calculator computes for its expression (one that does not parse fails).

    A sample can reach the right final answer through wrong arithmetic (on `arith`,
    `20+18=<<20+18=28>>28`, then `28/14=<<28/14=2>>2` when 38/19 = 2 was asked): with
    this check, Expert Iteration keeps only solutions whose every step is right.
    """
    for expr, stated, _ in find_annotations(text):
        value, computed = parse_number(stated.strip()), evaluate(expr)
        if value is None or computed is None or value != computed:
            return False
    return True


def _step_values(text: str) -> list[tuple[Fraction, int]]:
    """(value, end-of-annotation offset) for each trustworthy annotation in `text`."""
    steps = []
    for expr, stated, end in find_annotations(text):
        value = parse_number(stated.strip())
        if value is None:
            continue
        computed = evaluate(expr)
        if computed is not None and computed != value:
            continue
        steps.append((value, end))
    return steps


def reference_step_values(reference: str) -> list[Fraction]:
    """The stated results of a reference solution's annotations (parseable ones)."""
    values = []
    for _, stated, _ in find_annotations(reference):
        value = parse_number(stated.strip())
        if value is not None:
            values.append(value)
    return values


def dense_reward(completion: str, reference: str) -> list[tuple[int, float]]:
    """Per-step rewards `(char_offset, value)` for `completion` against `reference`.

    Linear in the lengths: unused reference results are counted by value in a hash map
    (equal `Fraction`s hash equally), and each line end is searched for once, because
    annotations come in text order.
    """
    if not isinstance(completion, str) or not isinstance(reference, str):
        return []
    reference_values = reference_step_values(reference)
    if not reference_values:
        return []
    remaining = Counter(reference_values)
    per_step = 1.0 / (len(reference_values) + 1)
    rewards = []
    line_end = -1
    for value, end in _step_values(completion):
        if remaining.get(value, 0) > 0:
            remaining[value] -= 1
            if line_end < end:  # not on the line of the previous match
                line_end = completion.find("\n", end)
                line_end = line_end if line_end >= 0 else len(completion)
            rewards.append((line_end, per_step))
    return rewards


def char_offsets_to_token_positions(
    token_char_ends: Sequence[int], char_offsets: Sequence[int]
) -> list[int]:
    """Index of the token that completes each character offset.

    `token_char_ends[i]` is the length of the text decoded from tokens `0..i` (so it is
    non-decreasing). An offset `c` maps to the first token whose end reaches `c`, i.e.
    the token that emits the character just before `c` (offset 0 maps to token 0).
    Offsets past the decoded text map to the last token; with no tokens, returns [].
    """
    if len(token_char_ends) == 0:
        return []
    last = len(token_char_ends) - 1
    return [min(bisect.bisect_left(token_char_ends, c), last) for c in char_offsets]


def dense_reward_per_token(
    completion: str, reference: str, token_char_ends: Sequence[int]
) -> np.ndarray:
    """Dense heuristic rewards as a float32 array over the completion's tokens."""
    out = np.zeros(len(token_char_ends), dtype=np.float32)
    steps = dense_reward(completion, reference)
    positions = char_offsets_to_token_positions(token_char_ends, [c for c, _ in steps])
    for pos, (_, value) in zip(positions, steps, strict=True):
        out[pos] += value
    return out
