"""GSM8K and SVAMP loaders on the real files, and their errors on bad input."""

import json

import pytest

from jaxrl_reason.data.gsm8k import load_gsm8k
from jaxrl_reason.data.svamp import SVAMP_KNOWN_ERRORS, equation_steps, join_question, load_svamp
from jaxrl_reason.data.tasks import load_task
from jaxrl_reason.rewards.calculator import evaluate, find_annotations
from jaxrl_reason.rewards.grading import answers_equal, extract_answer


def test_gsm8k_fields(shared_data_dir):
    ex = load_gsm8k(shared_data_dir / "gsm8k", "test")[0]
    assert ex.id == "gsm8k-test-0" and ex.answer == "18"
    assert ex.solution.endswith("#### 18") and ex.question.startswith("Janet")


def test_gsm8k_malformed_line_names_file_and_line(tmp_path):
    good = json.dumps({"question": "q", "answer": "a\n#### 1"})
    (tmp_path / "train.jsonl").write_text(f"{good}\n{good}\n{{not json\n")
    with pytest.raises(ValueError, match=r"train\.jsonl:3"):
        load_gsm8k(tmp_path, "train")


def test_gsm8k_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_gsm8k(tmp_path, "test")
    assert str(tmp_path / "test.jsonl") in str(info.value)
    assert "openai/grade-school-math" in str(info.value) and "grade_school_math/data" in str(
        info.value
    )


def test_svamp_split_sizes_and_determinism(shared_data_dir):
    train = load_svamp(shared_data_dir / "svamp", "train")
    test = load_svamp(shared_data_dir / "svamp" / "SVAMP.json", "test")
    assert len(train) == 700 and len(test) == 300
    assert not {e.id for e in train} & {e.id for e in test}
    assert train == load_task("svamp", "train", data_dir=shared_data_dir / "svamp")


def test_every_svamp_item_round_trips(shared_data_dir):
    raw = json.loads((shared_data_dir / "svamp" / "SVAMP.json").read_text())
    examples = load_svamp(shared_data_dir / "svamp", "all")
    assert len(examples) == len(raw) == 1000
    for item, ex in zip(raw, examples, strict=True):
        assert answers_equal(extract_answer(ex.solution), str(item["Answer"])), ex
        for expr, stated, _ in find_annotations(ex.solution):
            assert evaluate(expr) == evaluate(stated)
        _, value = equation_steps(item["Equation"])
        if item["ID"] not in SVAMP_KNOWN_ERRORS:
            assert value == evaluate(item["Equation"]) == evaluate(str(item["Answer"])), item


def test_svamp_solution_format():
    steps, value = equation_steps("( ( 9.0 - 2.0 ) * 3.0 )")
    assert steps == ["9 - 2 = <<9-2=7>>7", "7 * 3 = <<7*3=21>>21"] and value == 21


@pytest.mark.parametrize(
    "body, question, expected",
    [
        ("Tom has 3 apples.", "How many?", "Tom has 3 apples. How many?"),
        (
            "Tom has 3 apples. If he eats 1",
            "How many are left?",
            "Tom has 3 apples. If he eats 1, how many are left?",
        ),
        ("Tom has 3 apples", "How many?", "Tom has 3 apples. How many?"),
    ],
)
def test_svamp_join_question(body, question, expected):
    assert join_question(body, question) == expected


def test_svamp_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="SVAMP.json"):
        load_svamp(tmp_path, "train")


def test_unknown_task_and_split(shared_data_dir):
    with pytest.raises(ValueError, match="unknown task"):
        load_task("mmlu", "train")
    with pytest.raises(ValueError, match="split"):
        load_gsm8k(shared_data_dir / "gsm8k", "validation")
