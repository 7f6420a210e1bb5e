"""The sampler against slow references: a full forward pass per step, numpy truncation."""

import jax
import numpy as np
import pytest

from jaxrl_reason.sampling import Sampler, SamplingConfig
from jaxrl_reason.sampling import sampler as sampler_lib
from tests.sampling.conftest import full_forward_logits, greedy_reference
from tests.sampling.test_strategies import reference_distribution

PROMPTS = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11], [4]]  # ragged: left padding differs per row
PAD = 0


@pytest.fixture(scope="module")
def sampler(tiny):
    return Sampler(tiny[0], pad_id=PAD)


def test_greedy_matches_full_forward_reference(tiny, sampler):
    cfg, params = tiny
    sc = SamplingConfig(num_samples=3, max_new_tokens=12, temperature=0.0)
    out = sampler.sample(params, PROMPTS, sc, jax.random.key(0))
    assert out.tokens.shape == (3, 3, 12) and out.tokens.dtype == np.int32
    for b, prompt in enumerate(PROMPTS):
        want = greedy_reference(cfg, params, prompt, 12)
        for k in range(3):  # all K greedy samples are identical
            assert out.tokens[b, k].tolist() == want
    assert (out.lengths == 12).all() and not out.stopped_by_eos.any()
    seqs = [p + out.tokens[b, 0].tolist() for b, p in enumerate(PROMPTS)]
    for b, logp in enumerate(full_forward_logits(cfg, params, seqs)):
        n = len(PROMPTS[b])
        want = logp[np.arange(n - 1, n + 11), out.tokens[b, 0]]
        np.testing.assert_allclose(out.policy_logprobs[b, 0], want, atol=2e-5)
        np.testing.assert_allclose(out.logprobs[b, 0], want, atol=2e-5)  # greedy: the same


def test_eos_stops_rows_pads_after_and_loop_exits_early(tiny, sampler):
    cfg, params = tiny
    free = greedy_reference(cfg, params, PROMPTS[0], 12)
    # An EOS id that greedy decoding of prompt 0 first emits at step j >= 2.
    j = next(i for i, t in enumerate(free) if i >= 2 and t not in free[:i])
    eos = free[j]
    sc = SamplingConfig(num_samples=2, max_new_tokens=12, temperature=0.0, eos_ids=(eos,))
    out = sampler.sample(params, PROMPTS, sc, jax.random.key(0))
    for b, prompt in enumerate(PROMPTS):
        want = greedy_reference(cfg, params, prompt, 12, eos_ids=(eos,))
        n = len(want)
        for k in range(2):
            assert out.tokens[b, k, :n].tolist() == want
            assert (out.tokens[b, k, n:] == PAD).all()
            assert (out.logprobs[b, k, n:] == 0).all()
            assert (out.policy_logprobs[b, k, n:] == 0).all()
            assert out.lengths[b, k] == n
            assert out.stopped_by_eos[b, k] == (want[-1] == eos)
    assert out.lengths[0, 0] == j + 1 and out.stopped_by_eos[0].all()
    # Alone, prompt 0 finishes at step j + 1 < 12, and so does the loop.
    alone = sampler.sample(params, [PROMPTS[0]], sc, jax.random.key(0))
    assert alone.decode_steps == j + 1 < 12
    assert out.decode_steps == out.lengths.max()


def test_sampled_logprobs_match_full_forward(tiny, sampler):
    cfg, params = tiny
    temperature, top_k, top_p = 0.8, 6, 0.9
    sc = SamplingConfig(
        num_samples=4, max_new_tokens=10, temperature=temperature, top_k=top_k, top_p=top_p
    )
    out = sampler.sample(params, PROMPTS, sc, jax.random.key(1))
    assert len({tuple(out.tokens[0, k]) for k in range(4)}) > 1  # samples differ
    seqs = [PROMPTS[b] + out.tokens[b, k].tolist() for b in range(3) for k in range(4)]
    logps = full_forward_logits(cfg, params, seqs)
    for r, logp in enumerate(logps):
        b, k = divmod(r, 4)
        n = len(PROMPTS[b])
        for t in range(10):
            row = logp[n - 1 + t]
            token = out.tokens[b, k, t]
            want = reference_distribution(row, temperature, top_k, top_p)
            assert want[token] > 0, "sampled a token outside top-k / nucleus"
            np.testing.assert_allclose(out.policy_logprobs[b, k, t], row[token], atol=2e-5)
            np.testing.assert_allclose(out.logprobs[b, k, t], np.log(want[token]), atol=2e-5)


def test_same_key_same_samples_other_key_other_samples(tiny, sampler):
    _, params = tiny
    sc = SamplingConfig(num_samples=4, max_new_tokens=10, temperature=0.8, top_k=6, top_p=0.9)
    a = sampler.sample(params, PROMPTS, sc, jax.random.key(1))
    b = sampler.sample(params, PROMPTS, sc, jax.random.key(1))
    c = sampler.sample(params, PROMPTS, sc, jax.random.key(2))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)


@pytest.mark.slow  # 73 s of the default suite's 64 min (shared 2-core CPU)
def test_decode_chunks_change_no_sample(tiny, sampler):
    """Keeping the generated keys in 1, 3 or 7 chunks (token boundaries at different
    steps, a chunk cut short by max_new_tokens) gives the same samples and log-probs."""
    _, params = tiny
    sc = SamplingConfig(num_samples=4, max_new_tokens=13, temperature=0.8, eos_ids=(7,))
    outs = [
        sampler.sample(params, PROMPTS, sc.replace(decode_chunks=n), jax.random.key(3))
        for n in (1, 3, 7)
    ]
    assert outs[0].stopped_by_eos.any() and not outs[0].stopped_by_eos.all()
    for out in outs[1:]:
        np.testing.assert_array_equal(out.tokens, outs[0].tokens)
        np.testing.assert_array_equal(out.lengths, outs[0].lengths)
        np.testing.assert_allclose(out.policy_logprobs, outs[0].policy_logprobs, atol=1e-5)


@pytest.mark.slow  # 54 s of the default suite's 64 min (shared 2-core CPU)
def test_cpu_matmul_choice_changes_no_sample(tiny, monkeypatch):
    """On a CPU, a decode of few rows compiles with Eigen's matmuls instead of YNNPACK's
    (`CPU_EIGEN_MAX_ROWS`); both programs give the same samples and log-probs."""
    _, params = tiny
    sc = SamplingConfig(num_samples=4, max_new_tokens=10, temperature=0.8, eos_ids=(7,))
    small = Sampler(tiny[0], pad_id=PAD)
    rows = 16  # 3 prompts, bucketed to 4, x 4 samples
    if jax.devices()[0].platform != "cpu" or sampler_lib._cpu_without_ynn() is None:
        pytest.skip("needs XLA:CPU with YNNPACK fusions")
    assert small._decode_compiler_options(rows) == sampler_lib._NO_YNN
    monkeypatch.setattr(sampler_lib, "CPU_EIGEN_MAX_ROWS", rows - 1)
    default = Sampler(tiny[0], pad_id=PAD)
    assert default._decode_compiler_options(rows) is None
    a = default.sample(params, PROMPTS, sc, jax.random.key(5))
    monkeypatch.undo()
    b = small.sample(params, PROMPTS, sc, jax.random.key(5))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_allclose(a.policy_logprobs, b.policy_logprobs, atol=1e-5)


@pytest.mark.slow  # 58 s of the default suite's 64 min (shared 2-core CPU)
def test_prompts_in_one_bucket_compile_once(tiny):
    cfg, params = tiny
    sampler = Sampler(cfg, pad_id=PAD)
    sc = SamplingConfig(num_samples=2, max_new_tokens=5, temperature=0.0)
    first = sampler.sample(params, [[1, 2, 3], [4, 5]], sc, jax.random.key(0))
    assert sampler.compilations == {"prefill": 1, "decode": 1}
    # Other prompt lengths, a pre-padded (ids, mask) pair and another max_new_tokens, all
    # in the same buckets: no new program.
    sampler.sample(params, [[7] * 20, [9, 8, 7, 6, 5, 4, 3]], sc, jax.random.key(0))
    ids = np.array([[0, 1, 2, 3], [0, 0, 4, 5]])
    pair = sampler.sample(params, (ids, ids > 0), sc.replace(max_new_tokens=7), jax.random.key(0))
    assert sampler.num_compilations == 2
    np.testing.assert_array_equal(pair.tokens[..., :5], first.tokens)
    sampler.sample(params, [[1] * 40, [2]], sc, jax.random.key(0))  # next prompt bucket
    assert sampler.compilations == {"prefill": 2, "decode": 2}


@pytest.mark.parametrize(
    ("prompts", "words"),
    [
        ([], "no prompts"),
        ([[1, 2], []], "prompt 1 is empty"),
        ([[1, 2.5]], "must be integers"),
        ([[1, "a"]], "must be integers"),
        (["hello"], "not a list of token ids"),
        ([[1, 64]], "outside the vocabulary"),
        ([[-1, 3]], "outside the vocabulary"),
        ((np.array([[1, 2]]), np.array([[True, False]])), "not left-padded"),
        ((np.array([[1.0, 2.0]]), np.array([[True, True]])), "must be integers"),
        ([[1] * 90], "max_seq_len"),
    ],
)
def test_bad_prompts_raise(tiny, sampler, prompts, words):
    sc = SamplingConfig(max_new_tokens=8)
    with pytest.raises(ValueError, match=words):
        sampler.sample(tiny[1], prompts, sc, jax.random.key(0))


def test_bad_pad_and_eos_ids_raise(tiny, sampler):
    with pytest.raises(ValueError, match="pad_id"):
        Sampler(tiny[0], pad_id=64)
    with pytest.raises(ValueError, match="eos id 99"):
        sampler.sample(
            tiny[1], [[1]], SamplingConfig(eos_ids=(99,), max_new_tokens=4), jax.random.key(0)
        )


def test_params_with_value_head_sample_like_without(tiny, caplog):
    cfg, params = tiny
    with_head = dict(
        params,
        value_head=np.zeros(cfg.d_model, np.float32),
        value_head_bias=np.zeros((), np.float32),
    )
    sc = SamplingConfig(num_samples=2, max_new_tokens=5, temperature=0.0)
    with caplog.at_level("INFO", logger="jaxrl_reason.sampling.sampler"):
        out = Sampler(cfg, pad_id=PAD, heads=("value",)).sample(
            with_head, PROMPTS, sc, jax.random.key(0)
        )
    assert "compiling sampler decode" in caplog.text
    assert out.tokens[1, 0].tolist() == greedy_reference(cfg, params, PROMPTS[1], 5)
