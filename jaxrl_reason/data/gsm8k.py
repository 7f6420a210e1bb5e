"""GSM8K (Cobbe et al. 2021) from the official jsonl files; the library never downloads.

Each line is one JSON object with string fields `question` and `answer` (the labelled
solution). The gold answer is the text after the solution's first `####` (`answer_line`,
the grader's one rule), which must be exactly one number (`#### 18`, `#### 1,000`,
`#### -2.5`). A file that breaks any of this, or is not UTF-8, is rejected with a
`ValueError` naming `file:line` and the fix: a data file that cannot be graded is never
loaded silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from jaxrl_reason.data.example import Example
from jaxrl_reason.rewards.grading import answer_line, canonical, parse_answer

GSM8K_SPLITS = ("train", "test")
GSM8K_HOWTO = (
    "GSM8K is not downloaded by jaxrl_reason: copy train.jsonl and test.jsonl from "
    "grade_school_math/data/ in https://github.com/openai/grade-school-math into this "
    "directory and pass it as data_dir."
)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(1-based line, object) per non-blank line; a bad line raises naming `file:line`."""
    path = Path(path)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path}:{lineno}: not UTF-8 text (byte {e.start} of the line); "
                    "re-save the file as UTF-8, or copy the original again"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:{lineno}: malformed JSON line ({e.msg}); fix or remove the line"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}; "
                    "each line must be one object"
                )
            yield lineno, row


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Parses a jsonl file, naming the file and the 1-based line of any bad line."""
    return [row for _, row in iter_jsonl(path)]


def gsm8k_file(data_dir: str | os.PathLike, split: str) -> Path:
    """The path of a split's file, with a helpful error when it is missing."""
    if split not in GSM8K_SPLITS:
        raise ValueError(f"unknown GSM8K split {split!r}; choose one of {GSM8K_SPLITS}")
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"GSM8K file not found: {path}. {GSM8K_HOWTO}")
    return path


def gold_answer(solution: str, where: str) -> str:
    """The canonical gold answer of a labelled solution; `where` ("file:line") names it."""
    line = answer_line(solution)
    if line is None:
        raise ValueError(
            f"{where}: the solution has no '#### answer' line; end it with '#### <number>'"
        )
    value = parse_answer(line)
    if value is None:
        raise ValueError(
            f"{where}: gold answer {line.strip()!r} after '####' is not a number the grader "
            "can compare; write one plain number, e.g. '#### 18' or '#### 1,000'"
        )
    return canonical(value)


def load_gsm8k(data_dir: str | os.PathLike, split: str) -> list[Example]:
    """Loads `{data_dir}/{split}.jsonl`; the answer is the number after the first `####`."""
    path = gsm8k_file(data_dir, split)
    examples = []
    for i, (lineno, row) in enumerate(iter_jsonl(path)):
        question, solution = row.get("question"), row.get("answer")
        if not isinstance(question, str) or not isinstance(solution, str):
            raise ValueError(
                f"{path}:{lineno}: the record lacks string 'question' and 'answer' fields; "
                'each line must be {"question": "...", "answer": "... #### <number>"}'
            )
        answer = gold_answer(solution, f"{path}:{lineno}")
        examples.append(
            Example(
                id=f"gsm8k-{split}-{i}", question=question.strip(), solution=solution, answer=answer
            )
        )
    if not examples:
        raise ValueError(f"{path} holds no questions (it is empty); restore it. {GSM8K_HOWTO}")
    return examples
