"""A tiny model shared by the sampling tests, and a slow reference forward pass."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_reason.model import Transformer, default_positions, init_params, model_config


@pytest.fixture(scope="session")
def tiny():
    """(config, params): vocab 64, 2 layers, GQA (4 heads over 2 kv heads)."""
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
    )
    return cfg, init_params(cfg, jax.random.key(0))


def full_forward_logits(cfg, params, sequences):
    """Log-softmax of the model's full forward pass (no cache) over ragged `sequences`:
    a list of [len_i, V] arrays, row t predicting token t + 1."""
    width = max(len(s) for s in sequences)
    ids = np.zeros((len(sequences), width), np.int32)
    mask = np.zeros((len(sequences), width), bool)
    for i, s in enumerate(sequences):
        ids[i, width - len(s) :] = s
        mask[i, width - len(s) :] = True
    out = Transformer(cfg).apply(
        {"params": params},
        jnp.asarray(ids),
        default_positions(jnp.asarray(mask)),
        jnp.asarray(mask),
    )
    logp = np.asarray(jax.nn.log_softmax(out.logits, axis=-1))
    return [logp[i, width - len(s) :] for i, s in enumerate(sequences)]


@functools.partial(jax.jit, static_argnums=0)
def _forward(cfg, params, ids):
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    return Transformer(cfg).apply({"params": params}, ids, positions).logits


def greedy_reference(cfg, params, prompt, steps, eos_ids=()):
    """Slow obvious greedy decoding: a full forward pass (no cache) per step, argmax, stop
    at EOS. Sequences are right-padded to one width (causal attention ignores the padding)
    so the forward compiles once."""
    seq = list(prompt)
    width = cfg.max_seq_len
    for _ in range(steps):
        ids = np.zeros((1, width), np.int32)
        ids[0, : len(seq)] = seq
        logits = _forward(cfg, params, jnp.asarray(ids))
        seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
        if seq[-1] in eos_ids:
            break
    return seq[len(prompt) :]
