"""The GRPO family on the one loop, over the real sampler and train step: every variant and
reward runs, dynamic sampling trains on informative groups only and stops at its cap, a
toy reward rises, resume is bitwise, and the 8-device mesh equals one device."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxrl_reason.algorithms import grpo, rounds
from jaxrl_reason.algorithms.registry import build_algorithm
from jaxrl_reason.evaluation.evaluate import EvalConfig
from jaxrl_reason.training.optimizer import OptimizerConfig
from tests.algorithms.conftest import TINY, phase_context
from tests.algorithms.test_ppo import FakeORM, _low_ids_reward

SMALL = grpo.GRPOConfig(
    num_iterations=2,
    prompts_per_iteration=8,
    num_samples=4,
    max_new_tokens=12,
    minibatch_size=16,
    epochs_per_iteration=2,
    prompts_per_call=8,
    length_multiple=TINY.max_seq_len,  # one length bucket: one train-step program
)
EVAL = EvalConfig(num_samples=0, max_new_tokens=12)
OPT = OptimizerConfig(learning_rate=1e-3)


def run_grpo(policy, params, train, cfg, workdir, optimizer=OPT, scorer=None, eval_examples=()):
    ctx = phase_context(
        policy, params, train, workdir, eval_examples, EVAL, optimizer=optimizer, scorer=scorer
    )
    result = rounds.run_rounds(grpo.GRPO(cfg), ctx)
    return result.params, result.state


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------ names and settings


def test_each_name_builds_its_variant_with_its_defaults():
    for variant in grpo.GRPO_VARIANTS:
        algo = build_algorithm(f"{variant}:dense")
        assert (algo.cfg.variant, algo.cfg.reward, algo.phase) == (
            variant,
            "dense",
            f"{variant}_dense",
        )
        assert build_algorithm(variant).phase == variant
    dr, gspo, dapo = (build_algorithm(v).cfg for v in ("dr_grpo", "gspo", "dapo"))
    assert (dr.normalize_std, dr.loss_aggregation, dr.beta) == (False, "seq_mean_token_sum", 0.0)
    assert gspo.ratio_level == "sequence" and gspo.eps_high == 4e-4
    assert (dapo.eps_low, dapo.eps_high, dapo.dynamic_sampling) == (0.2, 0.28, True)
    assert dapo.overlong_buffer == dapo.max_new_tokens // 5
    assert build_algorithm("rloo").cfg.leave_one_out
    # A setting given explicitly wins over the variant's.
    mixed = grpo.GRPO(grpo.GRPOConfig(variant="dr_grpo", dynamic_sampling=True)).cfg
    assert mixed.dynamic_sampling and not mixed.normalize_std
    with pytest.raises(ValueError, match="variant='grpo'"):
        build_algorithm("dapo", {"dapo": grpo.GRPOConfig()})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"variant": "ppo2"}, "variant='ppo2'"),
        ({"reward": "bogus"}, "reward='bogus'"),
        ({"loss_aggregation": "sum"}, "loss_aggregation='sum'"),
        ({"ratio_level": "word"}, "ratio_level='word'"),
        ({"minibatch_size": 12}, "minibatch_size=12 must divide"),
        ({"eps_low": 1.5}, "eps_low=1.5"),
        ({"beta": -1.0}, "beta=-1.0"),
        ({"overlong_buffer": 99}, "overlong_buffer=99"),
        ({"max_sampling_rounds": -1}, "max_sampling_rounds=-1"),
    ],
)
def test_bad_config_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SMALL, **change)


# --------------------------------------------------------------- every variant, reward


@pytest.mark.parametrize("variant", grpo.GRPO_VARIANTS)
def test_every_variant_runs_an_iteration(
    tiny_policy, tiny_params, arith_examples, tmp_path, monkeypatch, variant
):
    monkeypatch.setattr(grpo, "rollout_rewards", _low_ids_reward)  # every group informative
    cfg = dataclasses.replace(SMALL, variant=variant, num_iterations=1)
    params, state = run_grpo(tiny_policy, tiny_params, arith_examples, cfg, tmp_path)
    stats = state.history[-1].stats
    assert stats["updates"] == 2 * 32 // 16 and stats["groups_trained"] == 8
    for key in ("loss", "entropy", "kl", "clip_low_fraction", "clip_high_fraction",
                "reward_mean", "reward_std", "zero_variance_fraction", "response_tokens",
                "response_tokens_max", "truncated_fraction"):  # fmt: skip
        assert np.isfinite(stats[key]), key
    assert state.samples_drawn == stats["round_samples"] == 32
    if variant in ("dr_grpo", "gspo", "dapo"):
        assert stats["kl"] == 0.0  # beta 0: no KL term
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(tiny_params))
    )


@pytest.mark.parametrize("reward", ["sparse", "dense", "orm", "dense_orm"])
def test_every_reward_reaches_the_group_returns(arith_tokenizer, reward):
    """`_returns` goes through the same reward code as PPO: each sample's score plus the
    sum of its dense rewards, in groups of K."""
    from jaxrl_reason.algorithms.rollouts import rollout_rewards
    from jaxrl_reason.data.example import Example
    from tests.algorithms.test_ppo import _rollouts

    ref = "Tom has 2+3=<<2+3=5>>5.\nHe has 5*2=<<5*2=10>>10.\n#### 10"
    ex = Example("q", "How many?", ref, "10")
    texts = ["2+3=<<2+3=5>>5.\n5*2=<<5*2=10>>10.\n#### 10", "2+3=<<2+3=6>>6.\n#### 7"]
    r = _rollouts(arith_tokenizer, texts, ex)
    algo = grpo.GRPO(grpo.GRPOConfig(num_samples=2, reward=reward, minibatch_size=2))

    class Ctx:  # what _returns reads of the PhaseContext
        policy = type("P", (), {"tokenizer": arith_tokenizer})()
        scorer = FakeORM()

    returns = algo._returns(Ctx, r, 1)
    score, dense = rollout_rewards(r, reward, arith_tokenizer, (2, 64), FakeORM())
    np.testing.assert_allclose(returns, [score + dense.sum(-1)], rtol=1e-6)
    expected = {
        "sparse": [1, 0],
        "dense": [1 + 2 / 3, 0],
        "orm": [0.8, 0.8],
        "dense_orm": [0.3, 0.3],
    }
    np.testing.assert_allclose(returns[0], expected[reward], rtol=1e-5)


def test_an_orm_reward_runs_through_the_loop(tiny_policy, tiny_params, arith_examples, tmp_path):
    cfg = dataclasses.replace(SMALL, variant="rloo", reward="dense_orm", num_iterations=1)
    _, state = run_grpo(tiny_policy, tiny_params, arith_examples, cfg, tmp_path, scorer=FakeORM())
    assert np.isfinite(state.history[-1].stats["loss"])
    with pytest.raises(ValueError, match="needs a trained ORM"):
        run_grpo(tiny_policy, tiny_params, arith_examples, cfg, tmp_path / "none")


# -------------------------------------------------------------------- dynamic sampling


def _reward_by_question(informative_ids):
    """All K samples of a question outside `informative_ids` get the same reward (1 or 0
    by the question); inside, only the group's first sample is rewarded."""

    def reward(rollouts, kind, tokenizer, shape, orm_scorer=None):
        k, score = rollouts.num_samples, np.zeros(shape[0], np.float32)
        for n, ex in enumerate(rollouts.examples):
            if ex.id in informative_ids:
                score[n] = float(n % k == 0)
            else:
                score[n] = float(sum(map(ord, ex.id)) % 2)
        return score, np.zeros(shape, np.float32)

    return reward


def test_dynamic_sampling_trains_on_informative_groups_only(
    tiny_policy, tiny_params, arith_examples, tmp_path, monkeypatch
):
    informative = {ex.id for ex in arith_examples[::3]}  # a third of the questions
    monkeypatch.setattr(grpo, "rollout_rewards", _reward_by_question(informative))
    trained = []
    real = grpo.GRPO._experience

    def spy(self, ctx, state, rollouts, advantages, sample_mask):
        trained.append(rollouts)
        return real(self, ctx, state, rollouts, advantages, sample_mask)

    monkeypatch.setattr(grpo.GRPO, "_experience", spy)
    cfg = dataclasses.replace(
        SMALL, variant="dapo", num_iterations=2, max_sampling_rounds=8, overlong_buffer=0
    )
    _, state = run_grpo(tiny_policy, tiny_params, arith_examples, cfg, tmp_path)
    for rollouts, record in zip(trained, state.history, strict=True):
        questions = rollouts.questions()
        assert len(questions) == cfg.prompts_per_iteration  # a full batch of groups
        assert all(q.id in informative for q in questions)
        assert record.stats["groups_trained"] == cfg.prompts_per_iteration
        assert record.stats["sampling_draws"] > 1  # a third informative: more draws needed
        assert record.stats["round_samples"] == record.stats["sampling_draws"] * 32
    drawn = [h.stats["round_samples"] for h in state.history]
    assert state.samples_drawn == sum(drawn)  # every sample drawn is counted


def test_dynamic_sampling_stops_at_its_cap(
    tiny_policy, tiny_params, arith_examples, tmp_path, monkeypatch
):
    monkeypatch.setattr(grpo, "rollout_rewards", _reward_by_question(set()))  # none informative
    cfg = dataclasses.replace(
        SMALL, variant="dapo", num_iterations=1, max_sampling_rounds=2, overlong_buffer=0
    )
    params, state = run_grpo(tiny_policy, tiny_params, arith_examples, cfg, tmp_path)
    stats = state.history[-1].stats
    assert stats["sampling_draws"] == 3 and state.samples_drawn == 3 * 32
    assert stats["groups_trained"] == 0 and stats["updates"] == 0
    assert stats["zero_variance_fraction"] == 1.0
    _same(params, tiny_params)  # nothing to learn from: no update


def test_without_dynamic_sampling_zero_variance_groups_stay_with_zero_advantage(
    tiny_policy, tiny_params, arith_examples, tmp_path, monkeypatch
):
    monkeypatch.setattr(grpo, "rollout_rewards", _reward_by_question(set()))
    cfg = dataclasses.replace(SMALL, num_iterations=1, beta=0.0)
    params, state = run_grpo(tiny_policy, tiny_params, arith_examples, cfg, tmp_path)
    stats = state.history[-1].stats
    assert stats["sampling_draws"] == 1 and stats["groups_trained"] == 8
    assert stats["zero_variance_fraction"] == 1.0
    # Zero advantages and no KL term: the loss is 0 and so is every gradient.
    assert stats["loss"] == 0.0 and stats["grad_norm"] == 0.0


# --------------------------------------------------------------- learning and resume


def test_grpo_raises_a_toy_reward(tiny_policy, tiny_params, arith_examples, tmp_path, monkeypatch):
    """A toy reward a random policy earns half of; GRPO must raise it."""
    monkeypatch.setattr(grpo, "rollout_rewards", _low_ids_reward)
    cfg = dataclasses.replace(SMALL, num_iterations=8, temperature=1.0, beta=0.0)
    opt = OptimizerConfig(learning_rate=1e-2)
    _, state = run_grpo(tiny_policy, tiny_params, arith_examples, cfg, tmp_path, opt)
    rewards = [h.stats["reward_mean"] for h in state.history]
    assert 0.3 < rewards[0] < 0.7, rewards
    assert min(rewards[-2:]) > rewards[0] + 0.2, rewards
    assert state.samples_drawn == 8 * 8 * 4


@pytest.mark.slow  # 43 s of the default suite's 64 min (shared 2-core CPU)
def test_resume_reproduces_an_uninterrupted_run(
    tiny_policy, tiny_params, arith_examples, tmp_path, monkeypatch
):
    """DAPO (GRPO's path plus dynamic sampling and the overlong penalty), killed in its
    last draw of iteration 3 and resumed."""
    informative = {ex.id for ex in arith_examples[::2]}
    monkeypatch.setattr(grpo, "rollout_rewards", _reward_by_question(informative))
    cfg = dataclasses.replace(SMALL, variant="dapo", num_iterations=3, overlong_buffer=4)
    run = lambda wd: run_grpo(tiny_policy, tiny_params, arith_examples, cfg, wd)
    full_params, full_state = run(tmp_path / "full")
    draws = [h.stats["sampling_draws"] for h in full_state.history]
    assert draws[2] > 1  # so the kill below lands after iteration 3's first draw

    calls = {"n": 0}
    real = rounds.sample_rollouts
    kill_at = sum(draws[:2]) + draws[2]  # the last draw of iteration 3

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(rounds, "sample_rollouts", dies)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut")
    monkeypatch.setattr(rounds, "sample_rollouts", real)
    params, state = run(tmp_path / "cut")
    assert [h.round for h in state.history] == [1, 2, 3]
    assert [h.stats for h in state.history] == [h.stats for h in full_state.history]
    assert state.samples_drawn == full_state.samples_drawn
    _same(params, full_params)


@pytest.mark.slow  # 62 s of the default suite's 64 min (shared 2-core CPU)
def test_sharded_update_equals_single_device(
    tiny_policy, tiny_params, arith_examples, tmp_path, monkeypatch
):
    """One update on a (data 4, fsdp 2) mesh of 8 simulated devices, KL term included."""
    from jaxrl_reason.parallel import make_mesh

    monkeypatch.setattr(grpo, "rollout_rewards", _low_ids_reward)
    cfg = dataclasses.replace(
        SMALL, num_iterations=1, epochs_per_iteration=1, minibatch_size=32, beta=0.1
    )
    mesh_policy = dataclasses.replace(tiny_policy, mesh=make_mesh(data=4, fsdp=2))
    params, state = run_grpo(tiny_policy, tiny_params, arith_examples, cfg, tmp_path / "one")
    sharded, mesh_state = run_grpo(mesh_policy, tiny_params, arith_examples, cfg, tmp_path / "m")
    one, mesh_stats = state.history[0].stats, mesh_state.history[0].stats
    assert mesh_stats["reward_mean"] == one["reward_mean"]
    for key in ("loss", "policy_loss", "entropy", "grad_norm", "kl"):
        assert mesh_stats[key] == pytest.approx(one[key], rel=1e-3, abs=1e-7), key
    # Adam's first step is about lr * sign(gradient): float noise in a near-zero gradient
    # can flip it, so a parameter may differ by up to 2 * lr.
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-3 + 1e-6)


def test_truncated_samples_are_detected_and_can_be_masked(
    tiny_policy, tiny_params, arith_examples, tmp_path, monkeypatch
):
    from jaxrl_reason.sampling.rollouts import Rollouts

    eos = tiny_policy.tokenizer.eos_id
    ids = [[5, 6, eos], [5, 6, 7, 8], [5, 6, 7, eos], [5]]  # budget 4: only row 1 is cut
    r = Rollouts([arith_examples[0]] * 4, ["t"] * 4, [[1]] * 4, ids, [np.zeros(1)] * 4, 4)
    assert grpo.truncated(r, (eos,), 4).tolist() == [False, True, False, False]
    assert grpo.truncated(r, (eos, 8), 4).tolist() == [False] * 4  # a second end id ends too

    monkeypatch.setattr(grpo, "rollout_rewards", _low_ids_reward)
    monkeypatch.setattr(grpo, "truncated", lambda r, eos, n: np.ones(len(r), np.bool_))
    cfg = dataclasses.replace(SMALL, num_iterations=1, beta=0.1, mask_truncated=True)
    params, state = run_grpo(tiny_policy, tiny_params, arith_examples, cfg, tmp_path)
    stats = state.history[-1].stats
    assert stats["truncated_fraction"] == 1.0
    assert stats["loss"] == 0.0 and stats["grad_norm"] == 0.0  # every sample masked
    _same(params, tiny_params)
