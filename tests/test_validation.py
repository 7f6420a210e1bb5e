"""Settings are checked when they are built, before any work: every field against its
annotation and its declared range, with a one-line message naming `Class.field`."""

import dataclasses
import math
import typing

import gin
import pytest

from jaxrl_reason import configuration, validation
from jaxrl_reason.algorithms.expert_iteration import ExpertIterationConfig
from jaxrl_reason.algorithms.fine_tuning import SampleFineTuneConfig
from jaxrl_reason.algorithms.grpo import GRPO_VARIANTS, GRPOConfig
from jaxrl_reason.algorithms.orm_training import ORMConfig
from jaxrl_reason.algorithms.ppo import PPOConfig
from jaxrl_reason.algorithms.rcrl import RCRLConfig
from jaxrl_reason.algorithms.registry import build_algorithm
from jaxrl_reason.algorithms.round_sampling import RolloutConfig
from jaxrl_reason.algorithms.sft import SFTConfig
from jaxrl_reason.evaluation.evaluate import EvalConfig
from jaxrl_reason.experiment import ModelSetup, TaskConfig
from jaxrl_reason.model.config import LoraConfig, ModelConfig, RopeScaling
from jaxrl_reason.sampling import SamplingConfig
from jaxrl_reason.training.optimizer import OptimizerConfig
from jaxrl_reason.validation import (
    NON_NEGATIVE,
    POSITIVE,
    Range,
    between,
    check_value,
    setting,
    validate,
)

SETTINGS = (
    RolloutConfig,
    SampleFineTuneConfig,
    ExpertIterationConfig,
    RCRLConfig,
    PPOConfig,
    GRPOConfig,
    ORMConfig,
    SFTConfig,
    EvalConfig,
    SamplingConfig,
    OptimizerConfig,
    ModelConfig,
    RopeScaling,
    LoraConfig,
)
# Settings whose fields declare no `setting`: experiment.py passes `validate` their ranges.
PLAIN = (TaskConfig, ModelSetup)


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _fields_of(cls, kind):
    """The fields of `cls` whose annotation is `kind` or `kind | None`."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        members = typing.get_args(hint) if typing.get_origin(hint) is not tuple else ()
        if any(m is kind or typing.get_origin(m) is kind for m in members or (hint,)):
            out.append(f.name)
    return out


def _refuses(cls, field, value, *words):
    """None if `cls(field=value)` raises a one-line ValueError naming Class.field (and
    `words`); else what went wrong."""
    try:
        cls(**{field: value})
    except ValueError as error:
        first = str(error).splitlines()[0]  # gin appends its "In call to configurable" line
        for expected in (f"{cls.__name__}.{field}", *words):
            if expected not in first:
                return f"{field}={value!r}: {first!r} lacks {expected!r}"
        return None
    return f"{field}={value!r} was accepted"


# Per kind of bad input: (the annotation it targets, the bad value, words the message has).
BAD_INPUTS = {
    "float_for_int": (int, 8.5, "integer"),
    "bool_for_int": (int, True, "integer"),
    "text_for_int": (int, "8", "integer"),
    "nan_for_float": (float, math.nan, "finite number"),
    "inf_for_float": (float, math.inf, "finite number"),
    "text_for_float": (float, "1e-5", "number"),
    "int_for_bool": (bool, 1, "True"),
    "int_for_str": (str, 3, "got 3"),
    "bare_string_for_tuple": (tuple, "3", "bare string"),
}


@pytest.mark.parametrize(
    "cls, bad",
    [
        pytest.param(cls, bad, id=f"{cls.__name__}-{bad}")
        for cls in (*SETTINGS, *PLAIN)
        for bad in sorted(BAD_INPUTS)
        if _fields_of(cls, BAD_INPUTS[bad][0])
    ],
)
def test_every_settings_field_refuses_values_of_the_wrong_kind(cls, bad):
    kind, value, words = BAD_INPUTS[bad]
    problems = [p for f in _fields_of(cls, kind) if (p := _refuses(cls, f, value, words))]
    assert not problems, problems


def test_the_bad_inputs_reach_every_kind_of_field():
    kinds = {BAD_INPUTS[b][0] for b in BAD_INPUTS}
    assert all(any(_fields_of(c, k) for c in SETTINGS) for k in kinds)


def _outside(check: Range, kind):
    """A value of `kind` just outside `check`."""
    if check.low is not None:
        low = kind(check.low)
        return low if check.open_low else low - 1
    high = kind(check.high)
    return high if check.open_high else high + 1


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_every_declared_range_and_choice_is_enforced(cls):
    hints, specs = typing.get_type_hints(cls), validation._specs(cls)
    problems = []
    for field, spec in specs.items():
        kinds = [k for k in typing.get_args(hints[field]) or (hints[field],) if k is not type(None)]
        if spec.choices is not None:
            # A tuple field (e.g. ModelConfig.layer_types) holds choices: one bad element.
            is_tuple = typing.get_origin(hints[field]) is tuple
            bad = ("no-such-choice",) if is_tuple else "no-such-choice"
            problems.append(_refuses(cls, field, bad, "one of"))
        elif spec.range is not None and kinds[0] in (int, float):
            bad = _outside(spec.range, kinds[0])
            problems.append(_refuses(cls, field, bad, spec.range.describe(), f"got {bad!r}"))
    assert specs and not [p for p in problems if p], problems


def test_every_gin_settings_class_is_validated():
    configuration.import_configurables()
    registered = {
        c.wrapped.__name__
        for _, c in gin.config._REGISTRY.items()
        if isinstance(c.wrapped, type) and dataclasses.is_dataclass(c.wrapped)
    }
    missing = registered - {c.__name__ for c in (*SETTINGS, *PLAIN)}
    assert not missing, f"gin settings classes not covered here: {sorted(missing)}"


def test_messages_are_one_line_and_say_the_fix():
    cases = [
        (lambda: SFTConfig(batch_size=8.5), "SFTConfig.batch_size must be an integer > 0, got 8.5"),
        (
            lambda: SamplingConfig(temperature=math.nan),
            "SamplingConfig.temperature must be a finite number >= 0 (0 = greedy), got nan",
        ),
        (lambda: RCRLConfig(questions_per_round=0), "must be > 0 or None, got 0"),
        (lambda: SamplingConfig(eos_ids="3"), "put it in a list, ['3']"),
        (lambda: SamplingConfig(eos_ids=[3, -1]), "SamplingConfig.eos_ids[1] must be >= 0"),
        (lambda: OptimizerConfig(schedule="exp"), "must be one of 'cosine', 'constant'"),
        (lambda: ModelConfig(rope_scaling={"factor": 8}), "must be a RopeScaling or None"),
        (lambda: GRPOConfig(normalize_std=1), "must be True, False or None, got 1 (an int)"),
    ]
    for build, words in cases:
        with pytest.raises(ValueError) as info:
            build()
        first = str(info.value).splitlines()[0]
        assert words in first, first


def test_a_changed_default_keeps_the_base_class_range():
    assert RCRLConfig().num_rounds == 2  # RCRL's default, SampleFineTuneConfig's range
    with pytest.raises(ValueError, match="RCRLConfig.num_rounds must be > 0, got 0"):
        RCRLConfig(num_rounds=0)
    with pytest.raises(ValueError, match="PPOConfig.num_samples must be an integer > 0"):
        PPOConfig(num_samples=1.5)


def test_grpo_variant_defaults_still_fill_the_none_fields():
    for variant in GRPO_VARIANTS:
        resolved = GRPOConfig(variant=variant).resolved()  # validated again, all filled
        assert None not in [getattr(resolved, f) for f in ("beta", "eps_low", "overlong_buffer")]
    with pytest.raises(ValueError, match="GRPOConfig.eps_high must be a finite number or None"):
        GRPOConfig(eps_high=math.inf)


def test_a_list_becomes_a_tuple_and_good_values_pass():
    assert SamplingConfig(eos_ids=[3, 4]).eos_ids == (3, 4)
    assert OptimizerConfig(learning_rate=1).learning_rate == 1  # an int is a fine float
    assert check_value("x", [1, 2], tuple[int, ...]) == (1, 2)
    assert check_value("x", None, int | None, POSITIVE) is None
    assert check_value("x", math.inf, float, validation.Spec(finite=False)) == math.inf
    with pytest.raises(ValueError, match=r"^x must be one of 'a', 'b', got 'c' \(a str\)$"):
        check_value("x", "c", typing.Literal["a", "b"])
    with pytest.raises(ValueError, match=r"^vocab_size must be > 0, got 0$"):
        check_value("vocab_size", 0, int, POSITIVE)
    assert [r.describe() for r in (POSITIVE, NON_NEGATIVE, between(0, 1, open_low=True))] == [
        "> 0",
        ">= 0",
        "in (0, 1]",
    ]


def test_validate_takes_declarations_for_fields_declared_elsewhere():
    @dataclasses.dataclass(frozen=True)
    class Plain:  # a settings class whose fields carry no `setting` (e.g. TaskConfig)
        num_val: int = 0
        names: tuple[str, ...] = ()
        rate: float = setting(0.5, between(0, 1))

        def __post_init__(self):
            validate(self, {"num_val": NON_NEGATIVE})

    assert Plain(names=["a"]).names == ("a",)
    with pytest.raises(ValueError, match=r"Plain.num_val must be >= 0, got -1"):
        Plain(num_val=-1)
    with pytest.raises(ValueError, match=r"Plain.rate must be in \[0, 1\], got 2.0"):
        Plain(rate=2.0)
    with pytest.raises(TypeError, match="no field 'nope'"):
        validate(Plain(), {"nope": POSITIVE})


def test_a_bad_gin_binding_is_refused_before_any_work(tmp_path):
    from jaxrl_reason.experiment import train_experiment

    configuration.parse_config([], ["SFTConfig.batch_size = 8.5"])
    with pytest.raises(ValueError, match="SFTConfig.batch_size must be an integer > 0, got 8.5"):
        train_experiment(tmp_path / "run", algorithms=("sft",), show_progress=False)
    assert not (tmp_path / "run").exists()
    configuration.parse_config([], ["GRPOConfig.num_samples = 2.5"])
    with pytest.raises(ValueError, match="GRPOConfig.num_samples must be an integer > 0"):
        build_algorithm("dapo")
