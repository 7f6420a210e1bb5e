"""Sparse and dense heuristic rewards, and char-offset to token-position mapping."""

import numpy as np
import pytest

from jaxrl_reason.rewards.heuristic import (
    char_offsets_to_token_positions,
    dense_reward,
    dense_reward_per_token,
    sparse_reward,
)

REFERENCE = "Tom has 3+4=<<3+4=7>>7.\nHe doubles: 7*2=<<7*2=14>>14.\n#### 14"


def test_sparse_reward():
    rewards = sparse_reward(["#### 14", "#### 13", "The answer is 14.0"], [REFERENCE] * 3)
    assert rewards.dtype == np.float32
    np.testing.assert_array_equal(rewards, [1.0, 0.0, 1.0])


def test_sparse_reward_length_mismatch():
    with pytest.raises(ValueError, match="references"):
        sparse_reward(["a"], ["b", "c"])


def test_dense_reward_matches_steps_at_line_ends():
    completion = "A <<4+3=7>>7 ok\nB <<7*2=14>>14\n#### 14"
    rewards = dense_reward(completion, REFERENCE)
    # two reference steps -> 1/3 each, at the end of lines 1 and 2
    assert rewards == [
        (completion.index("\n"), pytest.approx(1 / 3)),
        (completion.rindex("\n"), pytest.approx(1 / 3)),
    ]
    assert sum(v for _, v in rewards) < 1.0


def test_dense_reward_credits_each_reference_step_once():
    completion = "<<3+4=7>>7\n<<1+6=7>>7\n<<10-3=7>>7"
    assert len(dense_reward(completion, REFERENCE)) == 1


def test_dense_reward_ignores_wrong_arithmetic_and_unmatched_values():
    completion = "<<3+5=7>>7\n<<2+2=4>>4\n<<28/2=14>>14"
    rewards = dense_reward(completion, REFERENCE)
    assert [c for c, _ in rewards] == [len(completion)]  # only the last line (14) counts


def test_dense_reward_without_reference_steps():
    assert dense_reward("<<1+1=2>>2", "#### 2") == []
    assert dense_reward("no steps", REFERENCE) == []


def test_char_offsets_to_token_positions():
    # tokens decode to "ab", "c", "\n", "de"
    ends = [2, 3, 4, 6]
    assert char_offsets_to_token_positions(ends, [0, 1, 2, 3, 4, 5, 6, 99]) == [
        0,
        0,
        0,
        1,
        2,
        3,
        3,
        3,
    ]
    assert char_offsets_to_token_positions([], [3]) == []


def test_dense_reward_per_token():
    completion = "A <<4+3=7>>7\n#### 7"
    ends = [len(completion[: i + 1]) for i in range(len(completion))]  # one char per token
    rewards = dense_reward_per_token(completion, REFERENCE, ends)
    assert rewards.shape == (len(completion),)
    newline = completion.index("\n")
    assert rewards[newline - 1] == pytest.approx(1 / 3)  # the token ending the line
    assert rewards.sum() == pytest.approx(1 / 3)
