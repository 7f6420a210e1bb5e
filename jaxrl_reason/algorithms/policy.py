"""`Policy`: what every algorithm needs to sample from and evaluate a language model."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh

from jaxrl_reason.data.example import Example
from jaxrl_reason.data.prompts import PromptFormat
from jaxrl_reason.data.tokenizer import Tokenizer
from jaxrl_reason.evaluation.evaluate import (
    EvalConfig,
    Scorer,
    evaluate_policy,
    generate,
    sampling_config,
)
from jaxrl_reason.model import ModelConfig
from jaxrl_reason.sampling import Sampler, SamplingConfig
from jaxrl_reason.sampling.text import TextSampler
from jaxrl_reason.training.checkpointing import Checkpointer


@dataclasses.dataclass(eq=False)
class Policy:
    """A model shape, its tokenizer and prompt format, and where it runs (`mesh`)."""

    model_config: ModelConfig
    tokenizer: Tokenizer
    prompt_format: PromptFormat
    mesh: Mesh | None = None

    def __post_init__(self) -> None:
        if self.tokenizer.vocab_size > self.model_config.vocab_size:
            raise ValueError(
                f"the tokenizer has {self.tokenizer.vocab_size} tokens but the model's "
                f"vocab_size is {self.model_config.vocab_size}; set model vocab_size >= it"
            )

    @functools.cached_property
    def text_sampler(self) -> TextSampler:
        sampler = Sampler(self.model_config, pad_id=self.tokenizer.pad_id, mesh=self.mesh)
        return TextSampler(sampler, self.tokenizer)

    def sampling_config(
        self, num_samples: int, temperature: float, max_new_tokens: int
    ) -> SamplingConfig:
        return sampling_config(num_samples, temperature, max_new_tokens, self.tokenizer.eos_id)

    def sample(
        self,
        params: Any,
        examples: Sequence[Example],
        cfg: SamplingConfig,
        rng: jax.Array,
        prompts_per_call: int = 64,
    ) -> list[list[str]]:
        """[B][K] completions (cut at the prompt format's stop sequences)."""
        prompts = [self.prompt_format.format(ex.question) for ex in examples]
        return generate(
            self.text_sampler,
            params,
            prompts,
            cfg,
            rng,
            prompts_per_call,
            self.prompt_format.stop_sequences,
        )

    def evaluate(
        self,
        params: Any,
        examples: Sequence[Example],
        cfg: EvalConfig,
        scorer: Scorer | None = None,
    ) -> dict[str, Any]:
        return evaluate_policy(
            self.text_sampler,
            params,
            examples,
            self.prompt_format,
            self.tokenizer.eos_id,
            cfg,
            scorer,
        )


def save_policy(workdir: str | os.PathLike, params: Any, meta: dict[str, Any]) -> int:
    """Append `params` to the run's `policy/` checkpoints (one step per finished phase).

    Returns the step it was saved as; `jaxrl-reason eval --step N` reads it back.
    """
    with Checkpointer(os.path.join(workdir, "policy"), keep=1000, async_save=False) as ckpt:
        latest = ckpt.latest_step()
        step = 0 if latest is None else latest + 1
        ckpt.save(step, params, meta, force=True)
    return step


def load_policy(
    workdir: str | os.PathLike, target: Any, step: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """(params, meta) of the run's newest (or `step`) saved policy onto `target`'s layout."""
    directory = os.path.join(workdir, "policy")
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"no saved policy in {directory}: train the run first "
            "(`jaxrl-reason train ...` or `jaxrl-reason demo`)"
        )
    with Checkpointer(directory, keep=1000, async_save=False) as ckpt:
        return ckpt.restore(target, step)
