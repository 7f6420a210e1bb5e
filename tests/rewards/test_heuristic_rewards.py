"""Sparse and dense heuristic rewards, and char-offset to token-position mapping."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrl_reason.rewards import heuristic
from jaxrl_reason.rewards.heuristic import (
    char_offsets_to_token_positions,
    dense_reward,
    dense_reward_per_token,
    reference_step_values,
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


def _dense_reward_slow(completion, reference):
    """The obvious algorithm: a list of unused results, a newline search per match."""
    remaining = reference_step_values(reference)
    if not remaining:
        return []
    per_step = 1.0 / (len(remaining) + 1)
    rewards = []
    for value, end in heuristic._step_values(completion):
        if value in remaining:
            remaining.remove(value)
            line_end = completion.find("\n", end)
            rewards.append((line_end if line_end >= 0 else len(completion), per_step))
    return rewards


_PIECES = st.sampled_from(
    ["<<3+4=7>>7", "<<1+6=7>>7", "<<2*7=14>>14", "<<0.5*4=2>>2", "<<1/2=0.5>>0.5"]
    + ["<<2+2=5>>5", "<<7*2=14.0>>14", "<<x=3>>3", "<<3>>", "\n", " ", "ok", "#### 14"]
)


@given(st.lists(_PIECES, max_size=30), st.lists(_PIECES, max_size=12))
@settings(max_examples=300, deadline=None)
def test_dense_reward_equals_the_slow_reference(completion, reference):
    completion, reference = "".join(completion), "".join(reference)
    assert dense_reward(completion, reference) == _dense_reward_slow(completion, reference)


class _Counted:
    """A step value that counts the equality tests made on it (a hash-map lookup needs
    about one; a search of a list of unused results needs one per element)."""

    comparisons = 0

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return hash(self.value)

    def __eq__(self, other):
        _Counted.comparisons += 1
        return self.value == other.value


class _TallyStr(str):
    """A string that adds up how many characters its `find` calls scan."""

    scanned = 0

    def find(self, sub, start=0, *args):
        found = super().find(sub, start, *args)
        _TallyStr.scanned += (found if found >= 0 else len(self)) - start
        return found


def test_dense_reward_matching_is_linear(monkeypatch):
    # Structural, not timed: n reference results and 2n completion steps (half of them
    # matching, in reverse order) cost O(n) equality tests, not O(n^2).
    n = 2000
    reference_values = [_Counted(i) for i in range(n)]
    steps = [(_Counted(v), end) for end, v in enumerate(reversed(range(-n, n)))]
    monkeypatch.setattr(heuristic, "reference_step_values", lambda _: reference_values)
    monkeypatch.setattr(heuristic, "_step_values", lambda _: steps)
    _Counted.comparisons = 0
    rewards = dense_reward("\n" * (2 * n), "reference")
    assert len(rewards) == n
    assert _Counted.comparisons <= 4 * 3 * n


def test_dense_reward_searches_each_line_end_once():
    # n matching annotations on one line: each must not search again for the line end.
    n = 2000
    annotations = [f"<<{i}+1={i + 1}>>" for i in range(n)]
    reference = "\n".join(annotations)
    completion = _TallyStr(" ".join(reversed(annotations)) + " done\n#### 1")
    _TallyStr.scanned = 0
    rewards = dense_reward(completion, reference)
    assert len(rewards) == n and {c for c, _ in rewards} == {completion.index("\n")}
    assert _TallyStr.scanned <= 2 * len(completion)


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
