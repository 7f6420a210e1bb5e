"""Tokenizers: one interface over sentencepiece `.model` files and HF `tokenizer.json`.

`decode` never stops early and drops pad/bos/every eos id, so decoded text holds exactly
the visible tokens (including user-defined symbols such as RCRL's `[GOOD]`). An HF
tokenizer's special tokens, eos ids and chat template come from its directory's files
(`hf_tokenizer_files`), never from a list of likely names.

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

from jaxrl_reason.data.chat_template import render_chat
from jaxrl_reason.data.hf_tokenizer_files import TokenizerFiles, read_tokenizer_files
from jaxrl_reason.validation import NON_NEGATIVE, POSITIVE, check_value

# sentencepiece's own (RuntimeError) words for a vocabulary the text cannot fill, one too
# small for the pieces it must hold, and no text at all.
_SP_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_SP_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")
_SP_NO_TEXT = "!sentences_.empty()"
_DATA_DIR_TASKS = {"gsm8k": "train.jsonl and test.jsonl", "svamp": "SVAMP.json"}


class Tokenizer(abc.ABC):
    """Text <-> ids. Subclasses define the ids and `_encode` / `_decode`.

    `encode(text)` adds what the tokenizer itself adds: a sentencepiece model a BOS; an HF
    tokenizer what `transformers` adds with `add_special_tokens=True` (SmolLM2 and Qwen
    nothing, Llama a BOS). `add_bos=True` / `False` forces a BOS / no special tokens.
    """

    @property
    @abc.abstractmethod
    def bos_id(self) -> int | None: ...

    @property
    @abc.abstractmethod
    def eos_id(self) -> int: ...

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends a sequence, `eos_id` first: where sampling stops."""
        return (self.eos_id,)

    @property
    @abc.abstractmethod
    def pad_id(self) -> int: ...

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    chat_template: str | None = None  # the model's jinja chat template (HF tokenizers)
    template_variables: dict[str, str] = {}  # what the template sees: bos_token, eos_token...
    _template_source: str | None = None

    def apply_chat_template(
        self, messages: Sequence[dict], add_generation_prompt: bool = False, **variables
    ) -> str:
        """`messages` ({"role", "content"} dicts) as the model's chat template writes them:
        the text of `transformers`' `apply_chat_template(..., tokenize=False)`. Its ids are
        `encode(text)` (no second BOS: see `HFTokenizer`)."""
        if self.chat_template is None:
            raise ValueError(
                f"{self.path} has no chat template (no chat_template.jinja, no chat_template "
                "in tokenizer_config.json): use a model's HF tokenizer, or pass chat_template="
            )
        variables = {**self.template_variables, **variables}
        return render_chat(
            self.chat_template, messages, add_generation_prompt, self._template_source, **variables
        )

    @abc.abstractmethod
    def _encode(self, texts: list[str]) -> list[list[int]]: ...

    @abc.abstractmethod
    def _decode(self, ids: list[list[int]]) -> list[str]: ...

    def _specials(
        self, text: str, add_bos: bool | None, add_eos: bool
    ) -> tuple[list[int], list[int]]:
        """The ids put before and after `text`'s own (here: a BOS unless told not to)."""
        return [self.bos_id] if add_bos is not False else [], [self.eos_id] if add_eos else []

    def encode(self, text: str, add_bos: bool | None = None, add_eos: bool = False) -> list[int]:
        """Ids of `text`, with the tokenizer's own special tokens (see the class), optionally
        ending in eos."""
        return self.encode_batch([text], add_bos=add_bos, add_eos=add_eos)[0]

    def encode_batch(
        self, texts: Sequence[str], add_bos: bool | None = None, add_eos: bool = False
    ) -> list[list[int]]:
        """`encode` for many texts at once (faster: one native call)."""
        texts = list(texts)
        out = []
        for text, ids in zip(texts, self._encode(texts)):
            before, after = self._specials(text, add_bos, add_eos)
            out.append(before + ids + after)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, skipping pad, bos and every eos."""
        return self.decode_batch([ids])[0]

    def decode_batch(self, batch: Iterable[Sequence[int]]) -> list[str]:
        """`decode` for many id sequences (numpy rows are fine)."""
        skip = {self.pad_id, self.bos_id, *self.eos_ids}
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

    def token_text(self, token_id: int) -> str:
        """The piece of one id as the model holds it (e.g. "</s>")."""
        return self._sp.id_to_piece(token_id)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts)

    def _decode(self, ids: list[list[int]]) -> list[str]:
        return self._sp.decode(ids)


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer directory (or its tokenizer.json), via `tokenizers`.

    The special tokens, the ids `encode` adds, every eos id and the chat template are read
    from the files beside tokenizer.json (`hf_tokenizer_files`), never guessed, so
    `encode(text)` equals `AutoTokenizer.from_pretrained(dir)(text).input_ids`. One
    deliberate difference: a text that already starts with the BOS token (a chat template
    wrote it) gets no special tokens added, which is how `apply_chat_template` tokenizes it.
    A tokenizer.json alone is read where it is unambiguous (the BOS/EOS its post_processor
    adds). With no pad token, pad = eos. Explicit arguments override the files: `eos_token`
    may list several tokens (the first is `eos_id`); `add_bos` (True: a BOS, False:
    nothing) replaces what the post_processor adds.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        bos_token: str | None = None,
        eos_token: str | Sequence[str] | None = None,
        pad_token: str | None = None,
        add_bos: bool | None = None,
        chat_template: str | None = None,
    ):
        from tokenizers import Tokenizer as _HF

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer.json not found: {path}")
        self.path = path
        self._tok = _HF.from_file(str(path))
        files = read_tokenizer_files(path.parent)
        # What encode adds is the post_processor's (prefix, suffix): transformers 5 ignores
        # tokenizer_config's add_bos_token / add_eos_token beside a tokenizer.json.
        prefix, suffix = ([], []) if add_bos is not None else self._post_processor_ids()
        named = dict(files.named)
        if not files.has_config:  # tokenizer.json alone: the tokens its post_processor adds
            for key, ids in (("bos_token", prefix), ("eos_token", suffix)):
                if len(ids) == 1:
                    named.setdefault(key, self._tok.id_to_token(ids[0]))
        eos_tokens = [eos_token] if isinstance(eos_token, str) else list(eos_token or ())
        given = {"bos_token": bos_token, "pad_token": pad_token}
        given["eos_token"] = eos_tokens[0] if eos_tokens else None
        named.update({k: v for k, v in given.items() if v is not None})
        self.template_variables = {**files.named, **{k: v for k, v in given.items() if v}}

        bos = named.get("bos_token")
        self._bos = None if bos is None else self._id(bos, "bos_token", files)
        if eos_tokens:
            eos_ids = [self._id(t, "eos_token", files) for t in eos_tokens]
        else:
            primary = named.get("eos_token")
            eos_ids = [] if primary is None else [self._id(primary, "eos_token", files)]
            eos_ids += [self._check_id(i, files) for i in files.eos_token_ids]
        if not eos_ids:
            raise ValueError(self._no_eos_message(files))
        self._eos_ids = tuple(dict.fromkeys(eos_ids))
        pad = named.get("pad_token")
        self._pad = self._eos_ids[0] if pad is None else self._id(pad, "pad_token", files)

        if add_bos is not None:
            if add_bos and self._bos is None:
                raise ValueError(f"{path}: add_bos=True but there is no bos token; pass bos_token=")
            prefix = [self._bos] if add_bos else []
        self._prefix, self._suffix = prefix, suffix
        self._bos_text = bos
        self.chat_template = files.chat_template if chat_template is None else chat_template
        self._template_source = files.chat_template_source
        if chat_template is not None:
            self._template_source = "the chat_template argument"

    def _post_processor_ids(self) -> tuple[list[int], list[int]]:
        """The ids tokenizer.json's post_processor puts before and after a text's own."""
        if self._tok.post_processor is None:
            return [], []
        for probe in ("a", "0", " ", "the"):
            try:
                raw = self._tok.encode(probe, add_special_tokens=False).ids
                full = self._tok.encode(probe, add_special_tokens=True).ids
            except Exception:  # a word-level vocabulary without the probe and no unk token
                continue
            for i in range(len(full) - len(raw) + 1) if raw else ():
                if full[i : i + len(raw)] == raw:
                    return full[:i], full[i + len(raw) :]
        raise ValueError(
            f"{self.path}: cannot tell which ids its post_processor adds (it changes the "
            "text's own ids); pass add_bos= (True: a BOS, False: nothing) to set it"
        )

    def _id(self, token: str, field: str, files: TokenizerFiles) -> int:
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            where = files.config_path if token == files.named.get(field) else f"{field}="
            raise ValueError(
                f"{where}: {field} {token!r} is not a token of {self.path}; fix the file or "
                f"pass {field}= (a token the tokenizer has)"
            )
        return token_id

    def _check_id(self, token_id: int, files: TokenizerFiles) -> int:
        if token_id >= self.vocab_size:
            raise ValueError(
                f"{files.eos_ids_source}: eos_token_id {token_id} is not an id of {self.path} "
                f"({self.vocab_size} tokens); fix the file or pass eos_token="
            )
        return token_id

    def _no_eos_message(self, files: TokenizerFiles) -> str:
        if not files.has_config:
            return (
                f"{files.directory}: no eos token: there is no tokenizer_config.json beside "
                f"{self.path.name} (nor a generation_config.json with eos_token_id); copy "
                "them from the model's Hugging Face repository, or pass eos_token="
            )
        return (
            f"{files.config_path}: no eos_token, and no generation_config.json or config.json "
            "with eos_token_id; add eos_token to the config, or pass eos_token="
        )

    bos_id = property(lambda self: self._bos)
    eos_id = property(lambda self: self._eos_ids[0])
    eos_ids = property(lambda self: self._eos_ids)
    pad_id = property(lambda self: self._pad)
    vocab_size = property(lambda self: self._tok.get_vocab_size(with_added_tokens=True))

    def token_text(self, token_id: int) -> str:
        """The text of one token as the vocabulary holds it (e.g. "<|im_end|>")."""
        return self._tok.id_to_token(token_id)

    def _specials(
        self, text: str, add_bos: bool | None, add_eos: bool
    ) -> tuple[list[int], list[int]]:
        if add_bos is None:
            before, after = self._prefix, self._suffix
            if before and self._bos_text is not None and text.startswith(self._bos_text):
                before, after = [], []  # the text writes its own BOS: add nothing (see class)
        elif add_bos:
            if self._bos is None:
                raise ValueError(f"{self.path}: the tokenizer has no bos token to add")
            before, after = [self._bos], []
        else:
            before, after = [], []
        if add_eos and after[-1:] != [self.eos_id]:
            after = [*after, self.eos_id]
        return before, after

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
