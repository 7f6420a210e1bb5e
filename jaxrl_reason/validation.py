"""Up-front checks of settings: every field of a settings dataclass against its annotation,
and each field's declared range or choices, with one-line messages naming `Class.field`.

gin hands a binding's value through unchecked, so `SFTConfig.batch_size = 8.5` or a NaN
temperature would otherwise fail (or not) deep inside a run. A settings class declares
what each field accepts with `setting` and calls `validate` from `__post_init__`, which
gin runs when it builds the class, before any work:

    @gin.configurable
    @dataclasses.dataclass(frozen=True)
    class SomeConfig:
        batch_size: int = setting(32, POSITIVE)
        length_multiple: int | None = setting(64, POSITIVE)  # None: off
        top_p: float = setting(1.0, between(0, 1, open_low=True), hint="1.0 = off")
        schedule: str = setting("cosine", choices=SCHEDULES)
        seed: int = 0  # no range: still must be an integer

        def __post_init__(self) -> None:
            validate(self)

What the annotation alone checks (every field, declared or not):
  int            an integer; floats (8.5, and 8.0) and bools are refused
  float          a real number (ints are fine), finite unless `setting(finite=False)`
  bool           True or False
  str            a string
  tuple[X, ...]  a list or tuple whose items are X (a list becomes a tuple); a bare
                 string is refused, since it would be read letter by letter
  X | None       None, or an X
  a class        an instance of it (e.g. `rope_scaling: RopeScaling | None`)
  Literal[...]   one of its values
Any is not checked; another generic (`dict[str, Any]`) only as its outer type. A range or
choices applies to a non-None value, and to each item of a tuple field.

A subclass that changes a field's default (`num_rounds: int = 2`) keeps the range its
base class declared; declaring a new `setting` replaces it. `validate(obj, checks)` takes
extra or overriding declarations as a mapping (field name -> a `Range`, or a
`Spec(range, choices=..., hint=...)`), for classes whose fields are declared elsewhere, e.g.
`validate(self, {"num_val": NON_NEGATIVE})`, called first in `__post_init__`, before
checks of how fields relate. `check_value` checks one plain value (a function's argument)
the same way: `check_value("vocab_size", vocab_size, int, POSITIVE)`.

A message reads "SFTConfig.batch_size must be an integer > 0, got 8.5 (a float)" or
"RCRLConfig.num_rounds must be > 0, got 0": one line, the class and field, what to write.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
_KEY = "jaxrl_reason.validation"
_NONE = type(None)


@dataclasses.dataclass(frozen=True)
class Range:
    """An interval of numbers; None for an unbounded side."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: Any) -> bool:
        if self.low is not None and not (value > self.low if self.open_low else value >= self.low):
            return False
        if self.high is not None:
            return value < self.high if self.open_high else value <= self.high
        return True

    def describe(self) -> str:
        """'> 0', '>= 2', '<= 1', 'in (0, 1]'."""
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {low}"
        if self.low is None:
            return f"{'<' if self.open_high else '<='} {high}"
        return f"in {'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"


def _number(x: float | None) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


POSITIVE = Range(0, open_low=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)  # [0, 1]


def at_least(low: float) -> Range:
    return Range(low)


def between(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Range:
    return Range(low, high, open_low, open_high)


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a field accepts beyond its annotation (see `setting`)."""

    range: Range | None = None
    choices: tuple[Any, ...] | None = None
    hint: str | None = None  # e.g. "0 = greedy": appended to the message in parentheses
    finite: bool = True  # float fields: refuse NaN and +-inf


def setting(
    default: T,
    range: Range | None = None,
    *,
    choices: Sequence[Any] | None = None,
    hint: str | None = None,
    finite: bool = True,
) -> T:
    """A dataclass field with `default` whose values `validate` checks against `range`
    (numbers) or `choices`; `hint` explains the value to the user ("0 = off")."""
    spec = Spec(range, None if choices is None else tuple(choices), hint, finite)
    return typing.cast(T, dataclasses.field(default=default, metadata={_KEY: spec}))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _specs(cls: type) -> dict[str, Spec]:
    """Each field's `Spec`: its own, else the nearest base class's for the same name."""
    specs: dict[str, Spec] = {}
    for klass in reversed(cls.__mro__):
        for name, f in getattr(klass, "__dataclass_fields__", {}).items():
            if _KEY in f.metadata:
                specs[name] = f.metadata[_KEY]
    return specs


def validate(obj: Any, checks: Mapping[str, Spec | Range] | None = None) -> None:
    """Check every field of the dataclass instance `obj` (see the module docstring);
    raise ValueError("Class.field must be ..., got ...") at the first bad one. A list
    given to a tuple field is stored as a tuple (`obj` may be frozen)."""
    cls = type(obj)
    hints, specs = _hints(cls), dict(_specs(cls))
    names = [f.name for f in dataclasses.fields(obj)]  # in order: the first bad one is named
    for name, check in (checks or {}).items():
        if name not in names:
            raise TypeError(f"validate: {cls.__name__} has no field {name!r} to check")
        specs[name] = check if isinstance(check, Spec) else Spec(check)
    for name in names:
        value = getattr(obj, name)
        checked = check_value(f"{cls.__name__}.{name}", value, hints[name], specs.get(name))
        if checked is not value:
            object.__setattr__(obj, name, checked)


def check_value(
    name: str,
    value: Any,
    annotation: Any,
    spec: Spec | Range | None = None,
    *,
    choices: Sequence[Any] | None = None,
    hint: str | None = None,
) -> Any:
    """`value` if it fits `annotation` (int, float, `int | None`, `tuple[str, ...]` ...)
    and `spec`, as a tuple when a list was given for a tuple; else a ValueError that
    names `name` (e.g. "vocab_size" or "SFTConfig.batch_size")."""
    if not isinstance(spec, Spec):
        spec = Spec(spec)
    if choices is not None or hint is not None:
        spec = dataclasses.replace(
            spec,
            choices=spec.choices if choices is None else tuple(choices),
            hint=hint or spec.hint,
        )
    return _check(name, value, annotation, spec)


def _check(name: str, value: Any, annotation: Any, spec: Spec) -> Any:
    options = _union_members(annotation)
    optional = _NONE in options
    kinds = [k for k in options if k is not _NONE]
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} must be {_expected(kinds, spec, optional)}, got None")
    if len(kinds) != 1:  # a union of several kinds: accept any that fits
        for kind in kinds:
            try:
                return _check(name, value, kind, spec)
            except ValueError:
                pass
        raise ValueError(f"{name} must be {_expected(kinds, spec, optional)}, got {_shown(value)}")
    kind = kinds[0]
    if typing.get_origin(kind) is tuple:
        return _check_tuple(name, value, kind, spec, optional)
    if not _is_kind(value, kind, spec):
        raise ValueError(f"{name} must be {_expected(kinds, spec, optional)}, got {_shown(value)}")
    if spec.choices is not None and value not in spec.choices:
        choices = ", ".join(map(repr, spec.choices))
        raise ValueError(f"{name} must be one of {choices}{_hint(spec)}, got {value!r}")
    if spec.range is not None and value not in spec.range:
        none = " or None" if optional else ""
        raise ValueError(
            f"{name} must be {spec.range.describe()}{none}{_hint(spec)}, got {value!r}"
        )
    return value


def _check_tuple(name: str, value: Any, kind: Any, spec: Spec, optional: bool) -> Any:
    if isinstance(value, str | bytes):
        raise ValueError(
            f"{name} must be {_expected([kind], spec, optional)}, got the bare string "
            f"{value!r}, which would be read letter by letter: put it in a list, [{value!r}]"
        )
    if not isinstance(value, list | tuple):
        raise ValueError(f"{name} must be {_expected([kind], spec, optional)}, got {_shown(value)}")
    args = typing.get_args(kind)
    if len(args) == 2 and args[1] is Ellipsis:
        item_kinds = [args[0]] * len(value)
    elif args:
        if len(args) != len(value):
            raise ValueError(f"{name} must have {len(args)} items, got {len(value)}: {value!r}")
        item_kinds = list(args)
    else:
        item_kinds = [Any] * len(value)
    items = tuple(
        _check(f"{name}[{i}]", v, k, spec) for i, (v, k) in enumerate(zip(value, item_kinds))
    )
    return (
        value if isinstance(value, tuple) and all(a is b for a, b in zip(items, value)) else items
    )


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def _is_kind(value: Any, kind: Any, spec: Spec) -> bool:
    if kind is bool:
        return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's too
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind is float:
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return False
        return math.isfinite(value) or not spec.finite
    if kind is str:
        return isinstance(value, str)
    if kind is Any or isinstance(kind, TypeVar):
        return True
    origin = typing.get_origin(kind) or kind
    if origin is typing.Literal:
        return value in typing.get_args(kind)
    return not isinstance(origin, type) or isinstance(value, origin)


def _expected(kinds: Sequence[Any], spec: Spec, optional: bool) -> str:
    """What a field of these kinds accepts, in words: "an integer > 0 or None"."""
    text = " or ".join(_kind_words(k, spec) for k in kinds)
    if optional:
        text = ("True, False" if text == "True or False" else text) + " or None"
    return text + _hint(spec)


def _kind_words(kind: Any, spec: Spec) -> str:
    limits = f" {spec.range.describe()}" if spec.range is not None else ""
    if spec.choices is not None and typing.get_origin(kind) is not tuple:
        return "one of " + ", ".join(map(repr, spec.choices))
    if typing.get_origin(kind) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(kind)))
    if kind is int:
        return f"an integer{limits}"
    if kind is float:
        return f"{'a finite' if spec.finite else 'a'} number{limits}"
    if kind is bool:
        return "True or False"
    if kind is str:
        return "a string"
    if typing.get_origin(kind) is tuple:
        args = [a for a in typing.get_args(kind) if a is not Ellipsis]
        item = _plural(args[0]) if len(set(args)) == 1 else "items"
        return f"a list of {item}{limits}"
    return f"a {getattr(kind, '__name__', kind)}"


def _plural(kind: Any) -> str:
    names = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
    return names.get(kind, f"{getattr(kind, '__name__', kind)}s")


def _hint(spec: Spec) -> str:
    return f" ({spec.hint})" if spec.hint else ""


def _shown(value: Any) -> str:
    """The value and its type: "8.5 (a float)", "'3' (a str)"."""
    kind = type(value).__name__
    return f"{value!r} ({'an' if kind[0] in 'aeiou' else 'a'} {kind})"
