"""The unit every task yields: a question, a GSM8K-format reference solution, an answer."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Example:
    """One math word problem.

    `solution` is step-by-step text with calculator annotations `<<expr=result>>` whose
    last line is `#### answer`; `answer` is the canonical number string (see
    `jaxrl_reason.rewards.grading.canonical`).
    """

    id: str
    question: str
    solution: str
    answer: str
