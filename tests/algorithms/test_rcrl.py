"""RCRL's step: return labels, conditioned training batches, the cumulative set, a tiny run."""

from types import SimpleNamespace

import jax
import numpy as np
import pytest

from jaxrl_reason.algorithms import fine_tuning, rcrl
from jaxrl_reason.algorithms.return_conditioning import BAD, GOOD, condition_prompt
from jaxrl_reason.algorithms.rounds import PhaseState, run_rounds
from jaxrl_reason.data.example import Example
from jaxrl_reason.data.prompts import PromptFormat, zero_shot
from jaxrl_reason.evaluation.evaluate import EvalConfig
from jaxrl_reason.training.optimizer import OptimizerConfig
from tests.algorithms.conftest import phase_context, rollouts_of

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
    with pytest.raises(ValueError, match="RCRLConfig.num_samples must be > 0"):
        rcrl.RCRLConfig(num_samples=0)
    with pytest.raises(ValueError, match="questions_per_round must be > 0"):
        rcrl.RCRLConfig(questions_per_round=0)
    with pytest.raises(ValueError, match="temperature"):
        rcrl.RCRLConfig(temperature=-1.0)
    with pytest.raises(ValueError, match="no training questions"):
        rcrl.RCRL(rcrl.RCRLConfig()).init(phase_context(None, 0, [], "/nonexistent"))


def _rollouts(texts_for, k=2):
    """Rollouts of EXAMPLES: question ex's K samples are `texts_for(ex)`."""
    return rollouts_of(EXAMPLES, [texts_for(ex)[:k] for ex in EXAMPLES])


def test_training_batches_put_return_token_in_the_prompt(
    tmp_path, monkeypatch, tiny_policy, arith_tokenizer
):
    fed = []

    def fake_train_sft(model_config, params, factory, opt, workdir, num_steps, seed, **kw):
        fed.extend(next(factory()) for _ in range(num_steps))
        return SimpleNamespace(params=params)

    monkeypatch.setattr(fine_tuning, "train_sft", fake_train_sft)
    cfg = rcrl.RCRLConfig(num_rounds=1, num_samples=2, batch_size=8, max_len=128)
    algo = rcrl.RCRL(cfg)
    ctx = phase_context(tiny_policy, 0, EXAMPLES, tmp_path)
    algo.improve(ctx, PhaseState(*algo.init(ctx)), _rollouts(lambda ex: ["#### 5", "#### 7"]), 1)
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


def _round_texts(r):
    """Round r: a right answer for q1 worded per round, and one wrong answer."""
    return lambda ex: [f"round {r} #### {ex.answer if ex.id == 'q1' else '0'}", "#### 999"]


@pytest.mark.parametrize("retrain_from_initial", [True, False])
def test_improve_labels_accumulates_and_fine_tunes(
    tmp_path, monkeypatch, tiny_policy, retrain_from_initial
):
    starts = []

    def fake_train_sft(model_config, params, factory, opt, workdir, num_steps, seed, **kw):
        starts.append(params)
        return SimpleNamespace(params=params + 1)

    monkeypatch.setattr(fine_tuning, "train_sft", fake_train_sft)
    cfg = rcrl.RCRLConfig(
        num_rounds=3,
        num_samples=2,
        retrain_from_initial=retrain_from_initial,
        include_references=False,
    )
    algo = rcrl.RCRL(cfg)
    ctx = phase_context(tiny_policy, 0, EXAMPLES, tmp_path)
    state, sizes, history = PhaseState(*algo.init(ctx)), [], []
    for r in (1, 2, 3):
        arrays, host, stats = algo.improve(ctx, state, _rollouts(_round_texts(r)), r)
        state = PhaseState(arrays, host, r)
        sizes.append(stats["dataset_size"])
        history.append(stats)
    assert starts == ([0, 0, 0] if retrain_from_initial else [0, 1, 2])
    # Per round: q1 gets a new [GOOD] and q2 a new [BAD]; "#### 999" is [BAD] once each.
    assert sizes == [4, 6, 8]
    assert state.host["dataset"]["q1"][:2] == [(GOOD, "round 1 #### 5"), (BAD, "#### 999")]
    assert [h["good_fraction"] for h in history] == [0.25] * 3
    assert history[0]["token_counts"] == {BAD: 3, GOOD: 1}
    assert [h["sampled_with"] for h in history] == [None, GOOD, GOOD]


def test_sampling_and_evaluation_condition_on_the_best_token(tmp_path, tiny_policy):
    algo = rcrl.RCRL(rcrl.RCRLConfig(num_rounds=2, num_bins=3))
    ctx = phase_context(tiny_policy, 0, EXAMPLES, tmp_path)
    state = PhaseState(*algo.init(ctx))
    best = "Q: {question}\nA: [SCORE_2] "
    # Round 1 samples with plain prompts (the start policy never saw a token), later
    # rounds conditioned on the best one, as evaluation is.
    assert algo.plan(ctx, state, 1).prompt_format is None
    assert algo.plan(ctx, state, 2).prompt_format.template == best
    evaluated = algo.eval_policy(tiny_policy)
    assert evaluated.prompt_format.template == best
    assert evaluated.text_sampler is tiny_policy.text_sampler, "compiled programs are shared"
    assert tiny_policy.prompt_format == zero_shot(), "the base policy is left as it was"
    assert algo.tokenizer_symbols == ("[SCORE_0]", "[SCORE_1]", "[SCORE_2]")
    assert algo.fingerprint() == {"num_bins": 3}  # a resume under other bins is refused


@pytest.mark.slow  # 56 s of the default suite's 64 min (shared 2-core CPU)
def test_tiny_run_completes_and_resumes(tmp_path, tiny_policy, tiny_params, arith_examples):
    train, held_out = arith_examples[:4], arith_examples[4:6]
    cfg = rcrl.RCRLConfig(
        num_rounds=1,
        num_samples=2,
        max_new_tokens=8,
        epochs_per_round=1.0,
        batch_size=4,
        max_len=128,
        length_multiple=32,
    )
    eval_cfg = EvalConfig(num_samples=2, max_new_tokens=8)
    ctx = phase_context(
        tiny_policy,
        tiny_params,
        train,
        tmp_path,
        held_out,
        eval_cfg,
        optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=0),
    )
    result = run_rounds(rcrl.RCRL(cfg), ctx)
    entry = result.state.history[0]
    assert entry.samples_drawn == 8 and entry.stats["dataset_size"] >= 4  # references at least
    assert {"maj@1", "pass@2"} <= entry.eval.keys()
    metrics = tmp_path / "round_1" / "metrics.jsonl"
    trained = metrics.read_text()
    again = run_rounds(rcrl.RCRL(cfg), ctx)
    assert again.state.history == result.state.history
    assert metrics.read_text() == trained, "no retraining"
    for a, b in zip(_leaves(result.params), _leaves(again.params)):
        np.testing.assert_array_equal(a, b)
    assert not all(
        np.array_equal(a, b) for a, b in zip(_leaves(result.params), _leaves(tiny_params))
    )


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]
