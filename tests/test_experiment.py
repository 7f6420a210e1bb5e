"""`train_experiment` set-up: model overrides, algorithm names."""

import json

import pytest

from jaxrl_reason.experiment import train_experiment
from jaxrl_reason.model import ModelConfig

TINY = ModelConfig(
    vocab_size=384, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64
)


def test_dtype_and_remat_override_the_model(tmp_path):
    rows = train_experiment(
        tmp_path,
        algorithms=(),
        num_train=300,
        num_eval=4,
        tokenizer_vocab_size=384,
        model=TINY,
        dtype="bfloat16",
        remat=True,
        show_progress=False,
    )
    assert rows == []
    config = json.loads((tmp_path / "run.json").read_text())["model_config"]
    assert (config["dtype"], config["remat"], config["param_dtype"]) == (
        "bfloat16",
        True,
        "float32",
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"algorithms": ("sft", "dpo")}, "'dpo'"),
        ({"ppo_rewards": ("sparse", "heuristic")}, "heuristic"),
    ],
)
def test_unknown_algorithms_are_refused_before_anything_is_written(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_experiment(tmp_path / "run", show_progress=False, **kwargs)
    assert not (tmp_path / "run").exists()
