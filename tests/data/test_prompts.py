"""Prompt formats, few-shot exemplars, stop sequences and gin selection."""

import gin
import pytest

from jaxrl_reason.data.arith import generate_arith
from jaxrl_reason.data.prompts import few_shot, prompt_format, zero_shot


def test_zero_shot():
    assert zero_shot().format("What is 1+1?") == "Q: What is 1+1?\nA: "


def test_few_shot_is_deterministic_and_stops_before_next_question():
    train = generate_arith("train", 50, seed=0)
    fmt = few_shot(train, num_shots=3, seed=1)
    assert fmt == few_shot(train, num_shots=3, seed=1)
    prompt = fmt.format("New question?")
    assert prompt.count("Q: ") == 4 and prompt.endswith("Q: New question?\nA: ")
    assert prompt.count("####") == 3
    with pytest.raises(ValueError):
        few_shot(train[:2], num_shots=3)


def test_gin_selects_format():
    train = generate_arith("train", 20, seed=0)
    with gin.unlock_config():
        gin.parse_config(["prompt_format.kind = 'few_shot'", "prompt_format.num_shots = 2"])
    try:
        fmt = prompt_format(exemplars=train)
        assert fmt.format("q").count("Q: ") == 3
    finally:
        gin.clear_config()
    assert prompt_format() == zero_shot()
    with pytest.raises(ValueError, match="kind"):
        prompt_format(kind="chat")
