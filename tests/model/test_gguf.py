"""GGUF import against two independent references: `transformers` reading the real
SmolLM2-135M-Instruct GGUF (weights, logits, greedy generation, tokenizer), and tiny files
written here with `gguf.GGUFWriter` as llama.cpp's converter writes them."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from jaxrl_reason.model import Transformer, default_positions, init_params
from jaxrl_reason.model.gguf import import_gguf_to_checkpoint, load_gguf, open_gguf, tokenizer_files
from jaxrl_reason.model.hf_interop import config_to_hf, load_checkpoint, load_hf_llama
from jaxrl_reason.run_files import RunFileError
from tests.model.gguf_files import write_other_architecture, write_tiny_llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello world",
    " leading space",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many.",
    "12345 + 678 = 13023; 3.14159 * 2 = 6.28318",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "tabs\tand\nnewlines\n\n\nend",
    "émoji 🤖 ünïcödé 中文 русский",
    "  two spaces   three",
    "<<not a token>> <|im_end",
    "$1,000.50 costs 20% less",
    "It's they're we'll I'd",
    "a" * 40,
    "",
    "<repo_name>x<file_sep>y<|endoftext|>",
    "Q: Janet has 3 apples.\nA: She has 3 * 2 = <<3*2=6>>6 apples.\n#### 6",
]


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    """(config, params) of the real GGUF, read once for the module (float32)."""
    return load_gguf(smollm2_gguf)


@pytest.fixture(scope="module")
def hf_model(smollm2_hf_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_hf_dir, dtype=torch.float32
    ).eval()


def _left_padded(prompts, pad):
    width = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), width), pad, np.int32)
    mask = np.zeros((len(prompts), width), bool)
    for row, p in enumerate(prompts):
        tokens[row, width - len(p) :], mask[row, width - len(p) :] = p, True
    return tokens, mask


def test_smollm2_params_equal_transformers_dequantised_tensors(smollm2, smollm2_hf_dir):
    """Every tensor (Q4_1, Q8_0, F32 in this file) equals transformers' de-quantisation."""
    config, params = smollm2
    ref_config, ref = load_hf_llama(smollm2_hf_dir)
    assert config == ref_config
    assert (config.num_layers, config.num_heads, config.num_kv_heads) == (30, 9, 3)
    assert config.tie_embeddings and config.rope_theta == 100000.0
    flat, ref_flat = (jax.tree_util.tree_flatten_with_path(p)[0] for p in (params, ref))
    assert [k for k, _ in flat] == [k for k, _ in ref_flat]
    for (key, a), (_, b) in zip(flat, ref_flat):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(key))


def test_smollm2_logits_match_transformers_on_a_left_padded_batch(smollm2, hf_model):
    config, params = smollm2
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in (17, 9, 4)]
    tokens, mask = _left_padded(prompts, pad=2)
    positions = default_positions(jnp.asarray(mask))
    ours = Transformer(config).apply(
        {"params": params}, jnp.asarray(tokens), positions, jnp.asarray(mask)
    )
    with torch.no_grad():
        ref = hf_model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask.astype(int)),
            position_ids=torch.tensor(np.asarray(positions), dtype=torch.long),
        ).logits.numpy()
    ours, ref = np.asarray(ours.logits)[mask], ref[mask]  # padded query slots are garbage
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


@pytest.mark.slow  # compiling the 30-layer sampler takes about a minute on 2 CPU cores
def test_smollm2_greedy_sampler_equals_transformers_generate(smollm2, hf_model, smollm2_hf_dir):
    from jaxrl_reason.sampling import Sampler, SamplingConfig

    config, params = smollm2
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_hf_dir)
    texts = ["Q: What is 12 plus 30?\nA:", "The capital of France is", "def fibonacci(n):"]
    prompts = [tok(t)["input_ids"] for t in texts]
    new = 16
    cfg = SamplingConfig(num_samples=1, max_new_tokens=new, temperature=0.0, eos_ids=(2,))
    out = Sampler(config, pad_id=2).sample(params, prompts, cfg, jax.random.key(0))
    for row, prompt in enumerate(prompts):
        with torch.no_grad():
            ref = hf_model.generate(
                torch.tensor([prompt]), max_new_tokens=new, do_sample=False, eos_token_id=2
            )[0, len(prompt) :].tolist()
        assert out.tokens[row, 0, : out.lengths[row, 0]].tolist() == ref, texts[row]


def test_smollm2_tokenizer_files_encode_like_transformers(smollm2_gguf, smollm2_hf_dir, tmp_path):
    """The files written from the GGUF's metadata give transformers the same tokenizer as
    its own GGUF reading: ids, decoding, special tokens and the chat template."""
    for name, contents in tokenizer_files(open_gguf(smollm2_gguf)).items():
        (tmp_path / name).write_bytes(contents)
    ours = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ref = transformers.AutoTokenizer.from_pretrained(smollm2_hf_dir)
    for text in TEXTS:
        ids = ours(text)["input_ids"]
        assert ids == ref(text)["input_ids"], text
        assert ours.decode(ids) == text
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.all_special_tokens == ref.all_special_tokens
    conversation = [
        {"role": "system", "content": "Solve it."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ]
    for messages in (conversation[1:2], conversation):
        kwargs = {"tokenize": False, "add_generation_prompt": True}
        assert ours.apply_chat_template(messages, **kwargs) == ref.apply_chat_template(
            messages, **kwargs
        )
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is False and "<|im_start|>" in config["chat_template"]
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama GGUF (Q4_0/Q4_1/Q5_1/Q8_0/F16/F32 tensors, untied) and its tensors."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_llama(path)


def test_tiny_gguf_reads_as_its_hf_checkpoint(tiny, tmp_path):
    """llama.cpp's q/k row permutation is undone and every quant type de-quantised: the
    params equal those of the HF checkpoint holding the file's de-quantised tensors."""
    path, tensors = tiny
    config, params = load_gguf(path)
    assert not config.tie_embeddings and config.num_kv_heads == 2
    (tmp_path / "config.json").write_text(json.dumps(config_to_hf(config)))
    safetensors.numpy.save_file(tensors, tmp_path / "model.safetensors")
    _, ref = load_hf_llama(tmp_path)
    jax.tree.map(np.testing.assert_array_equal, params, ref)
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == jax.tree.map(
        lambda a: (a.shape, a.dtype), shapes
    )
    bf16, bf16_params = load_gguf(path, dtype="bfloat16")
    assert bf16.param_dtype == "bfloat16"
    assert bf16_params["layers"]["attn"]["q"].dtype == jnp.bfloat16


def test_tiny_gguf_tokenizer_adds_bos_as_the_file_says(tiny, tmp_path):
    path, _ = tiny
    for name, contents in tokenizer_files(open_gguf(path)).items():
        (tmp_path / name).write_bytes(contents)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ids = tok("the thin<|im_start|>")["input_ids"]
    vocab = tok.get_vocab()
    assert ids == [1, vocab["t"], vocab["he"], vocab["Ġt"], vocab["h"], vocab["in"], 3]
    assert tok.decode(ids, skip_special_tokens=True) == "the thin"


def test_import_writes_a_checkpoint_with_its_tokenizer(tiny, tmp_path):
    path, _ = tiny
    import_gguf_to_checkpoint(path, tmp_path / "ckpt")
    config, params = load_checkpoint(tmp_path / "ckpt")
    want_config, want = load_gguf(path)
    assert config == want_config
    jax.tree.map(np.testing.assert_array_equal, params, want)
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert names == {
        "params",
        "model_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    }
    with pytest.raises(FileExistsError, match="exists"):
        import_gguf_to_checkpoint(path, tmp_path / "ckpt")


def _refused(tmp_path, message, **tiny_kwargs):
    path = tmp_path / "bad.gguf"
    write_tiny_llama(path, **tiny_kwargs)
    with pytest.raises(ValueError, match=message):
        import_gguf_to_checkpoint(path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]  # nothing written


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"extra_keys": {"llama.rope.scaling.type": "linear"}}, r"rope.scaling.type='linear'"),
        ({"extra_keys": {"llama.attention.sliding_window": 64}}, r"llama.attention.sliding_window"),
        ({"extra_keys": {"llama.expert_count": 8}}, r"llama.expert_count=8: a mixture"),
        ({"pre": "qwen2"}, r"tokenizer.ggml.pre='qwen2'"),
        ({"extra_tensor": "blk.0.attn_q.bias"}, r"blk.0.attn_q.bias are not supported"),
        ({"extra_tensor": "rope_freqs.weight"}, r"rope_freqs.weight \(Llama-3.1"),
    ],
)
def test_unsupported_settings_are_refused_by_name(tmp_path, kwargs, message):
    _refused(tmp_path, message, **kwargs)


def test_other_architectures_and_non_gguf_files_are_refused(tmp_path):
    write_other_architecture(tmp_path / "qwen.gguf")
    with pytest.raises(ValueError, match=r"general.architecture='qwen2': only 'llama'"):
        load_gguf(tmp_path / "qwen.gguf")
    (tmp_path / "text.gguf").write_text("not a gguf file at all")
    with pytest.raises(RunFileError, match=r"text.gguf: not a readable GGUF file"):
        load_gguf(tmp_path / "text.gguf")
    with pytest.raises(FileNotFoundError, match="missing.gguf not found"):
        load_gguf(tmp_path / "missing.gguf")
    pathlib.Path(tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(RunFileError, match="empty.gguf: not a readable GGUF"):
        load_gguf(tmp_path / "empty.gguf")
