"""Rewards: answer grading, a safe calculator, sparse and dense heuristic rewards."""

from jaxrl_reason.rewards.calculator import evaluate, find_annotations
from jaxrl_reason.rewards.grading import (
    answers_equal,
    canonical,
    extract_answer,
    extract_value,
    is_correct,
    parse_number,
)
from jaxrl_reason.rewards.heuristic import (
    char_offsets_to_token_positions,
    dense_reward,
    dense_reward_per_token,
    reference_step_values,
    sparse_reward,
)

__all__ = [
    "answers_equal",
    "canonical",
    "char_offsets_to_token_positions",
    "dense_reward",
    "dense_reward_per_token",
    "evaluate",
    "extract_answer",
    "extract_value",
    "find_annotations",
    "is_correct",
    "parse_number",
    "reference_step_values",
    "sparse_reward",
]
