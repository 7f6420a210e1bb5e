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

State lives in `workdir` (`checkpoints/`: params, optimizer, and in the meta the
iteration, KL controller, reward moments and history; `metrics.jsonl`, `tb/`). Iteration
i draws its questions and samples from `fold_in(key(seed), i)`, so a resumed run
reproduces an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reason.algorithms.actor_critic import ActorCritic
from jaxrl_reason.algorithms.advantages import gae, token_rewards, whiten
from jaxrl_reason.algorithms.kl_control import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    kl_controller_from_state,
)
from jaxrl_reason.algorithms.policy import Policy
from jaxrl_reason.algorithms.ppo_objective import KL_KINDS, kl_penalty, ppo_losses
from jaxrl_reason.algorithms.rollouts import (
    place_response_values,
    rollout_rewards,
    sample_rollouts,
    sequence_batch,
)
from jaxrl_reason.algorithms.sft import flat_summary
from jaxrl_reason.data.example import Example
from jaxrl_reason.evaluation.evaluate import EvalConfig, greedy_only
from jaxrl_reason.model import Transformer
from jaxrl_reason.parallel import batch_shards
from jaxrl_reason.rewards.heuristic import sparse_reward
from jaxrl_reason.training.checkpointing import Checkpointer
from jaxrl_reason.training.metrics_writer import MetricWriter
from jaxrl_reason.training.optimizer import OptimizerConfig, make_optimizer
from jaxrl_reason.training.preemption import Preempted, PreemptionGuard
from jaxrl_reason.training.progress import ThroughputBar
from jaxrl_reason.training.train_state import init_train_state
from jaxrl_reason.training.train_step import make_train_step, shard_batch

log = logging.getLogger(__name__)
PPO_REWARDS = ("sparse", "dense", "orm", "dense_orm")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO settings; defaults follow paper-notes.md §7 (gamma 1, lambda 0.95, clip 0.2)."""

    reward: str = "sparse"  # one of PPO_REWARDS
    num_iterations: int = 20
    prompts_per_iteration: int = 64
    samples_per_prompt: int = 1  # K rollouts per question
    temperature: float = 0.7
    max_new_tokens: int = 256
    epochs_per_iteration: int = 4
    minibatch_size: int = 16
    learning_rate: float | None = None  # None: the optimizer's
    gamma: float = 1.0
    lam: float = 0.95
    clip_ratio: float = 0.2
    value_clip: float | None = 0.2
    vf_coef: float = 1.0
    entropy_coef: float = 0.0
    kl_coef: float = 0.05
    kl_target: float | None = None  # set: adaptive controller (Ziegler et al.)
    kl_horizon: float = 10000.0
    kl_kind: str = "k1"
    whiten_advantages: bool = True
    scale_rewards: bool = True  # divide by the running std of returns, clip
    reward_clip: float = 10.0
    critic: str = "shared"  # "shared" trunk or "separate" critic
    recompute_logprobs: bool = False  # True: old log-probs from a forward pass
    length_multiple: int = 32
    prompts_per_call: int = 64
    eval_every: int = 0  # iterations between greedy maj@1 evaluations; 0: none
    checkpoint_every: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.reward not in PPO_REWARDS:
            problems.append(f"reward={self.reward!r} is not one of {PPO_REWARDS}")
        if self.kl_kind not in KL_KINDS:
            problems.append(f"kl_kind={self.kl_kind!r} is not one of {KL_KINDS}")
        for name in ("num_iterations", "prompts_per_iteration", "samples_per_prompt"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("epochs_per_iteration", "minibatch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.minibatch_size > self.prompts_per_iteration * self.samples_per_prompt:
            problems.append(
                f"minibatch_size={self.minibatch_size} exceeds the rollouts per iteration "
                f"({self.prompts_per_iteration} x {self.samples_per_prompt})"
            )
        if not 0.0 <= self.lam <= 1.0 or not 0.0 <= self.gamma <= 1.0:
            problems.append(f"gamma={self.gamma} and lam={self.lam} must be in [0, 1]")
        if self.kl_coef < 0 or self.clip_ratio <= 0:
            problems.append(f"kl_coef={self.kl_coef} must be >= 0, clip_ratio > 0")
        if problems:
            raise ValueError("PPOConfig: " + "; ".join(problems))

    @property
    def rollouts_per_iteration(self) -> int:
        return self.prompts_per_iteration * self.samples_per_prompt


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
    ref_logprobs = ac.reference_logprobs(ref_params, batch)
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
    del rng  # the model has no dropout
    logprobs, values, entropy = ac.forward(params, batch)
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


# --------------------------------------------------------------------------- the loop


def _kl_controller(cfg: PPOConfig) -> FixedKLController | AdaptiveKLController:
    if cfg.kl_target is None:
        return FixedKLController(cfg.kl_coef)
    return AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)


def _iteration_questions(
    examples: Sequence[Example], cfg: PPOConfig, iteration: int
) -> list[Example]:
    rng = np.random.default_rng([cfg.seed, iteration])
    n = cfg.prompts_per_iteration
    idx = rng.choice(len(examples), n, replace=n > len(examples))
    return [examples[i] for i in idx]


def run_ppo(
    policy: Policy,
    init_params: Any,
    train_examples: Sequence[Example],
    eval_examples: Sequence[Example],
    cfg: PPOConfig,
    optimizer: OptimizerConfig,
    eval_cfg: EvalConfig,
    workdir: str | os.PathLike,
    orm_scorer: Any = None,
    show_progress: bool = True,
) -> tuple[Any, list[dict[str, Any]]]:
    """Run (or resume) PPO from `init_params` (also the frozen reference policy).

    Returns (the policy's LM params, per-iteration history). History entries hold
    `samples_drawn` (cumulative rollouts), the mean score, KL and loss statistics, and
    `eval` (greedy maj@1 on `eval_examples` every `cfg.eval_every` iterations and after
    the last).
    """
    if not train_examples:
        raise ValueError("run_ppo: no training questions")
    if cfg.reward in ("orm", "dense_orm") and orm_scorer is None:
        raise ValueError(f"PPO reward {cfg.reward!r} needs a trained ORM (orm_scorer)")
    shards = batch_shards(policy.mesh)
    if cfg.minibatch_size % shards:
        raise ValueError(
            f"PPOConfig.minibatch_size={cfg.minibatch_size} must be a multiple of the "
            f"mesh's {shards} batch shards (data x fsdp)"
        )
    workdir = Path(workdir)
    mesh = policy.mesh
    ac = ActorCritic(policy.model_config, cfg.critic)
    rows = -(-cfg.rollouts_per_iteration // shards) * shards
    updates = cfg.num_iterations * cfg.epochs_per_iteration * (rows // cfg.minibatch_size)
    lr = cfg.learning_rate or optimizer.learning_rate
    opt = optimizer.replace(
        learning_rate=lr,
        total_steps=max(updates, 1),
        warmup_steps=min(optimizer.warmup_steps, max(updates - 1, 0)),
    )
    tx, step_fn, experience_fn, shardings = _programs(ac, cfg, opt, mesh)
    key = jax.random.key(cfg.seed)
    state = init_train_state(ac.init(init_params, key), tx, mesh, shardings)
    ref_params = init_params
    if mesh is not None:
        lm_shardings = {k: v for k, v in shardings["policy"].items() if k in init_params}
        ref_params = jax.device_put(init_params, lm_shardings)
    kl_ctl, moments = _kl_controller(cfg), RunningMoments()
    history: list[dict[str, Any]] = []
    start = 0
    ckpt = Checkpointer(workdir / "checkpoints", keep=2, async_save=False)
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        start = int(meta["iteration"])
        kl_ctl = kl_controller_from_state(meta["kl_controller"])
        moments = RunningMoments.from_state_dict(meta["reward_moments"])
        history = meta["history"]
        log.info("PPO: resumed after iteration %d from %s", start, ckpt.directory)
    sampling = policy.sampling_config(cfg.samples_per_prompt, cfg.temperature, cfg.max_new_tokens)
    writer = MetricWriter(workdir)
    phase = f"ppo_{cfg.reward}"
    bar = ThroughputBar(
        cfg.num_iterations, initial=start, desc=phase, disable=not show_progress or None
    )
    try:
        with PreemptionGuard() as guard:
            for it in range(start, cfg.num_iterations):
                it_key = jax.random.fold_in(key, it)
                questions = _iteration_questions(train_examples, cfg, it)
                rollouts = sample_rollouts(
                    policy,
                    ac.policy_params(state.params),
                    questions,
                    sampling,
                    it_key,
                    cfg.prompts_per_call,
                )
                batch = sequence_batch(
                    rollouts.prompt_ids,
                    rollouts.response_ids,
                    policy.tokenizer.pad_id,
                    cfg.length_multiple,
                    shards,
                )
                shape = batch["tokens"].shape
                score, dense = rollout_rewards(
                    rollouts, cfg.reward, policy.tokenizer, shape, orm_scorer
                )
                raw_return = score + dense.sum(-1)
                if cfg.scale_rewards:
                    moments.update(raw_return[: len(rollouts)])
                    scale = 1.0 / (moments.std + 1e-8)
                    score = np.clip(score * scale, -cfg.reward_clip, cfg.reward_clip)
                    dense = np.clip(dense * scale, -cfg.reward_clip, cfg.reward_clip)
                sampler_lp = place_response_values(
                    rollouts.policy_logprobs, rollouts.prompt_ids, shape
                )
                exp, stats = experience_fn(
                    state.params,
                    ref_params,
                    shard_batch(batch, mesh),
                    shard_batch({"lp": sampler_lp}, mesh)["lp"],
                    shard_batch({"s": score}, mesh)["s"],
                    shard_batch({"d": dense}, mesh)["d"],
                    jnp.float32(kl_ctl.value),
                )
                exp = jax.device_get(exp)
                metrics = []
                for epoch in range(cfg.epochs_per_iteration):
                    order = np.random.default_rng([cfg.seed, it, epoch]).permutation(shape[0])
                    for j in range(shape[0] // cfg.minibatch_size):
                        idx = order[j * cfg.minibatch_size : (j + 1) * cfg.minibatch_size]
                        mb = {k: v[idx] for k, v in exp.items()}
                        state, m = step_fn(state, shard_batch(mb, mesh), it_key)
                        metrics.append(m)
                metrics = jax.device_get(metrics)
                if not all(bool(m["finite"]) for m in metrics):
                    raise FloatingPointError(
                        f"PPO iteration {it + 1}: a non-finite loss (that update was skipped); "
                        f"last checkpoint in {ckpt.directory}"
                    )
                stats = {k: float(v) for k, v in jax.device_get(stats).items()}
                kl_ctl.update(stats["kl_per_sequence"], len(rollouts))
                drawn = (history[-1]["samples_drawn"] if history else 0) + len(rollouts)
                entry = {
                    "iteration": it + 1,
                    "samples_drawn": drawn,
                    "score_mean": float(np.mean(raw_return[: len(rollouts)])),
                    "correct_fraction": float(
                        np.mean(
                            sparse_reward(rollouts.texts, [e.answer for e in rollouts.examples])
                        )
                    ),
                    "response_tokens": float(np.mean([len(r) for r in rollouts.response_ids])),
                    "kl_coef": kl_ctl.value,
                    **stats,
                    **{k: float(np.mean([m[k] for m in metrics])) for k in _LOGGED},
                }
                last = it + 1 == cfg.num_iterations
                if eval_examples and (last or (cfg.eval_every and (it + 1) % cfg.eval_every == 0)):
                    result = policy.evaluate(
                        ac.policy_params(state.params), eval_examples, greedy_only(eval_cfg)
                    )
                    entry["eval"] = flat_summary(result)
                history.append(entry)
                bar.update(1, int(exp["mask"].sum()), score=entry["score_mean"])
                writer.write(it + 1, {k: v for k, v in entry.items() if k != "eval"}, phase)
                if "eval" in entry:
                    writer.write(it + 1, entry["eval"], f"{phase}_eval")
                log.info(
                    "%s iteration %d: score %.3f, correct %.3f, kl %.4f, clip %.3f",
                    phase,
                    it + 1,
                    entry["score_mean"],
                    entry["correct_fraction"],
                    entry["kl_per_sequence"],
                    entry["clip_fraction"],
                )
                meta = {
                    "iteration": it + 1,
                    "kl_controller": kl_ctl.state_dict(),
                    "reward_moments": moments.state_dict(),
                    "history": history,
                    "seed": cfg.seed,
                    "phase": phase,
                }
                if last or (it + 1) % cfg.checkpoint_every == 0 or guard.should_stop:
                    ckpt.save(it + 1, state, meta, force=True)
                if not last and guard.should_stop:
                    ckpt.wait()
                    message = (
                        f"received SIGTERM: saved PPO after iteration {it + 1} in "
                        f"{ckpt.directory}; re-run the same command to resume"
                    )
                    log.warning(message)
                    raise Preempted(message)
    finally:
        bar.close()
        writer.close()
        ckpt.close()
    return ac.policy_params(state.params), history


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
