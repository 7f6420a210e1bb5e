"""Prompt formats, few-shot exemplars, stop sequences and gin selection."""

import dataclasses

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
    with pytest.raises(ValueError, match="kind 'chat_ml'.*'chat'"):
        prompt_format(kind="chat_ml")
    with pytest.raises(ValueError, match="chat template: pass tokenizer="):
        prompt_format(kind="chat")


def test_gin_selects_chat(tmp_path):
    from jaxrl_reason.data.tokenizer import HFTokenizer
    from tests.data.test_hf_tokenizers import _layout

    tok = HFTokenizer(
        _layout(tmp_path, "qwen"),
        chat_template="{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
    )
    with gin.unlock_config():
        gin.parse_config(
            ["prompt_format.kind = 'chat'", "prompt_format.system = 'Be brief.'"]
            + ["prompt_format.instruction = 'End with ####.'"]
        )
    try:
        fmt = prompt_format(tokenizer=tok)
    finally:
        gin.clear_config()
    want = "<system>Be brief.<|im_end|><user>{q}\n\nEnd with ####.<|im_end|><assistant>"
    assert fmt.format("2+2?") == want.format(q="2+2?")
    assert fmt.stop_sequences == ("<|im_end|>", "<|end_of_text|>")
    assert dataclasses.asdict(fmt).keys() == dataclasses.asdict(zero_shot()).keys()
