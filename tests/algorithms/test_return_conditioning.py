"""RCRL return tokens: binning at the edges, and their place in the prompt."""

import pytest

from jaxrl_reason.algorithms.return_conditioning import (
    BAD,
    GOOD,
    best_return_token,
    condition_prompt,
    return_bin,
    return_token_for,
    return_tokens,
)


def test_binary_tokens_and_edges():
    assert return_tokens() == [BAD, GOOD] == ["[BAD]", "[GOOD]"]
    assert return_token_for(0.0) == BAD
    assert return_token_for(0.4999) == BAD
    assert return_token_for(0.5) == GOOD
    assert return_token_for(1.0) == GOOD
    assert return_token_for(True) == GOOD and return_token_for(False) == BAD
    assert best_return_token() == GOOD


@pytest.mark.parametrize("n", [3, 4, 5, 7, 10, 20])
def test_bins_at_boundaries(n):
    tokens = return_tokens(n)
    assert tokens == [f"[SCORE_{i}]" for i in range(n)]
    assert return_token_for(0.0, n) == "[SCORE_0]"
    assert return_token_for(1.0, n) == f"[SCORE_{n - 1}]"
    for i in range(1, n):
        assert return_bin(i / n, n) == i  # a boundary opens the upper bin
        assert return_bin(i / n - 1e-6, n) == i - 1
    assert return_bin(-3.0, n) == 0 and return_bin(7.0, n) == n - 1  # clipped


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="num_bins"):
        return_tokens(1)
    with pytest.raises(ValueError, match="NaN"):
        return_token_for(float("nan"))
    with pytest.raises(ValueError, match="whitespace"):
        condition_prompt("A: ", "[GO OD]")


def test_condition_prompt_places_token_at_answer_start():
    prompt = "Q: What is 2+3?\nA: "
    assert condition_prompt(prompt, GOOD) == "Q: What is 2+3?\nA: [GOOD] "
    assert condition_prompt(prompt, best_return_token(3)) == "Q: What is 2+3?\nA: [SCORE_2] "


@pytest.mark.parametrize("num_bins", [2, 3])
def test_return_tokens_are_single_sentencepiece_pieces(num_bins):
    """Given as user_defined_symbols, each return token encodes to exactly one id."""
    import io

    import sentencepiece as spm

    corpus = [
        f"Q: What is {a}+{b}?\nA: {a}+{b}=<<{a}+{b}={a + b}>>{a + b} #### {a + b}"
        for a in range(12)
        for b in range(12)
    ]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        vocab_size=80,
        user_defined_symbols=return_tokens(num_bins),
        model_type="bpe",
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    prompt = "Q: What is 2+3?\nA: "
    for token in return_tokens(num_bins):
        ids = sp.encode(condition_prompt(prompt, token) + "2+3=5 #### 5")
        token_id = sp.piece_to_id(token)
        assert ids.count(token_id) == 1
        assert sp.decode(ids[ids.index(token_id) :]).startswith(f"{token} 2+3")
