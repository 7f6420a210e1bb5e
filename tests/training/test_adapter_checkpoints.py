"""Adapter-only checkpoints: a LoRA run saves adapters and optimizer state only, resumes
bitwise onto its base, and refuses a base of other shapes or other weights."""

import json

import jax
import numpy as np
import pytest

from jaxrl_reason.model import LoraConfig, init_params, lora
from jaxrl_reason.training import Checkpointer, OptimizerConfig, train_sft
from jaxrl_reason.training.adapter_checkpoints import BASE_KEY

from .sft_run_script import ToyBatches, tiny_config

BASE = tiny_config()
CONFIG = BASE.replace(lora=LoraConfig(rank=4, alpha=8.0))
OPT = OptimizerConfig(learning_rate=3e-3, warmup_steps=1, total_steps=100)
ARGS = dict(optimizer_config=OPT, seed=3, checkpoint_every=3, show_progress=False)


def _params(seed=0, config=BASE):
    return lora.add_adapters(
        CONFIG if config is BASE else config.replace(lora=CONFIG.lora),
        init_params(config, jax.random.key(seed)),
        jax.random.key(1),
    )


class _DieAt(ToyBatches):
    def __init__(self, at):
        super().__init__()
        self.at = at

    def __next__(self):
        if self.position == self.at:
            raise KeyboardInterrupt("killed")
        return super().__next__()


@pytest.mark.slow  # 45 s of the default suite's 64 min (shared 2-core CPU)
def test_resume_from_an_adapter_only_checkpoint_equals_an_uninterrupted_run(tmp_path):
    params = _params()
    straight = train_sft(CONFIG, params, ToyBatches, workdir=tmp_path / "a", num_steps=6, **ARGS)
    with pytest.raises(KeyboardInterrupt):
        train_sft(CONFIG, params, lambda: _DieAt(4), workdir=tmp_path / "b", num_steps=6, **ARGS)
    ckpt = Checkpointer(tmp_path / "b" / "checkpoints", async_save=False)
    assert ckpt.latest_step() == 3
    # On disk: the adapters and their optimizer state, no base matrix.
    meta = ckpt.meta()
    assert set(meta[BASE_KEY]) == {"shapes", "name", "sha256"}
    assert "['layers']['mlp']['up']" in meta[BASE_KEY]["shapes"]
    tree = json.loads((tmp_path / "b/checkpoints/3/state/_METADATA").read_text())["tree_metadata"]
    arrays = [k for k in tree if "layers" in k]
    assert arrays and all("_lora_" in k for k in arrays), arrays
    ckpt.close()
    resumed = train_sft(CONFIG, params, ToyBatches, workdir=tmp_path / "b", num_steps=6, **ARGS)
    for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("other", ["weights", "shapes"])
def test_restoring_onto_another_base_is_refused(tmp_path, other):
    train_sft(CONFIG, _params(), ToyBatches, workdir=tmp_path, num_steps=3, **ARGS)
    if other == "weights":
        base, want = _params(seed=5), "other weights"
    else:
        base, want = _params(config=BASE.replace(mlp_dim=BASE.mlp_dim * 2)), "other shapes"
    config = CONFIG.replace(mlp_dim=base["layers"]["mlp"]["up"].shape[-1])
    with pytest.raises(
        ValueError, match=f"trained on base .* cannot be restored onto base .*{want}"
    ):
        train_sft(config, base, ToyBatches, workdir=tmp_path, num_steps=6, **ARGS)
