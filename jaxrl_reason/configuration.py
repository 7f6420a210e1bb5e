"""gin wiring: parse experiment files and `--gin_param` bindings, save the resolved config.

An experiment is a list of `.gin` files (`include "model/tiny.gin"` resolves against the
repository's `configs/` folder and the working directory) plus command-line bindings.
gin's own errors (unknown configurable, bad syntax, missing include) come back as one
`ValueError` that names the file (or the binding) and the line, so a typo in a sweep file
points at itself. A file that binds nothing (only comments and blank lines) is refused:
it would start a full default run.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import tempfile
import tokenize
from collections.abc import Mapping, Sequence
from typing import Any

import gin
from etils import epath

CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"

# gin appends '\n  In file "NAME", line N\n    <source line>' (innermost first) as an
# error unwinds through includes.
_GIN_LOCATION = re.compile(
    r'In (?:file "(?P<file>[^"]+)",|bindings string) line (?P<line>\d+)\n\s*(?P<code>.*)'
)
_INCLUDE = re.compile(r"""^include\s+['"](?P<file>[^'"]+)['"]""")
_TOKEN_POSITION = re.compile(r"^\('[^']*', \((?P<line>\d+), \d+\)\)")  # TokenError's str
_GIN_ERRORS = (ValueError, TypeError, SyntaxError, OSError, ImportError, tokenize.TokenError)


def import_configurables() -> None:
    """Import every module that declares gin configurables, so bindings resolve."""
    import jaxrl_reason.experiment  # noqa: F401  (algorithms, optimizer, evaluation)
    import jaxrl_reason.model.config  # noqa: F401
    import jaxrl_reason.parallel  # noqa: F401
    import jaxrl_reason.sampling  # noqa: F401


def default_search_paths() -> tuple[str, ...]:
    """Where `include` and relative config paths are looked up: `configs/`, then cwd."""
    return (str(CONFIGS_DIR), os.getcwd())


def _use_search_paths(search_paths: Sequence[str]) -> None:
    """Make gin look for files and `include`s in `search_paths` first, in order.

    gin tries its prefixes in order, starting with "" (the working directory). For a
    relative name that is no file there, its Python-package reader imports the first path
    component and crashes with a TypeError when that is a namespace package (e.g. a
    `model/` folder of tests on sys.path). Looking in our paths first avoids that.
    """
    prefixes = gin.config._LOCATION_PREFIXES  # gin's public API can only append
    for path in reversed([str(p) for p in search_paths]):
        if path in prefixes:
            prefixes.remove(path)
        prefixes.insert(0, path)


def resolve_config_file(name: str, search_paths: Sequence[str] | None = None) -> pathlib.Path:
    """The file that `name` refers to: as given, else under each search path in order."""
    search_paths = default_search_paths() if search_paths is None else search_paths
    candidates = [pathlib.Path(name)]
    if not os.path.isabs(name):
        candidates += [pathlib.Path(p) / name for p in search_paths]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ValueError(
        f"gin config file {name!r} not found; looked in {[str(c) for c in candidates]}. "
        "Pass a path relative to the working directory or to configs/ (e.g. 'model/tiny.gin')."
    )


def _error_location(error: BaseException) -> tuple[str | None, int | None]:
    """(file, line) of the innermost statement gin was parsing when `error` was raised.

    A file of None means the top-level source (the file or binding being parsed).
    """
    if isinstance(error, SyntaxError) and error.lineno is not None:
        return error.filename, error.lineno  # gin re-raises these without its locations
    text = str(error)
    location = _GIN_LOCATION.search(text)
    token = _TOKEN_POSITION.match(text)
    if isinstance(error, tokenize.TokenError) and token:
        # The tokenizer (e.g. an unclosed bracket) knows the line but not the file: it is
        # the file named by the innermost `include` gin reports, else the top-level source.
        include = _INCLUDE.match(location["code"].strip()) if location else None
        return (include["file"] if include else None), int(token["line"])
    if location:
        return location["file"], int(location["line"])
    return None, None


def _config_error(source: str, error: BaseException, search_paths: Sequence[str]) -> ValueError:
    """A ValueError whose first line reads `<file>, line <N>: <what gin said>`."""
    file, line = _error_location(error)
    where = source
    if file is not None and file != source:
        try:  # an included file: show the full path gin read it from
            where = str(resolve_config_file(file, search_paths))
        except ValueError:
            where = file
    header = f"{where}, line {line}" if line is not None else where
    if file is not None and where != source:
        header += f" (while parsing {source})"
    message = f"{type(error).__name__}: {error.msg if isinstance(error, SyntaxError) else error}"
    location = _GIN_LOCATION.search(str(error))
    include = _INCLUDE.match(location["code"].strip()) if location else None
    if include and isinstance(error, OSError | TypeError):  # gin's readers failed to find it
        try:
            resolve_config_file(include["file"], search_paths)
        except ValueError as missing:
            message = str(missing)
    return ValueError(f"{header}: {message}")


def check_binds_something(path: pathlib.Path) -> None:
    """Refuse a config file with no statement (only comments and blank lines): run with
    it, `train` would start an hours-long run of every default, which is never meant."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return  # gin's own reader reports it
    if not any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
        raise ValueError(
            f"{path} binds nothing (only comments and blank lines), so it would start a "
            "full run of every default; add bindings or an `include` (e.g. "
            "'experiments/demo.gin'), or run `jaxrl-reason demo` for the built-in defaults"
        )


def parse_config(
    config_files: Sequence[str],
    bindings: Sequence[str] = (),
    search_paths: Sequence[str] | None = None,
) -> None:
    """Clear gin, then parse `config_files` in order, then `bindings`, then lock the config.

    Files and `include`s are looked up as given, then under `search_paths` (default:
    the repository's `configs/` folder, then the working directory). Bindings are
    `--gin_param` strings such as `"model_config.preset = 'small_50m'"`. A file that
    binds nothing is refused (`check_binds_something`).
    """
    import_configurables()
    search_paths = default_search_paths() if search_paths is None else tuple(search_paths)
    _use_search_paths(search_paths)
    gin.clear_config()
    for name in config_files:
        path = resolve_config_file(name, search_paths)
        check_binds_something(path)
        try:
            gin.parse_config_file(str(path))
        except _GIN_ERRORS as error:
            raise _config_error(str(path), error, search_paths) from error
    for i, binding in enumerate(bindings):
        try:
            gin.parse_config(binding)
        except _GIN_ERRORS as error:
            source = f"gin binding #{i} {binding!r}"
            raise _config_error(source, error, search_paths) from error
    gin.finalize()


def write_resolved_config(workdir: str | os.PathLike) -> pathlib.Path | epath.Path:
    """Write the operative gin config (or the parsed one, if nothing ran yet) atomically.

    Returns `workdir/config.gin`. The text is written to a temporary file in `workdir`
    and renamed over the target, so a reader never sees half a file.
    """
    text = gin.operative_config_str()
    if not any("=" in line for line in text.splitlines()):  # only imports: nothing ran yet
        text = gin.config_str()
    if "://" in str(workdir):  # gs:// and friends: one object write is already atomic
        remote = epath.Path(workdir)
        remote.mkdir(parents=True, exist_ok=True)
        (remote / "config.gin").write_text(text)
        return remote / "config.gin"
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / "config.gin"
    fd, tmp = tempfile.mkstemp(prefix=".config.gin.", dir=workdir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return target


def settings_gin(settings: Mapping[str, Any], header: str = "") -> str:
    """A gin config under which `jaxrl-reason train` runs `train_experiment(**settings)`.

    `settings` are `train_experiment`'s keyword arguments (what `jaxrl-reason demo` passes):
    settings objects (gin-configurable dataclasses) become `@Class()` references with one
    binding per field, so that `--gin_param 'SFTConfig.batch_size = 16'` overrides them.
    Where `configs` holds several objects of one class (the GRPO variants), each is scoped
    by its name (`@dapo/GRPOConfig()`, then `dapo/GRPOConfig.learning_rate = ...`), and an
    override names the scope. The demo writes it as its workdir's config.gin.
    """
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append("import jaxrl_reason.experiment")
    bindings: list[str] = []
    for name, value in settings.items():
        if name == "configs":
            value = value or {}
            kinds = [type(cfg) for cfg in value.values()]
            refs = {  # scoped only where a class has several objects (the GRPO variants)
                key: _gin_object(cfg, key if kinds.count(type(cfg)) > 1 else None, bindings)
                for key, cfg in value.items()
            }
            inner = ", ".join(f"{k!r}: {r}" for k, r in refs.items())
            lines.append(f"train_experiment.configs = {{{inner}}}")
        else:
            lines.append(f"train_experiment.{name} = {_gin_value(value, None, bindings)}")
    return "\n".join([*lines, *bindings]) + "\n"


def _gin_object(obj: Any, scope: str | None, bindings: list[str]) -> str:
    """`@[scope/]Class()`, adding one binding per field of the dataclass `obj`."""
    cls = type(obj).__name__
    prefix = f"{scope}/{cls}" if scope else cls
    for field in dataclasses.fields(obj):
        value = _gin_value(getattr(obj, field.name), scope, bindings)
        bindings.append(f"{prefix}.{field.name} = {value}")
    return f"@{prefix}()"


def _gin_value(value: Any, scope: str | None, bindings: list[str]) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _gin_object(value, scope, bindings)
    if isinstance(value, list | tuple):
        items = [_gin_value(v, scope, bindings) for v in value]
        if isinstance(value, list):
            return f"[{', '.join(items)}]"
        return f"({', '.join(items)},)" if items else "()"
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    raise ValueError(f"settings_gin: {type(value).__name__} {value!r} has no gin form")
