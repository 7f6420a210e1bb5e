"""ORM training: labels by hand, a toy ORM that learns to separate correct from wrong
samples, resume without resampling, and scores against a hand-written forward pass."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxrl_reason.algorithms import orm_scoring, rounds
from jaxrl_reason.algorithms import orm_training as ot
from jaxrl_reason.algorithms.policy import Policy
from jaxrl_reason.model import Transformer
from jaxrl_reason.parallel import make_mesh
from jaxrl_reason.sampling.rollouts import Rollouts
from jaxrl_reason.training.optimizer import OptimizerConfig
from tests.algorithms.conftest import phase_context

K = 4
CFG = ot.ORMConfig(num_samples=K, epochs=8.0, batch_size=16, length_multiple=64, seed=0)
OPTIMIZER = OptimizerConfig(learning_rate=3e-3, schedule="constant")


def _texts(ex):
    """Samples 0 and 2 are the reference solution (correct); 1 and 3 a visibly different
    wrong one."""
    wrong = f"I am not sure.\n#### {ex.answer}7"
    return [ex.solution, wrong, ex.solution, wrong]


class FakeSampler:
    """Stands in for `sample_rollouts`: fixed texts as exact token ids, counting calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, text_sampler, fmt, params, examples, cfg, rng, prompts_per_call=64):
        self.calls += 1
        tok = text_sampler.tokenizer
        texts = [t for ex in examples for t in _texts(ex)]
        prompts = [tok.encode(fmt.format(ex.question)) for ex in examples for _ in range(K)]
        responses = tok.encode_batch(texts, add_bos=False, add_eos=True)
        return Rollouts(
            examples=[ex for ex in examples for _ in range(K)],
            texts=texts,
            prompt_ids=prompts,
            response_ids=responses,
            policy_logprobs=[np.zeros(len(r), np.float32) for r in responses],
            num_samples=cfg.num_samples,
        )


def _train(policy, params, examples, workdir, cfg=CFG):
    sampler = FakeSampler()
    ctx = phase_context(policy, params, examples, workdir, optimizer=OPTIMIZER)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rounds, "sample_rollouts", sampler)
        result = rounds.run_rounds(ot.ORMTraining(cfg), ctx)
    return result.params, result.state.history[0].stats, sampler.calls


@pytest.fixture(scope="module")
def trained(tiny_policy, tiny_params, arith_examples, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("orm")
    orm, summary, calls = _train(tiny_policy, tiny_params, arith_examples[:16], workdir)
    return {"workdir": workdir, "params": orm, "summary": summary, "calls": calls}


def _auc(pos, neg):
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def test_trained_orm_separates_correct_from_wrong_on_new_questions(
    trained, tiny_policy, arith_examples
):
    s = trained["summary"]
    assert (s["num_questions"], s["labelled_samples"], s["fraction_correct"]) == (16, 64, 0.5)
    assert trained["calls"] == 1
    held_out = arith_examples[16:24]
    samples = [_texts(ex) for ex in held_out]
    scores = np.asarray(orm_scoring.ORMScorer(tiny_policy, trained["params"])(held_out, samples))
    assert scores.shape == (8, K)
    # rerank@K: the top sample of every question is a correct one (0 or 2)
    assert set(scores.argmax(1)) <= {0, 2}, scores
    assert _auc(scores[:, [0, 2]].ravel(), scores[:, [1, 3]].ravel()) > 0.95, scores


def test_summary_counts_label_balance_by_hand(trained, tiny_policy, arith_examples):
    tok = tiny_policy.tokenizer
    n_pos = n_all = 0
    for ex in arith_examples[:16]:
        for j, t in enumerate(_texts(ex)):
            n = len(tok.encode(t, add_bos=False, add_eos=True))
            n_all += n
            n_pos += n * (j % 2 == 0)
    s = trained["summary"]
    assert s["label_positive_fraction"] == pytest.approx(n_pos / n_all)
    assert s["num_steps"] == 8 * 4  # 64 samples / 16 per batch, 8 epochs
    assert s["final_accuracy"] > 0.9 and s["final_loss"] < 0.3, s


def test_resume_does_not_resample_and_restores_the_same_params(
    trained, tiny_policy, tiny_params, arith_examples
):
    workdir = trained["workdir"]
    orm, summary, calls = _train(tiny_policy, tiny_params, arith_examples[:16], workdir)
    assert calls == 0
    assert summary == trained["summary"]
    jax.tree.map(np.testing.assert_array_equal, orm, trained["params"])
    loaded, meta = orm_scoring.load_orm(workdir, tiny_policy)
    jax.tree.map(np.testing.assert_array_equal, loaded, trained["params"])
    assert meta["history"][0]["stats"]["labelled_samples"] == 64
    other = dataclasses.replace(CFG, num_samples=2)  # another ORM: refused, not reused
    with pytest.raises(ValueError, match="num_samples=4 but this run has num_samples=2"):
        _train(tiny_policy, tiny_params, arith_examples[:16], workdir, other)


def test_batches_label_every_response_token_or_only_step_ends():
    samples = ot.LabelledSamples(
        question_ids=["a", "a", "b"],
        texts=["", "", ""],
        prompt_ids=[[1, 5, 6], [1, 5, 6], [1, 7]],
        response_ids=[[8, 9, 2], [10, 2], [11, 12, 13, 2]],
        correct=[True, False, True],
    )
    ends = [np.array([0, 1, 1], bool), np.array([1, 1], bool), np.array([1, 0, 0, 1], bool)]
    batches = ot.ORMBatches(samples, pad_id=0, batch_size=2, length_multiple=8)
    assert batches.batches_per_epoch == 2
    seen = []
    for _ in range(2):  # one epoch: 2 + 1 real rows (the last batch padded with an empty row)
        batch = next(batches)
        assert batch["labels"].shape == batch["tokens"].shape == (2, 8)
        for row in range(2):
            tokens = batch["tokens"][row][batch["input_mask"][row] > 0].tolist()
            if not tokens:  # padding row: nothing labelled
                assert not batch["label_mask"][row].any()
                continue
            i = next(
                i for i in range(3) if samples.prompt_ids[i] + samples.response_ids[i] == tokens
            )
            seen.append(i)
            p, r = len(samples.prompt_ids[i]), len(samples.response_ids[i])
            want_mask = np.zeros(8, bool)
            want_mask[p : p + r] = True
            np.testing.assert_array_equal(batch["label_mask"][row], want_mask)
            np.testing.assert_array_equal(batch["labels"][row], want_mask * samples.correct[i])
    assert sorted(seen) == [0, 1, 2]
    assert batches.state() == {"epoch": 1, "batch": 0}

    only_ends = ot.ORMBatches(samples, 0, 3, 8, step_ends_only=True, step_end_masks=ends)
    batch = next(only_ends)
    for row in range(3):
        tokens = batch["tokens"][row][batch["input_mask"][row] > 0].tolist()
        i = next(i for i in range(3) if samples.prompt_ids[i] + samples.response_ids[i] == tokens)
        p = len(samples.prompt_ids[i])
        want_mask = np.zeros(8, bool)
        want_mask[p : p + len(ends[i])] = ends[i]
        np.testing.assert_array_equal(batch["label_mask"][row], want_mask)
        np.testing.assert_array_equal(batch["labels"][row], want_mask * samples.correct[i])


def _forward_scores(policy, params, prompts, responses):
    """The ORM's sigmoid after each response token, by hand: one right-padded batch (padding
    after a row cannot change its causal outputs), unjitted."""
    rows = [p + r for p, r in zip(prompts, responses)]
    t = max(map(len, rows))
    ids = np.array([row + [0] * (t - len(row)) for row in rows], np.int32)
    mask = np.array([[1] * len(row) + [0] * (t - len(row)) for row in rows], np.int32)
    out = Transformer(policy.model_config, heads=("reward",)).apply(
        {"params": params}, ids, np.broadcast_to(np.arange(t), ids.shape), mask
    )
    probs = 1 / (1 + np.exp(-np.asarray(out.heads["reward"], np.float64)))
    return [probs[n, len(p) : len(p) + len(r)] for n, (p, r) in enumerate(zip(prompts, responses))]


def test_scorer_matches_score_tokens_and_a_forward_pass(trained, tiny_policy, arith_examples):
    params, tok, fmt = trained["params"], tiny_policy.tokenizer, tiny_policy.prompt_format
    examples = arith_examples[16:19]
    samples = [["#### 3", "x\ny\n#### 4", ""], ["#### 1"], _texts(examples[2])]
    scorer = orm_scoring.ORMScorer(tiny_policy, params, rows_per_call=4)  # several chunks
    scores = scorer(examples, samples)
    assert scorer(examples[:1], [[]]) == [[]]
    prompts = [
        tok.encode(fmt.format(ex.question)) for ex, row in zip(examples, samples) for _ in row
    ]
    responses = [tok.encode(t, add_bos=False, add_eos=True) for row in samples for t in row]
    ends = [np.arange(len(r)) % 2 == 1 for r in responses]
    final, steps = scorer.score_tokens(prompts, responses, ends)
    _, every = scorer.score_tokens(prompts, responses)
    np.testing.assert_allclose(np.concatenate(scores), final, rtol=1e-6)
    for n, want in enumerate(_forward_scores(tiny_policy, params, prompts, responses)):
        np.testing.assert_allclose(final[n], want[-1], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(every[n], want, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(steps[n], np.where(ends[n], want, 0.0), rtol=1e-4, atol=1e-6)


def test_scorer_on_a_mesh_matches_one_device(trained, tiny_policy, arith_examples):
    mesh_policy = Policy(
        tiny_policy.model_config, tiny_policy.tokenizer, tiny_policy.prompt_format, make_mesh()
    )
    examples = arith_examples[16:19]
    samples = [_texts(ex)[:3] for ex in examples]
    on_mesh = orm_scoring.ORMScorer(mesh_policy, trained["params"])(examples, samples)
    single = orm_scoring.ORMScorer(tiny_policy, trained["params"])(examples, samples)
    np.testing.assert_allclose(on_mesh, single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_samples", 0),
        ("batch_size", 0),
        ("epochs", 0.0),
        ("num_questions", 0),
        ("temperature", -1.0),
        ("learning_rate", 0.0),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        ot.ORMConfig(**{field: value})


def test_bad_calls_raise_clear_errors(tiny_policy, tiny_params, tmp_path):
    with pytest.raises(ValueError, match="no training questions"):
        _train(tiny_policy, tiny_params, [], tmp_path / "orm")
    assert not (tmp_path / "orm").exists()
    with pytest.raises(FileNotFoundError, match="no saved ORM"):
        orm_scoring.load_orm(tmp_path, tiny_policy)
    scorer = orm_scoring.ORMScorer(
        tiny_policy, ot.orm_init_params(tiny_policy.model_config, tiny_params)
    )
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        scorer.score_tokens([[1], [1]], [[2]])
    with pytest.raises(ValueError, match="step-end mask of length 1"):
        scorer.score_tokens([[1]], [[2, 3]], [np.ones(1, bool)])
