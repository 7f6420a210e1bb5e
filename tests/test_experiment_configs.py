"""Every experiment config parses, builds valid configs, and runs what its file name says.

Files are named `<task>_<model>_<algorithm>.gin` (e.g. `gsm8k_llama2_13b_ppo.gin`); their
shared pieces live in `configs/experiments/common/`. `demo.gin` is only parsed here (its
contents are checked by test_demo_config.py).
"""

import itertools
import math
import pathlib
import re

import gin
import pytest

from jaxrl_reason.algorithms.expert_iteration import ExpertIterationConfig
from jaxrl_reason.algorithms.orm_training import ORMConfig
from jaxrl_reason.algorithms.ppo import PPO_REWARDS, PPOConfig
from jaxrl_reason.algorithms.rcrl import RCRLConfig
from jaxrl_reason.algorithms.sft import SFTConfig
from jaxrl_reason.configuration import CONFIGS_DIR, parse_config
from jaxrl_reason.evaluation.evaluate import EvalConfig
from jaxrl_reason.experiment import ALGORITHMS
from jaxrl_reason.parallel import MESH_AXES, axis_rules
from jaxrl_reason.training.optimizer import OptimizerConfig

EXPERIMENTS_DIR = CONFIGS_DIR / "experiments"
EXPERIMENTS = sorted(EXPERIMENTS_DIR.glob("*.gin"))
NAMED = [p for p in EXPERIMENTS if p.stem != "demo"]
COMMON = sorted((EXPERIMENTS_DIR / "common").glob("*.gin"))

TASKS = ("gsm8k", "svamp")
MODELS = ("llama2_7b", "llama2_13b")
# The RL algorithm each file name stands for -> what train_experiment must run.
RUNS = {"sft_ei": "ei", "ppo": "ppo", "rcrl": "rcrl"}
NAME = re.compile(
    rf"^(?P<task>{'|'.join(TASKS)})_(?P<model>{'|'.join(MODELS)})_(?P<algo>{'|'.join(RUNS)})$"
)
# Where each model runs, and how many devices that parallel file is written for.
PARALLEL = {"llama2_7b": "tpu_v4_32", "llama2_13b": "tpu_v5e_256"}
DEVICES = {"tpu_v4_32": 16, "tpu_v5e_256": 256}
# Common files that are alternatives to each other (an experiment includes one of them),
# so they may bind the same names; any other two common files must not.
ALTERNATIVES = ({"gsm8k", "svamp"}, {"llama2_7b", "llama2_13b"})


def _parse(path: pathlib.Path) -> None:
    parse_config([f"experiments/{path.name}"])  # resolved under configs/, as the CLI does


def _mesh_bindings() -> tuple[dict[str, int], tuple]:
    """The parsed config's `make_mesh` sizes (-1: the rest of the devices) and axis rules."""
    return {a: gin.query_parameter(f"make_mesh.{a}") for a in MESH_AXES}, axis_rules()


def _parallel_file(parallel: str) -> tuple[dict[str, int], tuple]:
    """`_mesh_bindings` of `parallel/<parallel>.gin` alone."""
    parse_config([f"parallel/{parallel}.gin"])
    try:
        return _mesh_bindings()
    finally:
        gin.clear_config()


def _mesh_shape(sizes: dict[str, int], devices: int) -> dict[str, int]:
    fixed = math.prod(s for s in sizes.values() if s != -1)
    return {a: devices // fixed if s == -1 else s for a, s in sizes.items()}


def _batch_shards(shape: dict[str, int], rules: tuple) -> int:
    axes = dict(rules)["batch"]
    axes = (axes,) if isinstance(axes, str) else axes or ()
    return math.prod(shape[a] for a in axes)


def _reference_name(value) -> str | None:
    """The configurable a `@X()` binding names, else None."""
    configurable = getattr(value, "configurable", None)
    return None if configurable is None else configurable.name


def _phases() -> set[str]:
    """What the parsed config's `train_experiment` runs: its algorithms, plus "orm" when
    a PPO reward needs the ORM (experiment.py trains it then)."""
    algorithms = set(gin.query_parameter("train_experiment.algorithms"))
    if "ppo" in algorithms:
        rewards = set(gin.query_parameter("train_experiment.ppo_rewards"))
        if rewards & {"orm", "dense_orm"}:
            algorithms.add("orm")
    return algorithms


def test_every_task_model_and_algorithm_has_a_file():
    expected = {f"{t}_{m}_{a}" for t, m, a in itertools.product(TASKS, MODELS, RUNS)}
    assert {p.stem for p in NAMED} == expected
    assert all(NAME.match(p.stem) for p in NAMED)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_parses_and_its_configs_build(path: pathlib.Path):
    _parse(path)
    try:
        for config in (
            SFTConfig,
            ExpertIterationConfig,
            PPOConfig,
            RCRLConfig,
            ORMConfig,
            EvalConfig,
            OptimizerConfig,
        ):
            assert isinstance(config(), config)  # __post_init__ validates the bindings
        algorithms = gin.query_parameter("train_experiment.algorithms")
        assert set(algorithms) <= set(ALGORITHMS), algorithms
    finally:
        gin.clear_config()


@pytest.mark.parametrize("path", NAMED, ids=lambda p: p.stem)
def test_experiment_runs_what_its_name_says(path: pathlib.Path):
    name = NAME.match(path.stem)
    _parse(path)
    try:
        query = gin.query_parameter
        algorithms = list(query("train_experiment.algorithms"))
        run = RUNS[name["algo"]]
        # SFT first, then exactly the file's RL algorithm ("orm" may come along).
        assert algorithms[0] == "sft", algorithms
        assert set(algorithms) & {"ei", "ppo", "rcrl"} == {run}, algorithms
        if name["algo"] == "sft_ei":
            assert algorithms == ["sft", "ei"]
        if run == "ppo":
            rewards = list(query("train_experiment.ppo_rewards"))
            assert rewards and set(rewards) <= set(PPO_REWARDS), rewards
        # Every phase that runs gets its gin-bound config (not the Python defaults).
        wired = {"sft": "SFTConfig", "optimizer": "OptimizerConfig", "evaluation": "EvalConfig"}
        wired[run] = {"ei": "ExpertIterationConfig", "ppo": "PPOConfig", "rcrl": "RCRLConfig"}[run]
        if "orm" in _phases():
            wired["orm"] = "ORMConfig"
        for param, configurable in wired.items():
            assert _reference_name(query(f"train_experiment.{param}")) == configurable, param

        assert query("train_experiment.task") == name["task"]
        assert pathlib.PurePath(query("train_experiment.data_dir")).name == name["task"]
        # An imported checkpoint brings its own model config: the model is the checkpoint.
        assert pathlib.PurePath(query("train_experiment.init_checkpoint")).name == name["model"]
        assert query("train_experiment.tokenizer_path")
        # bf16 compute and remat over the checkpoint's own (f32, no remat) settings.
        assert (query("train_experiment.dtype"), query("train_experiment.remat")) == (
            "bfloat16",
            True,
        )
        assert query("train_experiment.num_eval") is None  # the whole test set
        evaluation = EvalConfig()
        assert (evaluation.num_samples, evaluation.temperature) == (96, 0.7)  # maj@96, T 0.7
    finally:
        gin.clear_config()


@pytest.mark.parametrize("path", NAMED, ids=lambda p: p.stem)
def test_batches_split_over_the_mesh(path: pathlib.Path):
    parallel = PARALLEL[NAME.match(path.stem)["model"]]
    sizes, rules = _parallel_file(parallel)
    shards = _batch_shards(_mesh_shape(sizes, DEVICES[parallel]), rules)
    _parse(path)
    try:
        assert _mesh_bindings() == (sizes, rules), f"{path.name} should use {parallel}.gin"
        phases = _phases()
        evaluation = EvalConfig()
        batches = {
            "SFTConfig.batch_size": SFTConfig().batch_size,
            # Full sampler calls: rows beyond a multiple of the shards would be dummies.
            "EvalConfig rows per call": evaluation.prompts_per_call * evaluation.num_samples,
        }
        for phase, config in (("ei", ExpertIterationConfig), ("rcrl", RCRLConfig)):
            if phase in phases:
                cfg = config()
                batches[f"{config.__name__}.batch_size"] = cfg.batch_size
                rows = cfg.prompts_per_call * cfg.samples_per_question
                batches[f"{config.__name__} rows per call"] = rows
        if "orm" in phases:
            orm = ORMConfig()
            batches["ORMConfig.batch_size"] = orm.batch_size
            batches["ORMConfig rows per call"] = orm.prompts_per_call * orm.samples_per_question
        if "ppo" in phases:
            ppo = PPOConfig()
            batches["PPOConfig.minibatch_size"] = ppo.minibatch_size
            batches["PPO rollouts per iteration"] = ppo.rollouts_per_iteration
            assert ppo.rollouts_per_iteration % ppo.minibatch_size == 0
            assert ppo.prompts_per_call >= ppo.prompts_per_iteration  # one sampler call
        for what, size in batches.items():
            assert size % shards == 0, f"{what}={size} is not a multiple of {shards} shards"
    finally:
        gin.clear_config()


def _bound_names(path: pathlib.Path) -> set[str]:
    """The names a gin file binds itself (`name.param = ...`), not via its includes."""
    return set(re.findall(r"^([A-Za-z_][\w.]*)\s*=", path.read_text(), re.MULTILINE))


def test_common_files_bind_disjoint_names():
    """No two shared pieces an experiment combines bind the same name, so include order
    never decides a value. Only alternatives (gsm8k/svamp, 7b/13b) share names."""
    binders: dict[str, set[str]] = {}
    for path in COMMON:
        for name in _bound_names(path):
            binders.setdefault(name, set()).add(path.stem)
    shared = {
        name: files
        for name, files in binders.items()
        if len(files) > 1 and not any(files <= group for group in ALTERNATIVES)
    }
    assert not shared, shared
    for path in NAMED:  # an experiment file binds only what is its own
        assert not _bound_names(path) & set(binders), path.name
    # Each alternative binds the same names as its counterparts.
    for group in ALTERNATIVES:
        names = [_bound_names(EXPERIMENTS_DIR / "common" / f"{stem}.gin") for stem in group]
        assert all(n == names[0] for n in names), group
