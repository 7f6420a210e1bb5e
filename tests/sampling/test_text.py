"""TextSampler: detokenize, drop EOS, cut at stop sequences, count the tokens kept."""

import jax
import numpy as np
import pytest

from jaxrl_reason.sampling import SampleOutput, Sampler, SamplingConfig
from jaxrl_reason.sampling.text import TextSampler
from tests.sampling.conftest import greedy_reference

PIECES = ["<pad>", "<s>", "</s>"] + list("0123456789QA: \n+=#abc.") + ["a\n", "\nQ:"]


class CharTokenizer:
    """Character-level fake with two multi-character pieces ("a\\n", "\\nQ:")."""

    pad_id, bos_id, eos_id = 0, 1, 2
    eos_ids = (2,)
    vocab_size = 64

    def encode(self, text, add_bos=True, add_eos=False):
        ids = [PIECES.index(ch) for ch in text]
        return [self.bos_id] * add_bos + ids + [self.eos_id] * add_eos

    def decode(self, ids):
        return "".join(PIECES[i] for i in ids if i > 2 and i < len(PIECES))


def ids(text):
    return CharTokenizer().encode(text, add_bos=False)


class ScriptedSampler:
    """Returns fixed completions, so the text logic is tested on its own."""

    def __init__(self, rows):
        self.rows, self.pad_id = rows, 0
        self.config = type("C", (), {"vocab_size": 64})()
        self.seen_cfg = None

    def sample(self, params, prompts, cfg, rng, stop_ids=(), progress=None):
        self.seen_cfg, self.seen_stop_ids = cfg, stop_ids
        t = cfg.max_new_tokens
        tokens = np.zeros((1, len(self.rows), t), np.int32)
        lengths = np.array([[len(r) for r in self.rows]], np.int32)
        for k, r in enumerate(self.rows):
            tokens[0, k, : len(r)] = r
        logprobs = np.where(tokens > 0, -1.0, 0.0).astype(np.float32)
        eos = np.array([[r[-1] == 2 for r in self.rows]])
        steps = int(lengths.max())
        return SampleOutput(
            tokens, lengths, eos, logprobs, logprobs * 2, steps, steps * len(self.rows)
        )


@pytest.mark.parametrize(
    ("completion", "text", "kept", "by_eos", "by_seq"),
    [
        (ids("12+3") + [2], "12+3", 5, True, False),  # EOS dropped from text, kept in count
        (ids("12+3"), "12+3", 4, False, False),  # stopped by length
        (ids("#### 4\nQ: 5") + [2], "#### 4", 6, False, True),  # cut; EOS after cut dropped
        (ids("42") + [PIECES.index("a\n")] + ids("Q: 7"), "42a", 3, False, True),  # straddle
        (ids("7") + [PIECES.index("\nQ:")] + ids("1"), "7", 1, False, True),  # stop is 1 token
        (ids("\nQ:9"), "", 0, False, True),
    ],
)
def test_stop_cut_and_token_count(completion, text, kept, by_eos, by_seq):
    sampler = ScriptedSampler([completion])
    out = TextSampler(sampler, CharTokenizer()).generate(
        None, ["Q: 1+1\nA:"], SamplingConfig(max_new_tokens=16), jax.random.key(0)
    )
    assert out.texts == [[text]]
    assert out.num_tokens.tolist() == [[kept]]
    assert out.stopped_by_eos.tolist() == [[by_eos]]
    assert out.stopped_by_sequence.tolist() == [[by_seq]]
    assert out.tokens[0, 0, :kept].tolist() == completion[:kept]
    assert (out.tokens[0, 0, kept:] == 0).all() and (out.logprobs[0, 0, kept:] == 0).all()
    assert (out.policy_logprobs[0, 0, :kept] == -2).all()
    assert sampler.seen_cfg.eos_ids == (2,)  # the tokenizer's EOS by default
    assert out.prompt_ids == [CharTokenizer().encode("Q: 1+1\nA:")]


def test_with_real_sampler_texts_are_decoded_tokens(tiny):
    cfg, params = tiny
    tok = CharTokenizer()
    text_sampler = TextSampler(Sampler(cfg, pad_id=tok.pad_id), tok)
    sc = SamplingConfig(num_samples=2, max_new_tokens=6, temperature=1.0)
    out = text_sampler.generate(
        params, ["Q: 1+2", "Q: 3"], sc, jax.random.key(0), stop_sequences=()
    )
    assert out.tokens.shape == (2, 2, 6)
    for b in range(2):
        for k in range(2):
            n = out.num_tokens[b, k]
            assert out.texts[b][k] == tok.decode(out.tokens[b, k, :n].tolist())


def test_single_string_is_rejected():
    with pytest.raises(ValueError, match="single string"):
        TextSampler(ScriptedSampler([[3]]), CharTokenizer()).generate(
            None, "Q: 1", SamplingConfig(), jax.random.key(0)
        )


def test_every_eos_id_of_the_tokenizer_ends_a_sample(tiny):
    # Llama-3 / Qwen style: a second end id that greedy decoding reaches first.
    cfg, params = tiny
    prompt = CharTokenizer().encode("Q: 1+2")
    free = greedy_reference(cfg, params, prompt, 12)
    j = next(i for i, t in enumerate(free) if i >= 1 and t not in free[:i] and t > 2)

    class TwoEnds(CharTokenizer):
        eos_ids = (2, free[j])

    tok = TwoEnds()
    sc = SamplingConfig(num_samples=1, max_new_tokens=12, temperature=0.0)
    out = TextSampler(Sampler(cfg, pad_id=0), tok).generate(
        params, ["Q: 1+2"], sc, jax.random.key(0), stop_sequences=()
    )
    assert greedy_reference(cfg, params, prompt, 12, eos_ids=tok.eos_ids) == free[: j + 1]
    assert out.num_tokens.tolist() == [[j + 1]] and out.stopped_by_eos.tolist() == [[True]]
    assert out.tokens[0, 0, : j + 1].tolist() == free[: j + 1]
    assert out.texts == [[tok.decode(free[:j])]]  # the end token itself is not text


def test_stop_token_ids_are_the_stop_strings_encodings():
    from jaxrl_reason.sampling.text import stop_token_ids

    tok = CharTokenizer()
    assert stop_token_ids(tok, ("\nQ:", "", "##")) == [ids("\nQ:"), ids("##")]
    sampler = ScriptedSampler([ids("12")])
    TextSampler(sampler, tok).generate(
        None, ["Q: 1"], SamplingConfig(max_new_tokens=4), jax.random.key(0), ("\nQ:",)
    )
    assert sampler.seen_stop_ids == [ids("\nQ:")]


def test_stopping_in_the_loop_changes_no_text(tiny, monkeypatch):
    """The same texts, kept tokens and log-probs as cutting only after decoding; the rows
    that hit a stop string end there instead of running to the length budget."""
    from jaxrl_reason.sampling import text as text_lib

    cfg, params = tiny
    tok = CharTokenizer()
    sampler = Sampler(cfg, pad_id=tok.pad_id)
    sc = SamplingConfig(num_samples=8, max_new_tokens=12, temperature=1.0)
    prompts = ["Q: 1+2", "Q: 3", "Q: 45"]
    stops = ("a", "b", "1")
    args = (params, prompts, sc, jax.random.key(4), stops)
    in_loop = TextSampler(sampler, tok).generate(*args)
    monkeypatch.setattr(text_lib, "stop_token_ids", lambda tokenizer, stops: [])
    after = TextSampler(sampler, tok).generate(*args)
    assert in_loop.stopped_by_sequence.any() and not in_loop.stopped_by_sequence.all()
    assert in_loop.texts == after.texts
    np.testing.assert_array_equal(in_loop.num_tokens, after.num_tokens)
    np.testing.assert_array_equal(in_loop.tokens, after.tokens)
    np.testing.assert_allclose(in_loop.policy_logprobs, after.policy_logprobs, atol=1e-5)
    np.testing.assert_array_equal(in_loop.stopped_by_eos, after.stopped_by_eos)
