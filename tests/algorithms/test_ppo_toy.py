"""End-to-end PPO at toy scale: the pure pieces, wired as the PPO loop wires them, teach a
tiny policy to emit token 3.

The sampler here is deliberately simple (a full forward per new token) so the test does not
depend on the real sampler.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrl_reason.algorithms.advantages import gae, token_rewards, whiten
from jaxrl_reason.algorithms.kl_control import FixedKLController
from jaxrl_reason.algorithms.ppo_objective import (
    entropy_from_logits,
    kl_penalty,
    logprobs_from_logits,
    ppo_losses,
)
from jaxrl_reason.model import Transformer, init_params, model_config

PROMPT_LEN, NEW_TOKENS, BATCH, TARGET = 2, 8, 64, 3
CONFIG = model_config(
    "tiny",
    vocab_size=16,
    d_model=32,
    num_layers=2,
    num_heads=2,
    num_kv_heads=2,
    head_dim=16,
    mlp_dim=64,
    max_seq_len=16,
)
MODEL = Transformer(CONFIG, heads=("value",))


def _positions(tokens):
    return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


@jax.jit
def sample(params, prompts, rng):
    """[B, P] prompts -> [B, P + N] sequences, by temperature-1 sampling."""
    b = prompts.shape[0]
    tokens = jnp.concatenate([prompts, jnp.zeros((b, NEW_TOKENS), jnp.int32)], axis=1)

    def body(i, carry):
        tokens, rng = carry
        rng, key = jax.random.split(rng)
        logits = MODEL.apply({"params": params}, tokens, _positions(tokens)).logits
        slot = PROMPT_LEN + i
        # Causal attention: the logits at slot - 1 never see the not-yet-filled slots.
        new = jax.random.categorical(key, logits[:, slot - 1])
        return tokens.at[:, slot].set(new), rng

    return jax.lax.fori_loop(0, NEW_TOKENS, body, (tokens, rng))[0]


def response_stats(params, tokens):
    """Log-probs, values and entropies [B, N] of the response tokens.

    Predictions for response token j come from slot P + j - 1 (the state before it).
    """
    out = MODEL.apply({"params": params}, tokens, _positions(tokens))
    logits = out.logits[:, PROMPT_LEN - 1 : -1]
    targets = tokens[:, PROMPT_LEN:]
    values = out.heads["value"][:, PROMPT_LEN - 1 : -1]
    return logprobs_from_logits(logits, targets), values, entropy_from_logits(logits)


@jax.jit
def make_batch(params, ref_params, tokens, kl_coef):
    """Rollout -> PPO batch: old log-probs, values, KL, rewards, whitened GAE, returns."""
    logprobs, values, _ = response_stats(params, tokens)
    ref_logprobs, _, _ = response_stats(ref_params, tokens)
    mask = jnp.ones_like(logprobs, jnp.bool_)
    score = jnp.mean(tokens[:, PROMPT_LEN:] == TARGET, axis=-1).astype(jnp.float32)
    kl = kl_penalty(logprobs, ref_logprobs, "k1")
    rewards = token_rewards(score, mask, kl, kl_coef)
    advantages, returns = gae(rewards, values, mask, 1.0, 0.95)
    batch = {
        "tokens": tokens,
        "old_logprobs": logprobs,
        "old_values": values,
        "advantages": whiten(advantages, mask),
        "returns": returns,
        "mask": mask,
    }
    return batch, score, kl


def ppo_loss(params, batch):
    logprobs, values, entropy = response_stats(params, batch["tokens"])
    return ppo_losses(
        logprobs,
        batch["old_logprobs"],
        batch["advantages"],
        values,
        batch["old_values"],
        batch["returns"],
        batch["mask"],
        entropy=entropy,
        entropy_coef=0.0,
    )


OPT = optax.adam(3e-3)


@jax.jit
def train_step(params, opt_state, batch):
    (_, metrics), grads = jax.value_and_grad(ppo_loss, has_aux=True)(params, batch)
    updates, opt_state = OPT.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics


def test_kl_penalty_is_exactly_zero_when_policy_equals_reference():
    params = init_params(CONFIG, jax.random.key(1), heads=("value",))
    prompts = jnp.ones((BATCH, PROMPT_LEN), jnp.int32)
    tokens = sample(params, prompts, jax.random.key(2))
    stats = jax.jit(response_stats)
    logprobs, _, _ = stats(params, tokens)
    ref_logprobs, _, _ = stats(jax.tree.map(jnp.copy, params), tokens)
    for kind in ("k1", "k2", "k3"):
        assert np.all(np.asarray(kl_penalty(logprobs, ref_logprobs, kind)) == 0.0)


@pytest.mark.slow  # 65 s of the default suite's 64 min (shared 2-core CPU)
def test_ppo_raises_reward_on_toy_task():
    params = init_params(CONFIG, jax.random.key(0), heads=("value",))
    ref_params = jax.tree.map(jnp.copy, params)  # frozen reference = initial policy
    opt_state = OPT.init(params)
    kl_ctl = FixedKLController(0.01)
    rng = jax.random.key(42)
    prompts = jnp.tile(jnp.array([[1, 2]], jnp.int32), (BATCH, 1))
    history = []
    for it in range(8):
        rng, key = jax.random.split(rng)
        tokens = sample(params, prompts, key)
        batch, score, kl = make_batch(params, ref_params, tokens, jnp.float32(kl_ctl.value))
        if it == 0:
            assert np.all(np.asarray(kl) == 0.0)  # policy == reference before any update
        history.append(float(score.mean()))
        for _ in range(4):  # PPO epochs
            rng, key = jax.random.split(rng)
            perm = jax.random.permutation(key, BATCH)
            for mb in jnp.split(perm, 2):
                minibatch = jax.tree.map(lambda x, mb=mb: x[mb], batch)
                params, opt_state, metrics = train_step(params, opt_state, minibatch)
        kl_ctl.update(float(kl.mean()), BATCH)
    tokens = sample(params, prompts, jax.random.key(7))
    final = float(np.mean(np.asarray(tokens[:, PROMPT_LEN:]) == TARGET))
    assert history[0] < 0.2, history
    assert final > 0.3 and final > history[0] + 0.2, (history, final)
    assert np.isfinite(float(metrics["loss"]))
