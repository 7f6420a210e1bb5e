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
from jaxrl_reason.validation import NON_NEGATIVE, POSITIVE, setting, validate


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """How an algorithm samples its rollouts: the settings every RL method's config has.

    Subclasses add their own fields (and may change these defaults; a changed default
    keeps the range declared here). This `__post_init__` checks every field of the
    subclass too (`validation.validate`: types, and the ranges declared with `setting`);
    a subclass's own `__post_init__` calls it first, then checks how its fields relate.
    """

    num_samples: int = setting(4, POSITIVE)  # K samples per question
    temperature: float = setting(0.7, NON_NEGATIVE, hint="0 = greedy")
    max_new_tokens: int = setting(256, POSITIVE)
    prompts_per_call: int = setting(64, POSITIVE)  # questions per sampler call (x K rows)
    seed: int = setting(0, NON_NEGATIVE)

    def __post_init__(self) -> None:
        validate(self)

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
