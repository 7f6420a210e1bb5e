"""The RL algorithms an experiment can name, and how a name becomes an `Algorithm`.

A name is a registered algorithm, optionally with a variant after a colon: "ei", "rcrl",
"orm", "ppo" (with `PPOConfig.reward`) or "ppo:dense" (PPO with that reward), and the
GRPO family "grpo", "dr_grpo", "rloo", "gspo", "dapo" (each also with ":<reward>"). Each
registration has a gin-configurable settings class; when an experiment passes no settings
for an algorithm, the class is built under gin, so `ExpertIterationConfig.num_rounds = 4`
in a config file reaches it. A new algorithm is one `register` call.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

from jaxrl_reason.algorithms.expert_iteration import ExpertIteration, ExpertIterationConfig
from jaxrl_reason.algorithms.grpo import GRPO, GRPO_VARIANTS, GRPOConfig
from jaxrl_reason.algorithms.orm_training import ORMConfig, ORMTraining
from jaxrl_reason.algorithms.ppo import PPO, PPO_REWARDS, PPOConfig
from jaxrl_reason.algorithms.rcrl import RCRL, RCRLConfig
from jaxrl_reason.algorithms.rounds import Algorithm


@dataclasses.dataclass(frozen=True)
class Registration:
    config: Callable[[], Any]  # its settings, built under gin (a gin-configurable dataclass)
    build: Callable[[Any, str | None], Algorithm]  # (settings, variant or None) -> algorithm
    variants: tuple[str, ...] = ()


REGISTRY: dict[str, Registration] = {}


def register(
    name: str,
    config: Callable[[], Any],
    build: Callable[[Any, str | None], Algorithm],
    variants: tuple[str, ...] = (),
) -> None:
    """Make `name` (and `name:variant` for each of `variants`) runnable by experiments."""
    if name in REGISTRY or ":" in name:
        raise ValueError(f"algorithm name {name!r} is taken or has a ':'")
    REGISTRY[name] = Registration(config, build, variants)


def names() -> list[str]:
    """Every name `build_algorithm` accepts."""
    return [n for k, r in REGISTRY.items() for n in (k, *(f"{k}:{v}" for v in r.variants))]


def build_algorithm(name: str, configs: Mapping[str, Any] | None = None) -> Algorithm:
    """The algorithm `name` with `configs[base name]`, or its settings class built by gin."""
    base, _, variant = name.partition(":")
    registration = REGISTRY.get(base)
    if registration is None or (variant and variant not in registration.variants):
        raise ValueError(f"unknown algorithm {name!r}; choose from {names()}")
    cfg = (configs or {}).get(base)
    return registration.build(registration.config() if cfg is None else cfg, variant or None)


register("ei", ExpertIterationConfig, lambda cfg, _: ExpertIteration(cfg))
register("rcrl", RCRLConfig, lambda cfg, _: RCRL(cfg))
register("orm", ORMConfig, lambda cfg, _: ORMTraining(cfg))
register(
    "ppo",
    PPOConfig,
    lambda cfg, reward: PPO(cfg if reward is None else dataclasses.replace(cfg, reward=reward)),
    variants=PPO_REWARDS,
)


def _grpo_build(variant: str) -> Callable[[Any, str | None], Algorithm]:
    def build(cfg: GRPOConfig, reward: str | None) -> Algorithm:
        if cfg.variant != variant:
            raise ValueError(
                f"algorithm {variant!r} was given a GRPOConfig with variant={cfg.variant!r}; "
                f"pass GRPOConfig(variant={variant!r}, ...)"
            )
        return GRPO(cfg if reward is None else dataclasses.replace(cfg, reward=reward))

    return build


# The GRPO family: one settings class, one name per variant ("dapo", "dapo:dense" ...). A
# variant built under gin reads every `GRPOConfig.*` binding but its own `variant`.
for _variant in GRPO_VARIANTS:
    register(
        _variant,
        functools.partial(GRPOConfig, variant=_variant),
        _grpo_build(_variant),
        variants=PPO_REWARDS,
    )
