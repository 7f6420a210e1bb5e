"""Qwen2, Qwen3, Gemma 2, Gemma 3 (text) and Llama 3 on one decoder: logits, round trips, the
KV cache and greedy sampling against `transformers` (tiny random models, float32)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxrl_reason.model import (  # noqa: E402
    PRESETS,
    ModelConfig,
    Transformer,
    default_positions,
    hf_interop,
    init_cache,
    init_params,
    load_hf,
    save_hf,
)
from jaxrl_reason.sampling.config import SamplingConfig  # noqa: E402
from jaxrl_reason.sampling.sampler import Sampler  # noqa: E402
from tests.model.random_params import random_params, randomize_hf_model  # noqa: E402
from tests.model.test_hf_interop import (  # noqa: E402
    _assert_logits_close,
    _batch,
    _copy_with,
    _hf_logits,
    _our_logits,
    _tensors,
)

SHAPE = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    attn_implementation="eager",
)
SLIDE = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]
# family -> (config class, model class, config fields). Windows (5) are shorter than the
# test batch (20 slots), caps small enough to bite, query scale unlike head_dim.
FAMILIES = {
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(use_sliding_window=True, sliding_window=5, max_window_layers=2, rope_theta=1e6),
    ),
    "qwen3": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        dict(head_dim=24, tie_word_embeddings=True, rope_theta=1e6),
    ),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        dict(
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=5,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        ),
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=5,
            layer_types=SLIDE,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        ),
    ),
    "llama3": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
            rope_theta=500000.0,
        ),
    ),
}


def _hf_config(family, **changes):
    config_class, _, fields = FAMILIES[family]
    return getattr(transformers, config_class)(**(SHAPE | fields | changes))


def _hf_model(family, seed=0):
    _, model_class, _ = FAMILIES[family]
    torch.manual_seed(seed)  # the random init the loop below overwrites is seeded too
    return randomize_hf_model(getattr(transformers, model_class)(_hf_config(family)), seed)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """family -> (HF model, directory it was saved to with save_pretrained)."""
    out = {}
    for family in FAMILIES:
        model = _hf_model(family)
        path = tmp_path_factory.mktemp(family)
        model.save_pretrained(path, safe_serialization=True)
        out[family] = (model, path)
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_loaded_logits_match_transformers(hf_dirs, family):
    model, path = hf_dirs[family]
    config, params = load_hf(path)
    expect = {"qwen2": 2, "gemma2": 2, "gemma3": 3}.get(family, 0)
    assert sum(config.sliding_layers) == expect
    tokens, mask = _batch(config.vocab_size)
    _assert_logits_close(
        _our_logits(config, params, tokens, mask), _hf_logits(model, tokens, mask), mask
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_saved_params_load_in_transformers(hf_dirs, tmp_path, family):
    config, _ = load_hf(hf_dirs[family][1])
    params = random_params(config, seed=1)
    save_hf(config, params, tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "hf", attn_implementation="eager"
    ).eval()
    assert type(model).__name__ == FAMILIES[family][1]
    tokens, mask = _batch(config.vocab_size, seed=1)
    _assert_logits_close(
        _our_logits(config, params, tokens, mask), _hf_logits(model, tokens, mask), mask
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_import_then_export_is_exact(hf_dirs, tmp_path, family):
    _, path = hf_dirs[family]
    config, params = load_hf(path)
    save_hf(config, params, tmp_path / "out")
    original, exported = _tensors(path), _tensors(tmp_path / "out")
    assert sorted(original) == sorted(exported)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and np.array_equal(exported[name], tensor), name
    written = json.loads((tmp_path / "out/config.json").read_text())
    assert hf_interop.config_from_hf(written) == config
    assert ModelConfig.from_dict(json.loads(hf_interop.model_config_to_json(config))) == config


@pytest.mark.parametrize("family", ["qwen2", "gemma2", "gemma3"])
def test_cached_decode_equals_full_forward(hf_dirs, family):
    """A prefill of 8 slots then one token at a time through the cache, with windows of 5."""
    config, params = load_hf(hf_dirs[family][1])
    tokens, mask = _batch(config.vocab_size, seed=2)
    positions = default_positions(jnp.asarray(mask))
    model = Transformer(config)
    full = _our_logits(config, params, tokens, mask)
    cache = init_cache(config, tokens.shape[0], tokens.shape[1])
    step = jax.jit(lambda p, t, pos, m, c: model.apply({"params": p}, t, pos, m, c))
    pieces, start = [], 0
    for size in [8] + [1] * (tokens.shape[1] - 8):
        end = start + size
        out = step(params, tokens[:, start:end], positions[:, start:end], mask[:, start:end], cache)
        pieces.append(np.asarray(out.logits))
        cache, start = out.cache, end
    _assert_logits_close(np.concatenate(pieces, axis=1), full, mask)


def _generate(model, prompts, new_tokens, eos):
    """transformers' greedy generate on the left-padded prompts (pad 0)."""
    width = max(map(len, prompts))
    ids = np.zeros((len(prompts), width), np.int64)
    attention = np.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :], attention[r, width - len(p) :] = p, 1
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(attention),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=0,
        )
    return out[:, width:].numpy()


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_greedy_sampling_equals_generate(hf_dirs, family):
    """Prompts of 3 to 9 tokens and 14 new ones: windows of 5 slide across the prompt
    segment, the generated chunks and the boundary between them."""
    model, path = hf_dirs[family]
    config, params = load_hf(path)
    rng = np.random.default_rng(3)
    prompts = [list(rng.integers(1, config.vocab_size, n)) for n in (3, 9, 6)]
    # The eos is a token greedy decoding emits, so that some rows stop early.
    probe = _generate(model, prompts, 14, None)
    eos = int(probe[0, 5])
    ref = _generate(model, prompts, 14, eos)
    cfg = SamplingConfig(  # generated keys in two chunks of 8: the window crosses both
        max_new_tokens=14,
        temperature=0.0,
        eos_ids=(eos,),
        prompt_bucket=4,
        generation_bucket=16,
        decode_chunks=2,
    )
    out = Sampler(config, pad_id=0).sample(params, prompts, cfg, jax.random.key(0))
    assert out.stopped_by_eos[:, 0].any() and out.lengths.max() > 8  # both chunks decoded
    for r in range(len(prompts)):
        n = out.lengths[r, 0]
        np.testing.assert_array_equal(out.tokens[r, 0, :n], ref[r, :n], f"row {r}")
        assert (ref[r, n:] == 0).all()  # generate pads a finished row too


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_num_params_matches_transformers(family):
    config = hf_interop.config_from_hf(_hf_config(family).to_dict())
    _, model_class, _ = FAMILIES[family]
    with torch.device("meta"):
        model = getattr(transformers, model_class)(_hf_config(family))
    assert config.num_params() == sum(p.numel() for p in model.parameters())
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    assert config.num_params() == sum(x.size for x in jax.tree.leaves(shapes))


# Published sizes (model cards; Gemma 3 4B: its language model, without the vision tower).
PUBLISHED = {
    "qwen2_5_0_5b": 0.494e9,
    "qwen2_5_1_5b": 1.54e9,
    "qwen2_5_7b": 7.62e9,
    "qwen3_0_6b": 0.596e9,
    "qwen3_8b": 8.19e9,
    "gemma2_2b": 2.61e9,
    "gemma2_9b": 9.24e9,
    "gemma3_1b": 1.00e9,
    "gemma3_4b": 3.88e9,
    "llama3_2_1b": 1.24e9,
    "llama3_2_3b": 3.21e9,
    "llama3_1_8b": 8.03e9,
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_presets_have_their_published_sizes(preset):
    config = PRESETS[preset]()
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    counted = sum(x.size for x in jax.tree.leaves(shapes))
    assert counted == config.num_params()
    assert counted == pytest.approx(PUBLISHED[preset], rel=0.01)
    hf = hf_interop.config_to_hf(config)
    assert hf_interop.config_from_hf(hf) == config.replace(dtype="float32", param_dtype="float32")


def test_old_config_dicts_load_with_llama_defaults():
    """A run.json's model config from before the family switches."""
    old = {
        "vocab_size": 64,
        "d_model": 32,
        "num_layers": 2,
        "num_heads": 2,
        "num_kv_heads": 1,
        "head_dim": 16,
        "mlp_dim": 48,
        "max_seq_len": 64,
        "rope_theta": 10000.0,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        "norm_eps": 1e-5,
        "tie_embeddings": False,
        "dtype": "float32",
        "param_dtype": "float32",
        "remat": False,
    }
    config = ModelConfig.from_dict(old)
    assert config.rope_scaling.rope_type == "llama3"
    assert not config.has_sliding_layers and config.activation == "silu"
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    layer = shapes["layers"]
    assert sorted(layer) == ["attn", "attn_norm", "mlp", "mlp_norm"]
    assert sorted(layer["attn"]) == ["k", "o", "q", "v"]


@pytest.mark.parametrize(
    "family, changes, message",
    [
        ("qwen2", {"architectures": ["Qwen2MoeForCausalLM"]}, "architectures"),
        ("qwen2", {"model_type": "qwen2_moe"}, "model_type.*qwen2_moe"),
        ("qwen3", {"num_experts": 8}, "num_experts"),
        ("qwen3", {"attention_bias": True}, "attention_bias"),
        ("llama3", {"mlp_bias": True}, "mlp_bias"),
        ("gemma2", {"hidden_activation": "gelu"}, "hidden_activation.*gelu"),
        ("gemma3", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
        ("gemma3", {"layer_types": ["full_attention"]}, "layer_types"),
        (
            "gemma3",
            {"rope_parameters": {"full_attention": {"rope_type": "dynamic", "factor": 2.0}}},
            "full_attention rope_type='dynamic'",
        ),
        (
            "gemma3",
            {
                "rope_parameters": {
                    "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                    "sliding_attention": {"rope_type": "linear", "factor": 2.0},
                }
            },
            "sliding_attention",
        ),
        ("qwen2", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
        ("qwen2", {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        (
            "gemma3",
            {"model_type": "gemma3", "text_config": {"model_type": "gemma3_text"}},
            "text_config.*Gemma3ForCausalLM",
        ),
    ],
)
def test_unsupported_fields_are_named(hf_dirs, tmp_path, family, changes, message):
    bad = _copy_with(hf_dirs[family][1], tmp_path / "bad", config_changes=changes)
    with pytest.raises(ValueError, match=message):
        load_hf(bad)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"scale_embeddings": True}, "scale_embeddings/norm_plus_one/sandwich_norms"),
        ({"final_softcap": 30.0}, "final_softcap"),
        ({"qk_norm": True, "attention_bias": True}, "attention_bias"),
        (
            {"layer_types": ("sliding_attention", "full_attention"), "sliding_window": 4},
            "layer_types",
        ),
    ],
)
def test_configs_no_hf_architecture_computes_are_refused(tmp_path, changes, message):
    config = ModelConfig(
        vocab_size=16, d_model=8, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=4, mlp_dim=8
    ).replace(**changes)
    with pytest.raises(ValueError, match=message):
        save_hf(config, random_params(config), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_sliding_layers_need_a_window():
    with pytest.raises(ValueError, match="sliding_window"):
        ModelConfig(num_layers=2, layer_types=("sliding_attention", "full_attention"))
    with pytest.raises(ValueError, match="layer_types has 1 entries for num_layers=2"):
        ModelConfig(num_layers=2, layer_types=("full_attention",), sliding_window=4)


def test_flops_per_token_of_sliding_layers():
    """A sliding layer's query sees min(index, window) keys: w - w^2 / (2 T) on average."""
    full = ModelConfig(
        num_layers=2, vocab_size=64, d_model=32, num_heads=2, num_kv_heads=2, head_dim=16
    )
    windowed = full.replace(layer_types=("sliding_attention", "full_attention"), sliding_window=8)
    per_key = 2 * 2 * full.num_heads * full.head_dim  # QK^T and AV
    saved = per_key * (64 / 2 - (8 - 8 * 8 / (2 * 64)))
    assert full.flops_per_token(64, False) - windowed.flops_per_token(64, False) == saved
    wide = windowed.replace(sliding_window=64)  # no shorter than the sequence: no saving
    assert wide.flops_per_token(64, False) == full.flops_per_token(64, False)
    # Biases and norms are not matmuls: the switches add parameters, not matmul FLOPs.
    qwen = full.replace(attention_bias=True, qk_norm=True)
    assert qwen.flops_per_token(64) == full.flops_per_token(64)
    assert qwen.num_params() - full.num_params() == 2 * (16 * (2 + 2 * 2) + 2 * 16)
