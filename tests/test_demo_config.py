"""`configs/experiments/demo.gin` describes exactly what `jaxrl-reason demo` runs."""

from dataclasses import replace

import gin
import pytest

from jaxrl_reason.algorithms.expert_iteration import ExpertIterationConfig
from jaxrl_reason.algorithms.grpo import GRPO_VARIANTS
from jaxrl_reason.algorithms.orm_training import ORMConfig
from jaxrl_reason.algorithms.ppo import PPOConfig
from jaxrl_reason.algorithms.rcrl import RCRLConfig
from jaxrl_reason.algorithms.registry import build_algorithm
from jaxrl_reason.algorithms.sft import SFTConfig
from jaxrl_reason.configuration import parse_config
from jaxrl_reason.demo import SCALES
from jaxrl_reason.evaluation.evaluate import EvalConfig
from jaxrl_reason.experiment import ModelSetup, TaskConfig
from jaxrl_reason.model import model_config
from jaxrl_reason.training.optimizer import OptimizerConfig


def test_demo_gin_matches_the_built_in_demo():
    parse_config(["experiments/demo.gin"])  # resolved under configs/
    try:
        s = SCALES["default"]
        assert SFTConfig() == s.sft
        assert ExpertIterationConfig() == s.ei
        assert PPOConfig() == s.ppo
        assert RCRLConfig() == s.rcrl
        for variant in GRPO_VARIANTS:  # each name, built under gin, is the demo's variant
            assert build_algorithm(variant).cfg == replace(s.grpo, variant=variant).resolved()
        assert ORMConfig() == s.orm
        assert list(gin.query_parameter("train_experiment.algorithms")) == ["sft", "ei"]
        assert EvalConfig() == s.evaluation
        assert model_config() == s.model
        opt = OptimizerConfig()
        assert (opt.learning_rate, opt.warmup_steps) == (s.learning_rate, s.warmup_steps)
        task = TaskConfig()
        assert (task.name, task.num_train, task.num_eval) == ("arith", s.num_train, s.num_eval)
        assert (task.num_sft, task.num_val, task.eval_split) == (s.num_sft, s.num_val, "test")
        assert ModelSetup().tokenizer_vocab_size == s.model.vocab_size
    finally:
        gin.clear_config()


class _Started(Exception):
    """Raised where `train_experiment` would start work: every setting has been checked."""


def _stop(workdir):
    raise _Started(workdir)


def test_the_demos_config_gin_makes_train_run_the_same_experiment(tmp_path):
    """The config.gin a demo writes, given to `train`, builds exactly the demo's settings:
    its run.json's settings guard (which refuses any difference) lets it through."""
    import dataclasses
    import json

    from jaxrl_reason.configuration import settings_gin
    from jaxrl_reason.demo import expand_ppo, experiment_settings
    from jaxrl_reason.experiment import _settings, train_experiment

    algorithms = expand_ppo(("sft", "ei", "ppo", "grpo", "dapo", "rcrl"), ("sparse", "dense"))
    settings = {"algorithms": algorithms, **experiment_settings(SCALES["smoke"], 3, "val")}
    path = tmp_path / "config.gin"
    path.write_text(settings_gin(settings, "a header\nof two lines"))
    configs = settings["configs"]
    rl = [build_algorithm(n, configs) for n in algorithms if n != "sft"]
    recorded = _settings(
        3, settings["model"], settings["optimizer"], settings["evaluation"], configs["sft"], rl
    )
    workdir = tmp_path / "run"
    workdir.mkdir()
    task = dataclasses.asdict(settings["task"])
    run = {"layout": 2, "task": "arith", "task_config": task, "settings": recorded}
    (workdir / "run.json").write_text(json.dumps(run))
    parse_config([str(path)])
    try:
        assert tuple(gin.query_parameter("train_experiment.algorithms")) == algorithms
        with pytest.raises(_Started):
            train_experiment(workdir, on_start=_stop, show_progress=False)
        changed = replace(configs["dapo"], learning_rate=1.0)  # the guard does catch a change
        with pytest.raises(ValueError, match=r"dapo.learning_rate None -> 1.0"):
            train_experiment(workdir, configs={**configs, "dapo": changed}, on_start=_stop)
    finally:
        gin.clear_config()


def test_a_gin_param_overrides_the_demos_config_gin(tmp_path):
    """Its bindings are unscoped where a class has one object, so a plain binding wins."""
    from jaxrl_reason.configuration import settings_gin
    from jaxrl_reason.demo import experiment_settings

    path = tmp_path / "config.gin"
    path.write_text(
        settings_gin({"algorithms": ("sft",), **experiment_settings(SCALES["smoke"], 0)})
    )
    parse_config([str(path)], ["SFTConfig.batch_size = 4"])
    try:
        assert SFTConfig().batch_size == 4
    finally:
        gin.clear_config()
