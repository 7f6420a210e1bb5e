"""Response cross-entropy and token log-probs against a slow numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reason.training import response_cross_entropy, token_logprobs


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
