"""Prompt formats, few-shot exemplars and stop sequences, in one place.

The default is the prototype's zero-shot format `"Q: {question}\\nA: "` with the GSM8K
solution as the response. Few-shot prompts (for a pretrained model with no SFT) put k
train exemplars `"Q: ...\\nA: <solution>\\n\\n"` before it. Generation stops at the
first stop sequence (`"\\nQ:"`: the model starts a new question; `"\\n\\n\\n"`: it rambles).

For an instruct model, `chat` asks the question as a user turn of the model's own chat
template (with its generation prompt), rendered once into a plain `PromptFormat`, so a
run's run.json records the exact prompt text.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import gin

from jaxrl_reason.data.example import Example

if TYPE_CHECKING:
    from jaxrl_reason.data.tokenizer import Tokenizer

STOP_SEQUENCES = ("\nQ:", "\n\n\n")
log = logging.getLogger(__name__)


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


# Two stand-in questions: the template is rendered with each, and must differ only there.
_STAND_INS = ("QUESTION_7f3a9c", "QUESTION_b21e04")


def _braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")  # a literal part of a str.format template


def chat(tokenizer: Tokenizer, system: str | None = None, instruction: str = "") -> PromptFormat:
    """The question as a user turn in the model's chat template, with the generation prompt.

    The user turn is the question, then (after a blank line) `instruction` when given;
    `system` is a system turn before it (None: whatever the template does without one,
    e.g. SmolLM2's default system prompt). The prompt text is exactly
    `apply_chat_template(messages, add_generation_prompt=True)`, and `encode` adds no
    second BOS to it. Stop sequences: every eos token's text and the template's end of
    turn (the text after an assistant message), for a turn that ends in a token that is
    not among the eos ids.
    """

    def render(question: str, answer: str | None = None) -> str:
        content = f"{question}\n\n{instruction}" if instruction else question
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": content})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        return tokenizer.apply_chat_template(messages, add_generation_prompt=answer is None)

    first, second = (render(q) for q in _STAND_INS)
    if first.count(_STAND_INS[0]) != 1 or first.replace(*_STAND_INS) != second:
        raise ValueError(
            f"the chat template of {tokenizer.path} does not write the question verbatim "
            "once, so it cannot be a fixed prompt format; use prompt_format kind 'zero_shot'"
        )
    head, tail = first.split(_STAND_INS[0])
    bos = tokenizer.bos_id
    adds_bos = bos is not None and tokenizer.encode("")[:1] == [bos]
    if adds_bos and not head.startswith(tokenizer.token_text(bos)):
        log.warning(
            "the chat template of %s does not write the BOS its tokenizer adds: chat "
            "prompts get one, which transformers' apply_chat_template would not add",
            tokenizer.path,
        )
    stops = [tokenizer.token_text(i) for i in tokenizer.eos_ids]
    try:
        after = render(_STAND_INS[0], _STAND_INS[1]).partition(_STAND_INS[1])[2].split()
    except ValueError:  # a template that refuses a finished turn: the eos texts only
        after = []
    stops += after[:1]
    return PromptFormat(
        template=_braces(head) + "{question}" + _braces(tail),
        stop_sequences=tuple(dict.fromkeys(s for s in stops if s)),
    )


@gin.configurable
def prompt_format(
    kind: str = "zero_shot",
    exemplars: Sequence[Example] = (),
    num_shots: int = 4,
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
    system: str | None = None,
    instruction: str = "",
) -> PromptFormat:
    """The prompt format chosen by config: `kind` is "zero_shot", "few_shot" or "chat".

    For "few_shot", pass train `exemplars` (the caller loads the task's train split). For
    "chat" (instruct models), pass the model's HF `tokenizer`; `system` and `instruction`
    are `chat`'s.
    """
    if kind == "zero_shot":
        return zero_shot()
    if kind == "few_shot":
        return few_shot(exemplars, num_shots=num_shots, seed=seed)
    if kind == "chat":
        if tokenizer is None:
            raise ValueError(
                "prompt format 'chat' renders the model's chat template: pass tokenizer="
            )
        return chat(tokenizer, system=system, instruction=instruction)
    raise ValueError(f"unknown prompt format kind {kind!r}; use 'zero_shot', 'few_shot' or 'chat'")
