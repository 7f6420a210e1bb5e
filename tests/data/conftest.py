"""Fixtures for data tests: a small sentencepiece tokenizer trained on arith."""

import pytest

from jaxrl_reason.data.tokenizer import train_tokenizer_for_task


@pytest.fixture(scope="session")
def arith_tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "arith.model"
    return train_tokenizer_for_task(
        "arith",
        path,
        vocab_size=512,
        num_examples=3000,
        seed=0,
        user_defined_symbols=["[GOOD]", "[BAD]"],
    )
