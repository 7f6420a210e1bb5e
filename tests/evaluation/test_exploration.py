"""Exploration metrics on hand-made samples with known answers and operations."""

import pytest

from jaxrl_reason.data.example import Example
from jaxrl_reason.evaluation.exploration import exploration_stats, operation_sequence


def test_operation_sequence_ignores_wording_and_white_space():
    a = "Tom has 3+4=<<3+4=7>>7 apples.\nTom has 7-2=<<7 - 2=5>>5 apples.\n#### 5"
    b = "He now holds <<3+4=7>>7.\nThen <<7-2=5>>5 remain.\n#### 5"
    assert operation_sequence(a) == operation_sequence(b) == ("3+4", "7-2")
    assert operation_sequence("#### 5") == ()
    assert operation_sequence("<<4+3=7>>7 #### 7") != operation_sequence("<<3+4=7>>7 #### 7")


def _sol(ops: str, answer: int) -> str:
    return "".join(f"<<{op}={eval(op)}>>{eval(op)} " for op in ops.split(",")) + f"#### {answer}"


def test_exploration_stats_on_known_samples():
    qs = [Example(id=f"q{i}", question="?", solution="", answer=a) for i, a in enumerate("587")]
    before = [
        [_sol("3+4,7-2", 5), _sol("3+4,7-3", 4)],  # q0 solved one way
        [_sol("2*2", 4), "no answer"],  # q1 unsolved
        [_sol("3+4", 7), _sol("3+4", 7)],  # q2 solved, the same way twice
    ]
    after = [
        [_sol("3+4,7-2", 5), _sol("2+3", 5)],  # q0: the old way and a new one
        [_sol("4*2", 8), _sol("4*2", 8)],  # q1: newly solved, one distinct solution
        [_sol("3+3", 6), _sol("1+1", 2)],  # q2: lost
    ]
    got = exploration_stats(qs, before, after)
    assert got == {
        "num_questions": 3,
        "num_samples": 2,
        "solved_before": pytest.approx(2 / 3),
        "solved_after": pytest.approx(2 / 3),
        "newly_solved": 1,
        "lost": 1,
        "distinct_correct_before": pytest.approx(2 / 3),
        "distinct_correct_after": pytest.approx(1.0),
        # q0's 2+3 and q1's 4*2 are new; q0's 3+4,7-2 the SFT policy already produced
        "novel_share": pytest.approx(2 / 3),
    }


def test_a_wrong_sample_before_still_counts_as_produced():
    qs = [Example(id="q", question="?", solution="", answer="5")]
    wrong_then = [[_sol("3+4,7-2", 4)]]  # the same operations, a mistyped final answer
    right_now = [[_sol("3+4,7-2", 5)]]
    assert exploration_stats(qs, wrong_then, right_now)["novel_share"] == 0.0


def test_exploration_stats_refuses_mismatched_rows():
    qs = [Example(id="q", question="?", solution="", answer="5")]
    with pytest.raises(ValueError, match="1 questions but 2 and 1 rows"):
        exploration_stats(qs, [["a"], ["b"]], [["c"]])
