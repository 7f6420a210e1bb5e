"""Data: tasks (gsm8k, svamp, arith), tokenizers, prompt formats and the input pipeline.

TFDS builders live in `jaxrl_reason.data.tfds_builders` (import it explicitly).
"""

from jaxrl_reason.data.arith import ArithConfig, generate_arith
from jaxrl_reason.data.example import Example
from jaxrl_reason.data.gsm8k import load_gsm8k
from jaxrl_reason.data.pipeline import (
    SupervisedBatches,
    bucket_length,
    collate_supervised,
    tokenize_examples,
)
from jaxrl_reason.data.prompts import (
    STOP_SEQUENCES,
    PromptFormat,
    few_shot,
    prompt_format,
    zero_shot,
)
from jaxrl_reason.data.svamp import load_svamp
from jaxrl_reason.data.tasks import TASKS, load_task
from jaxrl_reason.data.tokenizer import (
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    load_tokenizer,
    token_char_ends,
    train_sentencepiece,
    train_tokenizer_for_task,
)

__all__ = [
    "STOP_SEQUENCES",
    "TASKS",
    "ArithConfig",
    "Example",
    "HFTokenizer",
    "PromptFormat",
    "SentencePieceTokenizer",
    "SupervisedBatches",
    "Tokenizer",
    "bucket_length",
    "collate_supervised",
    "few_shot",
    "generate_arith",
    "load_gsm8k",
    "load_svamp",
    "load_task",
    "load_tokenizer",
    "prompt_format",
    "token_char_ends",
    "tokenize_examples",
    "train_sentencepiece",
    "train_tokenizer_for_task",
    "zero_shot",
]
