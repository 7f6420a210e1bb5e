"""RCRL: return labels, conditioned training batches, round bookkeeping, resume, a tiny run."""

import dataclasses
import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from jaxrl_reason.algorithms import expert_iteration, rcrl
from jaxrl_reason.algorithms.return_conditioning import BAD, GOOD, condition_prompt
from jaxrl_reason.data.example import Example
from jaxrl_reason.data.prompts import PromptFormat, zero_shot
from jaxrl_reason.evaluation.evaluate import EvalConfig
from jaxrl_reason.training.optimizer import OptimizerConfig

EXAMPLES = [
    Example("q1", "Tom has 2 apples and gets 3. How many?", "2+3=<<2+3=5>>5\n#### 5", "5"),
    Example("q2", "Ann has 4 pens and loses 1. How many?", "4-1=<<4-1=3>>3\n#### 3", "3"),
]


def test_conditioned_format_matches_condition_prompt():
    fmt = PromptFormat(prefix="Q: 1+1?\nA: #### 2\n\n")
    for token in (GOOD, "[SCORE_2]"):
        conditioned = rcrl.conditioned_format(fmt, token)
        question = "What is {2+3}?"  # braces in a question stay literal
        assert conditioned.format(question) == condition_prompt(fmt.format(question), token)
        assert conditioned.stop_sequences == fmt.stop_sequences
    assert rcrl.inference_format(zero_shot()).format("x") == "Q: x\nA: [GOOD] "
    assert rcrl.inference_format(zero_shot(), 3).template == "Q: {question}\nA: [SCORE_2] "


def test_sparse_labels_keep_bad_samples_and_dedup_per_token():
    samples = [["2+3=5\n#### 5", "2+3=5\n####  5", "#### 6", "#### 6 ", ""], ["#### 3"]]
    scores = rcrl.score_samples(EXAMPLES, samples)
    assert scores == [[1.0, 1.0, 0.0, 0.0, 0.0], [1.0]]
    labelled = rcrl.label_samples(EXAMPLES, samples, scores)
    # Whitespace variants are one example; empty samples teach nothing and are dropped.
    assert labelled == {
        "q1": [(GOOD, "2+3=5\n#### 5"), (BAD, "#### 6")],
        "q2": [(GOOD, "#### 3")],
    }


def test_scorer_scores_are_binned():
    samples = [["a", "b", "c", "d"], ["e", "f", "g", "h"]]

    def scorer(examples, rows):
        assert [ex.id for ex in examples] == ["q1", "q2"] and rows == samples
        return [[0.0, 0.33, 0.34, 0.66], [0.67, 1.0, 0.5, 0.999]]

    scores = rcrl.score_samples(EXAMPLES, samples, scorer)
    labelled = rcrl.label_samples(EXAMPLES, samples, scores, num_bins=3)
    # Bin i of 3 covers [i/3, (i+1)/3): floor(3 * score), 1.0 in the top bin.
    bins = {s: int(t[len("[SCORE_") : -1]) for q in labelled.values() for t, s in q}
    assert bins == {"a": 0, "b": 0, "c": 1, "d": 1, "e": 2, "f": 2, "g": 1, "h": 2}
    assert bins == {s: min(int(np.floor(3 * v)), 2) for s, v in zip("abcdefgh", sum(scores, []))}


def test_bad_scorer_and_config_raise():
    samples = [["a"], ["b"]]
    with pytest.raises(ValueError, match=r"returned 3.2 for question 'q2'.*probabilities"):
        rcrl.score_samples(EXAMPLES, samples, lambda e, s: [[0.5], [3.2]])
    with pytest.raises(ValueError, match="one score per sample"):
        rcrl.score_samples(EXAMPLES, samples, lambda e, s: [[0.5], []])
    with pytest.raises(ValueError, match="2 questions but 1 rows"):
        rcrl.score_samples(EXAMPLES, samples[:1])
    with pytest.raises(ValueError, match="num_bins must be >= 2"):
        rcrl.RCRLConfig(num_bins=1)
    with pytest.raises(ValueError, match="samples_per_question must be > 0"):
        rcrl.RCRLConfig(samples_per_question=0)
    with pytest.raises(ValueError, match="questions_per_round must be > 0"):
        rcrl.RCRLConfig(questions_per_round=0)
    with pytest.raises(ValueError, match="temperature"):
        rcrl.RCRLConfig(temperature=-1.0)
    with pytest.raises(ValueError, match="no training questions"):
        rcrl.run_rcrl(None, 0, [], [], rcrl.RCRLConfig(), None, None, "/nonexistent")


def _fake_sampler(log, texts_for):
    """A `sample_rollouts` stand-in: records the prompt format and returns `texts_for`."""

    def sample(policy, params, questions, k, key, per_call, prompt_format):
        log.append(prompt_format)
        k = getattr(k, "num_samples", k)  # a SamplingConfig, or FakePolicy's bare K
        rows = [texts_for(len(log), ex)[:k] for ex in questions]
        return SimpleNamespace(grouped=lambda: rows)

    return sample


def test_training_batches_put_return_token_in_the_prompt(
    tmp_path, monkeypatch, tiny_policy, arith_tokenizer
):
    fed = []

    def fake_train_sft(model_config, params, factory, opt, workdir, num_steps, seed, **kw):
        fed.extend(next(factory()) for _ in range(num_steps))
        return SimpleNamespace(params=params)

    # RCRL fine-tunes through EI's round fine-tuner.
    monkeypatch.setattr(expert_iteration, "train_sft", fake_train_sft)
    monkeypatch.setattr(
        rcrl, "sample_rollouts", _fake_sampler([], lambda r, ex: ["#### 5", "#### 7"])
    )
    cfg = rcrl.RCRLConfig(num_rounds=1, samples_per_question=2, batch_size=8, max_len=128)
    rcrl.run_rcrl(
        tiny_policy, 0, EXAMPLES, [], cfg, OptimizerConfig(), EvalConfig(), tmp_path, False
    )
    # q1: reference + "#### 5" [GOOD], "#### 7" [BAD]; q2: reference, "#### 5" and "#### 7"
    # both [BAD]: six examples, one batch of 6 per epoch, two epochs.
    expected = {
        (EXAMPLES[0].question, GOOD, EXAMPLES[0].solution),
        (EXAMPLES[0].question, GOOD, "#### 5"),
        (EXAMPLES[0].question, BAD, "#### 7"),
        (EXAMPLES[1].question, GOOD, EXAMPLES[1].solution),
        (EXAMPLES[1].question, BAD, "#### 5"),
        (EXAMPLES[1].question, BAD, "#### 7"),
    }
    token_ids = {arith_tokenizer.piece_to_id(t): t for t in (GOOD, BAD)}
    seen = set()
    for batch in fed:
        for tokens, loss, inputs in zip(batch["tokens"], batch["loss_mask"], batch["input_mask"]):
            n = int(inputs.sum())
            at = [i for i in range(n) if int(tokens[i]) in token_ids]
            assert len(at) == 1, "exactly one return token, as one piece"
            start = int(np.argmax(loss))  # first response token
            assert at[0] < start and not loss[: at[0] + 1].any(), "no loss on prompt or token"
            assert loss[start:n].all() and not loss[n:].any(), "loss on the whole response"
            prompt = arith_tokenizer.decode(tokens[1:start].tolist())
            question = prompt[len("Q: ") : prompt.index("\nA: ")]
            assert prompt.rstrip() == f"Q: {question}\nA: {token_ids[int(tokens[at[0]])]}"
            response = arith_tokenizer.decode(tokens[start:n].tolist())
            seen.add((question, token_ids[int(tokens[at[0]])], response.strip()))
    assert seen == expected


@dataclasses.dataclass
class FakePolicy:
    """Records how it is evaluated; params are numbers that "training" increments."""

    prompt_format: PromptFormat = dataclasses.field(default_factory=zero_shot)
    evaluated_with: list = dataclasses.field(default_factory=list)
    mesh: None = None

    def sampling_config(self, num_samples, temperature, max_new_tokens):
        return num_samples

    def evaluate(self, params, examples, cfg):
        self.evaluated_with.append((self.prompt_format.template, cfg.num_samples))
        return {"summary": {"maj@1": float(params), "maj@1_ci": (0.0, 1.0)}}


def _round_texts(r, ex):
    """Round r: a right answer for q1 worded per round, and one wrong answer."""
    right = ex.answer if ex.id == "q1" else "0"
    return [f"round {r} #### {right}", "#### 999"]


@pytest.mark.parametrize("retrain_from_initial", [True, False])
def test_rounds_bookkeeping(tmp_path, monkeypatch, retrain_from_initial):
    starts, datasets, formats = [], [], []

    def fake_train(policy, start, dataset, by_id, cfg, opt, rcrl_dir, r, show):
        starts.append(start)
        datasets.append({q: list(p) for q, p in dataset.items()})
        return start + 1

    monkeypatch.setattr(rcrl, "_train_round", fake_train)
    monkeypatch.setattr(rcrl, "sample_rollouts", _fake_sampler(formats, _round_texts))
    policy = FakePolicy()
    cfg = rcrl.RCRLConfig(
        num_rounds=3,
        samples_per_question=2,
        retrain_from_initial=retrain_from_initial,
        include_references=False,
    )
    eval_cfg = EvalConfig(num_samples=4)
    params, history = rcrl.run_rcrl(
        policy, 0, EXAMPLES, EXAMPLES[:1], cfg, OptimizerConfig(), eval_cfg, tmp_path, False
    )
    assert starts == ([0, 0, 0] if retrain_from_initial else [0, 1, 2])
    # Round 1 samples with plain prompts; later rounds conditioned on [GOOD].
    assert [f.template for f in formats] == ["Q: {question}\nA: "] + [
        "Q: {question}\nA: [GOOD] "
    ] * 2
    # Evaluation: conditioned on [GOOD], greedy-only until the last round.
    best = "Q: {question}\nA: [GOOD] "
    assert policy.evaluated_with == [(best, 0), (best, 0), (best, 4)]
    assert [h["eval"]["maj@1"] for h in history] == [s + 1 for s in starts]
    # Per round: q1 gets a new [GOOD] and q2 a new [BAD]; "#### 999" is [BAD] once each.
    assert [sum(map(len, d.values())) for d in datasets] == [4, 6, 8]
    assert datasets[-1]["q1"][:2] == [(GOOD, "round 1 #### 5"), (BAD, "#### 999")]
    assert [h["samples_drawn"] for h in history] == [4, 8, 12]
    assert [h["good_fraction"] for h in history] == [0.25] * 3
    assert history[0]["token_counts"] == {BAD: 3, GOOD: 1}
    assert [h["sampled_with"] for h in history] == [None, GOOD, GOOD]
    state = json.loads((tmp_path / "rcrl" / "state.json").read_text())
    assert state["rounds_done"] == 3 and state["history"] == history
    evals = [json.loads((tmp_path / "rcrl" / f"eval_round_{r}.json").read_text()) for r in (1, 3)]
    assert evals[1]["summary"]["maj@1"] == params


def test_evaluation_conditions_on_best_token(tmp_path, monkeypatch):
    monkeypatch.setattr(rcrl, "_train_round", lambda *a: 1)
    monkeypatch.setattr(rcrl, "sample_rollouts", _fake_sampler([], _round_texts))
    log = []
    policy = FakePolicy(evaluated_with=log)
    cfg = rcrl.RCRLConfig(num_rounds=2, samples_per_question=1, num_bins=3)
    rcrl.run_rcrl(
        policy, 0, EXAMPLES, EXAMPLES, cfg, OptimizerConfig(), EvalConfig(8), tmp_path, False
    )
    best = "Q: {question}\nA: [SCORE_2] "
    assert log == [(best, 0), (best, 8)]  # maj@1 after round 1, the full eval on the last
    assert rcrl.rcrl_policy(policy, 3).prompt_format.template == best
    assert policy.prompt_format == zero_shot(), "the base policy is left as it was"


def test_resume_skips_finished_rounds(tmp_path, monkeypatch):
    calls, formats = [], []

    def fake_train(policy, start, dataset, by_id, cfg, opt, rcrl_dir, r, show):
        calls.append((r, sum(map(len, dataset.values()))))
        return r * 10

    monkeypatch.setattr(rcrl, "_train_round", fake_train)
    monkeypatch.setattr(rcrl, "sample_rollouts", _fake_sampler(formats, _round_texts))
    args = (0, EXAMPLES, [])
    cfg1 = rcrl.RCRLConfig(num_rounds=1, samples_per_question=1)
    rcrl.run_rcrl(FakePolicy(), *args, cfg1, OptimizerConfig(), EvalConfig(), tmp_path, False)
    cfg2 = rcrl.RCRLConfig(num_rounds=2, samples_per_question=1)
    params, history = rcrl.run_rcrl(
        FakePolicy(), *args, cfg2, OptimizerConfig(), EvalConfig(), tmp_path, False
    )
    # Round 1: two references + two samples. Resumed: round 1 restored from its saved
    # dataset (not re-sampled); round 2 adds its two newly worded samples.
    assert calls == [(1, 4), (1, 4), (2, 6)]
    assert len(formats) == 2 and formats[1].template.endswith("[GOOD] ")
    assert [h["round"] for h in history] == [1, 2] and params == 20
    with pytest.raises(ValueError, match="num_bins=2 but RCRLConfig.num_bins=3"):
        rcrl.run_rcrl(
            FakePolicy(),
            *args,
            dataclasses.replace(cfg2, num_rounds=3, num_bins=3),
            OptimizerConfig(),
            EvalConfig(),
            tmp_path,
            False,
        )


def test_tiny_run_completes_and_resumes(tmp_path, tiny_policy, tiny_params, arith_examples):
    train, held_out = arith_examples[:4], arith_examples[4:6]
    cfg = rcrl.RCRLConfig(
        num_rounds=1,
        samples_per_question=2,
        max_new_tokens=8,
        epochs_per_round=1.0,
        batch_size=4,
        max_len=128,
        length_multiple=32,
    )
    eval_cfg = EvalConfig(num_samples=2, max_new_tokens=8)
    opt = OptimizerConfig(learning_rate=1e-3, warmup_steps=0)
    args = (tiny_policy, tiny_params, train, held_out, cfg, opt, eval_cfg, tmp_path, False)
    params, history = rcrl.run_rcrl(*args)
    state = json.loads((tmp_path / "rcrl" / "state.json").read_text())
    assert state["rounds_done"] == 1 and state["history"] == history
    entry = history[0]
    assert entry["samples_drawn"] == 8 and entry["dataset_size"] >= 4  # references at least
    assert {"maj@1", "pass@2"} <= entry["eval"].keys()
    metrics = tmp_path / "rcrl" / "round_1" / "metrics.jsonl"
    trained = metrics.read_text()
    again, history2 = rcrl.run_rcrl(*args)
    assert history2 == history and metrics.read_text() == trained, "no retraining"
    for a, b in zip(_leaves(params), _leaves(again)):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(params), _leaves(tiny_params)))


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]
