"""`jaxrl-reason demo`: the whole pipeline on the built-in `arith` task, on a CPU in minutes.

It trains a sentencepiece tokenizer and a small Llama-style model from scratch with SFT on
arith's reference solutions, runs Expert Iteration from the SFT model, evaluates both on
held-out test questions (greedy maj@1; maj@K and pass@K from K samples), and writes
results.md / results.json / results.png (maj@1 against samples drawn) to the workdir.
`algorithms=("sft", "ei", "ppo", "rcrl")` adds PPO (one run per reward in `ppo_rewards`),
RCRL and the ORM (trained for the ORM reward; it then adds rerank@K to every row), each
starting from the SFT model; "grpo", "dr_grpo", "rloo", "gspo" and "dapo" add the GRPO
family, each drawing PPO's rollouts per iteration for as many iterations.
The default settings were chosen in trial runs that were read on the same held-out
questions (a validation split would be cleaner), so the gaps between methods are
indicative.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxrl_reason.algorithms.expert_iteration import ExpertIterationConfig
from jaxrl_reason.algorithms.grpo import GRPO_VARIANTS, GRPOConfig
from jaxrl_reason.algorithms.orm_training import ORMConfig
from jaxrl_reason.algorithms.ppo import PPOConfig
from jaxrl_reason.algorithms.rcrl import RCRLConfig
from jaxrl_reason.algorithms.sft import SFTConfig
from jaxrl_reason.configuration import settings_gin
from jaxrl_reason.evaluation.evaluate import EvalConfig
from jaxrl_reason.evaluation.report import markdown_table, table_note
from jaxrl_reason.experiment import ModelSetup, TaskConfig, train_experiment
from jaxrl_reason.model import PRESETS, ModelConfig
from jaxrl_reason.run_files import write_atomic
from jaxrl_reason.training.optimizer import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class DemoScale:
    """Everything the demo's size depends on."""

    num_train: int
    num_eval: int
    num_sft: int | None  # of the num_train questions, those SFT sees with solutions
    num_val: int
    model: ModelConfig
    sft: SFTConfig
    ei: ExpertIterationConfig
    ppo: PPOConfig
    grpo: GRPOConfig  # every GRPO variant's settings, but its variant's own defaults
    rcrl: RCRLConfig
    orm: ORMConfig
    evaluation: EvalConfig
    learning_rate: float
    warmup_steps: int


def _sample_fine_tune(
    ei: dict[str, Any] | None = None, rcrl: dict[str, Any] | None = None, **shared: Any
) -> dict[str, Any]:
    """EI's and RCRL's configs: the same rounds, questions and samples (so the same samples
    drawn), each with its own fine-tuning settings."""
    return {
        "ei": ExpertIterationConfig(**shared, **(ei or {})),
        "rcrl": RCRLConfig(**shared, **(rcrl or {})),
    }


GRPO_DEMO_LR = 2e-5  # chosen on the validation split among 2e-5, 1e-4 (docs/demo_study.md)

SCALES = {
    "default": DemoScale(
        num_train=6000,
        num_eval=500,
        num_sft=4000,
        num_val=500,
        model=PRESETS["demo"](),
        sft=SFTConfig(
            num_epochs=2,
            batch_size=32,
            max_len=192,
            checkpoint_every=200,
            evaluate_each_epoch=False,
        ),
        **_sample_fine_tune(
            num_rounds=1,
            num_samples=4,
            temperature=0.7,
            max_new_tokens=128,
            questions_per_round=1000,
            batch_size=32,
            max_len=192,
            retrain_from_initial=True,
            prompts_per_call=250,
            # Chosen on the validation split (docs/demo_study.md): D_1 with SFT's
            # solutions, only samples whose every step is right, one gentle epoch.
            ei={
                "include_sft_data": True,
                "check_calculations": True,
                "epochs_per_round": 1.0,
                "learning_rate": 3e-4,
            },
            rcrl={"epochs_per_round": 2.0, "learning_rate": 1e-3},
        ),
        ppo=PPOConfig(
            num_iterations=8,
            prompts_per_iteration=64,
            num_samples=4,
            temperature=0.7,
            max_new_tokens=128,
            epochs_per_iteration=2,
            minibatch_size=64,
            learning_rate=2e-5,
            kl_coef=0.05,
            prompts_per_call=64,
            eval_every=4,
        ),
        # PPO's rollouts (64 questions x 4, 8 iterations), one pass of 4 updates each.
        grpo=GRPOConfig(
            num_iterations=8,
            prompts_per_iteration=64,
            num_samples=4,
            temperature=0.7,
            max_new_tokens=128,
            epochs_per_iteration=1,
            minibatch_size=64,
            learning_rate=GRPO_DEMO_LR,
            prompts_per_call=64,
            eval_every=4,
        ),
        orm=ORMConfig(
            num_samples=4,
            temperature=0.7,
            max_new_tokens=128,
            num_questions=500,
            epochs=2.0,
            batch_size=32,
            learning_rate=1e-3,
            prompts_per_call=250,
        ),
        evaluation=EvalConfig(
            num_samples=8, temperature=0.7, max_new_tokens=128, prompts_per_call=100
        ),
        learning_rate=3e-3,
        warmup_steps=30,
    ),
    "smoke": DemoScale(
        num_train=96,
        num_eval=8,
        num_sft=64,
        num_val=8,
        model=PRESETS["demo_smoke"](),
        sft=SFTConfig(num_epochs=1, batch_size=16, max_len=192, checkpoint_every=100),
        **_sample_fine_tune(
            num_rounds=1,
            num_samples=2,
            max_new_tokens=32,
            questions_per_round=16,
            epochs_per_round=1.0,
            batch_size=8,
            max_len=192,
            prompts_per_call=16,
            ei={"include_sft_data": True, "check_calculations": True},
        ),
        ppo=PPOConfig(
            num_iterations=2,
            prompts_per_iteration=8,
            num_samples=2,
            max_new_tokens=32,
            epochs_per_iteration=1,
            minibatch_size=8,
            prompts_per_call=8,
        ),
        grpo=GRPOConfig(
            num_iterations=2,
            prompts_per_iteration=8,
            num_samples=2,
            max_new_tokens=32,
            minibatch_size=8,
            prompts_per_call=8,
        ),
        orm=ORMConfig(
            num_samples=2,
            max_new_tokens=32,
            num_questions=16,
            epochs=1.0,
            batch_size=8,
            prompts_per_call=16,
        ),
        evaluation=EvalConfig(
            num_samples=2, temperature=0.7, max_new_tokens=32, prompts_per_call=8
        ),
        learning_rate=3e-3,
        warmup_steps=2,
    ),
}


def expand_ppo(algorithms: Sequence[str], ppo_rewards: Sequence[str]) -> tuple[str, ...]:
    """ "ppo" becomes one PPO run per reward ("ppo:sparse", "ppo:dense" ...), in place."""
    return tuple(
        n for a in algorithms for n in ([f"ppo:{r}" for r in ppo_rewards] if a == "ppo" else [a])
    )


def scale_of(scale: str | DemoScale) -> DemoScale:
    """A demo scale by name ("default", "smoke"), or `scale` itself."""
    if isinstance(scale, DemoScale):
        return scale
    if scale not in SCALES:
        raise ValueError(f"unknown demo scale {scale!r}; choose one of {sorted(SCALES)}")
    return SCALES[scale]


def experiment_settings(s: DemoScale, seed: int, eval_split: str = "test") -> dict[str, Any]:
    """`train_experiment`'s task, model, per-algorithm configs, optimizer, evaluation and
    seed for demo scale `s` (the demo and `jaxrl-reason study` share them)."""
    configs = {"sft": s.sft, "ei": s.ei, "ppo": s.ppo, "rcrl": s.rcrl, "orm": s.orm}
    configs |= {v: dataclasses.replace(s.grpo, variant=v) for v in GRPO_VARIANTS}
    return {
        "task": TaskConfig(
            "arith",
            num_train=s.num_train,
            num_eval=s.num_eval,
            num_sft=s.num_sft,
            num_val=s.num_val,
            eval_split=eval_split,
        ),
        "model": ModelSetup(config=s.model, tokenizer_vocab_size=s.model.vocab_size),
        "configs": {name: dataclasses.replace(cfg, seed=seed) for name, cfg in configs.items()},
        "optimizer": OptimizerConfig(learning_rate=s.learning_rate, warmup_steps=s.warmup_steps),
        "evaluation": dataclasses.replace(s.evaluation, seed=seed),
        "seed": seed,
    }


def run_demo(
    workdir: str | os.PathLike = "workdirs/demo",
    algorithms: Sequence[str] = ("sft", "ei"),
    ppo_rewards: Sequence[str] = ("sparse", "dense", "orm"),
    scale: str | DemoScale = "default",
    seed: int = 0,
    show_progress: bool = True,
    eval_split: str = "test",
) -> list[dict[str, Any]]:
    """Run the demo (resuming an unfinished one in `workdir`); print and return the table."""
    s = scale_of(scale)
    start = time.perf_counter()
    settings = {
        "algorithms": expand_ppo(algorithms, ppo_rewards),
        **experiment_settings(s, seed, eval_split),
    }
    header = (
        f"jaxrl-reason demo --scale {scale if isinstance(scale, str) else 'custom'} "
        f"--seed {seed} --split {eval_split}: `jaxrl-reason train config.gin --workdir DIR` "
        "runs the same experiment"
    )
    write_gin = lambda w: write_atomic(Path(w) / "config.gin", settings_gin(settings, header))
    rows = train_experiment(workdir, show_progress=show_progress, on_start=write_gin, **settings)
    minutes = (time.perf_counter() - start) / 60
    print(
        f"\njaxrl-reason demo: arith, {s.num_eval} held-out questions, K = "
        f"{s.evaluation.num_samples}, {minutes:.1f} min; results in {workdir}/results.md\n"
    )
    print(markdown_table(rows, s.evaluation.num_samples))
    print(f"\n{table_note(s.evaluation.num_samples)}")
    return rows
