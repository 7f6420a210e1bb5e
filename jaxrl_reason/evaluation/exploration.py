"""How much a policy explores beyond its start (the paper's finding 5): on the same
questions, which are solved at least once in K samples before and after RL, and how many
of the solutions found after are ones the start policy never produced.

"The same solution" is the paper's diversity count: the same sequence of calculator
operations (`operation_sequence`: the expressions of the `<<expr=result>>` annotations in
order, white space removed), so rewording a sentence does not make a new solution while
computing the answer another way does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxrl_reason.data.example import Example
from jaxrl_reason.rewards.calculator import find_annotations
from jaxrl_reason.rewards.grading import is_correct


def operation_sequence(solution: str) -> tuple[str, ...]:
    """The calculator operations of `solution` in order, e.g. ("3+4", "7-2")."""
    return tuple("".join(expr.split()) for expr, _, _ in find_annotations(solution))


def _correct_operations(samples: Sequence[str], answer: str) -> set[tuple[str, ...]]:
    return {operation_sequence(s) for s in samples if is_correct(s, answer)}


def exploration_stats(
    examples: Sequence[Example],
    before: Sequence[Sequence[str]],
    after: Sequence[Sequence[str]],
) -> dict[str, Any]:
    """Exploration of `after`'s samples against `before`'s, question by question.

    `before` and `after` hold K sample texts per question of `examples` (e.g. from the
    SFT policy and from the policy after RL). Returns the fraction of questions solved
    (at least one correct sample) by each, the number solved after but not before
    (`newly_solved`) and the reverse (`lost`), the mean number of distinct correct
    solutions per question, and `novel_share`: of the distinct correct solutions after,
    the share whose operation sequence appears in none of the samples before.
    """
    if not len(examples) == len(before) == len(after):
        raise ValueError(
            f"exploration_stats: {len(examples)} questions but {len(before)} and "
            f"{len(after)} rows of samples"
        )
    if not examples:
        raise ValueError("exploration_stats: no questions")
    solved_before = solved_after = newly = lost = novel = distinct_before = distinct_after = 0
    for ex, b, a in zip(examples, before, after):
        ok_b, ok_a = _correct_operations(b, ex.answer), _correct_operations(a, ex.answer)
        seen = {operation_sequence(s) for s in b}
        solved_before += bool(ok_b)
        solved_after += bool(ok_a)
        newly += bool(ok_a) and not ok_b
        lost += bool(ok_b) and not ok_a
        distinct_before += len(ok_b)
        distinct_after += len(ok_a)
        novel += len(ok_a - seen)
    n = len(examples)
    return {
        "num_questions": n,
        "num_samples": min(len(row) for row in (*before, *after)),
        "solved_before": solved_before / n,
        "solved_after": solved_after / n,
        "newly_solved": newly,
        "lost": lost,
        "distinct_correct_before": distinct_before / n,
        "distinct_correct_after": distinct_after / n,
        "novel_share": novel / distinct_after if distinct_after else 0.0,
    }
