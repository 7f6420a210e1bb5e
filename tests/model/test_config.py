"""ModelConfig: parameter counts match the real trees, FLOPs match a hand count, bad values fail."""

import math

import jax
import pytest

from jaxrl_reason.model import PRESETS, ModelConfig, init_params, model_config


def _count(config, heads=()):
    """Parameters of the real model tree, from shapes only (no allocation, even for 70B)."""
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0), heads))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("preset", ["tiny", "small_50m", "llama2_7b", "llama2_70b", "llama3_8b"])
def test_num_params_counts_the_model_tree(preset):
    config = model_config(preset)
    assert config.num_params() == _count(config)
    assert _count(config, heads=("value", "reward")) == config.num_params() + 2 * (
        config.d_model + 1
    )
    tied = config.replace(tie_embeddings=True)
    assert tied.num_params() == _count(tied)
    embeddings = config.vocab_size * config.d_model
    assert config.num_params(include_embeddings=False) == config.num_params() - 2 * embeddings


def test_num_params_of_the_presets_are_their_nominal_sizes():
    billions = {name: PRESETS[name]().num_params() / 1e9 for name in PRESETS}
    assert billions["llama2_7b"] == pytest.approx(6.74, abs=0.01)  # Touvron et al. 2023
    assert billions["llama2_13b"] == pytest.approx(13.02, abs=0.01)
    assert billions["llama2_70b"] == pytest.approx(68.98, abs=0.01)
    assert billions["llama3_8b"] == pytest.approx(8.03, abs=0.01)


@pytest.mark.parametrize("tied", [False, True])
def test_num_params_matches_transformers(tied):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxrl_reason.model.hf_interop import config_to_hf

    config = ModelConfig(
        vocab_size=96,
        d_model=32,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        mlp_dim=40,
        tie_embeddings=tied,
    )
    hf = {k: v for k, v in config_to_hf(config).items() if k != "architectures"}
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf))
    assert config.num_params() == sum(p.numel() for p in model.parameters())


def test_flops_per_token_hand_count():
    c = model_config("llama2_7b")
    d, n, k, h, f, v, layers, seq = 4096, 32, 32, 128, 11008, 32000, 32, 2048
    per_layer = 2 * (d * n * h + 2 * d * k * h + n * h * d + 3 * d * f)  # q, k+v, o, mlp
    scores_and_mix = 2 * (2 * n * h * seq / 2)  # QK^T and AV over seq/2 keys on average
    forward = layers * (per_layer + scores_and_mix) + 2 * d * v  # + lm head (embedding free)
    assert c.flops_per_token(seq, backward=False) == pytest.approx(forward)
    assert c.flops_per_token(seq) == pytest.approx(3 * forward)
    # The usual estimate: 6 * (non-embedding params + lm head) + 6 * L * D * seq (causal).
    matmul_params = c.num_params(include_embeddings=False) + d * v
    assert c.flops_per_token(seq) == pytest.approx(
        6 * matmul_params + 6 * layers * d * seq, rel=1e-4
    )  # norms are not matmuls


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"num_layers": -1}, "num_layers"),
        ({"num_heads": 6, "num_kv_heads": 4}, "num_heads"),
        ({"head_dim": 7}, "head_dim"),
        ({"dtype": "float64"}, "dtype"),
        ({"param_dtype": "int8"}, "param_dtype"),
    ],
)
def test_bad_values_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**changes)
    with pytest.raises(ValueError, match=field):
        model_config("tiny", **changes)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="llama2_7b"):
        model_config("llama9")
