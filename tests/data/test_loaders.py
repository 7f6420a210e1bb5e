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


def _gsm8k_file(tmp_path, *lines):
    (tmp_path / "train.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))


def _record(answer, question="q"):
    return json.dumps({"question": question, "answer": answer}).encode()


@pytest.mark.parametrize("gold", ["", "twelve", "inf", "NaN", "1e999999", "18 apples", "2^10"])
def test_gsm8k_ungradable_gold_answer_names_file_and_line(tmp_path, gold):
    _gsm8k_file(tmp_path, _record("a\n#### 1"), b"", _record(f"a\n#### {gold}"))
    with pytest.raises(ValueError, match=r"train\.jsonl:3: gold answer .* is not a number") as info:
        load_gsm8k(tmp_path, "train")
    assert "#### 18" in str(info.value)  # says what to write instead


@pytest.mark.parametrize(
    "line, problem",
    [
        (_record("no marker"), "no '#### answer' line"),
        (json.dumps({"question": "q"}).encode(), "lacks string 'question' and 'answer'"),
        (json.dumps({"question": 1, "answer": "#### 1"}).encode(), "lacks string"),
        (b"[1, 2]", "expected a JSON object"),
        (b"not json", "malformed JSON line"),
        (_record("caf\u00e9 #### 1").replace(b"\\u00e9", b"\xe9"), "not UTF-8 text"),
    ],
)
def test_gsm8k_bad_line_names_file_and_line(tmp_path, line, problem):
    _gsm8k_file(tmp_path, _record("a\n#### 1"), line)
    with pytest.raises(ValueError, match=r"train\.jsonl:2: ") as info:
        load_gsm8k(tmp_path, "train")
    assert problem in str(info.value)


def test_gsm8k_gold_answer_follows_the_first_hash_like_the_grader(tmp_path):
    _gsm8k_file(tmp_path, _record("a\n#### 1,000\nnote\n#### 7"), _record("#### -2.50"))
    first, second = load_gsm8k(tmp_path, "train")
    assert first.answer == extract_answer(first.solution) == "1000"
    assert second.answer == "-2.5"


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


def test_svamp_not_utf8_names_file_and_line(tmp_path):
    (tmp_path / "SVAMP.json").write_bytes(b'[\n{"Body": "caf\xe9"}\n]')
    with pytest.raises(ValueError, match=r"SVAMP\.json:2: not UTF-8 text .*re-save"):
        load_svamp(tmp_path)


@pytest.mark.parametrize("text", ['{"a": 1}', "[1, 2]"])
def test_svamp_not_a_list_of_items(tmp_path, text):
    (tmp_path / "SVAMP.json").write_text(text)
    with pytest.raises(ValueError, match=r"SVAMP\.json: expected a JSON list of objects"):
        load_svamp(tmp_path)


def test_svamp_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="SVAMP.json"):
        load_svamp(tmp_path, "train")


def test_unknown_task_and_split(shared_data_dir):
    with pytest.raises(ValueError, match="unknown task"):
        load_task("mmlu", "train")
    with pytest.raises(ValueError, match="split"):
        load_gsm8k(shared_data_dir / "gsm8k", "validation")


def test_an_empty_gsm8k_file_is_named(tmp_path):
    from jaxrl_reason.data.gsm8k import load_gsm8k

    (tmp_path / "test.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"test.jsonl holds no questions"):
        load_gsm8k(tmp_path, "test")
