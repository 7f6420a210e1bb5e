"""LoRA and QLoRA on the decoder: zero-initialised adapters leave the logits as they were,
merged weights equal base + adapters (also through export-hf -> transformers, and PEFT
loading our adapter files), logical axes of the adapters, the int8 base's error bound,
and bad settings refused by name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_reason.model import LoraConfig, Transformer, hf_interop, lora, param_logical_axes
from jaxrl_reason.model.config import ModelConfig
from jaxrl_reason.model.peft_export import save_peft_adapters
from jaxrl_reason.model.quantization import dequantize, quantize
from tests.model.random_params import random_params

BASE = ModelConfig(
    vocab_size=96,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=48,
    max_seq_len=64,
)
CONFIG = BASE.replace(lora=LoraConfig(rank=4, alpha=8.0))


def _inputs(seed=0):
    tokens = jax.random.randint(jax.random.key(seed), (2, 9), 0, BASE.vocab_size)
    mask = jnp.ones((2, 9), jnp.bool_).at[1, :3].set(False)  # a left-padded row
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    return tokens, positions, mask


def _logits(config, params, heads=()):
    out = Transformer(config, heads).apply({"params": params}, *_inputs())
    return np.asarray(out.logits), {k: np.asarray(v) for k, v in out.heads.items()}


def _trained(params, seed=3, scale=0.2):
    """`params` with random B, as after training."""
    key = jax.random.key(seed)
    return jax.tree_util.tree_map_with_path(
        lambda p, x: (
            scale * jax.random.normal(key, x.shape) if p[-1].key.endswith("_lora_b") else x
        ),
        params,
    )


@pytest.fixture(scope="module")
def base_params():
    return random_params(BASE, seed=1)


def test_zero_initialised_adapters_leave_logits_and_heads_identical(base_params):
    with_heads = {**base_params, "value_head": jnp.ones(BASE.d_model), "value_head_bias": 0.5}
    params = lora.add_adapters(CONFIG, with_heads, jax.random.key(0))
    names = {k for m in params["layers"].values() for k in m if "_lora_" in k}
    assert names == {
        f"{t}_lora_{ab}" for t in ["q", "k", "v", "o", "gate", "up", "down"] for ab in "ab"
    }
    want, want_heads = _logits(BASE, with_heads, ("value",))
    got, got_heads = _logits(CONFIG, params, ("value",))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_heads["value"], want_heads["value"])


def test_only_the_named_targets_get_adapters(base_params):
    config = BASE.replace(lora=LoraConfig(rank=2, targets=("q", "v", "down")))
    params = lora.add_adapters(config, base_params, jax.random.key(0))
    assert sorted(params["layers"]["attn"]) == [
        "k",
        "o",
        "q",
        "q_lora_a",
        "q_lora_b",
        "v",
        "v_lora_a",
        "v_lora_b",
    ]
    assert sorted(k for k in params["layers"]["mlp"] if "_lora_" in k) == [
        "down_lora_a",
        "down_lora_b",
    ]


def test_merged_weights_equal_base_plus_adapters(base_params):
    params = _trained(lora.add_adapters(CONFIG, base_params, jax.random.key(0)))
    adapted, _ = _logits(CONFIG, params)
    base, _ = _logits(BASE, base_params)
    assert np.abs(adapted - base).max() > 0.1  # the adapters act
    merged_config, merged = lora.merge_adapters(CONFIG, params)
    assert merged_config == BASE and not lora.has_adapters(merged)
    np.testing.assert_allclose(_logits(BASE, merged)[0], adapted, rtol=1e-5, atol=1e-5)
    # The hand-written delta of one target: W + (alpha / r) A B.
    a, b = params["layers"]["mlp"]["up_lora_a"], params["layers"]["mlp"]["up_lora_b"]
    want = base_params["layers"]["mlp"]["up"] + 2.0 * jnp.einsum("ldr,lrf->ldf", a, b)
    np.testing.assert_allclose(merged["layers"]["mlp"]["up"], want, rtol=1e-6, atol=1e-6)


def test_adapters_off_is_the_base(base_params):
    params = _trained(lora.add_adapters(CONFIG, base_params, jax.random.key(0)))
    config, base = lora.adapters_off(CONFIG, params)
    assert config == BASE
    np.testing.assert_array_equal(_logits(config, base)[0], _logits(BASE, base_params)[0])


def test_adapters_carry_logical_axes_and_the_trained_split(base_params):
    axes = param_logical_axes(CONFIG)["layers"]
    assert tuple(axes["attn"]["q_lora_a"]) == ("layers", "embed", "lora_rank")
    assert tuple(axes["attn"]["k_lora_b"]) == ("layers", "lora_rank", "kv_heads", "head_dim")
    assert tuple(axes["attn"]["o_lora_a"]) == ("layers", "heads", "head_dim", "lora_rank")
    assert tuple(axes["mlp"]["down_lora_b"]) == ("layers", "lora_rank", "embed")
    params = lora.add_adapters(CONFIG, base_params, jax.random.key(0))
    ppo_tree = {"policy": {**params, "value_head": jnp.zeros(32), "value_head_bias": 0.0}}
    trained, frozen = lora.split_trainable(ppo_tree)
    keys = lambda t: {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(t)}
    assert "['policy']['value_head']" in keys(trained)
    assert all("_lora_" in k or "value_head" in k for k in keys(trained))
    assert not any("_lora_" in k or "value_head" in k for k in keys(frozen))
    assert keys(lora.join(trained, frozen)) == keys(ppo_tree)


def test_int8_blocks_are_within_half_a_step_and_qlora_logits_close(base_params):
    w = jax.random.normal(jax.random.key(0), (4, 48, 128))
    codes, scale = quantize(w, 64)
    assert codes.dtype == jnp.int8 and scale.shape == (4, 48, 2)
    err = jnp.abs(dequantize(codes, scale) - w).reshape(4, 48, 2, 64)
    assert bool(jnp.all(err <= scale[..., None] / 254 * (1 + 1e-6)))
    config = BASE.replace(lora=LoraConfig(rank=4, quantize="int8", quant_block=16))
    params = lora.add_adapters(config, base_params, jax.random.key(0))
    assert params["layers"]["attn"]["q"].dtype == jnp.int8
    got, want = _logits(config, params)[0], _logits(BASE, base_params)[0]
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert 0 < rel < 0.05, rel  # int8 steps of max|w| / 127 per block of 16


@pytest.mark.parametrize(
    "change, message",
    [
        ({"targets": ("q", "qproj")}, "LoraConfig.targets.*must be one of.*got 'qproj'"),
        ({"targets": ("q", "q")}, "lists a module twice"),
        ({"rank": 0}, "LoraConfig.rank"),
        ({"quantize": "nf5"}, "LoraConfig.quantize"),
        ({"dropout": 1.0}, "LoraConfig.dropout"),
    ],
)
def test_bad_settings_are_refused_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        LoraConfig(**change)


def test_adding_adapters_twice_is_refused(base_params):
    params = lora.add_adapters(CONFIG, base_params, jax.random.key(0))
    with pytest.raises(ValueError, match="already hold LoRA adapters"):
        lora.add_adapters(CONFIG, params, jax.random.key(0))


torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _hf_logits(model, tokens, mask):
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    position_ids = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens),
            attention_mask=torch.tensor(mask.astype(np.int64)),
            position_ids=torch.tensor(position_ids),
        )
    return out.logits.numpy()


@pytest.mark.parametrize("quantized", [False, True])
def test_export_hf_writes_merged_weights_that_transformers_loads(base_params, tmp_path, quantized):
    config = CONFIG if not quantized else CONFIG.replace(lora=CONFIG.lora.replace(quantize="int8"))
    params = _trained(lora.add_adapters(config, base_params, jax.random.key(0)))
    hf_interop.save_hf(config, params, tmp_path / "hf")
    model = transformers.LlamaForCausalLM.from_pretrained(
        tmp_path / "hf", attn_implementation="eager"
    )
    tokens, _, mask = _inputs()
    ours = _logits(config, params)[0]
    m = np.asarray(mask)
    np.testing.assert_allclose(
        _hf_logits(model.eval(), tokens, mask)[m], ours[m], rtol=1e-4, atol=1e-4
    )


def test_peft_loads_the_exported_adapters(base_params, tmp_path):
    peft = pytest.importorskip("peft")
    params = _trained(lora.add_adapters(CONFIG, base_params, jax.random.key(0)))
    hf_interop.save_hf(BASE, base_params, tmp_path / "base")
    save_peft_adapters(CONFIG, params, tmp_path / "adapter", str(tmp_path / "base"))
    base = transformers.LlamaForCausalLM.from_pretrained(
        tmp_path / "base", attn_implementation="eager"
    )
    model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    tokens, _, mask = _inputs()
    m = np.asarray(mask)
    np.testing.assert_allclose(
        _hf_logits(model, tokens, mask)[m], _logits(CONFIG, params)[0][m], rtol=1e-4, atol=1e-4
    )
