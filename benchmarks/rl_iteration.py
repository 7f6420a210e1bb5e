"""Time per RL iteration, split into sampling / scoring / update: GRPO against PPO at the
same rollouts (questions x K per iteration) and the same updates (epochs x minibatches).

Both run on the one loop (`rounds.run_rounds`) from the same start policy, on the same
questions; each part is timed with its device work finished (`block_until_ready`):
  sampling  `sample_rollouts` (prefill + decode of every rollout)
  scoring   the rewards (`rollout_rewards`) and the forward passes before the updates:
            PPO's policy + value + reference pass (`_experience`), GRPO's reference pass
            (only with beta > 0; the sampler's log-probs are the old ones)
  update    the minibatch epochs (forward + backward + AdamW per minibatch)
The first iteration (compilation) is reported apart; the table holds medians over the
others. The start policy is a demo run's SFT policy (`--workdir`, so that answers end at
realistic lengths), or the demo model at random initialisation (every sample then runs
to the budget).

    python -m benchmarks.rl_iteration --workdir workdirs/demo --iterations 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrl_reason.algorithms import grpo, ppo, rounds
from jaxrl_reason.algorithms.grpo import GRPO, GRPOConfig
from jaxrl_reason.algorithms.policy import Policy
from jaxrl_reason.algorithms.ppo import PPO, PPOConfig
from jaxrl_reason.algorithms.rounds import PhaseContext
from jaxrl_reason.data.prompts import zero_shot
from jaxrl_reason.data.tasks import load_task
from jaxrl_reason.data.tokenizer import train_tokenizer_for_task
from jaxrl_reason.evaluation.evaluate import EvalConfig
from jaxrl_reason.experiment import load_run
from jaxrl_reason.model import PRESETS, init_params
from jaxrl_reason.training.optimizer import OptimizerConfig

PARTS = ("sampling", "scoring", "update")


class Timer:
    """Seconds per part, per iteration, of wrapped functions (their results made ready)."""

    def __init__(self) -> None:
        self.iterations: list[dict[str, float]] = []

    def new_iteration(self) -> None:
        self.iterations.append(dict.fromkeys(PARTS, 0.0))

    def wrap(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = jax.block_until_ready(fn(*args, **kwargs))
            self.iterations[-1][part] += time.perf_counter() - start
            return out

        return timed


def start_policy(workdir: str | None) -> tuple[Policy, Any, str]:
    if workdir:
        run = json.loads((Path(workdir) / "run.json").read_text())
        policy, params, _ = load_run(workdir, run["phases"]["sft"]["policy_step"])
        return policy, params, f"the SFT policy of {workdir}"
    config = PRESETS["demo"]()
    tok_dir = Path(tempfile.mkdtemp())
    tokenizer = train_tokenizer_for_task(
        "arith", tok_dir / "arith.model", vocab_size=config.vocab_size, num_examples=2000
    )
    params = init_params(config, jax.random.key(0))
    return Policy(config, tokenizer, zero_shot()), params, "the demo model, random init"


def run(algo_name: str, cfg: Any, policy: Policy, params: Any, train: list) -> dict[str, Any]:
    timer = Timer()
    algo = PPO(cfg) if isinstance(cfg, PPOConfig) else GRPO(cfg)
    with tempfile.TemporaryDirectory() as workdir:
        ctx = PhaseContext(
            policy=policy,
            init_params=params,
            train=train,
            eval_examples=[],
            eval_config=EvalConfig(num_samples=0),
            optimizer=OptimizerConfig(learning_rate=1e-5),
            workdir=Path(workdir),
            show_progress=False,
        )
        # The algorithm's own init builds its programs; time its experience function too.
        real_init = algo.init

        def init(ctx: PhaseContext) -> Any:
            out = real_init(ctx)
            algo.experience_fn = timer.wrap("scoring", algo.experience_fn)
            return out

        algo.init = init
        patches = [
            (rounds, "sample_rollouts", "sampling"),
            (ppo, "rollout_rewards", "scoring"),
            (grpo, "rollout_rewards", "scoring"),
            (ppo, "minibatch_epochs", "update"),
            (grpo, "minibatch_epochs", "update"),
        ]
        saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
        real_round = rounds._run_round

        def counted_round(*args: Any, **kwargs: Any) -> Any:
            timer.new_iteration()
            start = time.perf_counter()
            out = real_round(*args, **kwargs)
            timer.iterations[-1]["total"] = time.perf_counter() - start
            return out

        try:
            for mod, name, part in patches:
                setattr(mod, name, timer.wrap(part, getattr(mod, name)))
            rounds._run_round = counted_round
            result = rounds.run_rounds(algo, ctx)
        finally:
            for mod, name, fn in saved:
                setattr(mod, name, fn)
            rounds._run_round = real_round
    steady = timer.iterations[1:]
    median = {k: statistics.median(it[k] for it in steady) for k in (*PARTS, "total")}
    tokens = [h.stats.get("response_tokens", 0.0) for h in result.state.history]
    return {
        "name": algo_name,
        "first": timer.iterations[0],
        "other": median["total"] - sum(median[p] for p in PARTS),
        "median": median,
        "response_tokens": float(np.mean(tokens)),
        "params": _param_count(result.state.arrays.params),
    }


def _param_count(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="a demo run (its SFT policy starts)")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=64, help="questions per iteration")
    parser.add_argument("--samples", type=int, default=4, help="K per question")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--minibatch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    policy, params, what = start_policy(args.workdir)
    train = load_task("arith", "train", num_examples=2000, seed=1)
    shared = dict(
        num_iterations=args.iterations,
        prompts_per_iteration=args.prompts,
        num_samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        epochs_per_iteration=args.epochs,
        minibatch_size=args.minibatch,
        prompts_per_call=args.prompts,
        temperature=0.7,
    )
    configs = {
        "PPO (shared critic)": PPOConfig(**shared),
        "PPO (separate critic)": PPOConfig(**shared, critic="separate"),
        "GRPO (beta 0.04)": GRPOConfig(**shared),
        "GRPO (beta 0)": GRPOConfig(**shared, beta=0.0),
        "DAPO": GRPOConfig(**shared, variant="dapo"),
    }
    results = [run(name, cfg, policy, params, train) for name, cfg in configs.items()]
    base = results[0]["median"]
    print(
        f"\n{what}; {args.prompts} questions x K {args.samples} = "
        f"{args.prompts * args.samples} rollouts, {args.epochs} epochs of minibatches of "
        f"{args.minibatch}; medians of iterations 2..{args.iterations} (s)\n"
    )
    print("| method | sampling | scoring | update | total | vs PPO (shared) | train params |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        m = r["median"]
        print(
            f"| {r['name']} | {m['sampling']:.2f} | {m['scoring']:.2f} | {m['update']:.2f} | "
            f"{m['total']:.2f} | {m['total'] / base['total']:.2f}x | {r['params']:,} |"
        )
    print(
        "\nfirst iteration (compiles), s: "
        + ", ".join(f"{r['name']} {r['first']['total']:.1f}" for r in results)
    )
    print(
        "mean response tokens: "
        + ", ".join(f"{r['name']} {r['response_tokens']:.1f}" for r in results)
    )


if __name__ == "__main__":
    main()
