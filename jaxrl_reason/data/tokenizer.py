"""Tokenizers: one interface over sentencepiece `.model` files and HF `tokenizer.json`.

`decode` never stops early and drops pad/bos/eos ids, so decoded text holds exactly
the visible tokens (including user-defined symbols such as RCRL's `[GOOD]`).

pad id policy: a sentencepiece model with no pad piece (Llama-2 has none) pads with id
0 when 0 is neither bos nor eos (Llama-2's `<unk>`), else with eos. Padding positions
are always masked, so the choice only has to be a valid id that decodes to nothing.
"""

from __future__ import annotations

import abc
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from jaxrl_reason.validation import NON_NEGATIVE, POSITIVE, check_value

# sentencepiece's own (RuntimeError) words for a vocabulary the text cannot fill, one too
# small for the pieces it must hold, and no text at all.
_SP_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_SP_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")
_SP_NO_TEXT = "!sentences_.empty()"
_DATA_DIR_TASKS = {"gsm8k": "train.jsonl and test.jsonl", "svamp": "SVAMP.json"}


class Tokenizer(abc.ABC):
    """Text <-> ids. Subclasses define the four ids and `_encode` / `_decode`."""

    @property
    @abc.abstractmethod
    def bos_id(self) -> int: ...

    @property
    @abc.abstractmethod
    def eos_id(self) -> int: ...

    @property
    @abc.abstractmethod
    def pad_id(self) -> int: ...

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @abc.abstractmethod
    def _encode(self, texts: list[str]) -> list[list[int]]: ...

    @abc.abstractmethod
    def _decode(self, ids: list[list[int]]) -> list[str]: ...

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = False) -> list[int]:
        """Ids of `text`, optionally wrapped in bos/eos."""
        return self.encode_batch([text], add_bos=add_bos, add_eos=add_eos)[0]

    def encode_batch(
        self, texts: Sequence[str], add_bos: bool = True, add_eos: bool = False
    ) -> list[list[int]]:
        """`encode` for many texts at once (faster: one native call)."""
        out = self._encode(list(texts))
        return [
            ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])
            for ids in out
        ]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, skipping pad, bos and eos."""
        return self.decode_batch([ids])[0]

    def decode_batch(self, batch: Iterable[Sequence[int]]) -> list[str]:
        """`decode` for many id sequences (numpy rows are fine)."""
        skip = {self.pad_id, self.bos_id, self.eos_id}
        return self._decode([[int(i) for i in ids if int(i) not in skip] for ids in batch])


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model (Llama-2 style `tokenizer.model`, or one we trained)."""

    def __init__(self, path: str | os.PathLike):
        import sentencepiece as spm

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sentencepiece model not found: {path}")
        self.path = path
        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        bos, eos = self._sp.bos_id(), self._sp.eos_id()
        if bos < 0 or eos < 0:
            raise ValueError(
                f"{path} defines no bos/eos pieces; retrain it with bos_id and eos_id set"
            )
        self._bos, self._eos = bos, eos
        pad = self._sp.pad_id()
        self._pad = pad if pad >= 0 else (0 if 0 not in (bos, eos) else eos)

    bos_id = property(lambda self: self._bos)
    eos_id = property(lambda self: self._eos)
    pad_id = property(lambda self: self._pad)
    vocab_size = property(lambda self: self._sp.get_piece_size())

    def piece_to_id(self, piece: str) -> int:
        """The id of a piece (e.g. a user-defined symbol such as `[GOOD]`)."""
        return self._sp.piece_to_id(piece)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts)

    def _decode(self, ids: list[list[int]]) -> list[str]:
        return self._sp.decode(ids)


_BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>", "[BOS]", "<|startoftext|>")
_EOS_CANDIDATES = ("<|end_of_text|>", "<|eot_id|>", "</s>", "<eos>", "[EOS]", "<|endoftext|>")
_PAD_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>", "<|finetune_right_pad_id|>")


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` via the `tokenizers` library.

    bos/eos/pad are given by name or detected among common special tokens; with no pad
    token, pad = eos.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
    ):
        from tokenizers import Tokenizer as _HF

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer.json not found: {path}")
        self.path = path
        self._tok = _HF.from_file(str(path))
        self._bos = self._find(bos_token, _BOS_CANDIDATES, "bos")
        self._eos = self._find(eos_token, _EOS_CANDIDATES, "eos")
        pad = self._find(pad_token, _PAD_CANDIDATES, "pad", required=False)
        self._pad = self._eos if pad is None else pad

    def _find(
        self, name: str | None, candidates: tuple[str, ...], what: str, required: bool = True
    ):
        for token in (name,) if name is not None else candidates:
            token_id = self._tok.token_to_id(token)
            if token_id is not None:
                return token_id
        if required:
            raise ValueError(
                f"{self.path}: no {what} token among {name or candidates}; pass {what}_token="
            )
        return None

    bos_id = property(lambda self: self._bos)
    eos_id = property(lambda self: self._eos)
    pad_id = property(lambda self: self._pad)
    vocab_size = property(lambda self: self._tok.get_vocab_size(with_added_tokens=True))

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def _decode(self, ids: list[list[int]]) -> list[str]:
        return self._tok.decode_batch(ids, skip_special_tokens=False)


def load_tokenizer(path: str | os.PathLike, **kwargs) -> Tokenizer:
    """A `SentencePieceTokenizer` for `.model` files, an `HFTokenizer` for `.json`/dirs."""
    path = Path(path)
    if path.suffix == ".json" or (path.is_dir() and (path / "tokenizer.json").is_file()):
        return HFTokenizer(path, **kwargs)
    if path.is_dir() and (path / "tokenizer.model").is_file():
        path = path / "tokenizer.model"
    if path.suffix != ".model":
        raise ValueError(
            f"cannot tell the tokenizer type of {path}; pass a .model or tokenizer.json"
        )
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {path} not found: give the path of a .model file")
    try:
        return SentencePieceTokenizer(path)
    except RuntimeError as err:  # sentencepiece's own, e.g. "INTERNAL: unk is not defined."
        raise ValueError(
            f"{path}: not a readable sentencepiece tokenizer ({err}); restore the file, or "
            "train one with `jaxrl-reason train-tokenizer`"
        ) from None


def train_sentencepiece(
    texts: Iterable[str],
    model_prefix: str | os.PathLike,
    vocab_size: int = 512,
    model_type: str = "bpe",
    user_defined_symbols: Sequence[str] = (),
    character_coverage: float = 1.0,
) -> SentencePieceTokenizer:
    """Trains a small sentencepiece model from in-memory text; writes `{prefix}.model`.

    Ids: pad 0, unk 1, bos 2, eos 3. Digits are split (one token per digit, which helps
    arithmetic), unknown characters fall back to bytes, text is not normalised and
    whitespace is kept, so newlines survive as the byte token `<0x0A>` (texts are
    split into lines for training, since sentencepiece trains on single lines).
    `user_defined_symbols` (e.g. RCRL's `[GOOD]`, `[BAD]`) are always single pieces.

    The model has exactly `vocab_size` pieces: a size the text cannot fill (too few
    distinct merges) or one smaller than the pieces it must hold is a ValueError that
    says the size to use, never a silently smaller vocabulary.
    """
    import sentencepiece as spm

    vocab_size = check_value("vocab_size", vocab_size, int, POSITIVE)

    def lines() -> Iterator[str]:
        for text in texts:
            for line in text.split("\n"):
                if line:
                    yield line

    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines(),
            model_prefix=str(model_prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            user_defined_symbols=list(user_defined_symbols),
            character_coverage=character_coverage,
            hard_vocab_limit=True,  # refuse a size the text cannot fill (below), never cut it
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise _vocab_error(str(error), vocab_size) from error
    return SentencePieceTokenizer(f"{model_prefix}.model")


def _vocab_error(message: str, vocab_size: int) -> Exception:
    """sentencepiece's failure as a one-line ValueError saying what to change."""
    if high := _SP_TOO_HIGH.search(message):
        return ValueError(
            f"vocab_size={vocab_size} is more than the training text supports: it makes at "
            f"most {high[2]} pieces; lower vocab_size to <= {high[2]} or train on more text"
        )
    if small := _SP_TOO_SMALL.search(message):
        return ValueError(
            f"vocab_size={vocab_size} is too small: the tokenizer needs {small[2]} pieces "
            f"(ids, 256 bytes, user symbols and the text's characters); raise vocab_size "
            f"to >= {small[2]}"
        )
    if _SP_NO_TEXT in message:
        return ValueError("no text to train the tokenizer on (every text was empty)")
    return RuntimeError(f"sentencepiece training failed: {message}")


def train_tokenizer_for_task(
    task_name: str,
    out_path: str | os.PathLike,
    vocab_size: int = 512,
    num_examples: int = 5000,
    seed: int = 0,
    user_defined_symbols: Sequence[str] = (),
    **task_kwargs,
) -> SentencePieceTokenizer:
    """Trains a tokenizer on a task's train questions and solutions (and prompt text).

    `out_path` is the `.model` file to write (a `.model` suffix is added if missing);
    `task_kwargs` go to `load_task` (e.g. `data_dir=` for gsm8k/svamp). Bad arguments
    (a vocabulary the examples cannot fill among them) are refused before or instead of
    writing anything, with the value to use.
    """
    from jaxrl_reason.data.prompts import zero_shot
    from jaxrl_reason.data.tasks import load_task

    check_value("vocab_size", vocab_size, int, POSITIVE)
    check_value("num_examples", num_examples, int, POSITIVE)
    check_value("seed", seed, int, NON_NEGATIVE)
    check_value("user_defined_symbols", user_defined_symbols, tuple[str, ...])
    if task_name in _DATA_DIR_TASKS and task_kwargs.get("data_dir") is None:
        raise ValueError(
            f"task {task_name!r} reads its questions from files: pass data_dir (--data_dir "
            f"on the command line), the folder with {_DATA_DIR_TASKS[task_name]}"
        )
    if task_name == "arith":
        task_kwargs.setdefault("num_examples", num_examples)
        task_kwargs.setdefault("seed", seed)
    examples = load_task(task_name, "train", **task_kwargs)[:num_examples]
    fmt = zero_shot()
    texts = [fmt.format(ex.question) + ex.solution for ex in examples]
    out_path = Path(out_path)
    prefix = out_path.with_suffix("") if out_path.suffix == ".model" else out_path
    try:
        return train_sentencepiece(
            texts, prefix, vocab_size=vocab_size, user_defined_symbols=user_defined_symbols
        )
    except ValueError as error:
        raise ValueError(
            f"{task_name} tokenizer from {len(examples)} training examples: {error} "
            "(--vocab_size; in a run, ModelSetup.tokenizer_vocab_size)"
        ) from error


def token_char_ends(tokenizer: Tokenizer, ids: Sequence[int]) -> list[int]:
    """`ends[i]` = length of the text decoded from `ids[:i + 1]` (non-decreasing).

    Input of `rewards.heuristic.char_offsets_to_token_positions`. Computed by decoding
    prefixes (O(n^2) characters, fine for a few hundred tokens), which is exact for
    any tokenizer including byte fallback; a partial UTF-8 character can decode to a
    replacement character, so ends are made non-decreasing from the right.
    """
    ids = list(ids)
    ends = [len(s) for s in tokenizer.decode_batch([ids[: i + 1] for i in range(len(ids))])]
    for i in range(len(ends) - 2, -1, -1):
        ends[i] = min(ends[i], ends[i + 1])
    return ends
