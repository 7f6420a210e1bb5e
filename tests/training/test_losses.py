"""Response cross-entropy and token log-probs against a slow numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_reason.model import ModelConfig, Transformer, init_params
from jaxrl_reason.training import losses, response_cross_entropy, token_logprobs


def _random_case(seed=0, b=3, t=7, v=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, t, v)).astype(np.float32) * 3
    tokens = rng.integers(0, v, (b, t)).astype(np.int32)
    loss_mask = np.zeros((b, t), np.float32)
    for i, start in enumerate([2, 3, 5][:b]):
        loss_mask[i, start : t - i] = 1.0  # prompt, then response, then padding
    return logits, tokens, loss_mask


def _reference(logits, tokens, loss_mask):
    """Loop over every (row, position): -log softmax(logits[t-1])[tokens[t]] on responses."""
    total, count, correct = 0.0, 0.0, 0.0
    for b in range(tokens.shape[0]):
        for t in range(1, tokens.shape[1]):
            if loss_mask[b, t]:
                row = logits[b, t - 1].astype(np.float64)
                logp = row - np.log(np.sum(np.exp(row - row.max()))) - row.max()
                total -= logp[tokens[b, t]]
                correct += float(np.argmax(row) == tokens[b, t])
                count += 1
    return total / count, count, correct / count


def test_token_logprobs_match_numpy_log_softmax():
    logits, tokens, _ = _random_case()
    got = np.asarray(token_logprobs(jnp.asarray(logits), jnp.asarray(tokens)))
    assert got.shape == (3, 6)
    for b in range(3):
        for t in range(6):
            row = logits[b, t].astype(np.float64)
            want = row[tokens[b, t + 1]] - np.log(np.exp(row).sum())
            np.testing.assert_allclose(got[b, t], want, rtol=1e-5, atol=1e-5)


def test_response_cross_entropy_matches_reference():
    logits, tokens, loss_mask = _random_case(seed=1)
    loss, metrics = response_cross_entropy(
        jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(loss_mask)
    )
    want_loss, want_count, want_acc = _reference(logits, tokens, loss_mask)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
    assert float(metrics["num_tokens"]) == want_count
    np.testing.assert_allclose(metrics["accuracy"], want_acc, rtol=1e-6)


def test_prompt_and_padding_positions_get_no_gradient():
    logits, tokens, loss_mask = _random_case(seed=2)
    grad = jax.grad(lambda x: response_cross_entropy(x, tokens, loss_mask)[0])(logits)
    grad = np.asarray(grad)
    # logits[:, t] predict tokens[:, t + 1]; they matter iff token t + 1 is a response token.
    predicts_response = np.zeros(loss_mask.shape, bool)
    predicts_response[:, :-1] = loss_mask[:, 1:] > 0
    assert np.all(grad[~predicts_response] == 0.0)
    assert np.all(np.abs(grad[predicts_response]).sum(-1) > 0)


def test_empty_mask_gives_zero_loss_not_nan():
    logits, tokens, _ = _random_case(seed=3)
    loss, metrics = response_cross_entropy(logits, tokens, np.zeros(tokens.shape, np.float32))
    assert float(loss) == 0.0 and float(metrics["num_tokens"]) == 0.0


@pytest.mark.parametrize("tie", [False, True])
def test_chunked_cross_entropy_equals_the_full_logits_one(tie):
    # Tied: with Gemma 2's final logit soft-cap too (the chunks make logits as the model does).
    """Loss, metrics and gradients of the chunked SFT loss equal the plain one (to float32
    rounding), for chunk sizes that do and do not divide the positions."""
    config = ModelConfig(
        vocab_size=97,
        d_model=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        mlp_dim=64,
        max_seq_len=64,
        tie_embeddings=tie,
    )
    model = Transformer(config)
    params = init_params(config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (3, 11), 0, config.vocab_size)
    mask = (jnp.arange(11)[None] >= jnp.array([[2], [5], [9]])).astype(jnp.int32)
    batch = {"tokens": tokens, "loss_mask": mask}
    rng = jax.random.key(2)
    plain = jax.value_and_grad(losses.sft_loss_fn(model, chunked=False), has_aux=True)
    chunked = jax.value_and_grad(losses.sft_loss_fn(model, chunked=True), has_aux=True)
    (loss_a, m_a), g_a = plain(params, batch, rng)
    (loss_b, m_b), g_b = chunked(params, batch, rng)
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
    for k in m_a:
        np.testing.assert_allclose(m_b[k], m_a[k], rtol=1e-6, err_msg=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7), g_a, g_b)
    # 9 tokens = 3 rows x 3 positions a chunk: 4 chunks over 10 positions, the last padded.
    out = model.apply(
        {"params": params},
        tokens,
        return_logits=False,
        positions=jnp.broadcast_to(jnp.arange(11), tokens.shape),
    )
    loss_c, _ = losses.chunked_response_cross_entropy(
        config, out.hidden, losses.lm_head_weights(config, params), tokens, mask, chunk_tokens=9
    )
    np.testing.assert_allclose(loss_c, loss_a, rtol=1e-6)


def test_sft_loss_chunks_only_large_logits():
    """The default switches to chunks above CHUNKED_LOGITS_BYTES of logits: the built-in
    demo's small vocabulary keeps the plain (bitwise unchanged) loss."""
    small = ModelConfig(
        vocab_size=512,
        d_model=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        mlp_dim=64,
    )
    tokens = jax.ShapeDtypeStruct((8, 256), jnp.int32)
    batch = {"tokens": tokens, "loss_mask": tokens}
    for config, want in ((small, False), (small.replace(vocab_size=49152), True)):
        fn = losses.sft_loss_fn(Transformer(config))
        params = jax.eval_shape(lambda c=config: init_params(c, jax.random.key(0)))
        loss = lambda p, b, fn=fn: fn(p, b, jax.random.key(0))[0]
        jaxpr = str(jax.make_jaxpr(loss)(params, batch))
        assert ("checkpoint" in jaxpr or "remat" in jaxpr) == want
