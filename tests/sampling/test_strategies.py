"""Per-step sampling against an independent numpy reference of the truncated distribution."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_reason.sampling import Strategy, nucleus_mask, sample_step

# Probabilities with a clear nucleus boundary: cumulative 0.30, 0.55, 0.75, 0.85, ...
PROBS = np.array([0.30, 0.25, 0.20, 0.10, 0.06, 0.04, 0.03, 0.02])
LOGITS = np.log(PROBS)[[3, 0, 6, 1, 7, 2, 5, 4]]  # shuffled so token id != rank
DRAWS = 40_000


def reference_distribution(logits, temperature, top_k, top_p):
    """Obvious numpy version: scale, keep top-k, keep the smallest prefix with mass >= top_p
    (the crossing token included), renormalise."""
    p = np.exp(logits / temperature - np.max(logits / temperature))
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, bool)
    if top_k:
        keep[order[:top_k]] = True
    else:
        keep[:] = True
    q = np.where(keep, p, 0.0)
    q /= q.sum()
    total = 0.0
    nucleus = np.zeros_like(keep)
    for i in order:
        if not keep[i] or total >= top_p:
            break
        nucleus[i] = True
        total += q[i]
    q = np.where(nucleus, q, 0.0)
    return q / q.sum()


@functools.partial(jax.jit, static_argnames="strategy")
def draw(logits, key, temperature, top_p, strategy):
    rows = jnp.broadcast_to(logits, (DRAWS, logits.shape[-1]))
    return sample_step(rows, jax.random.split(key, DRAWS), temperature, top_p, strategy)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, 0, 0.7), (1.0, 0, 0.5), (0.5, 3, 1.0), (1.3, 0, 1.0), (2.0, 5, 0.8)],
)
def test_empirical_distribution_matches_truncated_renormalised(temperature, top_k, top_p):
    want = reference_distribution(LOGITS, temperature, top_k, top_p)
    strategy = Strategy(greedy=False, top_k=top_k, use_top_p=top_p < 1.0)
    out = draw(
        jnp.asarray(LOGITS, jnp.float32),
        jax.random.key(0),
        jnp.float32(temperature),
        jnp.float32(top_p),
        strategy,
    )
    tokens = np.asarray(out.tokens)
    freq = np.bincount(tokens, minlength=len(LOGITS)) / DRAWS
    assert np.all(freq[want == 0] == 0), "drew a token outside the top-k / nucleus"
    # 5 standard errors per token: a missed renormalisation or a wrong boundary is off by
    # several percentage points, far outside this.
    tol = 5 * np.sqrt(want * (1 - want) / DRAWS) + 1e-9
    np.testing.assert_array_less(np.abs(freq - want), tol + 1e-12)
    # Returned log-probs are those of the truncated, renormalised distribution ...
    np.testing.assert_allclose(np.asarray(out.logprobs), np.log(want[tokens]), rtol=1e-5)
    # ... and policy log-probs those of the raw distribution.
    raw = LOGITS - np.log(np.exp(LOGITS).sum())
    np.testing.assert_allclose(np.asarray(out.policy_logprobs), raw[tokens], rtol=1e-5)


def test_nucleus_boundary_includes_the_crossing_token():
    sorted_logits = jnp.asarray(np.log(np.sort(PROBS)[::-1])[None], jnp.float32)
    size = lambda p: int(nucleus_mask(sorted_logits, jnp.float32(p)).sum())
    assert size(0.29) == 1  # the top token alone (0.30) already reaches 0.29
    assert size(0.31) == 2  # 0.30 < 0.31: the crossing token (cum 0.55) is included
    assert size(0.54) == 2
    assert size(0.56) == 3
    assert size(1.0) == len(PROBS)
    assert size(1e-6) == 1  # the most likely token is always kept


def test_greedy_takes_argmax_and_reports_policy_logprob():
    logits = jnp.asarray(np.stack([LOGITS, LOGITS[::-1]]), jnp.float32)
    keys = jax.random.split(jax.random.key(0), 2)
    out = sample_step(
        logits,
        keys,
        jnp.float32(1.0),
        jnp.float32(1.0),
        Strategy(greedy=True, top_k=0, use_top_p=False),
    )
    assert out.tokens.tolist() == [int(np.argmax(LOGITS)), int(np.argmax(LOGITS[::-1]))]
    raw = LOGITS - np.log(np.exp(LOGITS).sum())
    np.testing.assert_allclose(out.logprobs, [raw.max()] * 2, rtol=1e-6)
    np.testing.assert_allclose(out.policy_logprobs, out.logprobs)


def test_top_k_larger_than_vocab_is_plain_temperature_sampling():
    strategy = Strategy(greedy=False, top_k=100, use_top_p=False)
    logits = jnp.broadcast_to(jnp.asarray(LOGITS, jnp.float32), (4, len(LOGITS)))
    keys = jax.random.split(jax.random.key(3), 4)
    a = sample_step(logits, keys, jnp.float32(1.0), jnp.float32(1.0), strategy)
    b = sample_step(
        logits,
        keys,
        jnp.float32(1.0),
        jnp.float32(1.0),
        Strategy(greedy=False, top_k=0, use_top_p=False),
    )
    assert a.tokens.tolist() == b.tokens.tolist()


def test_fast_argmax_and_categorical_equal_jax_ones():
    """The sampler's argmax (a max and a min, faster on CPU) picks the first maximum like
    `jnp.argmax`, ties included, and its Gumbel-max draws equal `jax.random.categorical`'s
    for the same keys, so swapping them changed no sample."""
    from jaxrl_reason.sampling.strategies import _argmax, _categorical

    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, (64, 50)).astype(np.float32)  # many ties
    x[3] = -np.inf
    x[4, 7] = np.inf
    np.testing.assert_array_equal(_argmax(jnp.asarray(x)), np.argmax(x, axis=-1))
    logits = jnp.asarray(rng.normal(size=(256, 97)) * 3, jnp.float32)
    keys = jax.random.split(jax.random.key(5), 256)
    np.testing.assert_array_equal(
        jax.jit(_categorical)(keys, logits), jax.vmap(jax.random.categorical)(keys, logits)
    )
