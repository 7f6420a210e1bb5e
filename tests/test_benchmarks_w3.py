"""benchmarks W3 (rollouts at realistic lengths): its accounting of useful tokens and
decode work, checked against direct counts on a tiny model whose samples end early."""

import re

import jax
import numpy as np
import pytest

from benchmarks import w3
from benchmarks.w3_policy import W3Policy, length_stats, useful_lengths
from jaxrl_reason.model import PRESETS, init_params


def test_useful_lengths_count_up_to_the_first_eos():
    new = np.array(
        [
            [5, 7, 2, 0, 0],  # EOS 2 third, then padding
            [5, 7, 9, 9, 9],  # no EOS: the whole budget
            [3, 2, 3, 2, 2],  # EOS 3 first (either id ends a sample)
            [2, 2, 2, 2, 2],  # EOS first, padded with it
        ]
    )
    np.testing.assert_array_equal(useful_lengths(new, (2, 3)), [3, 5, 1, 1])


def test_length_stats():
    stats = length_stats(np.array([1, 2, 3, 4, 10, 10]), budget=10)
    assert stats["median"] == 3.5
    assert stats["max"] == 10
    assert stats["mean"] == pytest.approx(30 / 6)
    assert stats["at_budget"] == pytest.approx(2 / 6)
    assert stats["p90"] == pytest.approx(np.percentile([1, 2, 3, 4, 10, 10], 90))


@pytest.fixture(scope="module")
def early_ending_policy():
    """demo_smoke's shape at random init with a quarter of the vocabulary as EOS ids, so
    samples end after a few tokens, at varied lengths, as a trained policy's do."""
    config = PRESETS["demo_smoke"]().replace(max_seq_len=64)
    params = init_params(config, jax.random.key(0))
    return W3Policy(config, params, eos_ids=tuple(range(2, 130)), pad_id=0, where="tiny")


def test_w3_static_and_refill_count_the_same_samples_and_their_waste(early_ending_policy, capsys):
    w = w3.RealisticWorkload(prompts=3, samples=4, new_tokens=16)
    prompts = [[1, 5, 9], [1, 7], [1, 300, 301, 302]]
    builders = w3.systems([4], bf16=False, transformers=False, tunix=False)
    runs = {name: build(w, early_ending_policy, prompts, 1) for name, build in builders.items()}
    static, refill = runs["ours static"](), runs["ours refill 4"]()
    assert 0 < static.useful < 12 * 16  # some samples end early
    np.testing.assert_array_equal(static.lengths, refill.lengths)  # the same samples
    # Static: 3 prompts bucketed to 4, x K rows, every row until the longest sample ends.
    assert static.work == 4 * 4 * static.lengths.max()
    assert static.useful <= static.work and refill.useful <= refill.work
    assert refill.work < static.work  # 4 rows refilled waste less than 12 held to the end
    results = {
        "ours static": w3.summarize((2.0, static), [(1.0, static)]),
        "ours refill 4": w3.summarize((2.0, refill), [(0.5, refill)]),
    }
    assert results["ours static"]["wasted"] == pytest.approx(1 - static.useful / static.work)
    assert results["ours static"]["compile"] == pytest.approx(1.0)
    w3.report(w, early_ending_policy, results)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    expected = (refill.useful / 0.5) / (static.useful / 1.0)
    assert re.fullmatch(rf"W3 refill/static useful tokens/s: {expected:.2f}x", last)


@pytest.mark.slow  # torch's import and generate: ~20 s on the shared CPU
def test_w3_transformers_stops_at_eos_on_the_exported_weights(early_ending_policy):
    pytest.importorskip("transformers")
    w = w3.RealisticWorkload(prompts=2, samples=3, new_tokens=16)
    run = w3.bench_transformers(w, early_ending_policy, [[1, 5, 9], [1, 7]], repeats=1)
    out = run()
    assert out.lengths.shape == (6,)
    assert 0 < out.useful <= out.work and out.work % 6 == 0
    assert out.work < 6 * 16  # generate stopped once every sample had ended (seeded)


def test_kv_bf16_agreement_counts_tokens_before_the_first_divergence():
    from benchmarks.kv_bf16 import agreement

    ref = np.array([[4, 5, 6, 0], [4, 5, 6, 7], [1, 2, 0, 0]])
    other = np.array([[4, 5, 6, 0], [4, 9, 6, 7], [1, 2, 3, 0]])  # same; at 1; ran on at 2
    r = agreement(ref, np.array([3, 4, 2]), other)
    assert r["identical_samples"] == pytest.approx(1 / 3)
    assert r["mean_first_divergence"] == pytest.approx(1.5)
    assert r["tokens_before_divergence"] == pytest.approx((3 + 1 + 2) / 9)
