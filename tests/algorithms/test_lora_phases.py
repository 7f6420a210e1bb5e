"""Every phase trains LoRA adapters (and heads) only, over the real sampler and train
step: PPO raises a toy reward with the reference = the base with adapters off, which is a
plain forward pass of the base weights; GRPO and the ORM train adapters (+ head) only; an
RL phase started from trained adapters folds them into its base first."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_reason.algorithms import grpo, ppo
from jaxrl_reason.algorithms.actor_critic import reference_logprobs, rl_start, sequence_logprobs
from jaxrl_reason.algorithms.rollouts import sequence_batch
from jaxrl_reason.model import LoraConfig, lora
from jaxrl_reason.training.optimizer import OptimizerConfig
from tests.algorithms.conftest import TINY
from tests.algorithms.test_grpo import SMALL as GRPO_SMALL
from tests.algorithms.test_grpo import run_grpo
from tests.algorithms.test_orm_training import CFG as ORM_CFG
from tests.algorithms.test_orm_training import _train as train_orm
from tests.algorithms.test_ppo import SMALL, _low_ids_reward, run_ppo

LORA = TINY.replace(lora=LoraConfig(rank=4, alpha=8.0))


@pytest.fixture(scope="module")
def lora_policy(tiny_policy):
    return dataclasses.replace(tiny_policy, model_config=LORA)


@pytest.fixture(scope="module")
def lora_params(tiny_params):
    return lora.add_adapters(LORA, tiny_params, jax.random.key(1))


def _flat(tree):
    return {
        jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
    }


def _only_adapters_changed(before, after, heads=()):
    before, after = _flat(before), _flat(after)
    for k, v in before.items():
        if "_lora_" not in k:
            np.testing.assert_array_equal(after[k], v, err_msg=f"{k} (frozen) changed")
    assert any(not np.array_equal(after[k], v) for k, v in before.items() if "_lora_b" in k)
    return {k for k in after if k not in before}


def _trained_adapters(params, seed=3):
    """`params` with nonzero B (as after training)."""
    key = jax.random.key(seed)
    return jax.tree_util.tree_map_with_path(
        lambda p, x: 0.05 * jax.random.normal(key, x.shape) if p[-1].key.endswith("_lora_b") else x,
        params,
    )


def test_reference_is_a_plain_forward_pass_of_the_base(tiny_params, lora_params, arith_tokenizer):
    params = _trained_adapters(lora_params)
    prompts = [[1, 5, 9], [1, 7]]
    responses = [[11, 12, 13, 2], [14, 2]]
    batch = sequence_batch(prompts, responses, arith_tokenizer.pad_id, 8, 1)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    ref = jax.jit(lambda p, b: reference_logprobs(LORA, None, p, b))(params, batch)
    base = jax.jit(lambda p, b: sequence_logprobs(TINY, p, b)[0])(tiny_params, batch)
    np.testing.assert_array_equal(np.asarray(ref), np.asarray(base))
    policy = jax.jit(lambda p, b: sequence_logprobs(LORA, p, b)[0])(params, batch)
    assert np.abs(np.asarray(policy) - np.asarray(base)).max() > 1e-3  # adapters do act


def test_rl_start_folds_trained_adapters_into_the_base(lora_params, arith_tokenizer):
    """pi_0 with trained adapters: the phase's base (its reference) is pi_0 itself."""
    params = _trained_adapters(lora_params)
    start, ref = rl_start(LORA, params, seed=0)
    assert ref is None
    assert all(not np.any(v) for k, v in _flat(start).items() if "_lora_b" in k)
    batch = sequence_batch([[1, 5, 9]], [[11, 12, 2]], arith_tokenizer.pad_id, 8, 1)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    pi0 = sequence_logprobs(LORA, params, batch)[0]
    np.testing.assert_allclose(reference_logprobs(LORA, None, start, batch), pi0, atol=1e-5)
    assert rl_start(LORA, lora_params, 0)[0] is lora_params  # untrained: kept as is


def _direction_reward(rollouts, kind, tokenizer, shape, orm_scorer=None):
    """The share of a response's tokens among the 64 whose output embeddings point most
    along hidden axis 0 (a random policy earns ~1/6): a reward the layers' adapters can
    reach through the frozen final norm and LM head (for the low-ids reward of
    test_ppo.py, the frozen head bounds the shift of p(low) to about +0.1 here)."""
    score = np.zeros(shape[0], np.float32)
    for n, ids in enumerate(rollouts.response_ids):
        score[n] = np.mean([i in _TARGET_IDS for i in ids]) if ids else 0.0
    return score, np.zeros(shape, np.float32)


_TARGET_IDS: set[int] = set()


@pytest.mark.slow  # 105 s of the default suite's 64 min (shared 2-core CPU)
def test_ppo_with_lora_raises_a_toy_reward(
    lora_policy, tiny_params, lora_params, arith_examples, tmp_path, monkeypatch
):
    _TARGET_IDS.update(np.argsort(-np.asarray(tiny_params["lm_head"])[0])[:64].tolist())
    monkeypatch.setattr(ppo, "rollout_rewards", _direction_reward)
    cfg = dataclasses.replace(
        SMALL,
        num_iterations=6,
        prompts_per_iteration=16,
        minibatch_size=16,
        epochs_per_iteration=4,
        temperature=1.0,
        kl_coef=0.01,
    )
    policy = dataclasses.replace(
        lora_policy, model_config=TINY.replace(lora=LORA.lora.replace(alpha=16.0))
    )
    opt = OptimizerConfig(learning_rate=3e-2)
    params, history = run_ppo(policy, lora_params, arith_examples, [], cfg, opt, tmp_path)
    scores = [h.stats["score_mean"] for h in history]
    assert 0.05 < scores[0] < 0.25, scores
    assert min(scores[-2:]) > scores[0] + 0.05 and scores[-1] > scores[0] + 0.1, scores
    assert history[0].stats["kl_per_token"] == pytest.approx(0.0, abs=1e-5)  # pi = base
    assert history[-1].stats["kl_per_token"] > 1e-3  # ... then the adapters move away
    _only_adapters_changed(lora_params, params)


def test_grpo_with_lora_trains_adapters_only(
    lora_policy, lora_params, arith_examples, tmp_path, monkeypatch
):
    monkeypatch.setattr(grpo, "rollout_rewards", _low_ids_reward)
    cfg = dataclasses.replace(GRPO_SMALL, num_iterations=1, beta=0.04)
    params, state = run_grpo(lora_policy, lora_params, arith_examples, cfg, tmp_path)
    assert np.isfinite(state.history[-1].stats["kl"])
    _only_adapters_changed(lora_params, params)


def test_orm_with_lora_trains_adapters_and_the_reward_head(
    lora_policy, lora_params, arith_examples, tmp_path
):
    cfg = dataclasses.replace(ORM_CFG, epochs=1.0)
    orm, _, _ = train_orm(lora_policy, lora_params, arith_examples[:8], tmp_path, cfg)
    new = _only_adapters_changed(lora_params, orm)
    assert new == {"['reward_head']", "['reward_head_bias']"}
    assert np.any(np.asarray(orm["reward_head"]))


def test_sampling_with_adapters_equals_the_training_forward_pass(
    lora_policy, lora_params, arith_examples
):
    """The sampler applies the adapters unmerged (prefill and every decode step) as the
    training forward pass does."""
    from jaxrl_reason.algorithms.actor_critic import ActorCritic
    from jaxrl_reason.sampling.rollouts import sample_rollouts

    params = _trained_adapters(lora_params)
    cfg = lora_policy.sampling_config(2, 1.0, 10)
    rollouts = sample_rollouts(
        lora_policy.text_sampler,
        lora_policy.prompt_format,
        params,
        arith_examples[:3],
        cfg,
        jax.random.key(3),
    )
    batch = sequence_batch(rollouts.prompt_ids, rollouts.response_ids, 0, 32)
    ac = ActorCritic(LORA)
    logprobs, _, _ = jax.jit(ac.forward)(ac.init(params, jax.random.key(0)), batch)
    for n, (p, lp) in enumerate(zip(rollouts.prompt_ids, rollouts.policy_logprobs)):
        np.testing.assert_allclose(
            np.asarray(logprobs[n, len(p) : len(p) + len(lp)]), lp, atol=1e-4
        )


@pytest.mark.slow
def test_a_qlora_experiment_runs_every_phase_and_resumes(tmp_path):
    """SFT -> ORM -> EI, PPO (sparse, ORM), RCRL at smoke scale with an int8 base and
    adapters; run again, every phase restores its adapter-only state onto the rebuilt base."""
    from jaxrl_reason.demo import expand_ppo, experiment_settings, scale_of
    from jaxrl_reason.experiment import train_experiment

    settings = {
        "algorithms": expand_ppo(("sft", "ei", "ppo", "rcrl"), ("sparse", "orm")),
        **experiment_settings(scale_of("smoke"), 0, "test"),
    }
    settings["model"] = dataclasses.replace(
        settings["model"], lora=LoraConfig(rank=4, quantize="int8")
    )
    rows = train_experiment(tmp_path, show_progress=False, **settings)
    again = train_experiment(tmp_path, show_progress=False, **settings)
    assert [r["method"] for r in rows] == ["SFT", "EI", "PPO sparse", "PPO ORM", "RCRL"]
    assert json.dumps(again, sort_keys=True) == json.dumps(rows, sort_keys=True)  # NaN == NaN
