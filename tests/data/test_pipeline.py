"""Input pipeline: determinism, resumption, masks, left-padded prompts."""

import numpy as np
import pytest

from jaxrl_reason.data.arith import generate_arith
from jaxrl_reason.data.example import Example
from jaxrl_reason.data.pipeline import (
    SupervisedBatches,
    bucket_length,
    tokenize_examples,
)
from jaxrl_reason.data.prompts import zero_shot

EXAMPLES = generate_arith("train", 100, seed=0)


def _batches(tok, seed=0, **kw):
    return SupervisedBatches(EXAMPLES, tok, zero_shot(), batch_size=8, max_len=192, seed=seed, **kw)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_deterministic_per_seed(arith_tokenizer):
    _assert_same(_take(_batches(arith_tokenizer), 30), _take(_batches(arith_tokenizer), 30))
    a = next(_batches(arith_tokenizer, seed=0))["tokens"]
    b = next(_batches(arith_tokenizer, seed=1))["tokens"]
    assert not np.array_equal(a, b)


def test_state_restore_continues_identically(arith_tokenizer):
    reference = _take(_batches(arith_tokenizer), 40)  # 12 batches/epoch: crosses epochs
    it = _batches(arith_tokenizer)
    _take(it, 17)
    state = it.state()
    assert state == {"epoch": 1, "batch": 5}
    resumed = _batches(arith_tokenizer)
    resumed.restore(dict(state))
    _assert_same(_take(resumed, 23), reference[17:])
    with pytest.raises(ValueError):
        resumed.restore({"epoch": 0, "batch": 99})


def test_each_epoch_is_a_permutation(arith_tokenizer):
    it = _batches(arith_tokenizer)
    rows = np.concatenate([b["tokens"] for b in _take(it, it.batches_per_epoch)])
    prompts, responses = tokenize_examples(EXAMPLES, arith_tokenizer, zero_shot())
    seqs = {tuple(p + r) for p, r in zip(prompts, responses)}
    got = [tuple(row[row != arith_tokenizer.pad_id]) for row in rows]
    assert len(set(got)) == len(got) == 96 and set(got) <= seqs


def test_loss_mask_covers_exactly_the_response(arith_tokenizer):
    tok = arith_tokenizer
    batch = next(_batches(tok))
    assert batch["tokens"].dtype == np.int32 and batch["tokens"].shape == (8, 192)
    for row in range(8):
        tokens, mask = batch["tokens"][row], batch["loss_mask"][row]
        n = int(batch["input_mask"][row].sum())
        assert (tokens[n:] == tok.pad_id).all() and tokens[0] == tok.bos_id
        response = tokens[mask == 1.0]
        assert response[-1] == tok.eos_id and mask[0] == 0.0
        # the masked tokens decode to a solution; everything before is the prompt
        start = int(np.argmax(mask))
        assert mask[start:n].all() and not mask[n:].any()
        pairs = {(zero_shot().format(ex.question), ex.solution) for ex in EXAMPLES}
        assert (tok.decode(tokens[:start]), tok.decode(response)) in pairs
        np.testing.assert_array_equal(batch["positions"][row, :n], np.arange(n))


def test_overlong_examples_are_dropped(arith_tokenizer):
    long = Example("long", "Q " * 300, "#### 1", "1")
    it = SupervisedBatches([*EXAMPLES, long], arith_tokenizer, zero_shot(), 8, 192)
    assert it.num_dropped == 1 and "long" not in it.example_ids
    with pytest.raises(ValueError, match="max_len"):
        SupervisedBatches(EXAMPLES, arith_tokenizer, zero_shot(), 8, max_len=10)


def test_length_multiple(arith_tokenizer):
    batch = next(_batches(arith_tokenizer, length_multiple=32))
    assert batch["tokens"].shape[1] % 32 == 0 and batch["tokens"].shape[1] <= 192


@pytest.mark.parametrize(
    "n, multiple, pow2, expected",
    [
        (1, 32, False, 32),
        (33, 32, False, 64),
        (64, 32, False, 64),
        (33, 16, True, 64),
        (5, 8, True, 8),
    ],
)
def test_bucket_length(n, multiple, pow2, expected):
    assert bucket_length(n, multiple, pow2) == expected
