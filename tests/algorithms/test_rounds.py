"""The one loop (`rounds.run_rounds`), once, with a fake algorithm: rounds and records,
evaluation cadence, resume mid-round and mid-checkpoint-interval, SIGTERM, refusals.

The fake's arrays are a float vector that each round moves by a function of its rollouts,
so a run that resumes from the wrong state, or samples the wrong round, ends elsewhere.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_reason.algorithms import round_sampling, rounds
from jaxrl_reason.algorithms.rounds import Algorithm, Improved, RoundPlan
from jaxrl_reason.data.example import Example
from jaxrl_reason.evaluation.evaluate import EvalConfig
from jaxrl_reason.sampling.rollouts import Rollouts
from jaxrl_reason.training.metrics_writer import read_metrics
from jaxrl_reason.training.preemption import Preempted
from tests.algorithms.conftest import phase_context

QUESTIONS = [Example(f"q{i}", f"question {i}", f"#### {i}", str(i)) for i in range(6)]


def fake_sample(text_sampler, prompt_format, params, examples, cfg, key, prompts_per_call):
    """A sampler stand-in: texts that depend on the key, the question and the params."""
    seed = int(np.asarray(jax.random.key_data(key)).sum() % 1000)
    value = float(np.asarray(params).sum())
    texts = [f"{seed}:{ex.id}:{value:.6f}:{j}" for ex in examples for j in range(cfg.num_samples)]
    return Rollouts(
        examples=[ex for ex in examples for _ in range(cfg.num_samples)],
        texts=texts,
        prompt_ids=[[1, 2]] * len(texts),
        response_ids=[[3] * (1 + j % 3) for j in range(len(texts))],
        policy_logprobs=[np.zeros(1 + j % 3, np.float32) for j in range(len(texts))],
        num_samples=cfg.num_samples,
    )


class FakePolicy:
    prompt_format = None
    text_sampler = None

    def __init__(self):
        self.evaluated = []

    def evaluate(self, params, examples, cfg, scorer=None):
        self.evaluated.append(cfg.num_samples)
        return {"summary": {"maj@1": float(np.asarray(params)[0]), "maj@1_ci": [0.0, 1.0]}}


class Counter(Algorithm):
    """arrays: {"v": [2] floats}; host: the texts seen per round. Round r samples 2 questions."""

    phase, title = "counter", "Counter"

    def __init__(self, num_rounds=4, eval_every=1, checkpoint_every=1, die_in=None, kind="a"):
        self.num_rounds, self.eval_every, self.checkpoint_every = (
            num_rounds,
            eval_every,
            checkpoint_every,
        )
        self.die_in, self.kind = die_in, kind
        self.planned = []

    def init(self, ctx):
        return {"v": jnp.zeros(2, jnp.float32)}, {"seen": []}

    def plan(self, ctx, state, r):
        self.planned.append(r)
        questions = round_sampling.draw_questions(ctx.train, 2, 0, r)
        sampling = type("S", (), {"num_samples": 3})()
        return RoundPlan(questions, state.arrays["v"], sampling, round_sampling.round_key(0, r), 8)

    def improve(self, ctx, state, rollouts, r):
        if r == self.die_in:
            self.die_in = None
            raise KeyboardInterrupt("killed mid-round")
        scratch = ctx.round_dir(r) / "checkpoints"
        scratch.mkdir(parents=True, exist_ok=True)  # a replayed round finds its own
        (ctx.round_dir(r) / "metrics.jsonl").write_text("{}\n")
        step = sum(len(t) for t in rollouts.texts) / 1000.0
        arrays = {"v": state.arrays["v"] * 0.5 + jnp.asarray([step, r], jnp.float32)}
        host = {"seen": [*state.host["seen"], rollouts.texts[0]]}
        return Improved(arrays, host, {"delta": step, "rows": len(rollouts)})

    def policy_params(self, arrays):
        return arrays["v"]

    def fingerprint(self):
        return {"kind": self.kind}


@pytest.fixture(autouse=True)
def _fake_sampler(monkeypatch):
    monkeypatch.setattr(rounds, "sample_rollouts", fake_sample)


def _run(tmp_path, algo, policy=None, eval_examples=QUESTIONS[:2]):
    ctx = phase_context(
        policy or FakePolicy(), None, QUESTIONS, tmp_path, eval_examples, EvalConfig(4)
    )
    return rounds.run_rounds(algo, ctx)


def test_rounds_records_metrics_and_evaluation_cadence(tmp_path):
    policy = FakePolicy()
    result = _run(tmp_path, Counter(num_rounds=5, eval_every=2), policy)
    state = result.state
    assert state.rounds_done == 5 and [h.round for h in state.history] == [1, 2, 3, 4, 5]
    # 2 questions x K = 3 per round, cumulative.
    assert [h.samples_drawn for h in state.history] == [6, 12, 18, 24, 30]
    # Greedy maj@1 on the cadence (rounds 2, 4), the full evaluation after the last.
    assert policy.evaluated == [0, 0, 4]
    assert [bool(h.eval) for h in state.history] == [False, True, False, True, True]
    assert result.evaluation["summary"]["maj@1"] == float(state.arrays["v"][0])
    records = read_metrics(tmp_path, "counter")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["samples_drawn"] for r in records] == [6, 12, 18, 24, 30]
    assert [r["step"] for r in read_metrics(tmp_path, "counter_eval")] == [2, 4, 5]
    # Round scratch: checkpoints dropped once the phase state holds the round, metrics kept.
    for r in range(1, 6):
        assert not (tmp_path / f"round_{r}" / "checkpoints").exists()
        assert (tmp_path / f"round_{r}" / "metrics.jsonl").exists()
    # A finished phase is restored, not run again.
    again = Counter(num_rounds=5, eval_every=2)
    rerun = _run(tmp_path, again, policy)
    assert again.planned == [] and rerun.evaluation is None
    np.testing.assert_array_equal(rerun.state.arrays["v"], state.arrays["v"])
    assert rerun.state.history == state.history and rerun.state.host == state.host


@pytest.mark.parametrize("checkpoint_every, die_in, resumes_after", [(1, 3, 2), (2, 4, 2)])
def test_resume_mid_round_equals_an_uninterrupted_run(
    tmp_path, checkpoint_every, die_in, resumes_after
):
    full = _run(tmp_path / "full", Counter(checkpoint_every=checkpoint_every)).state
    cut = Counter(checkpoint_every=checkpoint_every, die_in=die_in)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", cut)
    saved = sorted(p.name for p in (tmp_path / "cut" / "state").iterdir())
    assert saved[-1] == str(resumes_after)
    resumed = Counter(checkpoint_every=checkpoint_every)
    state = _run(tmp_path / "cut", resumed).state
    assert resumed.planned == list(range(resumes_after + 1, 5))
    np.testing.assert_array_equal(state.arrays["v"], full.arrays["v"])  # bitwise
    assert state.host == full.host and state.history == full.history


class StopAtOnce:
    """A PreemptionGuard whose SIGTERM has already arrived."""

    should_stop = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_sigterm_saves_after_the_round_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(rounds, "PreemptionGuard", StopAtOnce)
    with pytest.raises(Preempted, match="saved counter after round 1 in .*re-run the same"):
        _run(tmp_path, Counter(checkpoint_every=100))
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["1"]
    monkeypatch.undo()
    monkeypatch.setattr(rounds, "sample_rollouts", fake_sample)
    resumed = Counter(checkpoint_every=100)
    state = _run(tmp_path, resumed).state
    assert resumed.planned == [2, 3, 4] and state.rounds_done == 4
    full = _run(tmp_path / "full", Counter()).state
    np.testing.assert_array_equal(state.arrays["v"], full.arrays["v"])


def test_a_phase_written_by_other_settings_is_refused_untouched(tmp_path):
    _run(tmp_path, Counter(num_rounds=1))
    before = json.loads((tmp_path / "state" / "1" / "meta" / "metadata").read_text())
    with pytest.raises(ValueError, match=r"kind='a' but this run has kind='b'.*fresh workdir"):
        _run(tmp_path, Counter(num_rounds=2, kind="b"))

    class Other(Counter):  # another phase, whose arrays would not even fit
        phase = "other"

        def init(self, ctx):
            return {"w": jnp.zeros(3, jnp.float32)}, {}

    with pytest.raises(ValueError, match="phase='counter' but this run has phase='other'"):
        _run(tmp_path, Other(num_rounds=2))
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["1"]
    assert json.loads((tmp_path / "state" / "1" / "meta" / "metadata").read_text()) == before


def test_bad_settings_are_refused_before_anything_is_written(tmp_path):
    class Refuses(Counter):
        def init(self, ctx):
            raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        _run(tmp_path / "phase", Refuses())
    assert not (tmp_path / "phase").exists()


def test_draw_questions():
    qs = list(range(10))
    assert round_sampling.draw_questions(qs, None, 0, 1) == qs
    assert round_sampling.draw_questions(qs, 12, 0, 1) == qs  # in order: all of them
    subset = round_sampling.draw_questions(qs, 4, 0, 1)
    assert subset == sorted(subset) and len(set(subset)) == 4
    assert subset != round_sampling.draw_questions(qs, 4, 0, 2)  # another round, another draw
    rng = np.random.default_rng([0, 3])
    assert round_sampling.draw_questions(qs, 4, 0, 3, in_order=False) == list(
        rng.choice(10, 4, False)
    )
    with_replacement = round_sampling.draw_questions(qs, 25, 0, 1, in_order=False)
    assert len(with_replacement) == 25 and set(with_replacement) <= set(qs)


def test_statistics_may_not_shadow_the_metrics_keys(tmp_path):
    class Shadows(Counter):
        def improve(self, ctx, state, rollouts, r):
            arrays, host, stats = super().improve(ctx, state, rollouts, r)
            return Improved(arrays, host, {**stats, "step": 1.0})

    with pytest.raises(ValueError, match=r"may not be named \['step'\]"):
        _run(tmp_path, Shadows())
