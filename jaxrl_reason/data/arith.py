"""`arith`: a built-in, procedurally generated multi-step word-problem task.

Each problem follows one person's count of one kind of object through 1-4 operations
(+, -, ×, exact ÷), phrased with varied templates, names and objects. Solutions use the
GSM8K format, one line per operation, e.g.::

    Q: Tom has 3 apples. Ana gives Tom 4 more apples. Tom loses 2 apples.
       How many apples does Tom have now?
    A: Tom has 3 + 4 = <<3+4=7>>7 apples.
       Tom has 7 - 2 = <<7-2=5>>5 apples.
       #### 5

Guarantees:
- Deterministic per (seed, split, config): Python's `random.Random` seeded by a string.
- Train and test are disjoint by question text for ANY seeds: a question belongs to
  "test" iff a SHA-256 hash of its text falls in the first `test_fraction` of buckets,
  and each split keeps only its own questions. Questions are unique within a split.
- Operands are in [1, max_operand] (multipliers in [2, max_multiplier]), every
  intermediate result is an integer in [0, max_result].

At the defaults a trained 512-piece tokenizer gives questions of at most ~64 tokens and
solutions of at most ~96 tokens (tested), so a 1-5M-parameter model learns part of the
task from a few thousand examples in minutes on a CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random

from jaxrl_reason.data.example import Example

ARITH_SPLITS = ("train", "test")

NAMES = ("Tom", "Ana", "Sam", "Mia", "Ben", "Lily", "Max", "Zoe", "Leo", "Emma", "Jack", "Nina")
OBJECTS = (
    "apples",
    "books",
    "stickers",
    "marbles",
    "cards",
    "coins",
    "pens",
    "shells",
    "cookies",
    "stamps",
    "toys",
    "eggs",
)
_START = ("{name} has {a} {obj_a}.", "{name} starts with {a} {obj_a}.", "{name} owns {a} {obj_a}.")
_TEMPLATES = {
    "+": (
        "{name} buys {b} more {obj_b}.",
        "{other} gives {name} {b} more {obj_b}.",
        "{name} finds {b} more {obj_b}.",
    ),
    "-": (
        "{name} gives {b} {obj_b} to {other}.",
        "{name} loses {b} {obj_b}.",
        "{name} sells {b} {obj_b}.",
    ),
    "*": (
        "{name} gets {b} times as many {obj}.",
        "The number of {obj} {name} has grows {b} times.",
    ),
    "/": (
        "{name} puts the {obj} into {b} equal piles and keeps one pile.",
        "{name} splits the {obj} equally into {b} bags and keeps one bag.",
    ),
}
_QUESTION = ("How many {obj} does {name} have now?", "How many {obj} does {name} have in the end?")


@dataclasses.dataclass(frozen=True)
class ArithConfig:
    """Difficulty knobs of the arith task."""

    min_steps: int = 1
    max_steps: int = 4
    max_operand: int = 20
    max_multiplier: int = 5
    max_result: int = 200
    test_fraction: float = 0.1

    def __post_init__(self):
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self}")
        if self.max_operand < 2 or self.max_multiplier < 2 or self.max_result < self.max_operand:
            raise ValueError(
                f"need max_operand, max_multiplier >= 2, max_result >= max_operand: {self}"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


def split_of(question: str, test_fraction: float) -> str:
    """The split a question belongs to, by a hash of its text."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") / 2.0**64
    return "test" if bucket < test_fraction else "train"


def _operation(rng: random.Random, cur: int, cfg: ArithConfig) -> tuple[str, int, int]:
    """Picks a feasible (op, operand, result) keeping results integral and in range."""
    options = []
    if cur + 1 <= cfg.max_result:
        options.append("+")
    if cur >= 1:
        options.append("-")
    if cur >= 1 and cur * 2 <= cfg.max_result:
        options.append("*")
    divisors = [d for d in range(2, min(cur, cfg.max_operand) + 1) if cur % d == 0]
    if divisors:
        options.append("/")
    op = rng.choice(options)
    if op == "+":
        b = rng.randint(1, min(cfg.max_operand, cfg.max_result - cur))
        return op, b, cur + b
    if op == "-":
        b = rng.randint(1, min(cfg.max_operand, cur))
        return op, b, cur - b
    if op == "*":
        b = rng.randint(2, min(cfg.max_multiplier, cfg.max_result // cur))
        return op, b, cur * b
    b = rng.choice(divisors)
    return op, b, cur // b


def _noun(plural: str, count: int) -> str:
    """`apples` -> `apple` for a count of one (every object in OBJECTS ends in -s)."""
    return plural[:-1] if count == 1 else plural


def _problem(rng: random.Random, cfg: ArithConfig) -> tuple[str, str, int]:
    name, other = rng.sample(NAMES, 2)
    obj = rng.choice(OBJECTS)
    cur = rng.randint(1, cfg.max_operand)
    sentences = [rng.choice(_START).format(name=name, a=cur, obj_a=_noun(obj, cur))]
    lines = []
    for _ in range(rng.randint(cfg.min_steps, cfg.max_steps)):
        op, b, result = _operation(rng, cur, cfg)
        template = rng.choice(_TEMPLATES[op])
        sentences.append(template.format(name=name, other=other, obj=obj, obj_b=_noun(obj, b), b=b))
        noun = _noun(obj, result)
        lines.append(f"{name} has {cur}{op}{b}=<<{cur}{op}{b}={result}>>{result} {noun}.")
        cur = result
    sentences.append(rng.choice(_QUESTION).format(name=name, obj=obj))
    question = " ".join(s[0].upper() + s[1:] for s in sentences)
    return question, "\n".join([*lines, f"#### {cur}"]), cur


def generate_arith(
    split: str, num_examples: int, seed: int = 0, config: ArithConfig | None = None, **overrides
) -> list[Example]:
    """Generates `num_examples` unique problems of `split` ("train" or "test").

    `overrides` replace fields of `config` (e.g. `max_steps=2`).
    """
    if split not in ARITH_SPLITS:
        raise ValueError(f"unknown arith split {split!r}; choose one of {ARITH_SPLITS}")
    cfg = dataclasses.replace(config or ArithConfig(), **overrides)
    rng = random.Random(f"arith:{seed}:{split}")
    seen: set[str] = set()
    examples = []
    attempts = 0
    while len(examples) < num_examples:
        attempts += 1
        if attempts > 100 * num_examples + 1000:
            raise ValueError(
                f"could only make {len(examples)} unique {split} arith problems of "
                f"{num_examples} with {cfg}; ask for fewer or widen the config"
            )
        question, solution, answer = _problem(rng, cfg)
        if question in seen or split_of(question, cfg.test_fraction) != split:
            continue
        seen.add(question)
        ex_id = f"arith-{split}-{seed}-{len(examples)}"
        examples.append(Example(id=ex_id, question=question, solution=solution, answer=str(answer)))
    return examples
