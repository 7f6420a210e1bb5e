"""The refilling decode (`decode_rows`), stop sequences in the loop and the bf16 KV cache,
against slow references: a full forward pass per step, exact two-token distributions."""

import collections
import itertools

import jax
import numpy as np
import pytest

from jaxrl_reason.model import model_config
from jaxrl_reason.sampling import Sampler, SamplingConfig
from jaxrl_reason.sampling.sampler import stop_table
from tests.sampling.conftest import full_forward_logits, greedy_reference
from tests.sampling.test_strategies import reference_distribution

PROMPTS = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11], [4], [12, 13], [14, 15, 16, 17]]
PAD = 0


@pytest.fixture(scope="module")
def sampler(tiny):
    return Sampler(tiny[0], pad_id=PAD)


def eos_ids_for_varied_lengths(cfg, params):
    """Tokens that greedy decoding emits at different steps of different prompts."""
    firsts = {}
    for prompt in PROMPTS:
        for i, t in enumerate(greedy_reference(cfg, params, prompt, 12)):
            if i >= 1:
                firsts.setdefault(t, i)
    return tuple(sorted(firsts, key=firsts.get)[:3])


def test_greedy_refill_matches_full_forward_reference(tiny, sampler):
    cfg, params = tiny
    eos = eos_ids_for_varied_lengths(cfg, params)
    sc = SamplingConfig(num_samples=2, max_new_tokens=12, temperature=0.0, eos_ids=eos)
    out = sampler.sample(params, PROMPTS, sc.replace(decode_rows=3), jax.random.key(0))
    lengths = set()
    for b, prompt in enumerate(PROMPTS):
        want = greedy_reference(cfg, params, prompt, 12, eos_ids=eos)
        n = len(want)
        lengths.add(n)
        for k in range(2):
            assert out.tokens[b, k, :n].tolist() == want
            assert (out.tokens[b, k, n:] == PAD).all()
            assert (out.policy_logprobs[b, k, n:] == 0).all()
            assert out.lengths[b, k] == n
            assert out.stopped_by_eos[b, k] == (want[-1] in eos)
    assert len(lengths) > 1, "the test needs rows of different lengths"
    # 3 rows ran the 10 samples: every step but the ones where a row sat empty was work.
    assert out.decode_rows_steps == 3 * out.decode_steps
    assert out.decode_steps >= -(-int(out.lengths.sum()) // 3)
    assert sampler.compilations["refill"] >= 1


def test_refill_samples_have_the_policy_logprobs_of_their_own_context(tiny, sampler):
    """Each refilled row attends to its own prompt and tokens only: its log-probs equal a
    full forward pass of that sequence, and every token is inside top-k / the nucleus."""
    cfg, params = tiny
    temperature, top_k, top_p = 0.8, 6, 0.9
    sc = SamplingConfig(
        num_samples=3,
        max_new_tokens=10,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_ids=eos_ids_for_varied_lengths(cfg, params),
        decode_rows=4,
    )
    out = sampler.sample(params, PROMPTS, sc, jax.random.key(1))
    assert len(set(out.lengths.ravel().tolist())) > 2
    pairs = list(itertools.product(range(len(PROMPTS)), range(3)))
    seqs = [PROMPTS[b] + out.tokens[b, k, : out.lengths[b, k]].tolist() for b, k in pairs]
    for (b, k), logp in zip(pairs, full_forward_logits(cfg, params, seqs)):
        n = len(PROMPTS[b])
        for t in range(out.lengths[b, k]):
            row, token = logp[n - 1 + t], out.tokens[b, k, t]
            want = reference_distribution(row, temperature, top_k, top_p)
            assert want[token] > 0, "sampled a token outside top-k / nucleus"
            np.testing.assert_allclose(out.policy_logprobs[b, k, t], row[token], atol=2e-5)
            np.testing.assert_allclose(out.logprobs[b, k, t], np.log(want[token]), atol=2e-5)


def test_refill_gives_the_static_samples_for_the_same_key(tiny, sampler):
    """Sample n draws from its own key whatever row it runs in, so refill (any row count,
    including more rows than samples, which runs the static program) changes no sample."""
    cfg, params = tiny
    sc = SamplingConfig(
        num_samples=4,
        max_new_tokens=13,
        temperature=1.0,
        eos_ids=eos_ids_for_varied_lengths(cfg, params),
    )
    static = sampler.sample(params, PROMPTS, sc, jax.random.key(3))
    assert static.stopped_by_eos.any() and not static.stopped_by_eos.all()
    for rows in (1, 5, 7, 64):
        out = sampler.sample(params, PROMPTS, sc.replace(decode_rows=rows), jax.random.key(3))
        np.testing.assert_array_equal(out.tokens, static.tokens)
        np.testing.assert_array_equal(out.lengths, static.lengths)
        np.testing.assert_array_equal(out.stopped_by_eos, static.stopped_by_eos)
        np.testing.assert_allclose(out.policy_logprobs, static.policy_logprobs, atol=1e-5)
        np.testing.assert_allclose(out.logprobs, static.logprobs, atol=1e-5)
    # Fewer rows, less work wasted on finished rows (one row: none but the fresh steps).
    one = sampler.sample(params, PROMPTS, sc.replace(decode_rows=1), jax.random.key(3))
    assert one.decode_rows_steps == static.lengths.sum() < static.decode_rows_steps


def test_refill_two_token_distribution_is_exact(tiny):
    """40 rows draw 6,000 two-token samples of one prompt, each row refilled ~150 times:
    the empirical joint law equals the exact one from full forward passes."""
    cfg, params = tiny
    prompt, top_k, draws = [3, 1, 4, 1, 5], 3, 6000
    first = reference_distribution(full_forward_logits(cfg, params, [prompt])[0][-1], 1.0, 3, 1)
    exact = {}
    for a in np.flatnonzero(first):
        logits = full_forward_logits(cfg, params, [prompt + [int(a)]])[0][-1]
        for b, q in enumerate(reference_distribution(logits, 1.0, top_k, 1.0)):
            if q > 0:
                exact[(int(a), b)] = first[a] * q
    sc = SamplingConfig(num_samples=draws, max_new_tokens=2, top_k=top_k, decode_rows=40)
    out = Sampler(cfg, pad_id=PAD).sample(params, [prompt], sc, jax.random.key(5))
    counts = collections.Counter(map(tuple, out.tokens[0].tolist()))
    assert set(counts) <= set(exact)
    tv = 0.5 * sum(abs(counts[p] / draws - q) for p, q in exact.items())
    assert tv < 0.035, f"total variation {tv:.3f} from the exact two-token law"


def test_stop_sequences_end_rows_in_the_loop(tiny, sampler):
    cfg, params = tiny
    free = greedy_reference(cfg, params, PROMPTS[0], 12)
    j = 4  # stop at free[j - 1 : j + 1]: the first step where that pair completes
    stop = free[j - 1 : j + 1]
    first = next(i for i in range(1, 12) if free[i - 1 : i + 1] == stop)
    sc = SamplingConfig(num_samples=2, max_new_tokens=12, temperature=0.0)
    for rows in (0, 3):
        out = sampler.sample(
            params, PROMPTS, sc.replace(decode_rows=rows), jax.random.key(0), stop_ids=[stop]
        )
        assert out.tokens[0, 0].tolist() == free[: first + 1] + [PAD] * (11 - first)
        assert out.lengths[0].tolist() == [first + 1] * 2
        assert not out.stopped_by_eos.any()
        for b, prompt in enumerate(PROMPTS[1:], 1):  # other rows end at their own stops
            want = greedy_reference(cfg, params, prompt, 12)
            n = out.lengths[b, 0]
            assert out.tokens[b, 0, :n].tolist() == want[:n]
            assert n == 12 or want[n - 2 : n] == stop


def test_a_stop_sequence_never_spans_the_prompt(tiny, sampler):
    """A row's stop window starts empty: the prompt's last token followed by the first
    generated one is not a match."""
    cfg, params = tiny
    first = greedy_reference(cfg, params, PROMPTS[0], 1)[0]
    sc = SamplingConfig(num_samples=1, max_new_tokens=6, temperature=0.0)
    for rows in (0, 1):
        out = sampler.sample(
            params,
            PROMPTS[:2],
            sc.replace(decode_rows=rows),
            jax.random.key(0),
            stop_ids=[[PROMPTS[0][-1], first]],
        )
        assert out.lengths[0, 0] > 1


def test_stop_table_and_bad_stop_ids(tiny, sampler):
    np.testing.assert_array_equal(stop_table([[5], [1, 2, 3]], 64), [[-2, -2, 5], [1, 2, 3]])
    assert stop_table([], 64).shape == (0, 1)
    _, params = tiny
    sc = SamplingConfig(max_new_tokens=4)
    with pytest.raises(ValueError, match="empty sequence"):
        sampler.sample(params, PROMPTS, sc, jax.random.key(0), stop_ids=[[]])
    with pytest.raises(ValueError, match=r"ids \[64\] outside the vocabulary"):
        sampler.sample(params, PROMPTS, sc, jax.random.key(0), stop_ids=[[3, 64]])


def test_bfloat16_kv_cache_keeps_greedy_close(tiny, sampler):
    cfg, params = tiny
    sc = SamplingConfig(num_samples=1, max_new_tokens=12, temperature=0.0)
    f32 = sampler.sample(params, PROMPTS, sc, jax.random.key(0))
    for rows in (0, 2):
        bf16 = sampler.sample(
            params, PROMPTS, sc.replace(kv_dtype="bfloat16", decode_rows=rows), jax.random.key(0)
        )
        # The first token comes from the prefill's logits, before the cache is stored.
        np.testing.assert_array_equal(bf16.tokens[:, :, 0], f32.tokens[:, :, 0])
        same = bf16.tokens == f32.tokens
        assert same.mean() > 0.8
        np.testing.assert_allclose(bf16.policy_logprobs[same], f32.policy_logprobs[same], atol=0.05)
        assert not np.allclose(bf16.policy_logprobs, f32.policy_logprobs, atol=1e-6, rtol=0)


def test_progress_reports_tokens_generated_so_far(tiny, sampler):
    _, params = tiny
    seen = []
    sc = SamplingConfig(num_samples=4, max_new_tokens=40, temperature=1.0)
    for rows in (0, 6):
        seen.clear()
        out = sampler.sample(
            params, PROMPTS, sc.replace(decode_rows=rows), jax.random.key(0), progress=seen.append
        )
        assert seen and seen == sorted(seen) and seen[-1] <= out.lengths.sum()
        assert seen[0] > 0


def test_sliding_window_family_refill_equals_static():
    """Gemma-style sliding layers: per-row query slots give the static samples."""
    cfg = model_config(
        "tiny",
        vocab_size=64,
        d_model=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        mlp_dim=64,
        max_seq_len=96,
        layer_types=("sliding_attention", "full_attention"),
        sliding_window=4,
    )
    from jaxrl_reason.model import init_params

    params = init_params(cfg, jax.random.key(1))
    sampler = Sampler(cfg, pad_id=PAD)
    sc = SamplingConfig(num_samples=3, max_new_tokens=11, temperature=1.0, eos_ids=(9, 17, 33))
    static = sampler.sample(params, PROMPTS, sc, jax.random.key(2))
    refill = sampler.sample(params, PROMPTS, sc.replace(decode_rows=4), jax.random.key(2))
    assert len(set(static.lengths.ravel().tolist())) > 1
    np.testing.assert_array_equal(refill.tokens, static.tokens)
    np.testing.assert_allclose(refill.policy_logprobs, static.policy_logprobs, atol=1e-5)
