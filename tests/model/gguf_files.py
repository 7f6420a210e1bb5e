"""Tiny GGUF files for tests, written with `gguf.GGUFWriter` as llama.cpp's converter would.

`write_tiny_llama` stores random HF-layout Llama weights the way `convert_hf_to_gguf.py`
does (attn_q / attn_k rows permuted to llama.cpp's interleaved rotary layout, several
quantisation types) with a small byte-level BPE tokenizer, and returns the HF tensors the
file de-quantises to: the reference a reader must reproduce.
"""

from __future__ import annotations

import pathlib

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
TINY = {"layers": 2, "d": 32, "heads": 4, "kv_heads": 2, "mlp": 64, "context": 1024}
# tokenizer: unk/bos/eos, a control token, the 256 byte symbols, and a few merges.
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n")]


def byte_symbols() -> list[str]:
    """GPT-2's 256 byte symbols, in byte order (the reference alphabet)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return [chr(b) if b in kept else chr(next(extra)) for b in range(256)]


def tiny_tokens() -> list[str]:
    return [*SPECIALS, *byte_symbols(), *("".join(m) for m in MERGES)]


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's `LlamaModel.permute` of attn_q / attn_k rows."""
    pairs = w.shape[0] // heads // 2
    return w.reshape(heads, 2, pairs, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _begin(path: pathlib.Path, arch: str) -> gguf.GGUFWriter:
    writer = gguf.GGUFWriter(str(path), arch)
    t = TINY
    writer.add_block_count(t["layers"])
    writer.add_context_length(t["context"])
    writer.add_embedding_length(t["d"])
    writer.add_feed_forward_length(t["mlp"])
    writer.add_head_count(t["heads"])
    writer.add_head_count_kv(t["kv_heads"])
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(t["d"] // t["heads"])
    return writer


def _tokenizer(writer: gguf.GGUFWriter, pre: str = "default") -> None:
    tokens = tiny_tokens()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    types = [3 if t in SPECIALS[1:] else 2 if t == "<unk>" else 1 for t in tokens]
    writer.add_token_types(types)
    writer.add_token_merges([" ".join(m) for m in MERGES])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    template = "{% for m in messages %}<|im_start|>{{ m['content'] }}</s>{% endfor %}"
    writer.add_chat_template(template)


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_tiny_llama(
    path: pathlib.Path,
    seed: int = 0,
    extra_keys: dict | None = None,
    extra_tensor: str = "",
    pre: str = "default",
) -> dict[str, np.ndarray]:
    """Write a 2-layer Llama GGUF at `path`; return its tensors de-quantised, by HF name.

    `extra_keys` (name -> str/int/float) are added as metadata, `extra_tensor` as a small
    F32 tensor, `pre` as tokenizer.ggml.pre: for the refusals.
    """
    t = TINY
    d, n, k, f = t["d"], t["heads"], t["kv_heads"], t["mlp"]
    h = d // n
    v = len(tiny_tokens())
    rng = np.random.default_rng(seed)
    normal = lambda *shape: (rng.standard_normal(shape) * 0.2).astype(np.float32)
    writer = _begin(path, "llama")
    _tokenizer(writer, pre)
    for key, value in (extra_keys or {}).items():
        add = {str: writer.add_string, int: writer.add_uint32, float: writer.add_float32}
        add[type(value)](key, value)
    hf: dict[str, np.ndarray] = {}

    def put(gguf_name: str, hf_name: str, w: np.ndarray, qtype: Q, heads: int = 0) -> None:
        q = w if qtype == Q.F32 else gguf.quants.quantize(w, qtype)
        hf[hf_name] = gguf.quants.dequantize(q, qtype).reshape(w.shape)  # HF row order
        # Quantised blocks run along a row, so permuting rows commutes with quantising.
        stored = llama_cpp_permute(q, heads) if heads else q
        writer.add_tensor(gguf_name, stored, raw_dtype=None if qtype == Q.F32 else qtype)

    put("token_embd.weight", "model.embed_tokens.weight", normal(v, d), Q.Q8_0)
    put("output_norm.weight", "model.norm.weight", 1 + normal(d), Q.F32)
    put("output.weight", "lm_head.weight", normal(v, d), Q.F16)
    for i in range(t["layers"]):
        blk, layer = f"blk.{i}", f"model.layers.{i}"
        for name, ref, shape, qtype, heads in (
            ("attn_norm", "input_layernorm", (d,), Q.F32, 0),
            ("attn_q", "self_attn.q_proj", (n * h, d), Q.Q4_1, n),
            ("attn_k", "self_attn.k_proj", (k * h, d), Q.Q8_0, k),
            ("attn_v", "self_attn.v_proj", (k * h, d), Q.F16, 0),
            ("attn_output", "self_attn.o_proj", (d, n * h), Q.Q4_1, 0),
            ("ffn_norm", "post_attention_layernorm", (d,), Q.F32, 0),
            ("ffn_gate", "mlp.gate_proj", (f, d), Q.Q4_0, 0),
            ("ffn_up", "mlp.up_proj", (f, d), Q.Q5_1, 0),
            ("ffn_down", "mlp.down_proj", (d, f), Q.Q8_0, 0),
        ):
            w = 1 + normal(*shape) if len(shape) == 1 else normal(*shape)
            put(f"{blk}.{name}.weight", f"{layer}.{ref}.weight", w, qtype, heads)
    if extra_tensor:
        writer.add_tensor(extra_tensor, normal(d))
    _finish(writer)
    return hf


def write_other_architecture(path: pathlib.Path, arch: str = "qwen2") -> None:
    """A GGUF whose general.architecture is not llama (metadata and one tensor)."""
    writer = _begin(path, arch)
    _tokenizer(writer)
    writer.add_tensor("token_embd.weight", np.zeros((len(tiny_tokens()), TINY["d"]), np.float32))
    _finish(writer)
