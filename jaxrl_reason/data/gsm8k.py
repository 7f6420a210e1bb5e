"""GSM8K (Cobbe et al. 2021) from the official jsonl files; the library never downloads."""

from __future__ import annotations

import json
import os
from pathlib import Path

from jaxrl_reason.data.example import Example
from jaxrl_reason.rewards.grading import extract_answer

GSM8K_SPLITS = ("train", "test")
GSM8K_HOWTO = (
    "GSM8K is not downloaded by jaxrl_reason: copy train.jsonl and test.jsonl from "
    "grade_school_math/data/ in https://github.com/openai/grade-school-math into this "
    "directory and pass it as data_dir."
)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Parses a jsonl file, naming the file and the 1-based line of any bad line."""
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row)}")
            rows.append(row)
    return rows


def gsm8k_file(data_dir: str | os.PathLike, split: str) -> Path:
    """The path of a split's file, with a helpful error when it is missing."""
    if split not in GSM8K_SPLITS:
        raise ValueError(f"unknown GSM8K split {split!r}; choose one of {GSM8K_SPLITS}")
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"GSM8K file not found: {path}. {GSM8K_HOWTO}")
    return path


def load_gsm8k(data_dir: str | os.PathLike, split: str) -> list[Example]:
    """Loads `{data_dir}/{split}.jsonl`; the answer is the text after `####`."""
    path = gsm8k_file(data_dir, split)
    examples = []
    for i, row in enumerate(read_jsonl(path)):
        question, solution = row.get("question"), row.get("answer")
        if not isinstance(question, str) or not isinstance(solution, str):
            raise ValueError(f"{path}: record {i + 1} lacks string 'question' and 'answer' fields")
        if "####" not in solution:
            raise ValueError(f"{path}: record {i + 1} has no '#### answer' line")
        raw = solution.rsplit("####", 1)[1].strip().replace(",", "")
        answer = extract_answer("#### " + raw) or raw
        examples.append(
            Example(
                id=f"gsm8k-{split}-{i}", question=question.strip(), solution=solution, answer=answer
            )
        )
    return examples
