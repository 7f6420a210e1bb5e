"""The learning-rate schedules against their formulas; one AdamW step against numpy."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_reason.training import OptimizerConfig, learning_rate_at, make_optimizer


def _formula(cfg, s):
    peak, w, total = cfg.learning_rate, cfg.warmup_steps, cfg.total_steps
    end = peak * cfg.end_lr_fraction
    if s < w:
        return peak * s / w
    frac = min((s - w) / (total - w), 1.0)
    if cfg.schedule == "cosine":
        return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * frac))
    if cfg.schedule == "linear":
        return peak + (end - peak) * frac
    return peak


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedule_matches_formula(schedule):
    cfg = OptimizerConfig(
        learning_rate=2e-3, warmup_steps=10, total_steps=110, schedule=schedule, end_lr_fraction=0.1
    )
    for s in [0, 1, 5, 10, 11, 40, 60, 109, 110, 200]:
        np.testing.assert_allclose(
            float(learning_rate_at(cfg, s)),
            _formula(cfg, s),
            rtol=1e-5,
            atol=1e-12,
            err_msg=f"{schedule} step {s}",
        )


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="schedule"):
        OptimizerConfig(schedule="exp")
    with pytest.raises(ValueError, match="total_steps"):
        OptimizerConfig(warmup_steps=10, total_steps=5)


def test_adamw_step_matches_numpy_and_skips_decay_on_norm_scales():
    cfg = OptimizerConfig(
        learning_rate=0.1,
        warmup_steps=0,
        total_steps=10,
        schedule="constant",
        weight_decay=0.5,
        b1=0.9,
        b2=0.99,
        eps=1e-6,
        grad_clip_norm=1.0,
    )
    params = {"w": jnp.array([[1.0, -2.0]]), "norm": {"scale": jnp.array([1.0, 1.0])}}
    grads = {"w": jnp.array([[3.0, 0.0]]), "norm": {"scale": jnp.array([0.0, 4.0])}}
    tx = make_optimizer(cfg)
    updates, _ = tx.update(grads, tx.init(params), params)

    clip = 1.0 / 5.0  # global norm of the gradient is 5 > 1
    for name, decay in [("w", 0.5), ("scale", 0.0)]:
        p = np.asarray(params["w"] if name == "w" else params["norm"]["scale"])
        g = np.asarray(grads["w"] if name == "w" else grads["norm"]["scale"]) * clip
        m_hat = (0.1 * g) / (1 - 0.9)
        v_hat = (0.01 * g * g) / (1 - 0.99)
        want = -0.1 * (m_hat / (np.sqrt(v_hat) + 1e-6) + decay * p)
        got = updates["w"] if name == "w" else updates["norm"]["scale"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
