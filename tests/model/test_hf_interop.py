"""HF Llama interop: logits match `transformers`, round trips are exact, bad input is named."""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from jax.sharding import NamedSharding, PartitionSpec

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxrl_reason.model import (  # noqa: E402
    Transformer,
    default_positions,
    hf_interop,  # noqa: E402
    param_logical_axes,
)
from jaxrl_reason.model.config import ModelConfig, RopeScaling  # noqa: E402
from jaxrl_reason.parallel import logical_shardings, make_mesh  # noqa: E402
from jaxrl_reason.run_files import RunFileError  # noqa: E402
from tests.model.random_params import random_params, randomize_hf_model  # noqa: E402

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
VARIANTS = {
    # GQA, untied, non-default theta: the common Llama-2/3 shape.
    "gqa": dict(num_key_value_heads=2, rope_theta=50000.0),
    "tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
    # Wavelengths of head_dim 8 straddle 16/4 and 16/1, so all three llama3 regimes occur.
    "llama3": dict(num_key_value_heads=2, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE),
}


def _hf_model(seed=0, **overrides):
    """A tiny random LlamaForCausalLM with weights large enough to make attention sharp."""
    kw = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    kw.update(overrides)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
    return randomize_hf_model(model, seed)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """variant -> (HF model, directory it was saved to with save_pretrained)."""
    out = {}
    for name, overrides in VARIANTS.items():
        model = _hf_model(**overrides)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path, safe_serialization=True)
        out[name] = (model, path)
    return out


def _batch(vocab, seed=0):
    """A left-padded batch: rows with 0, 3 and 9 padding slots."""
    tokens = np.random.default_rng(seed).integers(0, vocab, (3, 20))
    mask = np.ones((3, 20), bool)
    mask[1, :3] = mask[2, :9] = False
    return tokens, mask


def _our_logits(config, params, tokens, mask):
    positions = default_positions(jnp.asarray(mask))
    out = Transformer(config).apply(
        {"params": params}, jnp.asarray(tokens, jnp.int32), positions, jnp.asarray(mask)
    )
    return np.asarray(out.logits)


def _hf_logits(model, tokens, mask):
    positions = np.asarray(default_positions(jnp.asarray(mask)))
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens),
            attention_mask=torch.tensor(mask.astype(int)),
            position_ids=torch.tensor(positions),
        )
    return out.logits.float().numpy()


def _assert_logits_close(ours, ref, mask, rtol=1e-4):
    ours, ref = ours[mask], ref[mask]  # padded query slots are garbage in both
    np.testing.assert_allclose(ours, ref, rtol=0, atol=rtol * np.abs(ref).max())


def _tensors(path):
    out = {}
    for file in sorted(pathlib.Path(path).glob("*.safetensors")):
        out.update(safetensors.numpy.load_file(file))
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_loaded_logits_match_transformers(hf_dirs, variant):
    model, path = hf_dirs[variant]
    config, params = hf_interop.load_hf_llama(path)
    assert config.tie_embeddings == (variant == "tied")
    assert (config.rope_scaling is not None) == (variant == "llama3")
    tokens, mask = _batch(config.vocab_size)
    _assert_logits_close(
        _our_logits(config, params, tokens, mask), _hf_logits(model, tokens, mask), mask
    )


@pytest.mark.parametrize("tied", [False, True])
def test_exported_params_load_in_transformers(tmp_path, tied):
    config = ModelConfig(
        vocab_size=96,
        d_model=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        mlp_dim=48,
        max_seq_len=128,
        rope_theta=50000.0,
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 16),
        tie_embeddings=tied,
    )
    params = random_params(config, seed=1)
    hf_interop.save_hf_llama(config, params, tmp_path / "hf")
    model = transformers.LlamaForCausalLM.from_pretrained(
        tmp_path / "hf", attn_implementation="eager"
    ).eval()
    assert model.dtype == torch.float32
    tokens, mask = _batch(config.vocab_size, seed=1)
    _assert_logits_close(
        _our_logits(config, params, tokens, mask), _hf_logits(model, tokens, mask), mask
    )


@pytest.mark.parametrize("variant", ["gqa", "tied"])
def test_import_then_export_is_bit_identical(hf_dirs, tmp_path, variant):
    _, path = hf_dirs[variant]
    config, params = hf_interop.load_hf_llama(path)
    hf_interop.save_hf_llama(config, params, tmp_path / "out")
    original, exported = _tensors(path), _tensors(tmp_path / "out")
    assert sorted(original) == sorted(exported)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and np.array_equal(exported[name], tensor), name
    assert (
        hf_interop.config_from_hf(json.loads((tmp_path / "out/config.json").read_text())) == config
    )


def test_sharded_index_checkpoints_both_ways(hf_dirs, tmp_path):
    model, path = hf_dirs["gqa"]
    model.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "sharded/model.safetensors.index.json").exists()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 2
    config, params = hf_interop.load_hf_llama(tmp_path / "sharded")
    _, reference = hf_interop.load_hf_llama(path)
    jax.tree.map(np.testing.assert_array_equal, params, reference)

    hf_interop.save_hf_llama(config, params, tmp_path / "ours", max_shard_bytes=20_000)
    index = json.loads((tmp_path / "ours/model.safetensors.index.json").read_text())
    files = sorted(p.name for p in (tmp_path / "ours").glob("*.safetensors"))
    assert len(files) > 2 and sorted(set(index["weight_map"].values())) == files
    tensors = _tensors(tmp_path / "ours")
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ours")
    for name, p in model.state_dict().items():
        np.testing.assert_array_equal(reloaded.state_dict()[name].numpy(), p.numpy(), name)


def test_bfloat16_checkpoints(tmp_path):
    model = _hf_model(num_key_value_heads=2).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16", safe_serialization=True)
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}

    config, params = hf_interop.load_hf_llama(tmp_path / "bf16")  # default: float32, exact
    assert params["embedding"].dtype == jnp.float32
    np.testing.assert_array_equal(params["embedding"], state["model.embed_tokens.weight"])
    np.testing.assert_array_equal(
        params["layers"]["mlp"]["down"][1], state["model.layers.1.mlp.down_proj.weight"].T
    )
    _, bf16 = hf_interop.load_hf_llama(tmp_path / "bf16", dtype="bfloat16")
    assert bf16["layers"]["attn"]["q"].dtype == jnp.bfloat16
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a.astype(jnp.float32), b), bf16, params)

    hf_interop.save_hf_llama(config, bf16, tmp_path / "out", dtype="bfloat16")
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out")
    for name, p in model.state_dict().items():
        assert reloaded.state_dict()[name].dtype == torch.bfloat16
        assert torch.equal(reloaded.state_dict()[name], p), name


def test_streamed_load_onto_a_mesh(hf_dirs, monkeypatch):
    _, path = hf_dirs["gqa"]
    config, reference = hf_interop.load_hf_llama(path)
    mesh = make_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    shardings = logical_shardings(param_logical_axes(config), mesh)
    reads, original_read = [], hf_interop._Reader.read

    def recording_read(self, name, index):
        out = original_read(self, name, index)
        reads.append((name, out.shape))
        return out

    monkeypatch.setattr(hf_interop._Reader, "read", recording_read)
    _, params = hf_interop.load_hf_llama(path, shardings=shardings)

    def check(array, sharding, ref):
        assert array.sharding.is_equivalent_to(sharding, array.ndim)
        np.testing.assert_array_equal(np.asarray(array), np.asarray(ref))

    jax.tree.map(check, params, shardings, reference)
    # Each device reads only its block: embedding [V, D] is split over (tensor, fsdp) = 2 x 2,
    # and each distinct block is read once although the data axis replicates it twice.
    embedding = [shape for name, shape in reads if name == "model.embed_tokens.weight"]
    assert embedding == [(config.vocab_size // 2, config.d_model // 2)] * 4
    q0 = [shape for name, shape in reads if name == "model.layers.0.self_attn.q_proj.weight"]
    assert q0 == [(config.num_heads // 2 * config.head_dim, config.d_model // 2)] * 4

    # Unusual layouts too: shard the last axes over (tensor, fsdp, data), which splits
    # head_dim inside q_proj's N*H rows and the stacked layer axis of the norms.
    def odd(x):
        spec = [None] * x.ndim
        for j, axis in enumerate(("data", "fsdp", "tensor")[: x.ndim]):
            spec[x.ndim - 1 - j] = axis
        return NamedSharding(mesh, PartitionSpec(*spec))

    odd_shardings = jax.tree.map(odd, reference)
    _, params = hf_interop.load_hf_llama(path, shardings=odd_shardings)
    jax.tree.map(check, params, odd_shardings, reference)


def _copy_with(src, dst, drop=None, replace=None, config_changes=None):
    dst.mkdir()
    tensors = _tensors(src)
    if drop:
        del tensors[drop]
    tensors.update(replace or {})
    safetensors.numpy.save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config.update(config_changes or {})
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(drop="model.layers.1.mlp.up_proj.weight"), "model.layers.1.mlp.up_proj.weight"),
        (
            dict(replace={"model.layers.0.self_attn.k_proj.weight": np.zeros((8, 32), np.float32)}),
            r"model.layers.0.self_attn.k_proj.weight.*\(8, 32\).*\(16, 32\)",
        ),
        (dict(config_changes={"architectures": ["MistralForCausalLM"]}), "architectures"),
        (dict(config_changes={"model_type": "gemma"}), "model_type.*gemma"),
        (dict(config_changes={"hidden_act": "gelu"}), "hidden_act.*gelu"),
        (dict(config_changes={"attention_bias": True}), "attention_bias"),
        (dict(config_changes={"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}), "yarn"),
    ],
)
def test_bad_checkpoints_name_the_problem(hf_dirs, tmp_path, change, message):
    _, path = hf_dirs["gqa"]
    bad = _copy_with(path, tmp_path / "bad", **change)
    with pytest.raises(ValueError, match=message):
        hf_interop.load_hf_llama(bad)


class _Exploding:
    """A param with the right shape that fails when read: a crash in the middle of a save."""

    def __init__(self, shape):
        self.shape = shape

    def __getitem__(self, index):
        raise RuntimeError("disk on fire")


def test_save_never_leaves_a_partial_or_clobbered_destination(hf_dirs, tmp_path):
    _, path = hf_dirs["gqa"]
    config, params = hf_interop.load_hf_llama(path)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="occupied"):
        hf_interop.save_hf_llama(config, params, occupied)
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]

    broken = {
        **params,
        "layers": {
            **params["layers"],
            "mlp": {
                **params["layers"]["mlp"],
                "down": _Exploding(params["layers"]["mlp"]["down"].shape),
            },
        },
    }
    with pytest.raises(RuntimeError, match="disk on fire"):
        hf_interop.save_hf_llama(config, broken, occupied, overwrite=True)
    assert (occupied / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]  # no temporary left

    hf_interop.save_hf_llama(config, params, occupied, overwrite=True)
    assert sorted(p.name for p in occupied.iterdir()) == ["config.json", "model.safetensors"]


def test_cli_import_export_round_trip(hf_dirs, tmp_path):
    _, path = hf_dirs["llama3"]
    hf_interop.import_hf_to_checkpoint(path, tmp_path / "ckpt")
    config = hf_interop.model_config_from_json((tmp_path / "ckpt/model_config.json").read_text())
    assert config.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 16)
    with pytest.raises(FileExistsError):
        hf_interop.import_hf_to_checkpoint(path, tmp_path / "ckpt")
    hf_interop.export_checkpoint_to_hf(tmp_path / "ckpt", tmp_path / "hf")
    original, exported = _tensors(path), _tensors(tmp_path / "hf")
    assert sorted(original) == sorted(exported)
    for name, tensor in original.items():
        np.testing.assert_array_equal(exported[name], tensor, name)
    with pytest.raises(FileExistsError):
        hf_interop.export_checkpoint_to_hf(tmp_path / "ckpt", tmp_path / "hf")


def test_import_copies_the_tokenizer_files_the_hf_directory_has(hf_dirs, tmp_path):
    import shutil

    _, path = hf_dirs["gqa"]
    src = tmp_path / "src"
    shutil.copytree(path, src)
    files = {"tokenizer.json": b'{"a": 1}', "tokenizer_config.json": b'{"eos_token": "x"}'}
    for name, data in files.items():
        (src / name).write_bytes(data)
    hf_interop.import_hf_to_checkpoint(src, tmp_path / "ckpt")
    for name, data in files.items():
        assert (tmp_path / "ckpt" / name).read_bytes() == data
    generation = (src / "generation_config.json").read_bytes()  # save_pretrained wrote it
    assert (tmp_path / "ckpt" / "generation_config.json").read_bytes() == generation
    assert not (tmp_path / "ckpt" / "tokenizer.model").exists()  # src has none


def test_config_conversions_round_trip():
    config = ModelConfig(
        vocab_size=100,
        d_model=48,
        num_layers=3,
        num_heads=6,
        num_kv_heads=2,
        head_dim=16,
        mlp_dim=64,
        max_seq_len=77,
        rope_theta=1234.0,
        rope_scaling=RopeScaling(4.0, 2.0, 8.0, 32),
        norm_eps=1e-6,
        tie_embeddings=True,
    )
    assert hf_interop.config_from_hf(hf_interop.config_to_hf(config)) == config
    exotic = config.replace(dtype="bfloat16", param_dtype="float16", remat=True)
    assert hf_interop.model_config_from_json(hf_interop.model_config_to_json(exotic)) == exotic
    with pytest.raises(ValueError, match="colour"):
        hf_interop.model_config_from_json('{"colour": 1}')


def test_config_from_transformers4_style_dict():
    """Older hub configs: rope_theta/rope_scaling top level, head_dim and kv heads implied."""
    hf = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "intermediate_size": 11008,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    config = hf_interop.config_from_hf(hf)
    assert (config.num_kv_heads, config.head_dim, config.rope_theta) == (32, 128, 500000.0)
    assert config.rope_scaling == RopeScaling() and not config.tie_embeddings
    hf["rope_scaling"] = None
    assert hf_interop.config_from_hf(hf).rope_scaling is None
    # Sanity check against the reference parser.
    ours = hf_interop.config_to_hf(config)
    ref = transformers.LlamaConfig(**{k: v for k, v in ours.items() if k != "architectures"})
    assert ref.head_dim == config.head_dim and ref.num_key_value_heads == config.num_kv_heads


def test_export_copies_nothing_extra(tmp_path):
    """Heads have no HF counterpart; the directory holds exactly what transformers reads."""
    config = ModelConfig(
        vocab_size=16,
        d_model=8,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=4,
        mlp_dim=8,
        max_seq_len=32,
    )
    params = random_params(config, seed=0, heads=("value",))
    assert "value_head" in params
    hf_interop.save_hf_llama(config, params, tmp_path / "hf")
    names = sorted(_tensors(tmp_path / "hf"))
    assert not [n for n in names if "value" in n]
    assert len(names) == 2 + 1 + 9  # embed, norm, lm_head + 9 per layer


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", r"model.safetensors: not a readable safetensors file .*truncated or damaged"),
        ("garbage", r"model.safetensors: not a readable safetensors file"),
        ("config", r"config.json:1:\d+: HF config is not valid JSON"),
        ("config_key", r"config.json: the HF config has no 'num_attention_heads'"),
    ],
)
def test_damaged_files_are_named_in_one_line(hf_dirs, tmp_path, damage, message):
    _, path = hf_dirs["gqa"]
    bad = _copy_with(path, tmp_path / "bad")
    weights, config = bad / "model.safetensors", bad / "config.json"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage":
        weights.write_bytes(b"not a safetensors file at all")
    elif damage == "config":
        config.write_text(config.read_text()[:40])
    else:
        config.write_text(json.dumps({"hidden_size": 32, "vocab_size": 96}))
    with pytest.raises(RunFileError, match=message) as err:
        hf_interop.load_hf_llama(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_a_damaged_or_incomplete_sharded_checkpoint_is_named(hf_dirs, tmp_path):
    _, path = hf_dirs["gqa"]
    config, params = hf_interop.load_hf_llama(path)
    hf_interop.save_hf_llama(config, params, tmp_path / "sharded", max_shard_bytes=20_000)
    index = tmp_path / "sharded" / "model.safetensors.index.json"
    shard = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{shard} not found: .*index.json lists it"):
        hf_interop.load_hf_llama(tmp_path / "sharded")
    index.write_text('{"weight_map": {"model.norm.weight": ')
    with pytest.raises(RunFileError, match=rf"{index}:1:\d+: safetensors index is not valid"):
        hf_interop.load_hf_llama(tmp_path / "sharded")


def _trained_run(workdir, tok, config, steps):
    """A run directory as `train_experiment` leaves it: run.json, a sentencepiece
    tokenizer, and one saved policy per finished phase (params `steps[i]` at step i)."""
    from jaxrl_reason.data.prompts import zero_shot
    from jaxrl_reason.training.checkpointing import save_params

    fmt = dataclasses.asdict(zero_shot())
    run = {
        "layout": 2,
        "task": "arith",
        "tokenizer": str(tok.path),
        "model_config": dataclasses.asdict(config),
        "prompt_format": fmt,
        "phases": {},
    }
    for step, (phase, params) in enumerate(steps):
        assert save_params(workdir / "policy", params, {"phase": phase, "maj@1": 0.5}) == step
        run["phases"][phase] = {"policy_step": step, "prompt_format": fmt}
    (workdir / "run.json").write_text(json.dumps(run))


def test_a_trained_run_exports_to_transformers_with_equal_logits(tmp_path):
    from jaxrl_reason import cli
    from jaxrl_reason.data.tokenizer import train_tokenizer_for_task

    tok = train_tokenizer_for_task("arith", tmp_path / "run" / "tokenizer", 384, 300)
    config = ModelConfig(
        vocab_size=tok.vocab_size,
        d_model=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        mlp_dim=48,
        max_seq_len=128,
    )
    sft, ei = random_params(config, seed=1), random_params(config, seed=2)
    _trained_run(tmp_path / "run", tok, config, [("sft", sft), ("ei", ei)])
    tokens, mask = _batch(config.vocab_size, seed=1)
    for step, params in ((0, sft), (None, ei)):  # a given step, then the newest
        dst = tmp_path / f"hf_{step}"
        meta = hf_interop.export_run_to_hf(tmp_path / "run", dst, step=step)
        assert meta["phase"] == ("sft" if step == 0 else "ei")
        assert sorted(p.name for p in dst.iterdir()) == [
            "config.json",
            "jaxrl_reason_policy.json",
            "model.safetensors",
            "tokenizer.model",
        ]
        assert (dst / "tokenizer.model").read_bytes() == pathlib.Path(tok.path).read_bytes()
        about = json.loads((dst / "jaxrl_reason_policy.json").read_text())
        run = json.loads((tmp_path / "run" / "run.json").read_text())
        assert about["prompt_format"] == run["prompt_format"] and about["meta"] == meta
        model = transformers.LlamaForCausalLM.from_pretrained(
            dst, attn_implementation="eager"
        ).eval()
        _assert_logits_close(
            _our_logits(config, params, tokens, mask), _hf_logits(model, tokens, mask), mask
        )

    # The CLI: --step and --overwrite (its error names the flag, not overwrite=True).
    run, dst = str(tmp_path / "run"), str(tmp_path / "hf_None")
    assert cli.main(["export-hf", run, dst, "--step", "0"]) == 2
    assert cli.main(["export-hf", run, dst, "--step", "0", "--overwrite"]) == 0
    assert (
        json.loads((tmp_path / "hf_None" / "jaxrl_reason_policy.json").read_text())["meta"]["phase"]
        == "sft"
    )
    assert cli.main(["export-hf", run, dst, "--step", "7", "--overwrite"]) == 2
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        hf_interop.export_checkpoint_to_hf(tmp_path, tmp_path / "nowhere")


def test_cli_export_hf_overwrite_and_step_of_an_import(hf_dirs, tmp_path, capsys):
    from jaxrl_reason import cli

    _, path = hf_dirs["gqa"]
    hf_interop.import_hf_to_checkpoint(path, tmp_path / "ckpt")
    ckpt, dst = str(tmp_path / "ckpt"), str(tmp_path / "hf")
    assert cli.main(["export-hf", ckpt, dst]) == 0
    assert cli.main(["export-hf", ckpt, dst]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert cli.main(["export-hf", ckpt, dst, "--overwrite"]) == 0
    assert cli.main(["export-hf", ckpt, dst, "--overwrite", "--step", "1"]) == 2
    assert "import-hf checkpoint, which holds one set of params" in capsys.readouterr().err
