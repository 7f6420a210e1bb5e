"""How a round samples: the settings every RL method shares (`RolloutConfig`), and where
its randomness comes from. A round's questions and sampling key derive from (seed, round
index) alone, so a resumed run draws exactly what an uninterrupted one drew."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from jaxrl_reason.algorithms.policy import Policy
from jaxrl_reason.data.example import Example
from jaxrl_reason.sampling import SamplingConfig


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """How an algorithm samples its rollouts: the settings every RL method's config has.

    Subclasses add their own fields (and may change these defaults) and validate them in
    their own `__post_init__`, after calling this one.
    """

    num_samples: int = 4  # K samples per question
    temperature: float = 0.7
    max_new_tokens: int = 256
    prompts_per_call: int = 64  # questions per sampler call (x K rows)
    seed: int = 0

    def __post_init__(self) -> None:
        for field in ("num_samples", "max_new_tokens", "prompts_per_call"):
            if not getattr(self, field) > 0:
                raise ValueError(
                    f"{type(self).__name__}.{field} must be > 0, got {getattr(self, field)}"
                )
        if self.temperature < 0:
            raise ValueError(
                f"{type(self).__name__}.temperature must be >= 0, got {self.temperature}"
            )

    def sampling(self, policy: Policy) -> SamplingConfig:
        return policy.sampling_config(self.num_samples, self.temperature, self.max_new_tokens)


def draw_questions(
    examples: Sequence[Example],
    n: int | None,
    seed: int,
    index: int | tuple[int, ...],
    in_order: bool = True,
) -> list[Example]:
    """Round `index`'s `n` questions, drawn by `default_rng([seed, *index])` (an index
    tuple names a further draw within a round, e.g. DAPO's dynamic sampling).

    `in_order` (EI, RCRL, the ORM): a subset without replacement, in the original order, or
    every question when `n` is None or at least their number. Otherwise (PPO): `n` draws in
    random order, with replacement only when `n` exceeds the number of questions.
    """
    if n is None or (in_order and n >= len(examples)):
        return list(examples)
    index = index if isinstance(index, tuple) else (index,)
    idx = np.random.default_rng([seed, *index]).choice(len(examples), n, replace=n > len(examples))
    return [examples[i] for i in (np.sort(idx) if in_order else idx)]


def round_key(seed: int, index: int) -> jax.Array:
    """The sampling key of round `index`."""
    return jax.random.fold_in(jax.random.key(seed), index)
