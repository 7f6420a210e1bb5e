"""The PPO actor-critic: a policy LM with a value head, shared trunk or separate critic.

Train params are `{"policy": ...}` (shared: the LM's params plus `value_head`) or
`{"policy": ..., "critic": ...}` (separate: a second trunk, initialised from the policy,
with its own value head). `policy_params` strips the value head so the sampler, the
evaluation and `save_policy` see a plain LM.

Frames: everything is in the sequence frame of `rollouts.sequence_batch` ([N, T], slot t
holds response token t). `logprobs[:, t]` is log pi(token t | tokens < t), read from the
logits at t - 1; `values[:, t]` is the value head at t - 1, the value of the state before
token t (the convention of `advantages.gae`). Slot 0 (BOS, never a response token) is 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxrl_reason.algorithms.ppo_objective import entropy_from_logits, logprobs_from_logits
from jaxrl_reason.model import ModelConfig, Transformer, init_params, lora, param_logical_axes
from jaxrl_reason.parallel import logical_shardings
from jaxrl_reason.parallel.rules import Rules
from jaxrl_reason.training.losses import dropout_rngs, model_inputs

CRITICS = ("shared", "separate")
VALUE_KEYS = ("value_head", "value_head_bias")


def _shift(x: jax.Array) -> jax.Array:
    """[N, T-1] predictions for tokens 1..T-1 -> the [N, T] sequence frame (0 at slot 0)."""
    return jnp.pad(x, ((0, 0), (1, 0)))


@dataclasses.dataclass(frozen=True)
class ActorCritic:
    config: ModelConfig
    critic: str = "shared"

    def __post_init__(self) -> None:
        if self.critic not in CRITICS:
            raise ValueError(f"critic={self.critic!r}; choose one of {CRITICS}")

    @property
    def policy_model(self) -> Transformer:
        heads = ("value",) if self.critic == "shared" else ()
        return Transformer(self.config, heads=heads)

    @property
    def critic_model(self) -> Transformer:
        return Transformer(self.config, heads=("value",))

    def init(self, lm_params: Any, rng: jax.Array) -> dict[str, Any]:
        """Train params from a plain LM's params: the value head starts at zero (from
        `init_params`), a separate critic's trunk is a copy of the policy's."""
        head = init_params(self.config, rng, heads=("value",))
        value_head = {k: head[k] for k in VALUE_KEYS}
        if self.critic == "shared":
            return {"policy": {**lm_params, **value_head}}
        critic = jax.tree.map(jnp.copy, {**lm_params, **value_head})
        return {"policy": dict(lm_params), "critic": critic}

    @staticmethod
    def policy_params(params: dict[str, Any]) -> dict[str, Any]:
        """The plain LM params (value head dropped)."""
        return {k: v for k, v in params["policy"].items() if k not in VALUE_KEYS}

    def param_shardings(self, mesh: Mesh, rules: Rules | None = None) -> dict[str, Any]:
        policy_heads = ("value",) if self.critic == "shared" else ()
        out = {
            "policy": logical_shardings(param_logical_axes(self.config, policy_heads), mesh, rules)
        }
        if self.critic == "separate":
            axes = param_logical_axes(self.config, ("value",))
            out["critic"] = logical_shardings(axes, mesh, rules)
        return out

    def forward(
        self, params: dict[str, Any], batch: dict[str, jax.Array], rng: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(logprobs, values, entropy), each [N, T] float32 in the sequence frame; `rng`
        drives LoRA's adapter dropout (None: none)."""
        tokens, positions, input_mask = model_inputs(batch)
        rngs = None if rng is None else dropout_rngs(self.config, rng)
        out = self.policy_model.apply(
            {"params": params["policy"]}, tokens, positions, input_mask, rngs=rngs
        )
        logits = out.logits[:, :-1]
        logprobs = _shift(logprobs_from_logits(logits, tokens[:, 1:]))
        entropy = _shift(entropy_from_logits(logits))
        if self.critic == "shared":
            values = out.heads["value"]
        else:
            critic = self.critic_model.apply(
                {"params": params["critic"]}, tokens, positions, input_mask, return_logits=False
            )
            values = critic.heads["value"]
        return logprobs, _shift(values[:, :-1]), entropy

    def reference_logprobs(
        self, ref_params: Any, batch: dict[str, jax.Array], params: Any = None
    ) -> jax.Array:
        """log pi_ref(token t | tokens < t) [N, T] of the frozen reference LM: `ref_params`,
        or with LoRA (None) the base inside the train `params`, adapters off."""
        lm = None if params is None else self.policy_params(params)
        return reference_logprobs(self.config, ref_params, lm, batch)


def sequence_logprobs(
    config: ModelConfig,
    params: Any,
    batch: dict[str, jax.Array],
    entropy: bool = False,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """(log pi(token t | tokens < t), entropy or None), [N, T] float32 in the sequence
    frame, of the plain LM `params` (no value head); `rng`: LoRA's adapter dropout."""
    tokens, positions, input_mask = model_inputs(batch)
    rngs = None if rng is None else dropout_rngs(config, rng)
    out = Transformer(config).apply({"params": params}, tokens, positions, input_mask, rngs=rngs)
    logits = out.logits[:, :-1]
    logprobs = _shift(logprobs_from_logits(logits, tokens[:, 1:]))
    return logprobs, _shift(entropy_from_logits(logits)) if entropy else None


def reference_logprobs(
    config: ModelConfig, ref_params: Any, params: Any, batch: dict[str, jax.Array]
) -> jax.Array:
    """log pi_ref [N, T] in the sequence frame: of the LM `ref_params`, or, when it is None
    (LoRA), of the base inside the LM `params` with the adapters off: the same arrays in
    the same jitted function, no second copy of the weights."""
    if ref_params is None:
        config, ref_params = lora.adapters_off(config, params)
    return sequence_logprobs(config, ref_params, batch)[0]


def rl_start(config: ModelConfig, init_params: Any, seed: int) -> tuple[Any, Any]:
    """(start params, reference params) of a KL-regularised phase (PPO, GRPO) from pi_0.

    Full fine-tuning: pi_0 is both. LoRA: pi_0's adapters (e.g. trained by SFT) are folded
    into the base and fresh ones start (`lora.fold_adapters`), so the base with the
    adapters off is pi_0 and the reference is None (`reference_logprobs` reads the base).
    """
    if not lora.has_adapters(init_params):
        return init_params, init_params
    return lora.fold_adapters(config, init_params, jax.random.key(seed)), None
