"""The GRPO family on the one loop: GRPO, Dr.GRPO, RLOO, GSPO and DAPO as settings of one
algorithm (an advantage estimator, a ratio, a loss aggregation), not five loops.

One iteration (a round of `rounds.run_rounds`):
  1. draw `prompts_per_iteration` questions and K = `num_samples` samples of each (a
     group) from the policy, keeping the sampler's log-probs of the tokens it drew;
     with `dynamic_sampling` (DAPO), draw more questions while fewer groups than that are
     informative (rewards not all equal), at most `max_sampling_rounds` extra draws;
  2. score every sample with the run's reward (sparse, dense, orm, dense_orm, through
     `rollouts.rollout_rewards`; a dense reward enters as its sum over the sample, so the
     group sees each sample's return), add DAPO's overlong penalty, and turn each group's
     returns into advantages (`advantages.group_advantages`);
  3. one forward pass of the frozen reference (skipped when beta = 0) gives the KL
     term's log-probs; `epochs_per_iteration` (mu) shuffled passes of minibatch updates of
     `grpo_objective.grpo_loss` follow, through the generic jitted, sharded train step.

The variants (paper; what changes):
  grpo     Shao et al. 2024: (r - mean) / (std + eps); token ratio clipped at 0.2; k3 KL
           in the loss (beta 0.04); per-sequence token mean, then mean over sequences.
  dr_grpo  Liu et al. 2025: r - mean, no std; token sums over a constant (the generation
           budget `max_new_tokens`), so long answers are not favoured; beta 0.
  rloo     Ahmadian et al. 2024: r - mean of the other K - 1 samples; beta 0.04.
  gspo     Zheng et al. 2025: GRPO's advantages; one length-normalised importance ratio
           per sequence, clipped per sequence at (3e-4, 4e-4); beta 0.
  dapo     Yu et al. 2025: clip-higher (0.2, 0.28), token-mean over the batch, the
           overlong penalty over the last 1/5 of the budget, dynamic sampling; beta 0.
Each setting left at None takes its variant's value (`VARIANT_DEFAULTS`); set any of them
to mix (e.g. `dr_grpo` with dynamic sampling).

The start policy is the frozen reference. Iteration i (from 0) draws its questions and
samples from (seed, i) and its extra draws from (seed, i, draw), so a resumed run
reproduces an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reason.algorithms.actor_critic import reference_logprobs, rl_start, sequence_logprobs
from jaxrl_reason.algorithms.advantages import group_advantages
from jaxrl_reason.algorithms.grpo_objective import grpo_loss
from jaxrl_reason.algorithms.policy_gradient import (
    LOSS_AGGREGATIONS,
    RATIO_LEVELS,
    minibatch_epochs,
)
from jaxrl_reason.algorithms.ppo import PPO_REWARDS, REWARD_TITLES
from jaxrl_reason.algorithms.rollouts import place_response_values, rollout_rewards, sequence_batch
from jaxrl_reason.algorithms.round_sampling import RolloutConfig, draw_questions, round_key
from jaxrl_reason.algorithms.rounds import (
    Algorithm,
    Improved,
    PhaseContext,
    PhaseState,
    RoundPlan,
)
from jaxrl_reason.model import Transformer
from jaxrl_reason.parallel import batch_shards
from jaxrl_reason.parallel.hosts import to_host
from jaxrl_reason.rewards.heuristic import sparse_reward
from jaxrl_reason.sampling.rollouts import Rollouts
from jaxrl_reason.training.optimizer import OptimizerConfig, make_optimizer, phase_optimizer
from jaxrl_reason.training.train_state import init_train_state
from jaxrl_reason.training.train_step import (
    make_train_step,
    model_param_shardings,
    shard_batch,
)
from jaxrl_reason.validation import NON_NEGATIVE, POSITIVE, setting

GRPO_VARIANTS = ("grpo", "dr_grpo", "rloo", "gspo", "dapo")
TITLES = {"grpo": "GRPO", "dr_grpo": "Dr.GRPO", "rloo": "RLOO", "gspo": "GSPO", "dapo": "DAPO"}

_GRPO = {
    "normalize_std": True,
    "leave_one_out": False,
    "ratio_level": "token",
    "loss_aggregation": "seq_mean_token_mean",
    "eps_low": 0.2,
    "eps_high": 0.2,
    "beta": 0.04,
    "dynamic_sampling": False,
    "overlong_buffer": 0,
    "mask_truncated": False,
}
VARIANT_DEFAULTS: dict[str, dict[str, Any]] = {
    "grpo": _GRPO,
    "dr_grpo": {
        **_GRPO,
        "normalize_std": False,
        "loss_aggregation": "seq_mean_token_sum",
        "beta": 0.0,
    },
    "rloo": {**_GRPO, "normalize_std": False, "leave_one_out": True},
    "gspo": {**_GRPO, "ratio_level": "sequence", "eps_low": 3e-4, "eps_high": 4e-4, "beta": 0.0},
    "dapo": {
        **_GRPO,
        "eps_high": 0.28,
        "loss_aggregation": "token_mean",
        "beta": 0.0,
        "dynamic_sampling": True,
        "overlong_buffer": "max_new_tokens // 5",
    },
}
VARIANT_FIELDS = tuple(_GRPO)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class GRPOConfig(RolloutConfig):
    """Settings of the GRPO family; None: the variant's value (`VARIANT_DEFAULTS`)."""

    variant: str = "grpo"  # one of GRPO_VARIANTS
    num_samples: int = 8  # K, the group size
    reward: str = "sparse"  # one of PPO_REWARDS
    num_iterations: int = 20
    prompts_per_iteration: int = 32  # groups per training batch
    epochs_per_iteration: int = 1  # mu: passes over each batch of rollouts
    minibatch_size: int = 64  # rows (samples) per update
    learning_rate: float | None = setting(None, POSITIVE)  # None: the optimizer's
    normalize_std: bool | None = None
    leave_one_out: bool | None = None
    ratio_level: str | None = None  # "token" or "sequence" (GSPO)
    loss_aggregation: str | None = None  # one of policy_gradient.LOSS_AGGREGATIONS
    eps_low: float | None = None
    eps_high: float | None = None
    beta: float | None = None  # k3 KL to the reference in the loss; 0: no reference pass
    dynamic_sampling: bool | None = None  # DAPO: train on informative groups only
    max_sampling_rounds: int = 4  # extra draws dynamic sampling may make per iteration
    overlong_buffer: int | None = None  # DAPO's L_cache in tokens; 0: no length penalty
    # the penalty at the budget (DAPO: 1)
    overlong_penalty: float = setting(1.0, NON_NEGATIVE)
    mask_truncated: bool | None = None  # samples that hit the budget get no loss
    advantage_eps: float = 1e-6
    recompute_logprobs: bool = False  # True: old log-probs from a forward pass
    length_multiple: int = setting(32, POSITIVE)
    # iterations between greedy maj@1 evaluations; 0: none
    eval_every: int = setting(0, NON_NEGATIVE)
    checkpoint_every: int = 1

    def setting(self, name: str) -> Any:
        """`name`'s value: this config's, or its variant's when left at None."""
        value = getattr(self, name)
        if value is not None:
            return value
        default = VARIANT_DEFAULTS[self.variant][name]
        return self.max_new_tokens // 5 if default == "max_new_tokens // 5" else default

    def resolved(self) -> GRPOConfig:
        """This config with every None replaced by its variant's value."""
        return dataclasses.replace(self, **{f: self.setting(f) for f in VARIANT_FIELDS})

    def __post_init__(self) -> None:
        super().__post_init__()  # types and declared ranges; the rest, as before:
        if self.variant not in GRPO_VARIANTS:
            raise ValueError(f"GRPOConfig: variant={self.variant!r} is not one of {GRPO_VARIANTS}")
        get, problems = self.setting, []
        if self.reward not in PPO_REWARDS:
            problems.append(f"reward={self.reward!r} is not one of {PPO_REWARDS}")
        if get("loss_aggregation") not in LOSS_AGGREGATIONS:
            problems.append(
                f"loss_aggregation={get('loss_aggregation')!r} is not one of {LOSS_AGGREGATIONS}"
            )
        if get("ratio_level") not in RATIO_LEVELS:
            problems.append(f"ratio_level={get('ratio_level')!r} is not one of {RATIO_LEVELS}")
        for name in (
            "num_iterations",
            "prompts_per_iteration",
            "epochs_per_iteration",
            "minibatch_size",
            "checkpoint_every",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        rows = self.prompts_per_iteration * self.num_samples
        if self.minibatch_size >= 1 and rows % self.minibatch_size:
            problems.append(
                f"minibatch_size={self.minibatch_size} must divide the rollouts per iteration "
                f"({self.prompts_per_iteration} x {self.num_samples} = {rows})"
            )
        if not (get("eps_low") > 0 and get("eps_high") > 0) or get("eps_low") >= 1:
            problems.append(
                f"eps_low={get('eps_low')} must be in (0, 1) and eps_high={get('eps_high')} > 0"
            )
        if get("beta") < 0 or self.advantage_eps <= 0:
            problems.append(f"beta={get('beta')} must be >= 0 and advantage_eps > 0")
        if self.max_sampling_rounds < 0:
            problems.append(f"max_sampling_rounds={self.max_sampling_rounds} must be >= 0")
        if not 0 <= get("overlong_buffer") <= self.max_new_tokens:
            problems.append(
                f"overlong_buffer={get('overlong_buffer')} must be in [0, max_new_tokens="
                f"{self.max_new_tokens}]"
            )
        if problems:
            raise ValueError(f"GRPOConfig ({self.variant}): " + "; ".join(problems))

    @property
    def rollouts_per_iteration(self) -> int:
        return self.prompts_per_iteration * self.num_samples


# ---------------------------------------------------------------- reward shaping, pure


def overlong_penalty(lengths: np.ndarray, max_length: int, buffer: int, factor: float = 1.0):
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13) of response lengths |y|:
    0 up to max_length - buffer, then falling linearly to -factor at max_length:
      ((max_length - buffer) - |y|) / buffer * factor,  clipped at -factor.
    `buffer` 0 turns it off."""
    lengths = np.asarray(lengths, np.float32)
    if buffer <= 0:
        return np.zeros_like(lengths)
    over = np.clip(lengths - (max_length - buffer), 0.0, buffer)
    return (-factor * over / buffer).astype(np.float32)


def informative_groups(returns: np.ndarray) -> np.ndarray:
    """bool [G]: the groups (rows of returns [G, K]) whose returns are not all equal."""
    return returns.max(-1) > returns.min(-1)


def truncated(rollouts: Rollouts, eos_ids: Sequence[int], max_new_tokens: int) -> np.ndarray:
    """bool [N]: samples that used the whole budget without ending (no eos id, no stop)."""
    ids, ends = rollouts.response_ids, set(eos_ids)
    return np.array([len(r) >= max_new_tokens and r[-1] not in ends for r in ids], np.bool_)


# -------------------------------------------------------------------- jitted functions


def _experience(
    config: Any, cfg: GRPOConfig, params: Any, ref_params: Any, batch: dict[str, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """[N, T] (the policy's recomputed log-probs, zeros unless `recompute_logprobs`; the
    reference's log-probs, zeros at beta 0)."""
    old = sequence_logprobs(config, params, batch)[0] if cfg.recompute_logprobs else None
    ref = reference_logprobs(config, ref_params, params, batch) if cfg.beta else None
    zeros = jnp.zeros(batch["tokens"].shape, jnp.float32)
    return (zeros if old is None else old), (zeros if ref is None else ref)


def _loss(
    config: Any, cfg: GRPOConfig, params: Any, batch: dict[str, jax.Array], rng: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    logprobs, entropy = sequence_logprobs(config, params, batch, entropy=True, rng=rng)
    return grpo_loss(
        logprobs,
        batch["old_logprobs"],
        batch["ref_logprobs"],
        batch["advantages"],
        batch["mask"],
        eps_low=cfg.eps_low,
        eps_high=cfg.eps_high,
        beta=cfg.beta,
        ratio_level=cfg.ratio_level,
        aggregation=cfg.loss_aggregation,
        normalizer=cfg.max_new_tokens,
        entropy=entropy,
    )


_group_advantages = jax.jit(
    group_advantages, static_argnames=("normalize_std", "leave_one_out", "eps")
)


# The settings the jitted functions read; runs that differ only in others (reward,
# iterations, seed, advantages ...) share their programs.
_PROGRAM_FIELDS = (
    "recompute_logprobs",
    "beta",
    "eps_low",
    "eps_high",
    "ratio_level",
    "loss_aggregation",
    "max_new_tokens",
)


def _programs(config: Any, cfg: GRPOConfig, optimizer: OptimizerConfig, mesh: Any) -> Any:
    """(train step, experience fn, param shardings, tx), built once per setting."""
    key = GRPOConfig(**{f: getattr(cfg, f) for f in _PROGRAM_FIELDS}).resolved()
    return _cached_programs(config, key, optimizer, mesh)


@functools.lru_cache(maxsize=8)
def _cached_programs(config: Any, cfg: GRPOConfig, optimizer: OptimizerConfig, mesh: Any) -> Any:
    tx = make_optimizer(optimizer)
    model = Transformer(config)
    shardings = None if mesh is None else model_param_shardings(model, mesh)
    step = make_train_step(model, tx, functools.partial(_loss, config, cfg), mesh, None, shardings)
    experience = jax.jit(functools.partial(_experience, config, cfg))
    return tx, step, experience, shardings


# ------------------------------------------------------------------------ the algorithm


class GRPO(Algorithm):
    """A variant of the GRPO family on the one loop (see the module docstring)."""

    def __init__(self, cfg: GRPOConfig):
        self.cfg = cfg = cfg.resolved()
        suffix = "" if cfg.reward == "sparse" else f"_{cfg.reward}"
        self.phase = f"{cfg.variant}{suffix}"
        self.title = TITLES[cfg.variant] + (
            "" if cfg.reward == "sparse" else f" {REWARD_TITLES[cfg.reward]}"
        )
        self.num_rounds = cfg.num_iterations
        self.checkpoint_every = cfg.checkpoint_every
        self.eval_every = cfg.eval_every
        self.needs_orm = cfg.reward in ("orm", "dense_orm")
        self._scored: tuple[int, list[np.ndarray]] = (0, [])  # (round, returns per draw)

    def fingerprint(self) -> dict[str, Any]:
        return {"variant": self.cfg.variant, "reward": self.cfg.reward}

    def init(self, ctx: PhaseContext) -> tuple[Any, dict[str, Any]]:
        cfg, mesh = self.cfg, ctx.policy.mesh
        if not ctx.train:
            raise ValueError(f"{self.phase}: no training questions")
        if self.needs_orm and ctx.scorer is None:
            raise ValueError(
                f"{self.phase} reward {cfg.reward!r} needs a trained ORM (the run's scorer)"
            )
        self.shards = batch_shards(mesh)
        if cfg.minibatch_size % self.shards:
            raise ValueError(
                f"GRPOConfig.minibatch_size={cfg.minibatch_size} must be a multiple of the "
                f"mesh's {self.shards} batch shards (data x fsdp)"
            )
        self.config = ctx.policy.model_config
        updates = (
            cfg.num_iterations
            * cfg.epochs_per_iteration
            * (cfg.rollouts_per_iteration // cfg.minibatch_size)
        )
        lr = cfg.learning_rate or ctx.optimizer.learning_rate
        opt = phase_optimizer(ctx.optimizer.replace(learning_rate=lr), updates)
        tx, self.step_fn, self.experience_fn, shardings = _programs(self.config, cfg, opt, mesh)
        start, self.ref_params = rl_start(self.config, ctx.init_params, cfg.seed)
        if mesh is not None and cfg.beta and self.ref_params is not None:
            self.ref_params = jax.device_put(ctx.init_params, shardings)
        return init_train_state(start, tx, mesh, shardings), {}

    def policy_params(self, arrays: Any) -> Any:
        return arrays.params

    # ---------------------------------------------------------------- sampling

    def _draw(self, ctx: PhaseContext, state: PhaseState, it: int, draw: int) -> RoundPlan:
        cfg = self.cfg
        index = it if draw == 0 else (it, draw)  # draw 0 is every variant's round draw
        key = round_key(cfg.seed, it)
        return RoundPlan(
            questions=draw_questions(
                ctx.train, cfg.prompts_per_iteration, cfg.seed, index, in_order=False
            ),
            params=self.policy_params(state.arrays),
            sampling=cfg.sampling(ctx.policy),
            key=key if draw == 0 else jax.random.fold_in(key, draw),
            prompts_per_call=cfg.prompts_per_call,
        )

    def plan(self, ctx: PhaseContext, state: PhaseState, round_index: int) -> RoundPlan:
        self._scored = (round_index, [])  # a new round: nothing of it scored yet
        return self._draw(ctx, state, round_index - 1, 0)

    def more_rollouts(
        self, ctx: PhaseContext, state: PhaseState, rollouts: Rollouts, round_index: int
    ) -> RoundPlan | None:
        """Dynamic sampling: another draw while fewer than `prompts_per_iteration` groups
        are informative and fewer than `max_sampling_rounds` extra draws were made."""
        cfg = self.cfg
        if not cfg.dynamic_sampling:
            return None
        draws = len(rollouts) // cfg.rollouts_per_iteration
        returns = self._returns(ctx, rollouts, round_index)
        enough = informative_groups(returns).sum() >= cfg.prompts_per_iteration
        if enough or draws > cfg.max_sampling_rounds:
            return None
        return self._draw(ctx, state, round_index - 1, draws)

    # ----------------------------------------------------------------- scoring

    def _returns(self, ctx: PhaseContext, rollouts: Rollouts, round_index: int) -> np.ndarray:
        """[G, K] each sample's task return (score plus its dense rewards), with the
        overlong penalty. Rows scored earlier in the round (dynamic sampling) are reused."""
        cfg = self.cfg
        round_scored, done = self._scored
        if round_scored != round_index or sum(map(len, done)) > len(rollouts):
            done = []
        start = sum(map(len, done))
        if start < len(rollouts):
            new = rollouts.select(range(start, len(rollouts)))
            longest = max(len(p) + len(r) for p, r in zip(new.prompt_ids, new.response_ids))
            score, dense = rollout_rewards(
                new, cfg.reward, ctx.policy.tokenizer, (len(new), longest), ctx.scorer
            )
            lengths = np.array([len(r) for r in new.response_ids])
            shaped = (
                score
                + dense.sum(-1)
                + overlong_penalty(
                    lengths, cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty
                )
            )
            done = [*done, shaped.astype(np.float32)]
        self._scored = (round_index, done)
        return np.concatenate(done).reshape(-1, cfg.num_samples)

    # ---------------------------------------------------------------- the step

    def improve(
        self, ctx: PhaseContext, state: PhaseState, rollouts: Rollouts, round_index: int
    ) -> Improved:
        cfg, mesh, it = self.cfg, ctx.policy.mesh, round_index - 1
        k, eos = cfg.num_samples, ctx.policy.tokenizer.eos_ids
        returns = self._returns(ctx, rollouts, round_index)  # [G, K]
        informative = informative_groups(returns)
        groups = np.arange(len(returns))
        if cfg.dynamic_sampling:  # the first informative groups, up to a full batch
            groups = groups[informative][: cfg.prompts_per_iteration]
        else:
            groups = groups[: cfg.prompts_per_iteration]
        rows = (groups[:, None] * k + np.arange(k)).reshape(-1)
        batch_rollouts = rollouts.select(rows)
        sample_mask = np.ones((len(groups), k), np.float32)
        cut = truncated(batch_rollouts, eos, cfg.max_new_tokens)
        if cfg.mask_truncated:
            sample_mask = sample_mask * ~cut.reshape(-1, k)
        adv = _group_advantages(
            returns[groups],
            normalize_std=cfg.normalize_std,
            leave_one_out=cfg.leave_one_out,
            eps=cfg.advantage_eps,
            mask=sample_mask,
        )
        train_state, metrics = state.arrays, []
        if len(groups):  # dynamic sampling found no informative group: no update
            adv = np.asarray(adv).reshape(-1)
            exp = self._experience(ctx, state, batch_rollouts, adv, sample_mask)
            train_state, metrics = minibatch_epochs(
                self.step_fn, state.arrays, exp, mesh, cfg, it, self.phase
            )
        answers = [e.answer for e in rollouts.examples]
        lengths = np.array([len(r) for r in rollouts.response_ids])
        all_cut = truncated(rollouts, eos, cfg.max_new_tokens)
        stats = {
            "reward_mean": float(returns.mean()),
            "reward_std": float(returns.std()),
            "correct_fraction": float(np.mean(sparse_reward(rollouts.texts, answers))),
            "zero_variance_fraction": float(1.0 - informative.mean()),
            "groups_drawn": len(returns),
            "groups_trained": len(groups),
            "sampling_draws": len(rollouts) // cfg.rollouts_per_iteration,
            "round_samples": len(rollouts),
            "response_tokens": float(lengths.mean()),
            "response_tokens_max": int(lengths.max()),
            "truncated_fraction": float(all_cut.mean()),
            "updates": len(metrics),
            **{key: float(np.mean([m[key] for m in metrics] or [0.0])) for key in _LOGGED},
        }
        return Improved(train_state, {}, stats)

    def _experience(
        self,
        ctx: PhaseContext,
        state: PhaseState,
        rollouts: Rollouts,
        advantages: np.ndarray,
        sample_mask: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """The training rows on the host: tokens, masks, old and reference log-probs and
        each row's advantage, padded with empty rows to a full, mesh-divisible batch (so
        every iteration's minibatches keep their shape)."""
        cfg, mesh = self.cfg, ctx.policy.mesh
        pad = cfg.rollouts_per_iteration - len(rollouts)
        prompts: Sequence[Sequence[int]] = list(rollouts.prompt_ids) + [[]] * pad
        responses: Sequence[Sequence[int]] = list(rollouts.response_ids) + [[]] * pad
        pad_id = ctx.policy.tokenizer.pad_id
        batch = sequence_batch(prompts, responses, pad_id, cfg.length_multiple, self.shards)
        n, shape = batch["tokens"].shape[0], batch["tokens"].shape
        logprobs = list(rollouts.policy_logprobs) + [np.zeros(0, np.float32)] * pad
        sampler_lp = place_response_values(logprobs, prompts, shape)
        row_mask = np.zeros(n, np.float32)
        row_mask[: len(rollouts)] = sample_mask.reshape(-1)
        mask = batch["response_mask"] * row_mask[:, None].astype(np.int32)
        row_adv = np.zeros(n, np.float32)
        row_adv[: len(rollouts)] = advantages
        old, ref = sampler_lp, np.zeros(shape, np.float32)
        if cfg.recompute_logprobs or cfg.beta:  # else the sampler's log-probs are all it needs
            recomputed, ref = to_host(
                self.experience_fn(state.arrays.params, self.ref_params, shard_batch(batch, mesh))
            )
            old = np.asarray(recomputed) if cfg.recompute_logprobs else sampler_lp
        return {
            "tokens": batch["tokens"],
            "positions": batch["positions"],
            "input_mask": batch["input_mask"],
            "mask": mask,
            "old_logprobs": np.where(mask > 0, old, 0.0).astype(np.float32),
            "ref_logprobs": np.where(mask > 0, np.asarray(ref), 0.0).astype(np.float32),
            "advantages": row_adv,
        }


_LOGGED = (
    "loss",
    "policy_loss",
    "kl",
    "entropy",
    "clip_low_fraction",
    "clip_high_fraction",
    "ratio_mean",
    "approx_kl",
    "grad_norm",
)
