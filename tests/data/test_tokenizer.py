"""Tokenizers: sentencepiece training and round trips, HF tokenizer.json loading."""

import json

import pytest

from jaxrl_reason.data.arith import generate_arith
from jaxrl_reason.data.tokenizer import (
    HFTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
    token_char_ends,
    train_sentencepiece,
    train_tokenizer_for_task,
)


def test_sentencepiece_ids(arith_tokenizer):
    tok = arith_tokenizer
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.eos_ids) == (0, 2, 3, (3,))
    assert 300 < tok.vocab_size <= 512
    ids = tok.encode("Tom has 12 apples.", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.encode("Tom") == ids[:1] + tok.encode("Tom", add_bos=False)  # BOS by default
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_sentencepiece_round_trip(arith_tokenizer):
    texts = [e.question + "\n" + e.solution for e in generate_arith("test", 50, seed=5)]
    texts += ["Ünïcödé 你好 and tabs\tand  double spaces\n\nnew lines", "[GOOD] Tom has 7"]
    for text in texts:
        assert arith_tokenizer.decode(arith_tokenizer.encode(text, add_eos=True)) == text
    assert arith_tokenizer.decode_batch(arith_tokenizer.encode_batch(texts)) == texts


def test_digits_are_split_and_symbols_are_single(arith_tokenizer):
    tok = arith_tokenizer
    assert len(tok.encode("123456789", add_bos=False)) >= 9
    good = tok.piece_to_id("[GOOD]")
    assert tok.encode("[GOOD]", add_bos=False)[-1] == good
    assert tok.decode([tok.pad_id, good, tok.pad_id]) == "[GOOD]"


def test_token_char_ends(arith_tokenizer):
    text = "Tom has 3+4=<<3+4=7>>7 apples.\n#### 7"
    ids = arith_tokenizer.encode(text, add_bos=False)
    ends = token_char_ends(arith_tokenizer, ids)
    assert len(ends) == len(ids) and ends[-1] == len(text)
    assert all(a <= b for a, b in zip(ends, ends[1:]))


def test_sentencepiece_unigram_and_load(tmp_path):
    texts = [e.question for e in generate_arith("train", 500, seed=0)]
    tok = train_sentencepiece(texts, tmp_path / "uni", vocab_size=350, model_type="unigram")
    again = load_tokenizer(tmp_path / "uni.model")
    assert isinstance(again, SentencePieceTokenizer)
    assert again.encode(texts[0]) == tok.encode(texts[0])


def _tiny_hf_tokenizer(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(
        [e.question + "\n" + e.solution for e in generate_arith("train", 300)], trainer
    )
    tok.save(str(path))


def test_hf_tokenizer(tmp_path):
    path = tmp_path / "tokenizer.json"
    _tiny_hf_tokenizer(path)
    config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(path)
    assert isinstance(tok, HFTokenizer)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.eos_ids) == (0, 1, 2, (2,))
    text = "Tom has 3+4=<<3+4=7>>7 apples.\n#### 7"
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.encode(text) == ids[1:-1]  # no post_processor: HF adds nothing
    assert tok.decode(ids) == text
    assert load_tokenizer(tmp_path).vocab_size == tok.vocab_size  # a directory works too


def test_hf_tokenizer_explicit_tokens_and_errors(tmp_path):
    path = tmp_path / "tokenizer.json"
    _tiny_hf_tokenizer(path)
    tok = HFTokenizer(path, bos_token="</s>", eos_token="<s>")
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (2, 1, 1)  # no pad token: pad = eos
    with pytest.raises(ValueError, match="bos_token '<\\|begin_of_text\\|>' is not a token"):
        HFTokenizer(path, bos_token="<|begin_of_text|>", eos_token="</s>")
    with pytest.raises(ValueError, match="no eos token: there is no tokenizer_config.json"):
        HFTokenizer(path)  # a tokenizer.json alone names no eos: nothing is guessed
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.model")
    with pytest.raises(ValueError, match="tokenizer type"):
        load_tokenizer(tmp_path / "vocab.txt")


def test_a_vocabulary_the_text_cannot_fill_is_refused_with_the_largest_it_can(tmp_path):
    # sentencepiece's soft limit would silently make fewer pieces than asked for.
    with pytest.raises(ValueError) as info:
        train_tokenizer_for_task("arith", tmp_path / "big.model", vocab_size=5000, num_examples=300)
    message = str(info.value)
    largest = int(message.split("lower vocab_size to <= ")[1].split()[0])
    assert "arith tokenizer from 300 training examples" in message and "\n" not in message
    assert not (tmp_path / "big.model").exists()
    # The size it names is one the text does fill, exactly.
    tok = train_tokenizer_for_task("arith", tmp_path / "ok.model", largest, num_examples=300)
    assert tok.vocab_size == largest


def test_a_vocabulary_too_small_for_the_pieces_is_refused(tmp_path):
    texts = [e.question for e in generate_arith("train", 100, seed=0)]
    with pytest.raises(
        ValueError, match=r"vocab_size=100 is too small.*raise vocab_size to >= \d+"
    ):
        train_sentencepiece(texts, tmp_path / "small", vocab_size=100)
    with pytest.raises(ValueError, match="no text to train the tokenizer on"):
        train_sentencepiece(["", ""], tmp_path / "empty", vocab_size=300)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"task_name": "gsm8k"},
            r"task 'gsm8k' reads its questions from files: pass data_dir \(--data_dir",
        ),
        ({"task_name": "svamp"}, r"pass data_dir \(--data_dir.*SVAMP.json"),
        ({"vocab_size": 512.5}, "vocab_size must be an integer > 0, got 512.5"),
        ({"vocab_size": 0}, "vocab_size must be > 0, got 0"),
        ({"num_examples": 0}, "num_examples must be > 0, got 0"),
        ({"num_examples": 10.0}, "num_examples must be an integer > 0"),
        ({"user_defined_symbols": "[GOOD]"}, "user_defined_symbols must be a list of strings"),
    ],
)
def test_bad_tokenizer_arguments_are_refused_up_front(tmp_path, kwargs, message):
    kwargs = {"task_name": "arith", **kwargs}
    with pytest.raises(ValueError, match=message):
        train_tokenizer_for_task(out_path=tmp_path / "t.model", **kwargs)
    assert not (tmp_path / "t.model").exists()
