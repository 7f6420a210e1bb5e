"""Task registry: `load_task(name, split, **kwargs)` for gsm8k, svamp and arith."""

from __future__ import annotations

from collections.abc import Callable

from jaxrl_reason.data.arith import generate_arith
from jaxrl_reason.data.example import Example
from jaxrl_reason.data.gsm8k import load_gsm8k
from jaxrl_reason.data.svamp import load_svamp


def _arith(split: str, num_examples: int | None = None, seed: int = 0, **kwargs) -> list[Example]:
    if num_examples is None:
        num_examples = 5000 if split == "train" else 500
    return generate_arith(split, num_examples, seed=seed, **kwargs)


TASKS: dict[str, Callable[..., list[Example]]] = {
    "gsm8k": lambda split, data_dir: load_gsm8k(data_dir, split),
    "svamp": lambda split, data_dir: load_svamp(data_dir, split),
    "arith": _arith,
}


def load_task(name: str, split: str, **kwargs) -> list[Example]:
    """Examples of task `name` and `split`.

    gsm8k: `data_dir` (with train.jsonl, test.jsonl). svamp: `data_dir` (SVAMP.json or
    its folder; splits train/test/all). arith: `num_examples` (default 5000 train, 500
    test), `seed`, and `ArithConfig` fields such as `max_steps`.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name](split, **kwargs)
