"""W3's policy and prompts: the trained demo policy asked the built-in `arith` questions.

A policy trained on `arith` ends its answers with EOS at lengths that vary from one
question and sample to the next, as RL rollouts do; random weights never emit EOS and so
hide what a static decode wastes on finished rows. `load_w3_policy` reads a demo run's
policy (`jaxrl-reason demo --algorithms sft --workdir DIR` trains one in ~10-15 minutes
on this project's CPU), `arith_prompts` tokenizes questions in the demo's prompt format,
and `length_stats` summarises the lengths the policy produced.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxrl_reason.data.tasks import load_task
from jaxrl_reason.model import ModelConfig


@dataclasses.dataclass(frozen=True)
class W3Policy:
    """What every system of W3 needs: the weights and the ids that end and pad a sample."""

    config: ModelConfig
    params: Any
    eos_ids: tuple[int, ...]
    pad_id: int
    tokenizer: Any = None  # encodes the prompts; None when prompts come as ids
    where: str = ""  # said in the report: which policy this is


def load_w3_policy(workdir: str | Path, max_seq_len: int) -> W3Policy:
    """The SFT policy of a demo run in `workdir` (its newest policy if it has no SFT phase).

    `max_seq_len` replaces the model's (the demo's is 256, too short for a prompt plus
    256 new tokens): the weights do not depend on it (RoPE has no learned positions), but
    positions past the training length (192) are outside what the policy was trained on.
    """
    from jaxrl_reason.experiment import load_run

    workdir = Path(workdir)
    if not (workdir / "run.json").is_file():
        raise FileNotFoundError(
            f"{workdir / 'run.json'} not found: W3 needs a trained demo policy; train one with "
            f"`jaxrl-reason demo --algorithms sft --workdir {workdir}` or pass --w3-workdir"
        )
    run = json.loads((workdir / "run.json").read_text())
    step = run.get("phases", {}).get("sft", {}).get("policy_step")
    policy, params, meta = load_run(workdir, step, read_only=True)
    tok = policy.tokenizer
    return W3Policy(
        config=policy.model_config.replace(max_seq_len=max_seq_len),
        params=params,
        eos_ids=tuple(tok.eos_ids),
        pad_id=tok.pad_id,
        tokenizer=(tok, policy.prompt_format),
        where=f"the {meta.get('phase', 'newest')} policy of {workdir} (step {meta['policy_step']})",
    )


def arith_prompts(policy: W3Policy, num_prompts: int, seed: int = 1) -> list[list[int]]:
    """`num_prompts` `arith` training questions in the policy's prompt format, as token ids
    (what an EI round samples: training questions, answers unseen)."""
    tok, prompt_format = policy.tokenizer
    examples = load_task("arith", "train", num_examples=num_prompts, seed=seed)
    return [tok.encode(prompt_format.format(ex.question)) for ex in examples]


def useful_lengths(new_tokens: np.ndarray, eos_ids: tuple[int, ...]) -> np.ndarray:
    """[N] generated tokens up to and including each row's first EOS (all of them if none),
    from rows of new tokens [N, T] as a peer returns them (padded after the EOS)."""
    is_eos = np.isin(new_tokens, eos_ids)
    first = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, new_tokens.shape[1])
    return first.astype(np.int64)


def length_stats(lengths: np.ndarray, budget: int) -> dict[str, float]:
    """Median, p90, max and mean of sample lengths (EOS included), and the share that ran
    to the `budget` of new tokens without ending."""
    lengths = np.asarray(lengths).ravel()
    return {
        "median": float(np.median(lengths)),
        "p90": float(np.percentile(lengths, 90)),
        "max": int(lengths.max()),
        "mean": float(lengths.mean()),
        "at_budget": float(np.mean(lengths >= budget)),
    }


def format_stats(stats: dict[str, float]) -> str:
    return (
        f"median {stats['median']:.0f}, p90 {stats['p90']:.0f}, max {stats['max']}, "
        f"mean {stats['mean']:.1f}, {100 * stats['at_budget']:.1f}% at the budget"
    )
