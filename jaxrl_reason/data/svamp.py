"""SVAMP (Patel et al. 2021) with GSM8K-format solutions and a fixed 700/300 split.

- question: `Body` and `Question` joined. When the body lacks final punctuation and its
  last sentence is a condition ("If he had $ 4 at the start"), they are joined with a
  comma and the question is lower-cased at its start ("..., how much ..."); otherwise a
  period is added. SVAMP's spaced `$ 4` is kept as is.
- answer: the canonical number string of `Answer` (5.0 -> "5").
- solution: one line per operation of `Equation`, innermost first, e.g.
  `( ( 9.0 - 2.0 ) * 3.0 )` -> "9 - 2 = <<9-2=7>>7\n7 * 3 = <<7*3=21>>21\n#### 21",
  each result computed with the safe calculator. The `####` line always holds `answer`.
- split: SVAMP ships none. Items are permuted with `numpy.random.default_rng(0)` in file
  order; the first 700 are "train", the remaining 300 "test"; "all" keeps file order.

One item's `Answer` disagrees with its `Equation` (`SVAMP_KNOWN_ERRORS`); the dataset's
`Answer` is kept as the gold answer so results stay comparable with published numbers.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from jaxrl_reason.data.example import Example
from jaxrl_reason.rewards.calculator import evaluate
from jaxrl_reason.rewards.grading import canonical

SVAMP_SPLITS = ("train", "test", "all")
SVAMP_NUM_TRAIN = 700
SVAMP_SPLIT_SEED = 0
SVAMP_KNOWN_ERRORS = ("chal-680",)  # ( ( 4 - 2 ) + 3 ) labelled 1
SVAMP_HOWTO = (
    "SVAMP is not downloaded by jaxrl_reason: copy SVAMP.json from "
    "https://github.com/arkilpatel/SVAMP and pass its path or its directory."
)
_CONDITION_STARTS = ("if ", "when ", "after ", "since ", "now if ")


def join_question(body: str, question: str) -> str:
    """Joins SVAMP's Body and Question into one question string."""
    body, question = body.strip(), question.strip()
    if not body:
        return question
    if body[-1] in ".?!":
        return f"{body} {question}"
    last_sentence = body.rsplit(". ", 1)[-1].lower()
    if last_sentence.startswith(_CONDITION_STARTS) and question:
        return f"{body}, {question[0].lower()}{question[1:]}"
    return f"{body}. {question}"


def _fmt(value: Fraction) -> str:
    return canonical(value)


def equation_steps(equation: str) -> tuple[list[str], Fraction]:
    """GSM8K-style step lines for a fully parenthesised SVAMP equation, and its value."""
    tokens = equation.replace("(", " ( ").replace(")", " ) ").split()
    steps: list[str] = []
    pos = 0

    def operand() -> Fraction:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            value = expression()
            if tokens[pos] != ")":
                raise ValueError(f"unbalanced parentheses in SVAMP equation {equation!r}")
            pos += 1
            return value
        value = evaluate(tok)
        if value is None:
            raise ValueError(f"bad number {tok!r} in SVAMP equation {equation!r}")
        return value

    def expression() -> Fraction:
        nonlocal pos
        value = operand()
        while pos < len(tokens) and tokens[pos] in "+-*/":
            op = tokens[pos]
            pos += 1
            rhs = operand()
            text = f"{_fmt(value)}{op}{_fmt(rhs)}"
            result = evaluate(text)
            if result is None:
                raise ValueError(f"cannot evaluate step {text!r} of {equation!r}")
            steps.append(
                f"{_fmt(value)} {op} {_fmt(rhs)} = <<{text}={_fmt(result)}>>{_fmt(result)}"
            )
            value = result
        return value

    value = expression()
    if pos != len(tokens):
        raise ValueError(f"trailing tokens in SVAMP equation {equation!r}")
    return steps, value


def _svamp_path(data_dir_or_file: str | os.PathLike) -> Path:
    path = Path(data_dir_or_file)
    if path.is_dir():
        path = path / "SVAMP.json"
    if not path.is_file():
        raise FileNotFoundError(f"SVAMP file not found: {path}. {SVAMP_HOWTO}")
    return path


def _read_items(path: Path) -> list[dict]:
    """SVAMP.json's list of items; a file that is not UTF-8 JSON raises naming `file:line`."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8, "
            "or copy SVAMP.json again from https://github.com/arkilpatel/SVAMP"
        ) from None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}:{e.lineno}: malformed JSON ({e.msg}); restore the file or copy it again"
        ) from None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ValueError(f"{path}: expected a JSON list of objects (SVAMP.json); {SVAMP_HOWTO}")
    return items


def load_svamp(data_dir_or_file: str | os.PathLike, split: str = "all") -> list[Example]:
    """Loads SVAMP.json (a file or its directory) as `Example`s of one split."""
    if split not in SVAMP_SPLITS:
        raise ValueError(f"unknown SVAMP split {split!r}; choose one of {SVAMP_SPLITS}")
    path = _svamp_path(data_dir_or_file)
    items = _read_items(path)
    examples = []
    for i, item in enumerate(items):
        try:
            steps, _ = equation_steps(str(item["Equation"]))
            answer = canonical(Fraction(str(item["Answer"])))
            question = join_question(str(item["Body"]), str(item["Question"]))
        except (KeyError, ValueError, IndexError) as e:
            raise ValueError(
                f"{path}: item {i} ({item.get('ID', '?')}) is malformed: {e}"
            ) from None
        solution = "\n".join([*steps, f"#### {answer}"])
        examples.append(
            Example(
                id=f"svamp-{item.get('ID', i)}", question=question, solution=solution, answer=answer
            )
        )
    if not examples:
        raise ValueError(f"{path} holds no questions (an empty list); restore it")
    if split == "all":
        return examples
    order = np.random.default_rng(SVAMP_SPLIT_SEED).permutation(len(examples))
    chosen = order[:SVAMP_NUM_TRAIN] if split == "train" else order[SVAMP_NUM_TRAIN:]
    return [examples[j] for j in chosen]
