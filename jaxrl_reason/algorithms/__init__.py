"""Learning algorithms: SFT, and the RL methods as plug-ins of one loop.

An RL method is an `Algorithm` (its step: which questions a round samples, how scored
rollouts become an update); `run_rounds` is the loop that samples, evaluates, saves,
resumes and logs for all of them. `registry.build_algorithm("ppo:dense")` makes one by
name, as experiments do.
"""

# ruff: noqa: I001  (imports grouped by topic under banners, as the public API reads)

# ------------------------------------------------------------------- the one loop
from jaxrl_reason.algorithms.rounds import (
    Algorithm,
    Improved,
    PhaseContext,
    PhaseResult,
    PhaseState,
    RoundPlan,
    RoundRecord,
    run_rounds,
)
from jaxrl_reason.algorithms.round_sampling import RolloutConfig, draw_questions, round_key

# ------------------------------------------------------------ policies and SFT
from jaxrl_reason.algorithms.policy import Policy
from jaxrl_reason.algorithms.sft import SFTConfig, run_sft

# ------------------------------------------------------------- the RL algorithms
from jaxrl_reason.algorithms.expert_iteration import ExpertIteration, ExpertIterationConfig
from jaxrl_reason.algorithms.orm_training import ORMConfig, ORMTraining
from jaxrl_reason.algorithms.ppo import PPO, PPO_REWARDS, PPOConfig
from jaxrl_reason.algorithms.grpo import GRPO, GRPO_VARIANTS, GRPOConfig
from jaxrl_reason.algorithms.rcrl import RCRL, RCRLConfig

# ------------------------------------------------------------------ by name
from jaxrl_reason.algorithms.registry import build_algorithm, register

# ------------------------------------------------------------- the ORM as a scorer
from jaxrl_reason.algorithms.orm_scoring import ORMScorer, load_orm

__all__ = [
    "GRPO",
    "GRPO_VARIANTS",
    "PPO",
    "PPO_REWARDS",
    "RCRL",
    "Algorithm",
    "ExpertIteration",
    "ExpertIterationConfig",
    "GRPOConfig",
    "Improved",
    "ORMConfig",
    "ORMScorer",
    "ORMTraining",
    "PPOConfig",
    "PhaseContext",
    "PhaseResult",
    "PhaseState",
    "Policy",
    "RCRLConfig",
    "RolloutConfig",
    "RoundPlan",
    "RoundRecord",
    "SFTConfig",
    "build_algorithm",
    "draw_questions",
    "load_orm",
    "register",
    "round_key",
    "run_rounds",
    "run_sft",
]
