"""Prompt formats, few-shot exemplars and stop sequences, in one place.

The default is the prototype's zero-shot format `"Q: {question}\\nA: "` with the GSM8K
solution as the response. Few-shot prompts (for a pretrained model with no SFT) put k
train exemplars `"Q: ...\\nA: <solution>\\n\\n"` before it. Generation stops at the
first stop sequence (`"\\nQ:"`: the model starts a new question; `"\\n\\n\\n"`: it rambles).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import gin

from jaxrl_reason.data.example import Example

STOP_SEQUENCES = ("\nQ:", "\n\n\n")


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """How a question becomes a prompt: `prefix + template.format(question=...)`."""

    template: str = "Q: {question}\nA: "
    prefix: str = ""
    stop_sequences: tuple[str, ...] = STOP_SEQUENCES

    def format(self, question: str) -> str:
        """The prompt text for `question`."""
        return self.prefix + self.template.format(question=question)

    def exemplar(self, example: Example) -> str:
        """One solved example in this format, as used in few-shot prefixes."""
        return self.template.format(question=example.question) + example.solution + "\n\n"

    def few_shot(self, examples: Sequence[Example]) -> PromptFormat:
        """This format with `examples` (all of them, in order) as solved exemplars."""
        prefix = "".join(self.exemplar(ex) for ex in examples)
        return dataclasses.replace(self, prefix=prefix)


def zero_shot() -> PromptFormat:
    """`"Q: {question}\\nA: "` with no exemplars."""
    return PromptFormat()


def few_shot(examples: Sequence[Example], num_shots: int = 4, seed: int = 0) -> PromptFormat:
    """Zero-shot format plus `num_shots` exemplars drawn from `examples` by `seed`."""
    if num_shots > len(examples):
        raise ValueError(f"asked for {num_shots} exemplars but only {len(examples)} examples given")
    chosen = random.Random(seed).sample(list(examples), num_shots)
    return zero_shot().few_shot(chosen)


@gin.configurable
def prompt_format(
    kind: str = "zero_shot",
    exemplars: Sequence[Example] = (),
    num_shots: int = 4,
    seed: int = 0,
) -> PromptFormat:
    """The prompt format chosen by config: `kind` is "zero_shot" or "few_shot".

    For "few_shot", pass train `exemplars` (the caller loads the task's train split).
    """
    if kind == "zero_shot":
        return zero_shot()
    if kind == "few_shot":
        return few_shot(exemplars, num_shots=num_shots, seed=seed)
    raise ValueError(f"unknown prompt format kind {kind!r}; use 'zero_shot' or 'few_shot'")
