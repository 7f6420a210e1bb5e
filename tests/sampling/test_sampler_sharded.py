"""Sharded sampling (8 simulated devices: data 2, fsdp 2, tensor 2) equals one device."""

import jax
import numpy as np
import pytest

from jaxrl_reason.parallel import make_mesh
from jaxrl_reason.sampling import Sampler, SamplingConfig

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
)


def test_sharded_equals_single_device(tiny):
    cfg, params = tiny
    # Two prompts x K=3 = 6 rows: one device runs 6 rows, the mesh pads to 12 (a multiple
    # of data x fsdp = 4), so this also checks that padding does not change the samples.
    prompts = [[1, 2, 3, 4, 5], [6, 7]]
    sc = SamplingConfig(num_samples=3, max_new_tokens=9, temperature=1.0, top_p=0.9, eos_ids=(5,))
    single = Sampler(cfg, pad_id=0, mesh=None).sample(params, prompts, sc, jax.random.key(7))
    mesh = make_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    sharded = Sampler(cfg, pad_id=0, mesh=mesh).sample(params, prompts, sc, jax.random.key(7))
    np.testing.assert_array_equal(sharded.tokens, single.tokens)
    np.testing.assert_array_equal(sharded.lengths, single.lengths)
    np.testing.assert_array_equal(sharded.stopped_by_eos, single.stopped_by_eos)
    np.testing.assert_allclose(sharded.logprobs, single.logprobs, atol=1e-4)
    np.testing.assert_allclose(sharded.policy_logprobs, single.policy_logprobs, atol=1e-4)
    assert len({tuple(single.tokens[0, k]) for k in range(3)}) > 1  # real sampling


def test_sharded_refill_equals_single_device(tiny):
    """The refilling decode on the mesh: rows sharded, per-row prompt reads, stop windows."""
    cfg, params = tiny
    prompts = [[1, 2, 3, 4, 5], [6, 7], [8], [9, 10, 11]]
    sc = SamplingConfig(
        num_samples=3, max_new_tokens=9, temperature=1.0, eos_ids=(5, 9), decode_rows=5
    )
    stop = [[3, 4]]
    single = Sampler(cfg, pad_id=0).sample(params, prompts, sc, jax.random.key(7), stop_ids=stop)
    mesh = make_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    sharded = Sampler(cfg, pad_id=0, mesh=mesh)
    out = sharded.sample(params, prompts, sc, jax.random.key(7), stop_ids=stop)
    assert sharded.compilations["refill"] == 1  # 5 rows -> 8 (4 batch shards) < 12 samples
    np.testing.assert_array_equal(out.tokens, single.tokens)
    np.testing.assert_array_equal(out.lengths, single.lengths)
    np.testing.assert_array_equal(out.stopped_by_eos, single.stopped_by_eos)
    np.testing.assert_allclose(out.policy_logprobs, single.policy_logprobs, atol=1e-4)
    assert len(set(single.lengths.ravel().tolist())) > 1
