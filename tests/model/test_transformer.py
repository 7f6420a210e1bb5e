"""The decoder: KV-cached decoding equals one full pass, padding is invisible, heads, dtypes.

Logit parity with `transformers` is in test_hf_interop.py; here the references are the
model's own full forward (checked there against HF) and unpadded single-row runs.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_reason.model import (
    ModelConfig,
    Transformer,
    decode_step,
    default_positions,
    init_cache,
    rope_table,
    unstack_layers,
)
from tests.model.random_params import random_params

CONFIG = ModelConfig(
    vocab_size=64,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=48,
    max_seq_len=64,
    rope_theta=1000.0,
)
PROMPT, TOTAL = 6, 11  # prompt slots, then TOTAL - PROMPT tokens decoded one at a time


def _batch(seed=0):
    """Three left-padded rows whose prompts have 6, 4 and 1 real tokens."""
    tokens = np.random.default_rng(seed).integers(0, CONFIG.vocab_size, (3, TOTAL))
    mask = np.ones((3, TOTAL), bool)
    mask[1, :2] = mask[2, :5] = False
    return jnp.asarray(tokens, jnp.int32), jnp.asarray(mask)


@functools.partial(
    jax.jit, static_argnames=("config", "heads", "last_logits_only", "return_logits")
)
def _forward(params, tokens, mask, config=CONFIG, heads=(), **kw):
    return Transformer(config, heads).apply(
        {"params": params}, tokens, default_positions(mask), mask, **kw
    )


def _full_logits(params, tokens, mask):
    return _forward(params, tokens, mask).logits


@pytest.fixture(scope="module")
def params():
    return random_params(CONFIG)


@pytest.mark.parametrize("remat", [False, True])
def test_cached_decoding_equals_full_forward(params, remat):
    config = CONFIG.replace(remat=remat)
    model = Transformer(config)
    tokens, mask = _batch()
    positions = default_positions(mask)
    full = np.asarray(_full_logits(params, tokens, mask))

    step = jax.jit(lambda p, t, pos, m, c: model.apply({"params": p}, t, pos, m, cache=c))
    cache = init_cache(config, 3, TOTAL + 3)  # spare slots stay empty and masked
    out = step(params, tokens[:, :PROMPT], positions[:, :PROMPT], mask[:, :PROMPT], cache)
    logits = [out.logits]
    for t in range(PROMPT, TOTAL):
        out = step(
            params, tokens[:, t : t + 1], positions[:, t : t + 1], mask[:, t : t + 1], out.cache
        )
        logits.append(out.logits)
    cached = np.asarray(jnp.concatenate(logits, axis=1))
    assert int(out.cache["index"]) == TOTAL
    np.testing.assert_array_equal(out.cache["mask"][:, :TOTAL], mask)
    real = np.asarray(mask)
    np.testing.assert_allclose(cached[real], full[real], rtol=0, atol=1e-5 * np.abs(full).max())


def test_return_kv_prefill_equals_a_cached_call(params):
    """`return_kv` without a cache (the sampler's prefill) gives the keys, values, mask and
    logits of a call into an empty cache of the same length."""
    tokens, mask = _batch()
    positions = default_positions(mask)
    model = Transformer(CONFIG)
    cached = model.apply(
        {"params": params}, tokens, positions, mask, cache=init_cache(CONFIG, 3, TOTAL)
    )
    direct = model.apply({"params": params}, tokens, positions, mask, return_kv=True)
    real = np.asarray(mask)[:, None, :]  # padding slots' keys are never read
    for name in ("k", "v"):
        assert direct.cache[name].shape == cached.cache[name].shape
        want = np.where(real[None, ..., None], cached.cache[name], 0)
        got = np.where(real[None, ..., None], direct.cache[name], 0)
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(direct.cache["mask"], cached.cache["mask"])
    assert int(direct.cache["index"]) == TOTAL
    np.testing.assert_allclose(direct.logits[real[:, 0]], cached.logits[real[:, 0]], atol=1e-4)
    assert model.apply({"params": params}, tokens, positions, mask).cache is None


@pytest.mark.parametrize("table", [False, True], ids=["rope computed", "rope table"])
def test_decode_step_with_a_shared_prompt_equals_full_forward(params, table):
    """`decode_step`: two samples per prompt read the prompt's one cache (a segment shared
    by 2 rows) and their own generated segment, written in place; every step's logits
    equal a full forward pass over prompt + continuation, with RoPE computed in the step
    or looked up in a `rope_table`."""
    samples, new = 2, TOTAL - PROMPT
    prompt_tokens, prompt_mask = _batch()
    prompt_tokens, prompt_mask = prompt_tokens[:, :PROMPT], prompt_mask[:, :PROMPT]
    rng = np.random.default_rng(1)
    continuation = jnp.asarray(rng.integers(0, CONFIG.vocab_size, (6, new)), jnp.int32)
    tokens = jnp.concatenate([jnp.repeat(prompt_tokens, samples, 0), continuation], axis=1)
    mask = jnp.concatenate([jnp.repeat(prompt_mask, samples, 0), jnp.ones((6, new), bool)], 1)
    full = np.asarray(_full_logits(params, tokens, mask))
    positions = default_positions(mask)

    cache = (
        Transformer(CONFIG)
        .apply(
            {"params": params},
            prompt_tokens,
            default_positions(prompt_mask),
            prompt_mask,
            cache=init_cache(CONFIG, 3, PROMPT),
        )
        .cache
    )
    prompt_kv = [(cache["k"][i], cache["v"][i]) for i in range(CONFIG.num_layers)]
    gen_shape = (6, CONFIG.num_kv_heads, new + 2, CONFIG.head_dim)  # 2 spare slots
    gen = [(jnp.zeros(gen_shape), jnp.zeros(gen_shape))] * CONFIG.num_layers
    step = jax.jit(functools.partial(decode_step, CONFIG))
    rope = rope_table(TOTAL, CONFIG) if table else None
    layers = unstack_layers(params)
    for t in range(new):
        filled = (jnp.arange(new + 2) <= t)[None, :]
        logits, gen = step(
            params,
            layers,
            tokens[:, PROMPT + t : PROMPT + t + 1],
            positions[:, PROMPT + t : PROMPT + t + 1],
            [(p, g) for p, g in zip(prompt_kv, gen)],
            (cache["mask"], filled),
            jnp.int32(t),
            rope,
        )
        np.testing.assert_allclose(
            logits, full[:, PROMPT + t], rtol=0, atol=1e-5 * np.abs(full).max()
        )
    assert not np.any(np.asarray(gen[0][0])[:, :, new:])  # the spare slots were not written


def test_left_padding_is_invisible(params):
    """A padded row's logits equal those of the same tokens run alone without padding."""
    tokens, mask = _batch()
    full = np.asarray(_full_logits(params, tokens, mask))
    for row in (1, 2):  # row 0 has no padding
        real = np.asarray(mask[row])
        alone = _full_logits(params, tokens[row : row + 1, real], mask[row : row + 1, real])
        np.testing.assert_allclose(
            full[row, real], np.asarray(alone[0]), rtol=0, atol=1e-5 * np.abs(full).max()
        )


def test_causal_future_tokens_do_not_change_the_past(params):
    tokens, mask = _batch()
    changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % CONFIG.vocab_size)
    a, b = _full_logits(params, tokens, mask), _full_logits(params, changed, mask)
    past = np.asarray(mask).copy()
    past[:, -1] = False  # padded query slots are excluded: their output is unspecified
    np.testing.assert_array_equal(np.asarray(a)[past], np.asarray(b)[past])
    assert not np.allclose(a[:, -1], b[:, -1])


def test_last_logits_only_and_no_logits(params):
    tokens, mask = _batch()
    full = _forward(params, tokens, mask)
    last = _forward(params, tokens, mask, last_logits_only=True)
    none = _forward(params, tokens, mask, return_logits=False)
    assert last.logits.shape == (3, 1, CONFIG.vocab_size)
    np.testing.assert_allclose(last.logits[:, 0], full.logits[:, -1], rtol=1e-6, atol=1e-6)
    assert none.logits is None
    np.testing.assert_array_equal(none.hidden, full.hidden)


def test_value_and_reward_heads(params):
    heads = ("value", "reward")
    with_heads = random_params(CONFIG, seed=1, heads=heads)
    tokens, mask = _batch()
    out = _forward(with_heads, tokens, mask, heads=heads)
    hidden = np.asarray(out.hidden, np.float64)
    for name in heads:
        assert out.heads[name].shape == (3, TOTAL) and out.heads[name].dtype == jnp.float32
        expected = hidden @ np.asarray(with_heads[f"{name}_head"]) + float(
            with_heads[f"{name}_head_bias"]
        )
        np.testing.assert_allclose(out.heads[name], expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(out.heads["value"], out.heads["reward"])


def test_bfloat16_compute_stays_close_to_float32(params):
    tokens, mask = _batch()
    real = np.asarray(mask)
    ref = np.asarray(_full_logits(params, tokens, mask))
    for changes in ({"dtype": "bfloat16"}, {"dtype": "bfloat16", "param_dtype": "bfloat16"}):
        config = CONFIG.replace(**changes)
        p = jax.tree.map(lambda x, dt=config.weight_dtype: x.astype(dt), params)
        out = _forward(p, tokens, mask, config=config)
        assert out.logits.dtype == jnp.float32 and out.hidden.dtype == jnp.bfloat16
        logits = np.asarray(out.logits)
        assert np.isfinite(logits).all()
        # bf16 keeps ~3 significant digits; through 2 layers errors stay a few percent.
        scale = np.abs(ref).max()
        np.testing.assert_allclose(logits[real], ref[real], rtol=0, atol=0.1 * scale)
        assert np.abs(logits[real] - ref[real]).mean() < 0.02 * scale
