"""The PPO loop over the real sampler and train step: frames, rewards, learning, resume."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_reason.algorithms import ppo, rounds
from jaxrl_reason.algorithms.actor_critic import ActorCritic
from jaxrl_reason.algorithms.rollouts import sequence_batch
from jaxrl_reason.data.example import Example
from jaxrl_reason.evaluation.evaluate import EvalConfig
from jaxrl_reason.model import Transformer
from jaxrl_reason.sampling.rollouts import Rollouts, sample_rollouts
from jaxrl_reason.training.optimizer import OptimizerConfig
from tests.algorithms.conftest import TINY, phase_context

SMALL = ppo.PPOConfig(
    num_iterations=2,
    prompts_per_iteration=8,
    num_samples=2,
    max_new_tokens=12,
    minibatch_size=8,
    epochs_per_iteration=2,
    prompts_per_call=8,
)
EVAL = EvalConfig(num_samples=0, max_new_tokens=12)
OPT = OptimizerConfig(learning_rate=1e-3)


def run_ppo(policy, params, train, eval_examples, cfg, optimizer, workdir, scorer=None):
    """(LM params, history) of PPO with `cfg` on the one loop."""
    ctx = phase_context(
        policy, params, train, workdir, eval_examples, EVAL, optimizer=optimizer, scorer=scorer
    )
    result = rounds.run_rounds(ppo.PPO(cfg), ctx)
    return result.params, result.state.history


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_actor_critic_frames_match_a_full_forward_pass(tiny_policy, tiny_params, critic):
    ac = ActorCritic(TINY, critic)
    params = ac.init(tiny_params, jax.random.key(1))
    # A non-zero value head, so the value frame is visible.
    key = "policy" if critic == "shared" else "critic"
    params[key]["value_head"] = jax.random.normal(jax.random.key(2), (TINY.d_model,))
    batch = sequence_batch([[1, 5, 6], [1, 7]], [[8, 9, 2], [10, 11, 12, 2]], 0, 8)
    logprobs, values, entropy = jax.jit(ac.forward)(params, batch)

    lm = Transformer(TINY).apply(
        {"params": ac.policy_params(params)}, batch["tokens"], batch["positions"]
    )
    value_model = Transformer(TINY, heads=("value",))
    v = value_model.apply({"params": {**params[key]}}, batch["tokens"], batch["positions"]).heads
    logp = np.asarray(jax.nn.log_softmax(lm.logits, -1))
    tokens = np.asarray(batch["tokens"])
    for n in range(2):
        for t in range(1, tokens.shape[1]):
            if batch["response_mask"][n, t]:
                assert logprobs[n, t] == pytest.approx(logp[n, t - 1, tokens[n, t]], abs=1e-5)
                assert values[n, t] == pytest.approx(float(v["value"][n, t - 1]), abs=1e-5)
                p = np.exp(logp[n, t - 1])
                assert entropy[n, t] == pytest.approx(-(p * logp[n, t - 1]).sum(), abs=1e-4)
    assert float(jnp.abs(logprobs[:, 0]).sum()) == 0.0
    assert set(ac.policy_params(params)) == set(tiny_params)


def test_sampler_logprobs_equal_the_training_forward_pass(tiny_policy, tiny_params, arith_examples):
    cfg = tiny_policy.sampling_config(2, 1.0, 10)
    rollouts = sample_rollouts(
        tiny_policy.text_sampler,
        tiny_policy.prompt_format,
        tiny_params,
        arith_examples[:3],
        cfg,
        jax.random.key(3),
    )
    batch = sequence_batch(rollouts.prompt_ids, rollouts.response_ids, 0, 32)
    ac = ActorCritic(TINY)
    logprobs, _, _ = jax.jit(ac.forward)(ac.init(tiny_params, jax.random.key(0)), batch)
    for n, (p, lp) in enumerate(zip(rollouts.prompt_ids, rollouts.policy_logprobs)):
        np.testing.assert_allclose(
            np.asarray(logprobs[n, len(p) : len(p) + len(lp)]), lp, atol=1e-4
        )


class FakeORM:
    """Final score 0.8; step scores rise evenly from 0.6 to 0.8 at the last step."""

    def score_tokens(self, prompt_ids, response_ids, step_end_masks):
        steps = []
        for ends in step_end_masks:
            s = np.zeros(len(ends), np.float32)
            idx = np.flatnonzero(ends)
            s[idx] = np.linspace(0.6, 0.8, len(idx)) if len(idx) > 1 else 0.8
            steps.append(s)
        return np.full(len(response_ids), 0.8, np.float32), steps


def _rollouts(tokenizer, texts, example):
    prompt = tokenizer.encode("Q: q\nA: ", add_bos=True)
    ids = [tokenizer.encode(t, add_bos=False) + [tokenizer.eos_id] for t in texts]
    return Rollouts(
        examples=[example] * len(texts),
        texts=list(texts),
        prompt_ids=[prompt] * len(texts),
        response_ids=ids,
        policy_logprobs=[np.zeros(len(i), np.float32) for i in ids],
        num_samples=len(texts),
    )


def test_rewards_land_on_response_slots(arith_tokenizer):
    ref = "Tom has 2+3=<<2+3=5>>5.\nHe has 5*2=<<5*2=10>>10.\n#### 10"
    ex = Example("q", "How many?", ref, "10")
    texts = ["2+3=<<2+3=5>>5.\n5*2=<<5*2=10>>10.\n#### 10", "2+3=<<2+3=6>>6.\n#### 7"]
    r = _rollouts(arith_tokenizer, texts, ex)
    batch = sequence_batch(r.prompt_ids, r.response_ids, 0, 32, rows_multiple=4)
    shape = batch["tokens"].shape
    score, dense = ppo.rollout_rewards(r, "sparse", arith_tokenizer, shape)
    assert score.tolist() == [1.0, 0.0, 0.0, 0.0] and not dense.any()
    score, dense = ppo.rollout_rewards(r, "dense", arith_tokenizer, shape)
    assert score.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert dense[0].sum() == pytest.approx(2 / 3) and np.count_nonzero(dense[0]) == 2
    assert not dense[1:].any()  # a wrong step (2+3=6) earns nothing
    assert not (dense * (1 - batch["response_mask"])).any()
    score, dense = ppo.rollout_rewards(r, "orm", arith_tokenizer, shape, FakeORM())
    assert score.tolist() == pytest.approx([0.8, 0.8, 0, 0]) and not dense.any()
    score, dense = ppo.rollout_rewards(r, "dense_orm", arith_tokenizer, shape, FakeORM())
    # Step deltas telescope to the final score minus the 0.5 prior.
    assert not score.any()
    assert dense[:2].sum(-1) == pytest.approx([0.3, 0.3])
    assert np.count_nonzero(dense[0]) == 3 and np.count_nonzero(dense[1]) == 2
    with pytest.raises(ValueError, match="needs a trained ORM"):
        ppo.rollout_rewards(r, "orm", arith_tokenizer, shape)


def _low_ids_reward(rollouts, kind, tokenizer, shape, orm_scorer=None):
    """The share of a response's tokens in the lower half of the vocabulary."""
    score = np.zeros(shape[0], np.float32)
    for n, ids in enumerate(rollouts.response_ids):
        score[n] = np.mean(np.asarray(ids) < TINY.vocab_size // 2) if ids else 0.0
    return score, np.zeros(shape, np.float32)


@pytest.mark.slow  # 51 s of the default suite's 64 min (shared 2-core CPU)
def test_ppo_raises_a_toy_reward(tiny_policy, tiny_params, arith_examples, tmp_path, monkeypatch):
    """A toy reward a random policy earns half of; PPO must raise it."""
    monkeypatch.setattr(ppo, "rollout_rewards", _low_ids_reward)
    cfg = dataclasses.replace(
        SMALL,
        num_iterations=8,
        prompts_per_iteration=16,
        minibatch_size=16,
        epochs_per_iteration=4,
        temperature=1.0,
        kl_coef=0.0,
    )
    opt = OptimizerConfig(learning_rate=3e-3)
    params, history = run_ppo(tiny_policy, tiny_params, arith_examples, [], cfg, opt, tmp_path)
    scores = [h.stats["score_mean"] for h in history]
    assert 0.3 < scores[0] < 0.7, scores
    assert min(scores[-2:]) > scores[0] + 0.12, scores
    assert all(np.isfinite(h.stats["loss"]) for h in history)
    assert history[-1].samples_drawn == 8 * 16 * 2


@pytest.mark.slow  # 147 s of the default suite's 64 min (shared 2-core CPU)
def test_resume_reproduces_an_uninterrupted_run(
    tiny_policy, tiny_params, arith_examples, tmp_path, monkeypatch
):
    cfg = dataclasses.replace(SMALL, num_iterations=3, kl_target=0.5, kl_horizon=100.0)
    run = lambda wd: run_ppo(
        tiny_policy, tiny_params, arith_examples, arith_examples[:2], cfg, OPT, wd
    )
    full_params, full_history = run(tmp_path / "full")

    calls = {"n": 0}
    real = rounds.sample_rollouts

    def dies_in_iteration_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(rounds, "sample_rollouts", dies_in_iteration_3)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut")
    monkeypatch.setattr(rounds, "sample_rollouts", real)
    params, history = run(tmp_path / "cut")

    assert [h.round for h in history] == [1, 2, 3]
    assert [h.stats["kl_coef"] for h in history] == [h.stats["kl_coef"] for h in full_history]
    assert history[-1].stats["kl_coef"] != cfg.kl_coef  # the adaptive controller resumed
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(full_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A finished run is not trained again.
    again, _ = run(tmp_path / "cut")
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(full_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"reward": "bogus"}, "reward='bogus'"),
        ({"kl_kind": "k9"}, "kl_kind='k9'"),
        ({"minibatch_size": 100}, "minibatch_size=100 exceeds"),
        ({"lam": 1.5}, "lam=1.5"),
        ({"num_iterations": 0}, "num_iterations=0"),
    ],
)
def test_bad_config_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SMALL, **change)


def test_orm_reward_without_an_orm_is_refused(tiny_policy, tiny_params, arith_examples, tmp_path):
    cfg = dataclasses.replace(SMALL, reward="orm")
    with pytest.raises(ValueError, match="needs a trained ORM"):
        run_ppo(tiny_policy, tiny_params, arith_examples, [], cfg, OPT, tmp_path / "ppo")
    assert not (tmp_path / "ppo").exists()


@pytest.mark.slow  # 102 s of the default suite's 64 min (shared 2-core CPU)
def test_sharded_ppo_equals_single_device(
    tiny_policy, tiny_params, arith_examples, tmp_path, monkeypatch
):
    """One update on a (data 4, fsdp 2) mesh of 8 simulated devices (TINY has 1 kv head).

    The toy reward gives real advantages (with an all-zero reward, whitening would blow
    float noise up to unit scale and no two runs would agree).
    """
    from jaxrl_reason.parallel import make_mesh

    monkeypatch.setattr(ppo, "rollout_rewards", _low_ids_reward)
    cfg = dataclasses.replace(
        SMALL, num_iterations=1, epochs_per_iteration=1, minibatch_size=16, critic="separate"
    )  # one update
    mesh = make_mesh(data=4, fsdp=2)
    sharded_policy = dataclasses.replace(tiny_policy, mesh=mesh)
    run = lambda policy, wd: run_ppo(policy, tiny_params, arith_examples, [], cfg, OPT, wd)
    params, history = run(tiny_policy, tmp_path / "one")
    sharded, sharded_history = run(sharded_policy, tmp_path / "mesh")
    one, mesh_stats = history[0].stats, sharded_history[0].stats
    assert mesh_stats["score_mean"] == one["score_mean"]
    assert mesh_stats["response_tokens"] == one["response_tokens"]
    for key in ("loss", "policy_loss", "value_loss", "entropy", "grad_norm", "values_mean"):
        assert mesh_stats[key] == pytest.approx(one[key], rel=1e-3, abs=1e-7), key
    # Adam's first step is about lr * sign(gradient): float noise in a near-zero gradient
    # can flip it, so a parameter may differ by up to 2 * lr.
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-3 + 1e-6)


@pytest.mark.slow  # 41 s of the default suite's 64 min (shared 2-core CPU)
def test_rounds_after_the_first_compile_nothing(
    tiny_policy, tiny_params, arith_examples, tmp_path, monkeypatch
):
    """The compiled sampler, experience and train-step programs are reused round after round.

    The same 8 questions every iteration and one length bucket keep every shape fixed, so
    any compilation after round 1 would be a program rebuilt instead of reused.
    """
    from jax._src import monitoring

    compiles, per_round = [], {}

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    real_round = rounds._run_round

    def counted_round(algo, ctx, state, r):
        before = len(compiles)
        out = real_round(algo, ctx, state, r)
        per_round[r] = len(compiles) - before
        return out

    monkeypatch.setattr(rounds, "_run_round", counted_round)
    cfg = dataclasses.replace(SMALL, num_iterations=3, length_multiple=TINY.max_seq_len)
    monitoring.register_event_duration_secs_listener(listener)
    try:
        run_ppo(tiny_policy, tiny_params, arith_examples[:8], [], cfg, OPT, tmp_path)
    finally:
        monitoring.unregister_event_duration_listener(listener)
    assert per_round[1] > 0, "round 1 compiles (or the listener hears nothing)"
    assert per_round[2] == per_round[3] == 0, per_round
