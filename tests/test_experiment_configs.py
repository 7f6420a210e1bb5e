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
from jaxrl_reason.algorithms.grpo import GRPO_VARIANTS, GRPOConfig
from jaxrl_reason.algorithms.orm_training import ORMConfig
from jaxrl_reason.algorithms.ppo import PPO_REWARDS, PPOConfig
from jaxrl_reason.algorithms.rcrl import RCRLConfig
from jaxrl_reason.algorithms.registry import build_algorithm
from jaxrl_reason.algorithms.sft import SFTConfig
from jaxrl_reason.configuration import CONFIGS_DIR, parse_config
from jaxrl_reason.evaluation.evaluate import EvalConfig
from jaxrl_reason.experiment import ModelSetup, TaskConfig, algorithm_names
from jaxrl_reason.parallel import MESH_AXES, axis_rules
from jaxrl_reason.training.optimizer import OptimizerConfig

EXPERIMENTS_DIR = CONFIGS_DIR / "experiments"
EXPERIMENTS = sorted(EXPERIMENTS_DIR.glob("*.gin"))
NAMED = [p for p in EXPERIMENTS if p.stem != "demo"]
COMMON = sorted((EXPERIMENTS_DIR / "common").glob("*.gin"))

TASKS = ("gsm8k", "svamp")
MODELS = ("llama2_7b", "llama2_13b")
# The RL algorithm each file name stands for -> what train_experiment must run.
RUNS = {"sft_ei": "ei", "ppo": "ppo", "rcrl": "rcrl", "grpo": "grpo", "dapo": "dapo"}
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


def _phases() -> set[str]:
    """What the parsed config's `train_experiment` runs, by registered name ("ppo" for any
    PPO variant), plus "orm" when a PPO reward needs the ORM (the experiment trains it)."""
    names = list(gin.query_parameter("train_experiment.algorithms"))
    phases = {n.partition(":")[0] for n in names}
    if {"ppo:orm", "ppo:dense_orm"} & set(names):
        phases.add("orm")
    return phases


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
            GRPOConfig,
            EvalConfig,
            OptimizerConfig,
        ):
            assert isinstance(config(), config)  # __post_init__ validates the bindings
        algorithms = gin.query_parameter("train_experiment.algorithms")
        assert set(algorithms) <= set(algorithm_names()), algorithms
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
        assert _phases() - {"sft", "orm"} == {run}, algorithms
        if name["algo"] == "sft_ei":
            assert algorithms == ["sft", "ei"]
        if run == "ppo":
            rewards = [a.partition(":")[2] for a in algorithms[1:]]
            assert rewards and set(rewards) <= set(PPO_REWARDS), rewards
        # Every phase that runs reads its gin-bound settings, not the Python defaults (the
        # experiment builds each settings class under gin): the files batch by 64, the
        # defaults by 16 or 32.
        assert SFTConfig().batch_size == 64
        for phase in _phases() - {"sft"}:
            cfg = build_algorithm(phase).cfg
            if phase in GRPO_VARIANTS:  # built as its variant, its defaults filled in
                assert cfg == GRPOConfig(variant=phase).resolved(), phase
            else:
                assert cfg == type(cfg)(), phase
            assert getattr(cfg, "batch_size", getattr(cfg, "minibatch_size", None)) == 64, phase
        task, model = TaskConfig(), ModelSetup()
        assert task.name == name["task"]
        assert pathlib.PurePath(task.data_dir).name == name["task"]
        # An imported checkpoint brings its own model config: the model is the checkpoint.
        assert pathlib.PurePath(model.init_checkpoint).name == name["model"]
        assert model.tokenizer_path
        # bf16 compute and remat over the checkpoint's own (f32, no remat) settings.
        assert (model.dtype, model.remat) == ("bfloat16", True)
        assert task.num_eval is None  # the whole test set
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
                rows = cfg.prompts_per_call * cfg.num_samples
                batches[f"{config.__name__} rows per call"] = rows
        if "orm" in phases:
            orm = ORMConfig()
            batches["ORMConfig.batch_size"] = orm.batch_size
            batches["ORMConfig rows per call"] = orm.prompts_per_call * orm.num_samples
        if "ppo" in phases:
            ppo = PPOConfig()
            batches["PPOConfig.minibatch_size"] = ppo.minibatch_size
            batches["PPO rollouts per iteration"] = ppo.rollouts_per_iteration
            assert ppo.rollouts_per_iteration % ppo.minibatch_size == 0
            assert ppo.prompts_per_call >= ppo.prompts_per_iteration  # one sampler call
        for phase in phases & set(GRPO_VARIANTS):
            cfg = build_algorithm(phase).cfg
            batches[f"{phase} minibatch_size"] = cfg.minibatch_size
            batches[f"{phase} rows per call"] = cfg.prompts_per_call * cfg.num_samples
            assert cfg.rollouts_per_iteration % cfg.minibatch_size == 0
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


PRETRAINED = EXPERIMENTS_DIR / "pretrained" / "gsm8k_smollm2_135m_sft_ei.gin"


def test_pretrained_smollm2_config_runs_sft_then_ei_from_its_import():
    """The documented CPU run from an imported SmolLM2: SFT then EI, on GSM8K, from the
    checkpoint the file's own import command writes, with its tokenizer (none trained)."""
    text = PRETRAINED.read_text()
    parse_config([f"experiments/pretrained/{PRETRAINED.name}"])
    try:
        assert list(gin.query_parameter("train_experiment.algorithms")) == ["sft", "ei"]
        task, model = TaskConfig(), ModelSetup()
        assert task.name == "gsm8k" and task.num_sft <= task.num_train
        assert "import-hf ~/.cache/jaxrl_reason/SmolLM2-135M-Instruct.Q4_1.gguf" in text
        assert f"{model.init_checkpoint}\n" in text  # the directory the import writes
        assert model.tokenizer_path is None  # the checkpoint's own tokenizer.json
        sft, ei, evaluation = SFTConfig(), build_algorithm("ei").cfg, EvalConfig()
        assert isinstance(OptimizerConfig(), OptimizerConfig)
        # Small enough for a CPU: a few SFT steps, one EI round of a few hundred samples.
        assert task.num_sft * sft.num_epochs / sft.batch_size <= 16
        assert ei.num_rounds * ei.questions_per_round * ei.num_samples <= 512
        assert task.num_eval * (1 + evaluation.num_samples) <= 128
        for batch in (sft.batch_size, ei.batch_size, ei.prompts_per_call * ei.num_samples):
            assert batch % 8 == 0  # the 8 devices of the CPU mesh in the tests
    finally:
        gin.clear_config()
