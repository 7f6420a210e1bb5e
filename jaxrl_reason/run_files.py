"""A run's JSON files, written atomically: a reader never sees half a file.

Reading one that is damaged anyway (an edit, a crash of an older version, a flaky disk)
raises `RunFileError`, a `ValueError` whose one line names the file (and line) and the fix.
JSON Lines files (metrics.jsonl) are appended to, so a crash can cut their last line short:
`read_jsonl` leaves such a line out with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a file by renaming a finished temporary file over it, so it is never partial."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


class RunFileError(ValueError):
    """A run's file could not be read: the message names the file (and line) and the fix."""


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of `path`, or a `RunFileError` naming it (missing, unreadable, binary)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except UnicodeDecodeError as err:
        raise RunFileError(
            f"{path}: {what} is not UTF-8 text (byte {err.start}); restore it or remove it"
        ) from None
    except OSError as err:
        raise RunFileError(f"{path}: cannot read {what}: {err.strerror or err}") from None


def read_json(
    path: str | os.PathLike,
    what: str = "file",
    fix: str = "restore it, or use a new --workdir",
) -> Any:
    """The JSON in `path`; a damaged file raises `RunFileError` naming it, the line and
    column, and `fix` (what to do about it)."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RunFileError(
            f"{path}:{err.lineno}:{err.colno}: {what} is not valid JSON ({err.msg}); it was "
            f"damaged (a crash mid-write, or an edit): {fix}"
        ) from None


class JsonLines(NamedTuple):
    """A JSON Lines file as read by `read_jsonl_lines`."""

    lines: list[str]  # each record's line as written, with its newline
    records: list[Any]  # the JSON value of each line
    partial: str  # a final line cut off mid-write (a crash), left out; "" when none


def read_jsonl_lines(path: str | os.PathLike, what: str = "file") -> JsonLines:
    """The lines of a JSON Lines file and their values (blank lines skipped).

    A final line without its newline that is not valid JSON was cut off by a crash mid-write:
    it is returned as `partial` and left out (one that is valid only lacks its newline). Any
    other damaged line raises `RunFileError` naming `path:line`. A missing file reads as empty.
    """
    path = Path(path)
    try:
        text = read_text(path, what)
    except FileNotFoundError:
        return JsonLines([], [], "")
    *complete, last = text.split("\n")
    numbered = [(n, line + "\n") for n, line in enumerate(complete, 1)]
    partial = ""
    if last.strip():
        try:
            json.loads(last)
            numbered.append((len(complete) + 1, last + "\n"))
        except json.JSONDecodeError:
            partial = last
    lines, records = [], []
    for n, line in numbered:
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise RunFileError(
                f"{path}:{n}: {what} line {n} is not valid JSON ({err.msg}); it was damaged "
                "(an edit, or a disk error): restore the file, or delete that line"
            ) from None
        lines.append(line)
    return JsonLines(lines, records, partial)


def read_jsonl(path: str | os.PathLike, what: str = "file") -> list[Any]:
    """The JSON value of each line of `path` (see `read_jsonl_lines`); a final line cut off
    by a crash is left out with a warning."""
    read = read_jsonl_lines(path, what)
    if read.partial:
        log.warning(
            "%s: ignoring its last line, cut off mid-write (the run stopped while writing "
            "it): %.60r",
            path,
            read.partial,
        )
    return read.records
