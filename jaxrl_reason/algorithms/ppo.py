"""PPO (paper §2.3, trlX-style): rollouts, per-token KL-penalised rewards, GAE, clipped
policy and value losses, several minibatch epochs per rollout batch.

One iteration:
  1. sample K solutions for `prompts_per_iteration` training questions from the policy,
     keeping the sampler's raw-policy log-probs of the tokens it drew;
  2. score them: sparse (final answer right), dense (sparse plus the step-matching
     heuristic), orm (the ORM's final score) or dense_orm (differences of the ORM's
     per-step scores); optionally divide by the running std of returns (trlX);
  3. one forward pass gives the values and the reference's log-probs; rewards are
     -kl_coef * KL(pi || pi_ref) per token plus the scores; GAE gives advantages
     (whitened) and returns;
  4. `epochs_per_iteration` passes over the rollouts in shuffled minibatches of the
     PPO loss, through the generic jitted, sharded train step.

An iteration is a round of `rounds.run_rounds`: the phase state holds the train state
(params, optimizer) and, as host state, the KL controller and the reward moments.
Iteration i (from 0) draws its questions and samples from (seed, i), so a resumed run
reproduces an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reason.algorithms.actor_critic import CRITICS, ActorCritic, rl_start
from jaxrl_reason.algorithms.advantages import gae, token_rewards, whiten
from jaxrl_reason.algorithms.kl_control import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    kl_controller_from_state,
)
from jaxrl_reason.algorithms.policy_gradient import LOSS_AGGREGATIONS, minibatch_epochs
from jaxrl_reason.algorithms.ppo_objective import KL_KINDS, kl_penalty, ppo_losses
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
from jaxrl_reason.training.train_step import make_train_step, shard_batch
from jaxrl_reason.validation import NON_NEGATIVE, POSITIVE, setting

PPO_REWARDS = ("sparse", "dense", "orm", "dense_orm")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PPOConfig(RolloutConfig):
    """PPO settings; defaults follow paper-notes.md §7 (gamma 1, lambda 0.95, clip 0.2)."""

    num_samples: int = 1  # K rollouts per question
    reward: str = "sparse"  # one of PPO_REWARDS
    num_iterations: int = 20
    prompts_per_iteration: int = 64
    epochs_per_iteration: int = 4
    minibatch_size: int = 16
    learning_rate: float | None = setting(None, POSITIVE)  # None: the optimizer's
    gamma: float = 1.0
    lam: float = 0.95
    clip_ratio: float = 0.2
    value_clip: float | None = setting(0.2, POSITIVE)  # None: no value clipping
    vf_coef: float = setting(1.0, NON_NEGATIVE)
    entropy_coef: float = 0.0
    loss_aggregation: str = "token_mean"  # policy_gradient.LOSS_AGGREGATIONS
    kl_coef: float = 0.05
    # set: adaptive controller (Ziegler et al.)
    kl_target: float | None = setting(None, POSITIVE)
    kl_horizon: float = setting(10000.0, POSITIVE)
    kl_kind: str = "k1"
    whiten_advantages: bool = True
    scale_rewards: bool = True  # divide by the running std of returns, clip
    reward_clip: float = setting(10.0, POSITIVE)
    # "shared" trunk or "separate" critic
    critic: str = setting("shared", choices=CRITICS)
    recompute_logprobs: bool = False  # True: old log-probs from a forward pass
    length_multiple: int = setting(32, POSITIVE)
    # iterations between greedy maj@1 evaluations; 0: none
    eval_every: int = setting(0, NON_NEGATIVE)
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()  # types and declared ranges; the rest, as before:
        problems = []
        if self.reward not in PPO_REWARDS:
            problems.append(f"reward={self.reward!r} is not one of {PPO_REWARDS}")
        if self.loss_aggregation not in LOSS_AGGREGATIONS:
            problems.append(
                f"loss_aggregation={self.loss_aggregation!r} is not one of {LOSS_AGGREGATIONS}"
            )
        if self.kl_kind not in KL_KINDS:
            problems.append(f"kl_kind={self.kl_kind!r} is not one of {KL_KINDS}")
        for name in ("num_iterations", "prompts_per_iteration", "num_samples"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("epochs_per_iteration", "minibatch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.minibatch_size > self.prompts_per_iteration * self.num_samples:
            problems.append(
                f"minibatch_size={self.minibatch_size} exceeds the rollouts per iteration "
                f"({self.prompts_per_iteration} x {self.num_samples})"
            )
        if not 0.0 <= self.lam <= 1.0 or not 0.0 <= self.gamma <= 1.0:
            problems.append(f"gamma={self.gamma} and lam={self.lam} must be in [0, 1]")
        if self.kl_coef < 0 or self.clip_ratio <= 0:
            problems.append(f"kl_coef={self.kl_coef} must be >= 0, clip_ratio > 0")
        if problems:
            raise ValueError("PPOConfig: " + "; ".join(problems))

    @property
    def rollouts_per_iteration(self) -> int:
        return self.prompts_per_iteration * self.num_samples


# -------------------------------------------------------------------- jitted functions


def _experience(
    ac: ActorCritic,
    cfg: PPOConfig,
    params: Any,
    ref_params: Any,
    batch: dict[str, jax.Array],
    sampler_logprobs: jax.Array,
    score: jax.Array,
    dense: jax.Array,
    kl_coef: jax.Array,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Rollout batch -> PPO training arrays (old log-probs and values, advantages,
    returns) and statistics."""
    logprobs, values, _ = ac.forward(params, batch)
    ref_logprobs = ac.reference_logprobs(ref_params, batch, params)
    mask = batch["response_mask"].astype(jnp.bool_)
    old_logprobs = logprobs if cfg.recompute_logprobs else sampler_logprobs
    kl = jnp.where(mask, kl_penalty(old_logprobs, ref_logprobs, cfg.kl_kind), 0.0)
    rewards = token_rewards(score, mask, kl, kl_coef, dense)
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = whiten(advantages, mask)
    m = mask.astype(jnp.float32)
    rows = jnp.maximum((m.sum(-1) > 0).sum(), 1)
    stats = {
        "kl_per_sequence": kl.sum() / rows,
        "kl_per_token": (kl * m).sum() / jnp.maximum(m.sum(), 1.0),
        "reward_per_sequence": (rewards * m).sum() / rows,
        "logprob_mismatch": jnp.max(jnp.abs(logprobs - sampler_logprobs) * m),
        "values_mean": (values * m).sum() / jnp.maximum(m.sum(), 1.0),
    }
    out = {
        "tokens": batch["tokens"],
        "positions": batch["positions"],
        "input_mask": batch["input_mask"],
        "mask": batch["response_mask"],
        "old_logprobs": jnp.where(mask, old_logprobs, 0.0),
        "old_values": jnp.where(mask, values, 0.0),
        "advantages": advantages,
        "returns": returns,
    }
    return out, stats


def _ppo_loss(
    ac: ActorCritic, cfg: PPOConfig, params: Any, batch: dict[str, jax.Array], rng: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    logprobs, values, entropy = ac.forward(params, batch, rng)
    return ppo_losses(
        logprobs,
        batch["old_logprobs"],
        batch["advantages"],
        values,
        batch["old_values"],
        batch["returns"],
        batch["mask"],
        clip_ratio=cfg.clip_ratio,
        value_clip=cfg.value_clip,
        vf_coef=cfg.vf_coef,
        entropy=entropy,
        entropy_coef=cfg.entropy_coef,
        aggregation=cfg.loss_aggregation,
        normalizer=cfg.max_new_tokens,
    )


# The settings the jitted functions read; the others (reward, iterations, seed ...) must
# not key the compile cache, so PPO runs that differ only in them share their programs.
_PROGRAM_FIELDS = (
    "recompute_logprobs",
    "kl_kind",
    "gamma",
    "lam",
    "whiten_advantages",
    "clip_ratio",
    "value_clip",
    "vf_coef",
    "entropy_coef",
    "loss_aggregation",
    "max_new_tokens",
)


def _programs(ac: ActorCritic, cfg: PPOConfig, optimizer: OptimizerConfig, mesh: Any) -> Any:
    """(tx, train step, experience fn, param shardings), built once per setting."""
    return _cached_programs(
        ac, PPOConfig(**{f: getattr(cfg, f) for f in _PROGRAM_FIELDS}), optimizer, mesh
    )


@functools.lru_cache(maxsize=8)
def _cached_programs(ac: ActorCritic, cfg: PPOConfig, optimizer: OptimizerConfig, mesh: Any) -> Any:
    tx = make_optimizer(optimizer)
    shardings = None if mesh is None else ac.param_shardings(mesh)
    loss_fn = functools.partial(_ppo_loss, ac, cfg)
    step = make_train_step(Transformer(ac.config), tx, loss_fn, mesh, None, shardings)
    experience = jax.jit(functools.partial(_experience, ac, cfg))
    return tx, step, experience, shardings


# ------------------------------------------------------------------------ the algorithm


def _kl_controller(cfg: PPOConfig) -> FixedKLController | AdaptiveKLController:
    if cfg.kl_target is None:
        return FixedKLController(cfg.kl_coef)
    return AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)


class PPO(Algorithm):
    """PPO on the one loop: improve = rewards -> KL -> GAE -> minibatch epochs.

    The start policy is also the frozen reference (with LoRA: the base, adapters off).
    Each round's statistics hold the mean score, correct fraction, KL, loss and clipping
    statistics.
    """

    def __init__(self, cfg: PPOConfig):
        self.cfg = cfg
        self.phase = f"ppo_{cfg.reward}"
        self.title = f"PPO {REWARD_TITLES[cfg.reward]}"
        self.num_rounds = cfg.num_iterations
        self.checkpoint_every = cfg.checkpoint_every
        self.eval_every = cfg.eval_every
        self.needs_orm = cfg.reward in ("orm", "dense_orm")

    def init(self, ctx: PhaseContext) -> tuple[Any, dict[str, Any]]:
        cfg, mesh = self.cfg, ctx.policy.mesh
        if not ctx.train:
            raise ValueError("PPO: no training questions")
        if self.needs_orm and ctx.scorer is None:
            raise ValueError(f"PPO reward {cfg.reward!r} needs a trained ORM (the run's scorer)")
        self.shards = batch_shards(mesh)
        if cfg.minibatch_size % self.shards:
            raise ValueError(
                f"PPOConfig.minibatch_size={cfg.minibatch_size} must be a multiple of the "
                f"mesh's {self.shards} batch shards (data x fsdp)"
            )
        self.ac = ActorCritic(ctx.policy.model_config, cfg.critic)
        rows = -(-cfg.rollouts_per_iteration // self.shards) * self.shards
        updates = cfg.num_iterations * cfg.epochs_per_iteration * (rows // cfg.minibatch_size)
        lr = cfg.learning_rate or ctx.optimizer.learning_rate
        opt = phase_optimizer(ctx.optimizer.replace(learning_rate=lr), updates)
        tx, self.step_fn, self.experience_fn, shardings = _programs(self.ac, cfg, opt, mesh)
        start, self.ref_params = rl_start(self.ac.config, ctx.init_params, cfg.seed)
        ac_params = self.ac.init(start, jax.random.key(cfg.seed))
        if mesh is not None and self.ref_params is not None:
            lm = {k: v for k, v in shardings["policy"].items() if k in ctx.init_params}
            self.ref_params = jax.device_put(ctx.init_params, lm)
        host = {
            "kl_controller": _kl_controller(cfg).state_dict(),
            "reward_moments": RunningMoments().state_dict(),
        }
        return init_train_state(ac_params, tx, mesh, shardings), host

    def policy_params(self, arrays: Any) -> Any:
        return self.ac.policy_params(arrays.params)

    def plan(self, ctx: PhaseContext, state: PhaseState, round_index: int) -> RoundPlan:
        cfg, it = self.cfg, round_index - 1  # PPO's random streams number iterations from 0
        return RoundPlan(
            questions=draw_questions(
                ctx.train, cfg.prompts_per_iteration, cfg.seed, it, in_order=False
            ),
            params=self.policy_params(state.arrays),
            sampling=cfg.sampling(ctx.policy),
            key=round_key(cfg.seed, it),
            prompts_per_call=cfg.prompts_per_call,
        )

    def improve(
        self, ctx: PhaseContext, state: PhaseState, rollouts: Rollouts, round_index: int
    ) -> Improved:
        mesh, it = ctx.policy.mesh, round_index - 1
        kl_ctl = kl_controller_from_state(state.host["kl_controller"])
        moments = RunningMoments.from_state_dict(state.host["reward_moments"])
        batch, score, dense, raw_return = self._scored_batch(ctx, rollouts, moments)
        shape = batch["tokens"].shape
        sampler_lp = place_response_values(rollouts.policy_logprobs, rollouts.prompt_ids, shape)
        exp, stats = self.experience_fn(
            state.arrays.params,
            self.ref_params,
            shard_batch(batch, mesh),
            *shard_batch({"lp": sampler_lp, "s": score, "d": dense}, mesh).values(),
            jnp.float32(kl_ctl.value),
        )
        train_state, metrics = minibatch_epochs(
            self.step_fn, state.arrays, to_host(exp), mesh, self.cfg, it, self.phase
        )
        stats = {k: float(v) for k, v in to_host(stats).items()}
        kl_ctl.update(stats["kl_per_sequence"], len(rollouts))
        answers = [e.answer for e in rollouts.examples]
        entry = {
            "score_mean": float(np.mean(raw_return)),
            "correct_fraction": float(np.mean(sparse_reward(rollouts.texts, answers))),
            "response_tokens": float(np.mean([len(r) for r in rollouts.response_ids])),
            "kl_coef": kl_ctl.value,
            **stats,
            **{k: float(np.mean([m[k] for m in metrics])) for k in _LOGGED},
        }
        host = {"kl_controller": kl_ctl.state_dict(), "reward_moments": moments.state_dict()}
        return Improved(train_state, host, entry)

    def _scored_batch(
        self, ctx: PhaseContext, rollouts: Rollouts, moments: RunningMoments
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """The rollouts in the sequence frame, their (scaled) scores and dense rewards, and
        the raw returns of the real rows. Updates `moments` with the raw returns."""
        cfg, tokenizer = self.cfg, ctx.policy.tokenizer
        ids = (rollouts.prompt_ids, rollouts.response_ids)
        batch = sequence_batch(*ids, tokenizer.pad_id, cfg.length_multiple, self.shards)
        shape = batch["tokens"].shape
        score, dense = rollout_rewards(rollouts, cfg.reward, tokenizer, shape, ctx.scorer)
        raw_return = (score + dense.sum(-1))[: len(rollouts)]
        if cfg.scale_rewards:
            moments.update(raw_return)
            scale = 1.0 / (moments.std + 1e-8)
            score = np.clip(score * scale, -cfg.reward_clip, cfg.reward_clip)
            dense = np.clip(dense * scale, -cfg.reward_clip, cfg.reward_clip)
        return batch, score, dense, raw_return


REWARD_TITLES = {"sparse": "sparse", "dense": "dense", "orm": "ORM", "dense_orm": "dense ORM"}
_LOGGED = (
    "loss",
    "policy_loss",
    "value_loss",
    "entropy",
    "clip_fraction",
    "value_clip_fraction",
    "approx_kl",
    "grad_norm",
)
