"""The built-in arith task: determinism, disjoint splits, correct arithmetic, lengths."""

import re

import pytest

from jaxrl_reason.data.arith import ArithConfig, generate_arith, split_of
from jaxrl_reason.data.prompts import zero_shot
from jaxrl_reason.rewards.calculator import evaluate, find_annotations
from jaxrl_reason.rewards.grading import extract_answer


def test_deterministic_per_seed():
    assert generate_arith("train", 200, seed=3) == generate_arith("train", 200, seed=3)
    a = [e.question for e in generate_arith("train", 200, seed=3)]
    b = [e.question for e in generate_arith("train", 200, seed=4)]
    assert a != b


def test_splits_disjoint_by_question_text():
    train = {e.question for e in generate_arith("train", 3000, seed=0)}
    test = {e.question for e in generate_arith("test", 300, seed=0)}
    other_seed_test = {e.question for e in generate_arith("test", 300, seed=1)}
    assert len(train) == 3000 and len(test) == 300
    assert not train & test and not train & other_seed_test
    assert all(split_of(q, ArithConfig().test_fraction) == "test" for q in test)


def test_arithmetic_is_right():
    cfg = ArithConfig()
    for ex in generate_arith("train", 1000, seed=0):
        annotations = find_annotations(ex.solution)
        assert cfg.min_steps <= len(annotations) <= cfg.max_steps
        previous = None
        for expr, stated, _ in annotations:
            value = evaluate(expr)
            assert value == evaluate(stated), ex
            assert value.denominator == 1 and 0 <= value <= cfg.max_result
            operands = [int(x) for x in re.findall(r"\d+", expr)]
            if previous is not None:
                assert operands[0] == previous  # each step continues from the last
            previous = int(value)
        # recompute the final answer from the steps
        assert ex.answer == str(previous) == extract_answer(ex.solution)


def test_config_controls_difficulty():
    for ex in generate_arith("train", 300, seed=0, max_steps=2, max_operand=5, max_result=30):
        assert 1 <= len(find_annotations(ex.solution)) <= 2
        assert all(0 <= int(n) <= 30 for n in re.findall(r"\d+", ex.solution))


def test_bad_config_and_split():
    with pytest.raises(ValueError, match="min_steps"):
        ArithConfig(min_steps=3, max_steps=2)
    with pytest.raises(ValueError, match="split"):
        generate_arith("valid", 10)


def test_token_lengths_within_documented_bounds(arith_tokenizer):
    fmt = zero_shot()
    examples = generate_arith("test", 500, seed=0)
    prompts = arith_tokenizer.encode_batch([fmt.format(e.question) for e in examples])
    solutions = arith_tokenizer.encode_batch(
        [e.solution for e in examples], add_bos=False, add_eos=True
    )
    assert max(map(len, prompts)) <= 80
    assert max(map(len, solutions)) <= 112
    assert sum(map(len, prompts)) / len(prompts) <= 60
    assert sum(map(len, solutions)) / len(solutions) <= 80
