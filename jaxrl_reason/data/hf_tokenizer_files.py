"""What a Hugging Face tokenizer directory says beyond `tokenizer.json`, read as
`transformers` reads it: the named special tokens, every end-of-sequence id and the
chat template. (Which special ids a text gets is tokenizer.json's post_processor alone:
transformers 5 drops tokenizer_config's add_bos_token / add_eos_token when there is a
tokenizer.json.)

Sources, in `transformers`' order: `tokenizer_config.json` (bos_token, eos_token,
pad_token, ... as strings or AddedToken dicts; chat_template), overridden by a legacy
`special_tokens_map.json` when the config has no `added_tokens_decoder`;
`chat_template.jinja` replaces the config's template (transformers 5 writes it);
`generation_config.json`'s eos_token_id (an int or a list: Llama-3 and Qwen end on
several ids), or `config.json`'s when there is no generation config (transformers derives
the generation config from it). Nothing is guessed from token names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from jaxrl_reason.run_files import RunFileError, read_json

TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
GENERATION_CONFIG = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# The named special tokens `transformers` passes to a chat template (its special_tokens_map).
NAMED_TOKENS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
_FIX = "restore it from the model's Hugging Face repository"


@dataclasses.dataclass(frozen=True)
class TokenizerFiles:
    """The special tokens and chat template of one tokenizer directory (None: not said)."""

    directory: Path
    has_config: bool  # tokenizer_config.json (or special_tokens_map.json) was found
    named: dict[str, str]  # NAMED_TOKENS the files set, as token text
    eos_token_ids: tuple[int, ...]  # generation_config.json (or config.json) eos_token_id
    eos_ids_source: str | None  # the file eos_token_ids came from
    chat_template: str | None
    chat_template_source: str | None

    @property
    def config_path(self) -> Path:
        return self.directory / TOKENIZER_CONFIG


def token_text(value: Any, where: str) -> str | None:
    """A special token as its text: a string, an AddedToken dict or None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise RunFileError(
        f"{where} must be a string or an AddedToken dict with 'content', got {value!r}; {_FIX}"
    )


def _optional_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = read_json(path, path.name, _FIX)
    if not isinstance(data, dict):
        raise RunFileError(f"{path} must hold a JSON object, got {type(data).__name__}; {_FIX}")
    return data


def _eos_ids(directory: Path) -> tuple[tuple[int, ...], str | None]:
    for name in (GENERATION_CONFIG, "config.json"):
        data = _optional_json(directory / name)
        if data is None:
            continue
        value = data.get("eos_token_id")
        ids = [value] if isinstance(value, int) else value
        if ids is None:
            return (), None
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids
        ):
            raise RunFileError(
                f"{directory / name}: eos_token_id must be an id or a list of ids, got "
                f"{value!r}; {_FIX}"
            )
        return tuple(dict.fromkeys(ids)), str(directory / name)
    return (), None


def _chat_template(directory: Path, config: dict[str, Any]) -> tuple[str | None, str | None]:
    jinja = directory / CHAT_TEMPLATE_FILE
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8"), str(jinja)
    value = config.get("chat_template")
    where = f"{directory / TOKENIZER_CONFIG}: chat_template"
    if value is None or isinstance(value, str):
        return value, where if value is not None else None
    if isinstance(value, list):  # several named templates: transformers uses "default"
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"], f"{where} 'default'"
        raise RunFileError(
            f"{where} lists templates {sorted(map(str, named))} but none named 'default'; "
            "pass chat_template= (the template text)"
        )
    raise RunFileError(f"{where} must be a string or a list of templates, got {value!r}; {_FIX}")


def read_tokenizer_files(directory: str | Path) -> TokenizerFiles:
    """The special tokens, eos ids and chat template beside a tokenizer.json."""
    directory = Path(directory)
    config = _optional_json(directory / TOKENIZER_CONFIG)
    legacy = _optional_json(directory / SPECIAL_TOKENS_MAP)
    merged = dict(config or {})
    if legacy is not None and "added_tokens_decoder" not in merged:
        merged.update({k: v for k, v in legacy.items() if k in NAMED_TOKENS})
    named = {}
    for key in NAMED_TOKENS:
        text = token_text(merged.get(key), f"{directory / TOKENIZER_CONFIG}: {key}")
        if text is not None:
            named[key] = text
    eos_ids, eos_source = _eos_ids(directory)
    template, template_source = _chat_template(directory, config or {})
    return TokenizerFiles(
        directory=directory,
        has_config=config is not None or legacy is not None,
        named=named,
        eos_token_ids=eos_ids,
        eos_ids_source=eos_source,
        chat_template=template,
        chat_template_source=template_source,
    )
