"""`Policy`: what every algorithm needs to sample from and evaluate a language model."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

from jax.sharding import Mesh

from jaxrl_reason.data.example import Example
from jaxrl_reason.data.prompts import PromptFormat
from jaxrl_reason.data.tokenizer import Tokenizer
from jaxrl_reason.evaluation.evaluate import EvalConfig, Scorer, evaluate_policy, sampling_config
from jaxrl_reason.model import ModelConfig
from jaxrl_reason.sampling import Sampler, SamplingConfig
from jaxrl_reason.sampling.text import TextSampler


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

    def with_prompt_format(self, prompt_format: PromptFormat) -> Policy:
        """This policy asked in `prompt_format` (e.g. RCRL's, conditioned on a return token).

        The two share the text sampler, and so its compiled programs: it does not depend
        on the prompt format.
        """
        other = dataclasses.replace(self, prompt_format=prompt_format)
        other.text_sampler = self.text_sampler
        return other

    def sampling_config(
        self, num_samples: int, temperature: float, max_new_tokens: int
    ) -> SamplingConfig:
        return sampling_config(num_samples, temperature, max_new_tokens, self.tokenizer.eos_ids)

    def evaluate(
        self,
        params: Any,
        examples: Sequence[Example],
        cfg: EvalConfig,
        scorer: Scorer | None = None,
        show_progress: bool = False,
    ) -> dict[str, Any]:
        return evaluate_policy(
            self.text_sampler,
            params,
            examples,
            self.prompt_format,
            self.tokenizer.eos_ids,
            cfg,
            scorer,
            show_progress,
        )
