"""Expert Iteration's step: filtering, de-duplication, the cumulative dataset, re-init."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from jaxrl_reason.algorithms import expert_iteration as ei
from jaxrl_reason.algorithms import fine_tuning
from jaxrl_reason.algorithms.rounds import PhaseState
from jaxrl_reason.data.example import Example
from jaxrl_reason.evaluation.evaluate import EvalConfig
from tests.algorithms.conftest import phase_context, rollouts_of

EXAMPLES = [
    Example("q1", "Tom has 2 apples and gets 3. How many?", "2+3=<<2+3=5>>5\n#### 5", "5"),
    Example("q2", "Ann has 4 pens and loses 1. How many?", "4-1=<<4-1=3>>3\n#### 3", "3"),
]


def test_correct_solutions_filters_and_dedups_per_question():
    samples = [
        ["2+3=5\n#### 5", "2+3 = 5\n#### 5", "2+3=5\n####   5 ", "#### 6", ""],
        ["4-1=3\n#### 3", "4-1=3\n#### 3", "no answer"],
    ]
    kept = ei.correct_solutions(EXAMPLES, samples)
    # Whitespace variants are one solution; "2+3 = 5" differs in its tokens, so it stays.
    assert kept == {"q1": ["2+3=5\n#### 5", "2+3 = 5\n#### 5"], "q2": ["4-1=3\n#### 3"]}


def test_check_calculations_drops_right_answers_reached_by_wrong_arithmetic():
    samples = [
        [
            "2+3=<<2+3=5>>5\n#### 5",  # right
            "2+2=<<2+2=5>>5\n#### 5",  # right answer, wrong step: the check drops it
            "<<2+3=6>>6 <<6-1=5>>5\n#### 5",  # one wrong step among right ones
            "no steps\n#### 5",  # nothing to check: kept
        ],
        ["4-1=<<4-1=3>>3\n#### 3"],
    ]
    assert ei.correct_solutions(EXAMPLES, samples) == {
        "q1": [s.strip() for s in samples[0]],
        "q2": samples[1],
    }
    assert ei.correct_solutions(EXAMPLES, samples, check_calculations=True) == {
        "q1": [samples[0][0], samples[0][3]],
        "q2": samples[1],
    }


def test_correct_solutions_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="2 questions but 1 rows"):
        ei.correct_solutions(EXAMPLES, [["#### 5"]])


def test_merge_is_cumulative_and_dedups_across_rounds():
    d1, added1 = ei.merge({}, {"q1": ["a #### 5"]})
    d2, added2 = ei.merge(d1, {"q1": ["a  #### 5", "b #### 5"], "q2": ["c #### 3"]})
    assert (added1, added2) == (1, 2)
    assert d2 == {"q1": ["a #### 5", "b #### 5"], "q2": ["c #### 3"]}
    assert d1 == {"q1": ["a #### 5"]}, "merge must not modify the previous dataset"


def test_as_examples_pairs_each_solution_with_its_question():
    out = ei.as_examples({"q2": ["s1", "s2"]}, {ex.id: ex for ex in EXAMPLES})
    assert [(e.id, e.question, e.solution, e.answer) for e in out] == [
        ("q2#0", EXAMPLES[1].question, "s1", "3"),
        ("q2#1", EXAMPLES[1].question, "s2", "3"),
    ]


def _rollouts(texts):
    return rollouts_of(EXAMPLES, texts)


@pytest.mark.parametrize("retrain_from_initial", [True, False])
def test_improve_keeps_the_correct_merges_and_fine_tunes(
    tmp_path, monkeypatch, tiny_policy, retrain_from_initial
):
    """Two rounds of EI's step: the cumulative dataset is what is fine-tuned on, from the
    initial params or the previous round's, in the round's scratch directory."""
    trained = []

    def fake_train_sft(model_config, params, factory, opt, workdir, num_steps, seed, **kw):
        trained.append((params, sorted(set(factory().example_ids)), workdir, seed))
        return SimpleNamespace(params=params + 10)

    monkeypatch.setattr(fine_tuning, "train_sft", fake_train_sft)
    cfg = ei.ExpertIterationConfig(num_rounds=2, retrain_from_initial=retrain_from_initial)
    algo = ei.ExpertIteration(cfg)
    ctx = phase_context(tiny_policy, 1, EXAMPLES, tmp_path)
    arrays, host = algo.init(ctx)
    state = PhaseState(arrays, host)
    texts = [["r1 #### 5", "r1 #### 5 ", "#### 6"], ["#### 0"] * 3]
    arrays, host, stats = algo.improve(ctx, state, _rollouts(texts), 1)
    assert host == {"dataset": {"q1": ["r1 #### 5"]}} and arrays == 11
    assert stats == {"questions": 2, "solved_fraction": 0.5, "new_solutions": 1, "dataset_size": 1}
    state = PhaseState(arrays, host, 1, 6)
    texts = [["r2 #### 5", "r1 #### 5", "#### 6"], ["#### 3", "#### 0", "#### 0"]]
    arrays, host, stats = algo.improve(ctx, state, _rollouts(texts), 2)
    assert host["dataset"] == {"q1": ["r1 #### 5", "r2 #### 5"], "q2": ["#### 3"]}
    assert stats["new_solutions"] == 2 and stats["solved_fraction"] == 1.0
    starts = [t[0] for t in trained]
    assert starts == ([1, 1] if retrain_from_initial else [1, 11])
    assert [t[1] for t in trained] == [["q1#0"], ["q1#0", "q1#1", "q2#0"]]
    assert [t[2] for t in trained] == [tmp_path / "round_1", tmp_path / "round_2"]
    assert [t[3] for t in trained] == [1, 2]  # seed + round


def test_include_sft_data_fine_tunes_on_the_sft_solutions_too(tmp_path, monkeypatch, tiny_policy):
    trained = []

    def fake_train_sft(model_config, params, factory, opt, workdir, num_steps, seed, **kw):
        trained.append(sorted(set(factory().example_ids)))
        return SimpleNamespace(params=params)

    monkeypatch.setattr(fine_tuning, "train_sft", fake_train_sft)
    sft = [dataclasses.replace(EXAMPLES[1], id="sft0")]
    ctx = phase_context(tiny_policy, 1, EXAMPLES, tmp_path, sft_examples=sft)
    for include, want in ((True, ["q1#0", "sft0"]), (False, ["q1#0"])):
        algo = ei.ExpertIteration(ei.ExpertIterationConfig(include_sft_data=include))
        algo.improve(ctx, PhaseState(1, {"dataset": {}}), _rollouts([["#### 5"], ["x"]]), 1)
        assert trained.pop() == want


def test_a_round_with_nothing_correct_leaves_the_policy(tmp_path, monkeypatch, tiny_policy):
    monkeypatch.setattr(fine_tuning, "train_sft", lambda *a, **k: pytest.fail("trained"))
    algo = ei.ExpertIteration(ei.ExpertIterationConfig(retrain_from_initial=False))
    ctx = phase_context(tiny_policy, 1, EXAMPLES, tmp_path)
    out = algo.improve(ctx, PhaseState(7, {"dataset": {}}), _rollouts([["#### 9"], ["x"]]), 1)
    assert out.arrays == 7 and out.stats["dataset_size"] == 0


@pytest.mark.parametrize("full_every_round", [False, True])
def test_evaluation_is_greedy_until_the_last_round(full_every_round):
    cfg = ei.ExpertIterationConfig(num_rounds=3, full_eval_every_round=full_every_round)
    algo = ei.ExpertIteration(cfg)
    k = [algo.eval_config(r, EvalConfig(num_samples=8)).num_samples for r in (1, 2, 3)]
    assert k == ([8, 8, 8] if full_every_round else [0, 0, 8])


@pytest.mark.slow  # 43 s of the default suite's 64 min (shared 2-core CPU)
def test_a_run_killed_mid_round_resumes_bitwise(
    tmp_path, monkeypatch, tiny_policy, tiny_params, arith_examples
):
    """Real sampling and fine-tuning; every other sample is made right (a random model
    solves nothing), so each round fine-tunes. Killed while sampling round 2, the run
    resumes from round 1's saved phase state and ends where the uninterrupted one ends."""
    import dataclasses

    import jax

    from jaxrl_reason.algorithms import rounds

    real = rounds.sample_rollouts
    calls = {"n": 0, "die_at": None}

    def half_right(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["die_at"]:
            raise KeyboardInterrupt("killed")
        out = real(*args, **kwargs)
        texts = [
            ex.solution if i % 2 else t for i, (t, ex) in enumerate(zip(out.texts, out.examples))
        ]
        return dataclasses.replace(out, texts=texts)

    monkeypatch.setattr(rounds, "sample_rollouts", half_right)
    cfg = ei.ExpertIterationConfig(
        num_rounds=2,
        num_samples=2,
        max_new_tokens=8,
        questions_per_round=4,
        epochs_per_round=1.0,
        batch_size=4,
        max_len=256,
        length_multiple=32,
        retrain_from_initial=False,
    )
    run = lambda wd: rounds.run_rounds(
        ei.ExpertIteration(cfg), phase_context(tiny_policy, tiny_params, arith_examples[:8], wd)
    )
    full = run(tmp_path / "full")
    calls.update(n=0, die_at=2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut")
    calls.update(n=0, die_at=None)
    resumed = run(tmp_path / "cut")
    assert calls["n"] == 1, "round 1 is restored, only round 2 is sampled again"
    assert resumed.state.host == full.state.host and resumed.state.history == full.state.history
    assert full.state.history[-1].stats["dataset_size"] > 0
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    moved = jax.tree.leaves(full.params)[0] - jax.tree.leaves(tiny_params)[0]
    assert np.abs(np.asarray(moved)).max() > 0, "the rounds fine-tuned"
