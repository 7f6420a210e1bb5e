"""Expert Iteration bookkeeping: filtering, de-duplication, the cumulative dataset, re-init."""

import json

import pytest

from jaxrl_reason.algorithms import expert_iteration as ei
from jaxrl_reason.data.example import Example
from jaxrl_reason.evaluation.evaluate import EvalConfig
from jaxrl_reason.training.optimizer import OptimizerConfig

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


class FakePolicy:
    """Samples a correct answer for q1 only, with a different wording each round."""

    def __init__(self):
        self.calls = 0

    def sampling_config(self, num_samples, temperature, max_new_tokens):
        return num_samples

    def sample(self, params, examples, k, key, prompts_per_call):
        self.calls += 1
        return [[f"round {self.calls} #### {5 if ex.id == 'q1' else 0}"] * k for ex in examples]

    def evaluate(self, params, examples, cfg):
        return {"summary": {"maj@1": float(params), "maj@1_ci": (0.0, 1.0)}}


@pytest.mark.parametrize("retrain_from_initial", [True, False])
def test_rounds_start_from_initial_or_previous_params(tmp_path, monkeypatch, retrain_from_initial):
    starts, datasets = [], []

    def fake_train(policy, start, dataset, by_id, cfg, opt, ei_dir, r, show):
        starts.append(start)
        datasets.append({q: list(s) for q, s in dataset.items()})
        return start + 1  # "training" moves the params

    monkeypatch.setattr(ei, "_train_round", fake_train)
    cfg = ei.ExpertIterationConfig(
        num_rounds=3, samples_per_question=2, retrain_from_initial=retrain_from_initial
    )
    params, history = ei.run_expert_iteration(
        FakePolicy(),
        0,
        EXAMPLES,
        EXAMPLES[:1],
        cfg,
        OptimizerConfig(),
        EvalConfig(),
        tmp_path,
        False,
    )
    assert starts == ([0, 0, 0] if retrain_from_initial else [0, 1, 2])
    # One new distinct correct solution per round for q1, none for q2; cumulative.
    assert [sum(map(len, d.values())) for d in datasets] == [1, 2, 3]
    assert [h["samples_drawn"] for h in history] == [4, 8, 12]
    assert [h["solved_fraction"] for h in history] == [0.5, 0.5, 0.5]
    assert history[-1]["eval"]["maj@1"] == params
    state = json.loads((tmp_path / "ei" / "state.json").read_text())
    assert state["rounds_done"] == 3 and len(state["history"]) == 3


def test_resume_skips_finished_rounds(tmp_path, monkeypatch):
    calls = []

    def fake_train(policy, start, dataset, by_id, cfg, opt, ei_dir, r, show):
        calls.append((r, sum(map(len, dataset.values()))))
        return r * 10

    monkeypatch.setattr(ei, "_train_round", fake_train)
    args = (0, EXAMPLES, [])
    cfg1 = ei.ExpertIterationConfig(num_rounds=1, samples_per_question=1)
    ei.run_expert_iteration(
        FakePolicy(), *args, cfg1, OptimizerConfig(), EvalConfig(), tmp_path, False
    )
    policy = FakePolicy()
    policy.calls = 1  # its next sample is worded as round 2's
    cfg2 = ei.ExpertIterationConfig(num_rounds=2, samples_per_question=1)
    params, history = ei.run_expert_iteration(
        policy, *args, cfg2, OptimizerConfig(), EvalConfig(), tmp_path, False
    )
    # Round 1 is restored with its saved dataset (not re-sampled); round 2 adds to it.
    assert calls == [(1, 1), (1, 1), (2, 2)]
    assert policy.calls == 2, "round 1 must not be sampled again"
    assert [h["round"] for h in history] == [1, 2]
    assert history[1]["dataset_size"] == 2 and params == 20
