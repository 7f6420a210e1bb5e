"""`configs/experiments/demo.gin` describes exactly what `jaxrl-reason demo` runs."""

from dataclasses import replace

import gin

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
